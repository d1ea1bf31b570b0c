"""The top-N kernel gives exactly what a full stable sort gives: same items, same order, ties by position."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from threadpoolctl import threadpool_limits

from scoring import topn
from scoring.topn import BUCKET_SORT_MAX, KERNEL_ENV, TopN, TopNScorer


def full_sort(scores: np.ndarray, n: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every row sorted by score descending, equal scores by position (stable), excluded and NaN
    entries dropped; -1 / -inf padding when a row has fewer than n."""
    rows = scores.shape[0]
    pos = np.full((rows, n), -1, np.int32)
    val = np.full((rows, n), -np.inf, np.float32)
    for r in range(rows):
        row = scores[r].astype(np.float32)
        keep = ~excluded[r] & (row > -np.inf)  # NaN > -inf is False
        order = [j for j in np.argsort(-row, kind="stable") if keep[j]][:n]
        pos[r, : len(order)] = order
        val[r, : len(order)] = row[order]
    return pos, val


def exclusions(
    rng: np.random.Generator, rows: int, items: int, per_row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ex_rows = np.repeat(np.arange(rows), per_row)
    ex_cols = rng.integers(0, items, rows * per_row)
    mask = np.zeros((rows, items), bool)
    mask[ex_rows, ex_cols] = True
    return ex_rows, ex_cols, mask


@pytest.mark.parametrize(
    ("items", "n", "threads", "step_rows"),
    [(20000, 100, 2, None), (5003, 100, 1, 16), (997, 300, 2, 16), (64, 100, 1, 16), (1500, 7, 2, 40)],
)
def test_top_n_equals_a_full_stable_sort_with_ties(
    items: int, n: int, threads: int, step_rows: int | None
) -> None:
    rng = np.random.default_rng(items + n)
    dim = 4
    # small integer embeddings: many exactly equal scores, so ties must come out by position like a stable sort
    item_emb = rng.integers(-2, 3, (items, dim)).astype(np.float32)
    user_emb = rng.integers(-2, 3, (150, dim)).astype(np.float32)
    ex_rows, ex_cols, mask = exclusions(rng, 150, items, 20)
    top = TopNScorer(item_emb, step_rows=step_rows, threads=threads).top_n(user_emb, n, ex_rows, ex_cols)
    pos, val = full_sort(user_emb @ item_emb.T, n, mask)
    np.testing.assert_array_equal(top.positions, pos)
    np.testing.assert_array_equal(top.scores, val)


def test_top_n_equals_a_full_stable_sort_on_random_scores() -> None:
    rng = np.random.default_rng(3)
    item_emb = rng.standard_normal((20000, 16), dtype=np.float32)
    user_emb = rng.standard_normal((300, 16), dtype=np.float32)
    ex_rows, ex_cols, mask = exclusions(rng, 300, 20000, 20)
    top = TopNScorer(item_emb).top_n(user_emb, 100, ex_rows, ex_cols)
    scores = np.empty((300, 20000), np.float32)
    np.matmul(user_emb, np.ascontiguousarray(item_emb.T), out=scores)
    # the kernel's product is one BLAS call per chunk; compare its own scores' order and the items
    pos, _ = full_sort(scores, 100, mask)
    np.testing.assert_array_equal(top.positions, pos)
    np.testing.assert_allclose(top.scores, np.take_along_axis(scores, pos, axis=1), rtol=1e-6, atol=1e-6)
    assert (
        top.rescored < 0.05 * 300
    )  # the screening settled (almost) every row: the fast path is what was checked


def test_heavy_users_exclusions_in_any_order_across_chunks() -> None:
    # 300 exclusions a row (more than the per-row insertion sort takes), in random order, over every chunk of items;
    # the last step holds one user
    rng = np.random.default_rng(6)
    item_emb = rng.standard_normal((9000, 8), dtype=np.float32)
    user_emb = rng.standard_normal((417, 8), dtype=np.float32)
    ex_rows, ex_cols, mask = exclusions(rng, 417, 9000, 300)
    order = rng.permutation(len(ex_rows))
    scorer = TopNScorer(item_emb, step_rows=416, threads=2)
    assert scorer.padded_items // scorer.chunk_width > 10
    top = scorer.top_n(user_emb, 50, ex_rows[order], ex_cols[order])
    scores = np.empty((417, 9000), np.float32)
    np.matmul(user_emb, np.ascontiguousarray(item_emb.T), out=scores)
    pos, _ = full_sort(scores, 50, mask)
    np.testing.assert_array_equal(top.positions, pos)


def test_a_blas_with_32_bit_ints_gives_the_same_lists() -> None:
    # numpy's wheels bring an ILP64 OpenBLAS; other numpy builds link an LP64 BLAS (MKL, Accelerate, a distribution's
    # OpenBLAS). scipy's wheel bundles an LP64 OpenBLAS, which stands in for them here
    import ctypes
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scipy is not installed: no LP64 OpenBLAS to call")
    site = os.path.dirname(list(spec.submodule_search_locations)[0])
    found = glob.glob(os.path.join(site, "scipy.libs", "libscipy_openblas-*.so"))
    if not found:
        pytest.skip("this scipy bundles no LP64 OpenBLAS (scipy.libs/libscipy_openblas-*.so)")
    importlib.import_module(
        "scipy.linalg"
    )  # scipy's LP64 OpenBLAS loaded first: the kernel still finds numpy's
    lp64 = ctypes.CDLL(found[0])
    rng = np.random.default_rng(7)
    item_emb = rng.standard_normal((3000, 16), dtype=np.float32)
    user_emb = rng.standard_normal((500, 16), dtype=np.float32)
    usual = TopNScorer(item_emb)
    assert usual._sgemm is not None and usual._sgemm[1]  # numpy's own (the PyPI wheel's): 64-bit ints
    narrow = TopNScorer(item_emb)
    narrow._sgemm = (ctypes.cast(lp64.scipy_cblas_sgemm, ctypes.c_void_p).value, False)
    # one BLAS thread for scipy's too: the kernel limits the BLAS libraries loaded when it first scored, and a
    # multi-threaded product rounds differently
    with threadpool_limits(limits=1, user_api="blas"):
        expected, got = usual.top_n(user_emb, 50), narrow.top_n(user_emb, 50)
    np.testing.assert_array_equal(got.positions, expected.positions)
    np.testing.assert_array_equal(got.scores, expected.scores)


@pytest.mark.parametrize("margin", [-3.0, 30.0])
def test_rows_the_screening_misses_are_rescored_exactly(margin: float) -> None:
    # a negative margin puts thresholds above most rows' 100th score (too few candidates), a huge one far below it
    # (candidates overflow): both send rows to the whole-row selection, which must give the same answer
    rng = np.random.default_rng(4)
    item_emb = rng.standard_normal((6000, 8), dtype=np.float32)
    user_emb = rng.standard_normal((120, 8), dtype=np.float32)
    ex_rows, ex_cols, mask = exclusions(rng, 120, 6000, 10)
    scorer = TopNScorer(item_emb, step_rows=16)
    scorer.screen_margin = margin
    top = scorer.top_n(user_emb, 100, ex_rows, ex_cols)
    scores = np.empty((120, 6000), np.float32)
    np.matmul(user_emb, np.ascontiguousarray(item_emb.T), out=scores)
    pos, _ = full_sort(scores, 100, mask)
    np.testing.assert_array_equal(top.positions, pos)
    assert top.rescored > 30


def test_signed_zeros_tie_and_nan_is_never_selected() -> None:
    # u . v: item 0 -> +0.0, item 1 -> -0.0 (equal: position order), item 2 -> NaN, item 3 -> 1.0
    item_emb = np.array([[0.0, 0.0], [-1.0, 0.0], [np.nan, 0.0], [0.0, 1.0]], np.float32)
    user_emb = np.array([[0.0, 1.0]], np.float32)
    top = TopNScorer(item_emb).top_n(user_emb, 4)
    assert top.positions[0].tolist() == [3, 0, 1, -1]
    assert top.scores[0, 0] == 1.0 and top.scores[0, 1] == 0.0 and top.scores[0, 3] == -np.inf


def test_many_candidates_use_the_key_sort_and_stay_exact() -> None:
    rng = np.random.default_rng(5)
    items, n = 4000, BUCKET_SORT_MAX + 50  # more candidates than the bucket sort takes
    item_emb = rng.integers(-1, 2, (items, 3)).astype(np.float32)
    user_emb = rng.integers(-1, 2, (20, 3)).astype(np.float32)
    top = TopNScorer(item_emb, threads=1).top_n(user_emb, n)
    pos, val = full_sort(user_emb @ item_emb.T, n, np.zeros((20, items), bool))
    np.testing.assert_array_equal(top.positions, pos)
    np.testing.assert_array_equal(top.scores, val)


def test_all_equal_scores_come_in_position_order() -> None:
    item_emb = np.ones((3000, 2), np.float32)
    top = TopNScorer(item_emb).top_n(
        np.ones((2, 2), np.float32), 100, np.array([0, 0, 1]), np.array([0, 5, 99])
    )
    assert top.positions[0].tolist() == [j for j in range(102) if j not in (0, 5)]
    assert top.positions[1].tolist() == [j for j in range(101) if j != 99]
    assert (top.scores == 2.0).all()


def test_task_rows_read_back_as_the_contract(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from jobs.score import ranked_rows, task_writer
    from schemas.outputs import RECOMMENDATION

    rng = np.random.default_rng(9)
    item_emb = rng.standard_normal((50, 4), dtype=np.float32)
    user_emb = rng.standard_normal((6, 4), dtype=np.float32)
    top = TopNScorer(item_emb).top_n(user_emb, 10, np.array([2] * 45), np.arange(45))  # user 2: 5 items left
    at = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    constants = {"model_version": "v7", "strategy": "model", "generated_at": at}
    batch = ranked_rows(
        top,
        pa.array([f"u{u}" for u in range(6)]),
        pa.array([f"i{i}" for i in range(50)]),
        RECOMMENDATION,
        constants,
    )
    with task_writer(str(tmp_path / "r.parquet"), RECOMMENDATION) as writer:
        writer.write_batch(batch)
    table = pq.read_table(tmp_path / "r.parquet")
    assert (
        table.schema.remove_metadata() == RECOMMENDATION.remove_metadata()
    )  # plain strings, not dictionaries
    expected = [
        (f"u{r}", k + 1, f"i{top.positions[r, k]}", float(top.scores[r, k]), "v7", "model", at)
        for r in range(6)
        for k in range(10)
        if top.positions[r, k] >= 0
    ]
    assert len(expected) == 55
    assert list(zip(*[table.column(c).to_pylist() for c in table.column_names], strict=True)) == expected


def assert_same_lists(got: TopN, expected: TopN) -> None:
    np.testing.assert_array_equal(got.positions, expected.positions)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("forced_by", ["environment", "argument"])
@pytest.mark.parametrize(
    ("items", "dim", "integer", "n", "step_rows"),
    [(20000, 4, True, 100, None), (5003, 8, False, 50, 16), (997, 3, True, 300, 40), (64, 4, True, 100, 16)],
)
def test_the_reference_gives_the_compiled_kernels_lists(
    monkeypatch: pytest.MonkeyPatch,
    forced_by: str,
    items: int,
    dim: int,
    integer: bool,
    n: int,
    step_rows: int | None,
) -> None:
    # integer embeddings give many equal scores (ties by position); exclusions come in no order, over every chunk,
    # and user 1 keeps 3 items, fewer than its list
    rng = np.random.default_rng(items + dim)
    if integer:
        item_emb, user_emb = (rng.integers(-2, 3, (rows, dim)).astype(np.float32) for rows in (items, 150))
    else:
        item_emb, user_emb = (rng.standard_normal((rows, dim), dtype=np.float32) for rows in (items, 150))
    categories = rng.integers(0, 40, items)
    ex_rows, ex_cols, _ = exclusions(rng, 150, items, 30)
    order = rng.permutation(len(ex_rows))
    ex_rows = np.r_[ex_rows[order], np.ones(items - 3, int)]
    ex_cols = np.r_[ex_cols[order], np.arange(3, items)]
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    compiled = TopNScorer(item_emb, categories, step_rows=step_rows, threads=2)
    if forced_by == "environment":
        monkeypatch.setenv(KERNEL_ENV, "reference")
        reference = TopNScorer(item_emb, categories, step_rows=step_rows, threads=2)
    else:
        reference = TopNScorer(item_emb, categories, step_rows=step_rows, threads=2, kernel="reference")
    assert (compiled.kernel, reference.kernel) == ("compiled", "reference")
    for users in (user_emb, user_emb[:1], user_emb[:0]):  # a block, one row, none
        for cap in (0, 2):
            expected = compiled.top_n(users, n, ex_rows, ex_cols, category_cap=cap)
            assert_same_lists(reference.top_n(users, n, ex_rows, ex_cols, category_cap=cap), expected)


def test_an_unknown_kernel_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNEL_ENV, "fastest")
    with pytest.raises(ValueError, match=KERNEL_ENV):
        TopNScorer(np.ones((4, 2), np.float32))


def test_a_kernel_that_cannot_be_built_leaves_the_reference_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # numpy's BLAS exports no cblas_sgemm by this name: the kernel cannot be built, once per process
    monkeypatch.setattr(topn, "SGEMM_SYMBOLS", (("cblas_sgemm_of_no_blas", True),))
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    topn.compiled_kernel.cache_clear()
    rng = np.random.default_rng(11)
    item_emb = rng.integers(-2, 3, (3000, 4)).astype(np.float32)
    user_emb = rng.integers(-2, 3, (50, 4)).astype(np.float32)
    ex_rows, ex_cols, mask = exclusions(rng, 50, 3000, 20)
    with caplog.at_level(logging.WARNING, logger="scoring.topn"):
        scorers = [TopNScorer(item_emb), TopNScorer(item_emb)]
    assert [scorer.kernel for scorer in scorers] == ["reference", "reference"]
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "scoring.topn"]
    assert "cblas_sgemm_of_no_blas" in warning and "reference" in warning
    top = scorers[0].top_n(user_emb, 100, ex_rows, ex_cols)
    pos, val = full_sort(user_emb @ item_emb.T, 100, mask)
    np.testing.assert_array_equal(top.positions, pos)
    np.testing.assert_array_equal(top.scores, val)


def test_without_numba_the_module_still_scores_by_the_reference() -> None:
    code = (
        "import sys; sys.modules['numba'] = None\n"  # import numba now raises ImportError
        "import json, numpy as np\n"
        "from scoring.topn import TopNScorer\n"
        "scorer = TopNScorer(np.arange(40, dtype=np.float32).reshape(20, 2) % 5)\n"
        "top = scorer.top_n(np.ones((2, 2), np.float32), 4, np.array([0, 0]), np.array([4, 9]))\n"
        "print(json.dumps([scorer.kernel, top.positions.tolist()]))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    kernel, positions = json.loads(done.stdout)
    assert kernel == "reference" and "numba cannot be imported" in done.stderr
    items = np.arange(40, dtype=np.float32).reshape(20, 2) % 5
    excluded = np.zeros((2, 20), bool)
    excluded[0, [4, 9]] = True
    assert positions == full_sort(np.ones((2, 2), np.float32) @ items.T, 4, excluded)[0].tolist()
