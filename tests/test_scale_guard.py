"""Scale guard: every model the nightly training step fits, on a 200k-item catalogue, within a memory bound.

Real catalogues have 10^5-10^7 items; a model that is dense in the catalogue (an items x items array: 320 GB in
float64 at 200k items) must never be fitted there. The data: 200k items, 10k users, about 40k long-tail
interactions (``benchmarks.bench_item_item.long_tail_interactions``: Zipf-like popularity, most items never
taken). Each fit runs under ``tracemalloc`` and its peak must stay under 1 GiB.

What ``tracemalloc`` sees: every allocation made through Python's allocators, which includes numpy's and scipy's
arrays (their data buffers go through ``PyDataMem``/``PyMem``). What it does not see: TensorFlow's tensors and
variables (its own C++ allocator) and the JVM's heap (Spark ALS). So for the deep model the process's peak
resident memory is checked too (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before
the fit, where the kernel allows it), and for ALS only the driver's Python side (the factors collected into numpy)
is measured.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.bench_item_item import long_tail_interactions
from models import baselines
from schemas.settings import Settings

pytestmark = [pytest.mark.tf, pytest.mark.slow]

N_ITEMS, N_USERS = 200_000, 10_000
LIMIT = 1 << 30  # 1 GiB of Python-allocated memory at the peak of any one fit


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    matrix = long_tail_interactions(N_ITEMS, N_USERS, items_per_user=4.0, seed=11)
    assert 30_000 < matrix.nnz < 60_000 and matrix.shape == (N_USERS + 1, N_ITEMS + 1)
    rng = np.random.default_rng(0)
    return {
        "interactions": matrix,
        "user_age": rng.integers(0, 6, N_USERS + 1),
        "user_region": rng.integers(0, 5, N_USERS + 1),
    }


def peak_of(fit: Callable[[], Any]) -> tuple[Any, int]:
    """(result, peak bytes allocated through Python's allocators while ``fit`` ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture()
def peak_rss() -> Iterator[Callable[[], int]]:
    """Resets the process's peak RSS (where /proc/self/clear_refs takes "5") and yields a function returning the
    peak RSS growth in bytes since then (relative to the RSS at the reset)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = status_kib("VmRSS" if reset else "VmHWM")
    yield lambda: (status_kib("VmHWM") - before) * 1024


@pytest.mark.parametrize("name", ["popularity", "segment_popularity", "item_cosine", "ease"])
def test_every_in_memory_baseline_fits_a_200k_catalogue_in_bounded_memory(
    catalogue: dict[str, Any], name: str
) -> None:
    settings = Settings.load(env={})
    params = baselines.DEFAULT_PARAMS[name]

    def fit() -> Any:
        return baselines.fit(
            name,
            catalogue["interactions"],
            params,
            user_age=catalogue["user_age"],
            user_region=catalogue["user_region"],
            dense_budget_mb=settings.dense_item_budget_mb,
            block_mb=settings.item_block_mb,
        )

    if name == "ease":  # dense in the catalogue: skipped by the budget before it allocates anything
        with pytest.raises(baselines.SkippedModel) as skipped:
            _, peak = peak_of(fit)
        assert "EASE needs about 915,536 MiB for 200,000 items" in str(skipped.value)
        assert f"dense_item_budget_mb={settings.dense_item_budget_mb}" in str(skipped.value)
        return
    module, peak = peak_of(fit)
    print(f"{name}: Python-allocated peak {peak / (1 << 20):.1f} MiB")
    assert peak < LIMIT, f"{name}: {peak / (1 << 20):.0f} MiB at the peak"
    if name == "item_cosine":
        neighbours = module.neighbours
        assert sp.isspmatrix_csr(neighbours) and neighbours.shape == (N_ITEMS + 1, N_ITEMS + 1)
        assert np.diff(neighbours.tocsc().indptr).max() <= params["neighbours"]


def test_item_cosine_scores_users_of_a_200k_catalogue_through_the_sparse_path(
    catalogue: dict[str, Any],
) -> None:
    from models.evaluate import topk_for
    from schemas.features import user_inputs
    from scoring.neighbours import NeighbourModel

    matrix = catalogue["interactions"]
    model = baselines.fit_item_cosine(matrix)
    users = np.arange(1, 201)
    seen = [matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]].tolist() for u in users]
    inputs = user_inputs(users, seen, seen, 20)
    candidates = np.arange(1, N_ITEMS + 1)
    items = {"item_idx": candidates.astype(np.int32)}  # the sparse path reads only the candidates' ids

    (top, scores), peak = peak_of(lambda: topk_for(model, inputs, items, 100))
    assert isinstance(model, NeighbourModel)
    print(f"item_cosine top 100 of 200 users: Python-allocated peak {peak / (1 << 20):.1f} MiB")
    assert peak < LIMIT // 4, f"{peak / (1 << 20):.0f} MiB for 200 users"
    assert top.shape == (200, 100) and (top > 0).all()  # full lists: neighbours, then the popular fill
    assert not any(np.isin(top[row], seen[row]).any() for row in range(len(users)))
    assert (scores[:, 0] > 0).mean() > 0.9  # almost every user reaches some neighbour
    # the same lists through the score job's entry (flat pairs, candidate positions)
    scorer = model.scorer(candidates, budget_mb=1)
    rows = np.repeat(np.arange(len(users)), [len(s) for s in seen])
    flat = np.concatenate([np.asarray(s, np.int64) for s in seen])
    job = scorer.top_n(100, rows, flat, len(users), rows, flat)
    assert np.array_equal(candidates[job.positions], top) and np.array_equal(job.scores, scores)


def test_the_deep_model_trains_one_epoch_on_a_200k_catalogue_in_bounded_memory(
    catalogue: dict[str, Any], peak_rss: Callable[[], int]
) -> None:
    from models import data as D
    from models.train import fit_two_tower

    coo = catalogue["interactions"].tocoo()
    data = D.from_interactions(coo.row, coo.col, order=np.arange(len(coo.row)))
    settings = Settings.load({"epochs": 1, "batch_size": 1024}, env={})
    (module, summary), peak = peak_of(lambda: fit_two_tower(data, settings))
    growth = peak_rss()
    print(
        f"two_tower: Python-allocated peak {peak / (1 << 20):.1f} MiB, peak RSS growth {growth / (1 << 20):.0f} MiB"
    )
    assert summary.get("wide") in ("skipped", "off", False, None)  # no dense EASE part at 200k items
    assert peak < LIMIT, f"Python-allocated peak {peak / (1 << 20):.0f} MiB"
    assert growth < 2 * LIMIT, f"peak RSS grew by {growth / (1 << 20):.0f} MiB"


@pytest.mark.spark
def test_als_fits_a_200k_catalogue_with_a_bounded_driver(spark: Any, catalogue: dict[str, Any]) -> None:
    # the factors' size, not the iterations, sets the driver's memory: 3 iterations instead of the nightly 15
    params = {**baselines.DEFAULT_PARAMS["als"], "iterations": 3}
    module, peak = peak_of(lambda: baselines.fit("als", catalogue["interactions"], params, spark=spark))
    print(f"als: driver's Python-allocated peak {peak / (1 << 20):.1f} MiB")
    assert peak < LIMIT, f"driver's Python-allocated peak {peak / (1 << 20):.0f} MiB"
    assert module.n_items == N_ITEMS + 1
