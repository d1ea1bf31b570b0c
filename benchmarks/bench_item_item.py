"""Item cosine: the former dense fit against the sparse one (``models.baselines.cosine_similarity``).

On synthetic long-tail interactions (Zipf-like item popularity, a few items per user), at 5k and 20k items both
fits are measured (seconds, peak memory of the arrays numpy and scipy allocate, from ``tracemalloc``) and the ratio
printed; at 100k and 200k items only the sparse one (the dense one would need 40-160 GB). The two agree where
both run (the same neighbours and values up to ties; asserted in tests/test_baselines.py). Then the sparse
scoring path (``scoring.neighbours``) is timed for a few thousand users at each size.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_item_item [--sizes 5000,20000,...]
        [--dense-up-to 20000] [--users-per-item 0.5] [--neighbours 100]
"""

from __future__ import annotations

import argparse
import functools
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

SIZES = (5_000, 20_000, 100_000, 200_000)
DENSE_UP_TO = 20_000  # the dense fit needs about 14 * items^2 bytes at its peak (5.7 GiB at 20k)


def dense_cosine_reference(interactions: sp.spmatrix, neighbours: int = 100) -> np.ndarray:
    """The former dense item cosine, kept as the reference the sparse fit is checked against: a dense
    [n_items + 1]^2 array, diagonal 0, each column pruned to the entries >= its ``neighbours``-th largest."""
    binary = (interactions > 0).astype(np.float32).tocsc()
    gram = np.asarray((binary.T @ binary).todense(), dtype=np.float32)
    norms = np.sqrt(np.diag(gram)).copy()
    norms[norms == 0] = 1.0
    similarity = gram / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)
    if 0 < neighbours < similarity.shape[0]:
        cutoff = np.partition(similarity, -neighbours, axis=0)[-neighbours]  # per column k-th largest
        similarity[similarity < cutoff[None, :]] = 0.0
    return similarity


def long_tail_interactions(
    n_items: int, n_users: int, items_per_user: float = 4.0, seed: int = 0, exponent: float = 1.1
) -> sp.csr_matrix:
    """Binary CSR [n_users + 1, n_items + 1]: each user takes 1 + Poisson(items_per_user - 1) items drawn from a
    Zipf-like popularity (item i with weight 1 / i**exponent), without repeats."""
    from models.baselines import interaction_matrix

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** exponent
    weights /= weights.sum()
    lengths = 1 + rng.poisson(max(items_per_user - 1.0, 0.0), n_users)
    users = np.repeat(np.arange(1, n_users + 1), lengths)
    items = 1 + rng.choice(n_items, size=len(users), p=weights)
    return interaction_matrix(users, items, n_users, n_items)


def measured(fit: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB allocated through Python's allocators during the call: numpy/scipy arrays)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = fit()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, seconds, peak / (1 << 20)


def score_users(model: Any, matrix: sp.csr_matrix, users: int, k: int = 100) -> float:
    """Seconds for the top ``k`` of the first ``users`` users through ``scoring.neighbours``."""
    scorer = model.scorer(np.arange(1, matrix.shape[1]))
    block = matrix[1 : users + 1].tocoo()
    started = time.perf_counter()
    scorer.top_n(k, block.row, block.col, block.shape[0], block.row, block.col)
    return time.perf_counter() - started


def blas_kernel() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(
        f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture')}"
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from models.baselines import cosine_similarity, fit_item_cosine

    rows = []
    for n_items in args.sizes:
        n_users = max(1, int(n_items * args.users_per_item))
        matrix = long_tail_interactions(n_items, n_users)
        row: dict[str, Any] = {"items": n_items, "users": n_users, "interactions": int(matrix.nnz)}
        sparse, row["sparse_s"], row["sparse_mib"] = measured(
            functools.partial(cosine_similarity, matrix, args.neighbours)
        )
        row["nnz"] = int(sparse.nnz)
        if n_items <= args.dense_up_to:
            _, row["dense_s"], row["dense_mib"] = measured(
                functools.partial(dense_cosine_reference, matrix, args.neighbours)
            )
        model = fit_item_cosine(matrix, args.neighbours)
        row["score_s"] = score_users(model, matrix, min(args.score_users, n_users))
        row["score_users"] = min(args.score_users, n_users)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


HEADER = (
    f"{'items':>8}{'users':>8}{'pairs':>9}{'S nnz':>10}{'dense s':>9}{'dense MiB':>11}{'sparse s':>9}"
    f"{'sparse MiB':>11}{'time x':>8}{'memory x':>9}{'score s':>9}"
)


def format_row(row: dict[str, Any]) -> str:
    dense = "dense_s" in row
    return (
        f"{row['items']:>8}{row['users']:>8}{row['interactions']:>9}{row['nnz']:>10}"
        + (f"{row['dense_s']:>9.2f}{row['dense_mib']:>11.0f}" if dense else f"{'-':>9}{'-':>11}")
        + f"{row['sparse_s']:>9.2f}{row['sparse_mib']:>11.1f}"
        + (
            f"{row['dense_s'] / max(row['sparse_s'], 1e-9):>8.0f}"
            f"{row['dense_mib'] / max(row['sparse_mib'], 1e-9):>9.0f}"
            if dense
            else f"{'-':>8}{'-':>9}"
        )
        + f"{row['score_s']:>9.2f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=lambda t: [int(v) for v in t.split(",")], default=list(SIZES))
    parser.add_argument("--dense-up-to", type=int, default=DENSE_UP_TO)
    parser.add_argument("--users-per-item", type=float, default=0.5)
    parser.add_argument("--neighbours", type=int, default=100)
    parser.add_argument("--score-users", type=int, default=2_000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"BLAS: {blas_kernel()}")
    print(
        f"long-tail interactions, {args.users_per_item} users per item, about 4 items per user; "
        f"k = {args.neighbours}; MiB = tracemalloc peak; score s = top 100 of {args.score_users} users"
    )
    print(HEADER)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
