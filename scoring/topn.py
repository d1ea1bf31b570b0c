"""Exact top-N over dot-product scores, with exclusions and an optional per-category cap, fast on the CPU.

Selection, not arithmetic, is what costs: a full ``tf.math.top_k`` or ``np.argpartition`` over every item of
every user costs 2-10x the matrix product. Here each thread scores a step of users one chunk of items at a time
(one BLAS call each, made from compiled code, into one buffer that stays in the core's L2 cache) and screens each
chunk while it is there, all exact:

1. Each row's screening threshold: its scores' mean + z * their deviation over the catalogue (exact from the
   items' mean and covariance, without a pass over the scores), z being where the recent rows' m-th best score
   stood, less a margin.
2. Screening: each chunk's row is compared with the threshold 16 entries at a time (one vector compare into a bit
   mask); the entries >= it are appended to the row's candidates, in position order.
3. A row with at least m candidates has its top m among them (m entries are >= the threshold, so the top m are):
   they are bucket-sorted by score and finished by a stable insertion sort: score descending, equal scores by
   position, exactly the order of a full stable sort (``np.argsort(-row, kind="stable")``). A row with fewer (the
   threshold was too high: under 1% of rows) or too many (far too low) is scored again whole and selected by
   stripe maxima (``_top_into``): the row is cut into ``STRIPES`` stripes of ``G`` items, group g's maximum is that
   of items ``g, g + G, ...``, a threshold with between m and m + SLACK groups above it is searched by counting,
   and only the half-groups above it are scanned.
Exclusions (items the user already interacted with) are set to -inf in each chunk before it is screened. The
category cap (at most ``cap`` items of one category per list) is applied greedily in score order to the top ``pool``
items; a row whose pool runs out before its list is full is redone over all items, so the result stays exact.

The reference selection (:meth:`TopNScorer._reference_top_n`: a block of users' scores by numpy, exclusions and NaN
set to -inf, ``np.partition`` for each row's n-th best score, a stable sort of the entries at least that good) is the
specification: the kernel gives the same lists. (The same BLAS computes both products, but for other groups of rows:
two scores within a rounding of each other can come in either order.) :class:`TopNScorer` selects with the
reference, and logs why once per process, wherever the kernel cannot run: numba missing or failing to compile,
numpy's BLAS exporting no ``cblas_sgemm`` under a known name, or the kernel's lists differing from the reference's
on a small probe (another CPU, another numpy). ``RECFLOW_TOPN_KERNEL=reference`` (or
``TopNScorer(kernel="reference")``) forces the reference; ``compiled``, the default, uses the kernel wherever it
builds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib
import itertools
import logging
import math
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from scoring.allocator import retain_freed_memory
from scoring.dot_scores import CatalogueProduct, indicator_tail

try:  # the compiled kernel's tools: without them TopNScorer selects with the reference
    from llvmlite import ir
    from numba import njit
    from numba.core import types
    from numba.cpython.unsafe.numbers import trailing_zeros
    from numba.extending import intrinsic

    _NUMBA_MISSING: str | None = None
except ImportError as missing:
    _NUMBA_MISSING = f"numba cannot be imported ({missing})"

    def _uncompiled(*args: Any, **options: Any) -> Any:
        """numba's decorators' stand-in: the kernel's functions stay plain Python, and are never called."""
        return args[0] if args and callable(args[0]) else _uncompiled

    njit = intrinsic = _uncompiled

log = logging.getLogger(__name__)

STRIPES = 16
# Each scoring thread computes a step of STEP_ROWS users one chunk of items at a time, into one buffer of about
# CHUNK_BYTES that stays in the core's own (L2) cache, and screens it there before the next chunk overwrites it: the
# scores never go out to the shared cache or RAM, and the screening pass reads them from L2 (measured by
# benchmarks/bench_score.py). The product runs on one BLAS thread per scoring thread, called from the compiled
# step (no GIL, no Python between chunks). Steps of fewer rows make OpenBLAS re-pack each chunk of items for fewer
# users: 416-row steps took 5% less time than 208-row ones with two workers on bench_score's embeddings.
STEP_ROWS = 416
CHUNK_BYTES = 1024 * 1024
# a row's screening threshold: its mean score + z * its score deviation, z = the running mean of the recent rows' z
# of their m-th score less SCREEN_MARGIN times its mean absolute change (0.4-0.7% of rows scored again on
# bench_score's embeddings; a smaller margin gives fewer candidates and more rows scored twice)
SCREEN_MARGIN = 3.0
SCREEN_LEARNING = 0.1  # weight of each settled row in those running means
LANES = 16  # entries compared at once by _mask_at_least (one AVX-512 register)
NEG_INF = np.float32(-np.inf)
SLACK = 16  # the threshold keeps between m and m + SLACK stripe groups (when ties allow)
BUCKETS = (
    256  # candidates up to BUCKET_SORT_MAX are ordered by a bucket sort on the score, more by a key sort
)
BUCKET_SORT_MAX = 512
REDO_BATCH = 64  # rows the screening missed are scored again in batches of about this many
KERNEL_ENV = "RECFLOW_TOPN_KERNEL"  # "compiled" (the default: the kernel wherever it runs) or "reference"
COMPILED, REFERENCE = "compiled", "reference"
# the reference selects for a block of users at a time, of about this many scores (4 MiB)
REFERENCE_BLOCK_SCORES = 1 << 20


@dataclasses.dataclass
class TopN:
    """Result for a block of users: item positions (-1 = no item) and scores (-inf = no item), best first."""

    positions: np.ndarray  # int32 [B, n]
    scores: np.ndarray  # float32 [B, n]
    rescored: int = 0  # rows the screening did not settle, scored again whole (see the module's docstring)

    @property
    def counts(self) -> np.ndarray:
        """How many real items each row holds (fewer than n when the user excluded most of the catalogue)."""
        return (self.positions >= 0).sum(axis=1)


class TopNScorer:
    """Holds the candidate items' embeddings (the broadcast side) and answers top-N queries for user blocks.

    ``item_embeddings``: float32 [N, d], one row per candidate item (unavailable items are left out by the caller,
    which is cheaper than masking them). ``item_categories``: int [N] >= 0, needed only for the category cap.
    ``kernel``: "compiled" or "reference" (see the module's docstring); None reads ``RECFLOW_TOPN_KERNEL``, and
    "compiled" when that is unset. ``self.kernel`` says which one selects.
    """

    def __init__(
        self,
        item_embeddings: np.ndarray,
        item_categories: np.ndarray | None = None,
        step_rows: int | None = None,
        threads: int | None = None,
        kernel: str | None = None,
    ) -> None:
        retain_freed_memory()  # every block allocates its result arrays again: reuse the heap, no fresh pages
        items = np.asarray(item_embeddings, dtype=np.float32)
        if items.ndim != 2:
            raise ValueError(f"item_embeddings must be [N, d], got shape {items.shape}")
        self.num_items, self.dim = items.shape
        # an indicator tail (a deep+wide model's one-hot item part) is added by a gather, not multiplied
        self.head_dim, tail_cols, tail_coef = indicator_tail(items)
        self.step_rows = step_rows or STEP_ROWS
        # the items in chunks of equal width (a multiple of STRIPES and LANES, both 16; zero vectors pad the last
        # one, their scores are set to -inf): a step's scores for one chunk stay in the core's cache while screened
        widest = max(STRIPES, CHUNK_BYTES // (4 * self.step_rows) // STRIPES * STRIPES)
        chunks = max(1, math.ceil(self.num_items / widest))
        self.chunk_width = math.ceil(max(1, self.num_items) / chunks / STRIPES) * STRIPES
        self.padded_items = chunks * self.chunk_width
        padded = np.zeros((self.padded_items, self.head_dim), np.float32)
        padded[: self.num_items] = items[:, : self.head_dim]
        # [mean | covariance] of the items' head, float32 [d, 1 + d]: a row's scores' mean and variance over the
        # catalogue are u . mean and u . Cov . u, exact without a pass over the scores (the tail is left out: the
        # threshold only has to be placed well, not exactly)
        head = items[:, : self.head_dim].astype(np.float64)
        mean = head.mean(axis=0) if self.num_items else np.zeros(self.head_dim)
        cov = (
            np.cov(head, rowvar=False, bias=True).reshape(self.head_dim, self.head_dim)
            if self.num_items > 1
            else np.zeros((self.head_dim, self.head_dim))
        )
        item_moments = np.ascontiguousarray(np.hstack([mean[:, None], cov]), dtype=np.float32)
        # [chunks, d, W]: chunk c's items transposed, the BLAS-friendly layout for U @ I^T
        chunks_t = np.ascontiguousarray(
            padded.reshape(chunks, self.chunk_width, self.head_dim).transpose(0, 2, 1)
        )
        if tail_cols is None or tail_coef is None:  # no tail: empty arrays, which the kernel skips
            tail_cols, tail_coef = np.zeros(0, np.intp), np.zeros(0, np.float32)
        # what the kernel reads of the items, one argument: chunks, [mean | covariance], the indicator tail
        self._items = (chunks_t, item_moments, tail_cols, tail_coef)
        choice = (kernel or os.environ.get(KERNEL_ENV) or COMPILED).strip().lower()
        if choice not in (COMPILED, REFERENCE):
            raise ValueError(
                f"the top-N kernel ({KERNEL_ENV}) is {COMPILED!r} or {REFERENCE!r}, not {choice!r}"
            )
        self._sgemm = compiled_kernel(SGEMM_SYMBOLS) if choice == COMPILED else None
        # the reference's product (users @ items.T, the indicator tail gathered), only where the reference selects
        self._reference_product = CatalogueProduct(items) if self._sgemm is None else None
        if item_categories is None:
            self.item_categories = np.zeros(self.num_items, np.int32)
        else:
            self.item_categories = np.asarray(item_categories, dtype=np.int32)
            if self.item_categories.shape != (self.num_items,) or (self.item_categories < 0).any():
                raise ValueError("item_categories must hold one non-negative int per item")
        self.screen_margin = SCREEN_MARGIN
        # one thread per core by default; a Spark task owns one core, so jobs/score.py passes threads=1
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))

    @property
    def kernel(self) -> str:
        """Which selection answers: "compiled" (the kernel) or "reference"."""
        return REFERENCE if self._sgemm is None else COMPILED

    def top_n(
        self,
        user_embeddings: np.ndarray,
        n: int,
        exclude_rows: np.ndarray | None = None,
        exclude_cols: np.ndarray | None = None,
        category_cap: int = 0,
        pool_factor: int = 4,
    ) -> TopN:
        """Top ``n`` items per user row, best first, never an excluded (row, item position) pair.

        ``exclude_rows``/``exclude_cols``: parallel 1-D arrays of (row in this block, item position); pairs whose
        position is outside ``[0, N)`` (items that are not candidates) are ignored.
        """

        users = np.ascontiguousarray(user_embeddings, dtype=np.float32)
        rows, n = users.shape[0], int(n)
        if n < 1:
            raise ValueError("n must be >= 1")
        if users.ndim != 2 or (rows and users.shape[1] != self.dim):
            raise ValueError(f"user_embeddings must be [B, {self.dim}], got shape {users.shape}")
        top = TopN(np.full((rows, n), -1, np.int32), np.full((rows, n), NEG_INF, np.float32))
        if rows == 0 or self.num_items == 0:
            return top
        indptr, cols = _exclusions_csr(exclude_rows, exclude_cols, rows, self.num_items)
        cap = max(0, int(category_cap))
        # a capped list is picked from the row's best `pool` first (all of its items when they do not fill it)
        pool = min(self.num_items, max(n, pool_factor * n)) if cap else n
        if self._sgemm is None:
            self._reference_top_n(users, indptr, cols, cap, pool, top)
        else:
            self._compiled_top_n(users, indptr, cols, cap, pool, top)
        return top

    def _reference_top_n(
        self, users: np.ndarray, indptr: np.ndarray, cols: np.ndarray, cap: int, pool: int, top: TopN
    ) -> None:
        """The specification, into ``top``: every score, excluded ones (CSR ``indptr``/``cols``) and NaN set to
        -inf, then each row's list (see _reference_lists), a block of users at a time."""
        product = self._reference_product
        assert product is not None  # built wherever the reference selects
        block = max(1, REFERENCE_BLOCK_SCORES // self.num_items)
        with _blas_controller().limit(limits=self.threads, user_api="blas"):
            for start in range(0, len(users), block):
                stop = min(start + block, len(users))
                scores = product(users[start:stop])
                excluded_rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
                scores[excluded_rows, cols[indptr[start] : indptr[stop]]] = NEG_INF
                scores[np.isnan(scores)] = NEG_INF
                top.positions[start:stop], top.scores[start:stop] = _reference_lists(
                    scores, top.positions.shape[1], self.item_categories, cap, pool
                )

    def _compiled_top_n(
        self, users: np.ndarray, indptr: np.ndarray, cols: np.ndarray, cap: int, pool: int, top: TopN
    ) -> None:
        """The kernel (see the module's docstring), into ``top``; exclusions as CSR ``indptr``/``cols``."""
        sgemm = self._sgemm
        assert sgemm is not None  # the caller chose the kernel
        positions, scores = top.positions, top.scores
        rows, n = positions.shape
        # the threads take the next step as they get free (a shared counter: atomic under the GIL), so a thread that
        # gets less CPU (the Parquet writer or another process beside it) does fewer steps instead of being waited for
        starts = range(0, rows, self.step_rows)
        threads = max(1, min(self.threads, len(starts)))
        next_step = itertools.count()
        rescored: list[int] = []  # per thread
        capacity = 8 * pool + 1024
        # the z of the m-th score if scores were normal: where the running mean starts
        first_z = (
            statistics.NormalDist().inv_cdf(max(1e-9, 1 - pool / self.num_items))
            if pool < self.num_items
            else 0
        )

        def score_steps(_: int) -> None:  # on this thread's own buffers and screening state
            step_rows = min(self.step_rows, rows)
            chunk = np.empty((step_rows, self.chunk_width), np.float32)
            moments = np.empty((step_rows, 1 + self.head_dim), np.float32)
            screen = _new_screen(step_rows, capacity, first_z)
            # rows to score again, batched: one BLAS call for many rows costs less
            missed: list[np.ndarray] = []
            again = 0
            for step in next_step:
                done = step >= len(starts)
                if missed and (done or sum(map(len, missed)) >= REDO_BATCH):
                    redo = np.concatenate(missed)
                    missed.clear()
                    again += len(redo)
                    self._select_whole_rows(
                        sgemm, users[redo], redo, indptr, cols, n, cap, pool, positions, scores
                    )
                if done:
                    rescored.append(again)
                    return
                start = starts[step]
                stop = min(start + self.step_rows, rows)
                step_indptr = indptr[start : stop + 1] - indptr[start]
                step_cols = cols[indptr[start] : indptr[stop]]
                _score_step(
                    sgemm,
                    users[start:stop],
                    self._items,
                    self.head_dim,
                    self.num_items,
                    step_indptr,
                    step_cols,
                    self.screen_margin,
                    screen,
                    chunk,
                    moments,
                )
                _finish_rows(
                    screen,
                    stop - start,
                    n,
                    pool,
                    self.item_categories,
                    cap,
                    self.num_items,
                    positions[start:stop],
                    scores[start:stop],
                )
                redo = np.flatnonzero(screen[-1][: stop - start])
                if len(redo):
                    missed.append(start + redo)

        with _blas_controller().limit(limits=1, user_api="blas"):
            if threads == 1:
                score_steps(0)
            else:
                with ThreadPoolExecutor(threads) as executor:
                    list(executor.map(score_steps, range(threads)))  # list(): re-raises a thread's error
        top.rescored = sum(rescored)

    def _select_whole_rows(
        self,
        sgemm: Sgemm,
        row_users: np.ndarray,
        rows: np.ndarray,
        indptr: np.ndarray,
        cols: np.ndarray,
        n: int,
        cap: int,
        pool: int,
        out_pos: np.ndarray,
        out_val: np.ndarray,
    ) -> None:
        """The rows the screening could not settle (see _finish_rows), selected over their whole score rows."""
        whole = np.empty((len(rows), self.padded_items), np.float32)
        _score_whole_rows(
            sgemm, np.ascontiguousarray(row_users), self._items, self.head_dim, self.num_items, whole
        )
        counts = indptr[rows + 1] - indptr[rows]
        row_indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=row_indptr[1:])
        row_cols = (
            np.concatenate([cols[indptr[r] : indptr[r + 1]] for r in rows]) if counts.sum() else cols[:0]
        )
        row_pos = np.empty((len(rows), n), np.int32)
        row_val = np.empty((len(rows), n), np.float32)
        _select_rows(
            whole, self.num_items, n, row_indptr, row_cols, self.item_categories, cap, pool, row_pos, row_val
        )
        out_pos[rows] = row_pos
        out_val[rows] = row_val


# A scoring thread's screening state for one step of rows, a plain tuple (numba unpacks it; a NamedTuple costs
# 5 us more per call to type): the running mean of the settled rows' z of their m-th score and of its absolute
# change [2]; per row, the screening threshold (float32), the mean score and score deviation over the catalogue,
# the candidates (entries >= the threshold, in position order: positions, scores [R, capacity]) and their count
# (-1 once the row overflows its capacity); rows left to _select_whole_rows.
Screen = tuple


def _new_screen(rows: int, capacity: int, first_z: float) -> Screen:
    return (
        np.array([first_z, 0.1]),
        np.empty(rows, np.float32),
        np.empty(rows),
        np.empty(rows),
        np.empty((rows, capacity), np.int32),
        np.empty((rows, capacity), np.float32),
        np.empty(rows, np.int64),
        np.empty(rows, np.bool_),
    )


_CONTROLLER: list[ThreadpoolController] = []
# cblas_sgemm by name, and whether its ints are 64-bit: numpy's PyPI wheels bundle scipy-openblas (ILP64); other
# builds link a plain LP64 BLAS (OpenBLAS, MKL, Accelerate)
SGEMM_SYMBOLS = (
    ("scipy_cblas_sgemm64_", True),
    ("cblas_sgemm64_", True),
    ("scipy_cblas_sgemm", False),
    ("cblas_sgemm", False),
)
Sgemm = tuple  # (address of a cblas_sgemm, whether its ints are 64-bit): an argument of the compiled kernel


def _blas_controller() -> ThreadpoolController:
    """The loaded BLAS libraries, found once (``threadpool_limits`` would scan every loaded library per call)."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def _find_sgemm(symbols: tuple[tuple[str, bool], ...]) -> Sgemm:
    """The ``cblas_sgemm`` of the BLAS numpy itself links, which the kernel calls from compiled code (one call per
    chunk, no Python in between; numba's own ``np.dot`` goes through scipy's BLAS, 15% slower here). Looked up
    through numpy's extension module, whose dependencies dlsym searches: another loaded BLAS (scipy's own, say) is
    never picked. The address is an argument, not a global, so that numba can cache the kernel on disk."""
    try:
        extension = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # numpy 1.x
        extension = importlib.import_module("numpy.core._multiarray_umath")
    numpy_itself = ctypes.CDLL(extension.__file__)
    for symbol, ilp64 in symbols:
        if hasattr(numpy_itself, symbol):
            return int(ctypes.cast(getattr(numpy_itself, symbol), ctypes.c_void_p).value or 0), ilp64
    raise RuntimeError(
        "the top-N kernel needs the BLAS numpy links to export cblas_sgemm; it has none of "
        f"{', '.join(name for name, _ in symbols)}"
    )


@functools.cache
def compiled_kernel(sgemm_symbols: tuple[tuple[str, bool], ...]) -> Sgemm | None:
    """The ``cblas_sgemm`` (first of ``sgemm_symbols`` that numpy's BLAS exports) for the compiled kernel, once the
    kernel is built and gives the reference's lists on a probe; None, logged once, where it cannot run."""
    try:
        if _NUMBA_MISSING:
            raise ImportError(_NUMBA_MISSING)
        sgemm = _find_sgemm(sgemm_symbols)
        _probe_kernel(sgemm)
    except Exception as error:  # a compile error, no symbol, a wrong list: the reference scores instead
        reason = (str(error).strip().splitlines() or [""])[0]
        log.warning(
            "top-N: the compiled kernel cannot run here, scoring by the reference (%s: %s)",
            type(error).__name__,
            reason,
        )
        log.debug("why the compiled top-N kernel cannot run", exc_info=True)
        return None
    return sgemm


def _probe_kernel(sgemm: Sgemm) -> None:
    """Builds every compiled path (numba compiles it, or loads it from its disk cache) and runs it on a small problem
    with ties, exclusions in any order, short rows and a category cap; raises unless it gives the reference's lists.
    Integer embeddings: their scores are exact in any order of summation."""
    rng = np.random.default_rng(0)
    items = rng.integers(-2, 3, (300, 3)).astype(np.float32)
    users = rng.integers(-2, 3, (9, 3)).astype(np.float32)
    # 80 exclusions among users 0-7, in no order; user 8 keeps 10 items, fewer than its list
    exclude_rows = np.r_[rng.integers(0, 8, 80), np.full(290, 8)]
    exclude_cols = np.r_[rng.integers(0, 300, 80), rng.permutation(300)[:290]]
    probe = TopNScorer(items, rng.integers(0, 4, 300), step_rows=4, threads=1, kernel=REFERENCE)
    expected = [probe.top_n(users, 20, exclude_rows, exclude_cols, category_cap=cap) for cap in (0, 3)]
    probe._sgemm = sgemm
    for margin in (SCREEN_MARGIN, -30.0):  # -30: every row's threshold too high, all rows selected whole
        probe.screen_margin = margin
        for cap, want in zip((0, 3), expected, strict=True):
            got = probe.top_n(users, 20, exclude_rows, exclude_cols, category_cap=cap)
            same = np.array_equal(got.positions, want.positions) and np.array_equal(got.scores, want.scores)
            if not same:
                raise RuntimeError(f"its lists differ from the reference's on a probe (category cap {cap})")


def _reference_lists(
    scores: np.ndarray, n: int, categories: np.ndarray, cap: int, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's list (positions int32 and scores float32 [B, n], -1 / -inf where it ends) from ``scores`` [B, N],
    excluded ones already -inf: the finite entries in a stable sort's order (score descending, equal scores by
    position), skipping those of a category already listed ``cap`` times (none skipped when ``cap`` is 0), until
    n are listed. Only each row's ``depth`` best are sorted, with any tied with the last: a prefix of that order;
    a row they leave short while it has other finite entries is listed again from all of them."""
    rows, num_items = scores.shape
    positions = np.full((rows, n), -1, np.int32)
    values = np.full((rows, n), NEG_INF, np.float32)
    finite = scores > -np.inf
    candidates = finite
    if depth < num_items:
        depth_best = -np.partition(-scores, depth - 1, axis=1)[:, depth - 1 : depth]
        candidates = finite & (scores >= depth_best)
    row, col = np.nonzero(candidates)  # row by row, positions ascending
    value = scores[row, col]
    order = np.lexsort((-value, row))  # stable: equal scores stay in position order
    row, col, value = row[order], col[order], value[order]
    if cap:
        allowed = _rank_among_equal(row * (int(categories.max()) + 1) + categories[col]) < cap
        row, col, value = row[allowed], col[allowed], value[allowed]
    rank = _rank_among_equal(row)
    listed = rank < n
    positions[row[listed], rank[listed]] = col[listed]
    values[row[listed], rank[listed]] = value[listed]
    short = (positions[:, -1] < 0) & (candidates.sum(axis=1) < finite.sum(axis=1))
    if short.any():
        positions[short], values[short] = _reference_lists(scores[short], n, categories, cap, num_items)
    return positions, values


def _rank_among_equal(keys: np.ndarray) -> np.ndarray:
    """For each entry of ``keys``, how many entries before it hold the same key."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    ranks = np.empty(len(keys), np.int64)
    ranks[order] = np.arange(len(keys)) - np.searchsorted(ordered, ordered)
    return ranks


def _exclusions_csr(
    rows_ex: np.ndarray | None, cols_ex: np.ndarray | None, rows: int, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """(row, position) pairs as CSR: ``cols[indptr[r]:indptr[r + 1]]`` are row r's excluded positions."""
    if rows_ex is None or cols_ex is None:
        return np.zeros(rows + 1, np.int64), np.zeros(0, np.int32)
    rows_ex = np.asarray(rows_ex, dtype=np.int64)
    cols_ex = np.asarray(cols_ex, dtype=np.int64)
    if rows_ex.shape != cols_ex.shape:
        raise ValueError("exclude_rows and exclude_cols must have the same length")
    keep = (cols_ex >= 0) & (cols_ex < num_items) & (rows_ex >= 0) & (rows_ex < rows)
    rows_ex, cols_ex = rows_ex[keep], cols_ex[keep]
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(np.bincount(rows_ex, minlength=rows), out=indptr[1:])
    if len(rows_ex) > 1 and not (rows_ex[1:] >= rows_ex[:-1]).all():  # callers usually pass them row by row
        cols_ex = cols_ex[np.argsort(rows_ex, kind="stable")]
    return indptr, cols_ex.astype(np.int32)


@njit(cache=True, inline="always")
def _count_at_least(values: np.ndarray, size: int, threshold: float) -> int:
    count = 0
    for i in range(size):
        count += values[i] >= threshold  # branch-free: vectorised by LLVM
    return count


@njit(cache=True, inline="always")
def _bisect(values: np.ndarray, size: int, m: int, slack: int, lo: float, hi: float) -> float:
    """Narrows ``count(>= lo) >= m > count(>= hi)`` until ``count(>= lo)`` is at most ``m + slack`` (or the
    bracket cannot shrink further: ties); returns ``lo``."""
    for _ in range(64):
        mid = lo + (hi - lo) * 0.5
        if mid <= lo or mid >= hi:
            break
        count = _count_at_least(values, size, mid)
        if count >= m:
            lo = mid
            if count <= m + slack:
                break
        else:
            hi = mid
    return lo


@njit(cache=True)
def _threshold(values: np.ndarray, size: int, m: int, slack: int) -> float:
    """A t with ``m <= count(values >= t)``, close to m (at most m + slack when ties allow), by bisection.

    -inf when fewer than m values are finite (then every finite value is a candidate).
    """
    lo = np.inf
    hi = -np.inf
    for i in range(size):
        v = values[i]
        if v > -np.inf:
            lo = min(lo, v)
            hi = max(hi, v)
    if lo == np.inf:
        return -np.inf
    total = _count_at_least(values, size, lo)
    if total < m:  # fewer than m finite values: no cut guarantees m, keep everything
        return -np.inf
    if total <= m + slack:
        return lo
    if _count_at_least(values, size, hi) >= m:  # ties at the top
        return hi
    # invariant: count(>= lo) >= m > count(>= hi)
    return _bisect(values, size, m, slack, lo, hi)


@njit(cache=True)
def _threshold_from(values: np.ndarray, size: int, m: int, slack: int, guess: float, step: float) -> float:
    """What :func:`_threshold` returns (a t with m <= count(values >= t) <= m + slack when ties allow), searched
    from ``guess``: a bracket grown by doubling ``step`` away from it, then bisection. A good guess costs 1-3
    counts instead of the ~10 of a bisection over the whole range. ``values`` finite, ``size >= m``."""
    count = _count_at_least(values, size, guess)
    if m <= count <= m + slack:
        return guess
    for _ in range(64):  # invariant sought: count(>= lo) >= m > count(>= hi)
        if count >= m:
            lo = guess
            hi = guess + step
            count = _count_at_least(values, size, hi)
            if m <= count <= m + slack:
                return hi
            if count < m:
                break
            guess = hi
        else:
            hi = guess
            lo = guess - step
            count = _count_at_least(values, size, lo)
            if m <= count <= m + slack:
                return lo
            if count >= m:
                break
            guess = lo
        step *= 2.0
    else:
        return _threshold(values, size, m, slack)
    return _bisect(values, size, m, slack, lo, hi)


@njit(cache=True, inline="always")
def _desc_key(value: float, position: int) -> np.uint64:
    """A uint64 whose ascending order is score descending, then position ascending (a stable full sort's order)."""
    bits = np.float32(value + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 becomes +0.0 (equal scores tie)
    ascending = ~bits if bits >> np.uint32(31) else bits | np.uint32(0x80000000)
    return (np.uint64(~ascending) << np.uint64(32)) | np.uint64(position)


Scratch = tuple  # maxes, lower/upper half-group maxes, hot half-groups (2), candidates (pos, val, keys),
#                 bucket counts, sorted candidates (pos, val), the last threshold in deviations above the mean


@njit(cache=True, inline="always")
def _gather_hot(
    row: np.ndarray,
    groups: int,
    first_stripe: int,
    end_stripe: int,
    hot: np.ndarray,
    n_hot: int,
    threshold: float,
    pos: np.ndarray,
    val: np.ndarray,
    size: int,
) -> int:
    """Appends the entries >= ``threshold`` of the ``hot`` groups in stripes [first, end) (branch-free: every
    entry is written, the count only advances for a candidate); returns the new count."""
    for s in range(first_stripe, end_stripe):
        base = s * groups
        for i in range(n_hot):
            j = base + hot[i]
            v = row[j]
            pos[size] = j
            val[size] = v
            size += v >= threshold
    return size


@njit(cache=True, fastmath={"reassoc", "contract"})
def _mean_spread(values: np.ndarray, size: int) -> tuple[float, float]:
    """Mean and standard deviation of ``values[:size]``, summed in any order (vectorised: a strict left-to-right
    float sum is a chain of dependent adds, ~0.5 of the 4.3 us a 20k-item row's selection took). They only place
    the first threshold guess, so rounding cannot change a result."""
    total = np.float32(0.0)
    squares = np.float32(0.0)
    for g in range(size):
        v = values[g]
        total += v
        squares += v * v
    mean = float(total / size)  # float64 in numba already: float() tells the type checker
    return mean, math.sqrt(max(float(squares / size) - mean * mean, 0.0))


@njit(cache=True)
def _order_candidates(
    pos: np.ndarray,
    val: np.ndarray,
    size: int,
    threshold: float,
    k: int,
    keys: np.ndarray,
    buckets: np.ndarray,
    sorted_pos: np.ndarray,
    sorted_val: np.ndarray,
    res_pos: np.ndarray,
    res_val: np.ndarray,
) -> None:
    """The best ``k`` of the ``size`` candidates (in position order, all >= ``threshold``) into ``res_pos[:k]``/
    ``res_val[:k]``: score descending, equal scores by position."""
    top = NEG_INF
    for i in range(size):
        top = max(top, val[i])
    span = top - threshold
    if threshold > -np.inf and size <= BUCKET_SORT_MAX and span < np.inf:
        # counting sort into buckets by score (bucket monotone in the score, so equal scores share one; stable),
        # then a stable insertion sort, which only reorders within buckets: score descending, ties by position
        last = buckets.shape[0] - 2
        scale = (last + 0.5) / span if span > 0 else 0.0
        buckets[:] = 0
        for i in range(size):
            b = last - min(last, np.int64((val[i] - threshold) * scale))
            keys[i] = b
            buckets[b + 1] += 1
        for b in range(last + 1):
            buckets[b + 1] += buckets[b]
        for i in range(size):
            b = keys[i]
            slot = buckets[b]
            buckets[b] = slot + 1
            sorted_pos[slot] = pos[i]
            sorted_val[slot] = val[i]
        for i in range(1, size):
            v = sorted_val[i]
            if sorted_val[i - 1] >= v:
                continue
            j = sorted_pos[i]
            t = i
            while t > 0 and sorted_val[t - 1] < v:
                sorted_val[t] = sorted_val[t - 1]
                sorted_pos[t] = sorted_pos[t - 1]
                t -= 1
            sorted_val[t] = v
            sorted_pos[t] = j
        for i in range(k):
            res_pos[i] = sorted_pos[i]
            res_val[i] = sorted_val[i]
        return
    for i in range(size):
        keys[i] = _desc_key(val[i], pos[i])
    order = np.argsort(keys[:size])
    for i in range(k):
        res_pos[i] = pos[order[i]]
        res_val[i] = val[order[i]]


@njit(cache=True)
def _top_into(row: np.ndarray, m: int, scratch: Scratch, res_pos: np.ndarray, res_val: np.ndarray) -> int:
    """The ``m`` best finite entries of ``row`` (length a multiple of STRIPES) into ``res_pos[:k]``/``res_val[:k]``,
    best first, equal scores by position (a stable full sort's order); returns k (< m only when the row has fewer
    finite entries). NaN scores are never selected."""
    maxes, max_lo, max_hi, hot_lo, hot_hi, pos, val, keys, buckets, sorted_pos, sorted_val, state = scratch
    groups = row.shape[0] // STRIPES
    half = STRIPES // 2
    for g in range(groups):  # selects from registers (LLVM emits vmaxps): no masked stores
        lo = NEG_INF
        for s in range(half):
            v = row[s * groups + g]
            lo = v if v > lo else lo
        hi = NEG_INF
        for s in range(half, STRIPES):
            v = row[s * groups + g]
            hi = v if v > hi else hi
        max_lo[g] = lo
        max_hi[g] = hi
        maxes[g] = lo if lo > hi else hi
    # the threshold: the previous row's, in units of this row's group maxima (mean, deviation), then corrected
    mean, spread = _mean_spread(maxes, groups)
    if groups >= m and spread > 0 and math.isfinite(mean) and math.isfinite(spread):
        threshold = _threshold_from(maxes, groups, m, SLACK, mean + state[0] * spread, 0.1 * spread)
        state[0] = (threshold - mean) / spread
    else:  # -inf groups (padding, exclusions) or too few groups: plain bisection
        threshold = _threshold(maxes, groups, m, SLACK)
    finite_cut = threshold > -np.inf
    if not finite_cut:
        threshold = float(-np.finfo(np.float32).max)  # every finite entry (not -inf, not NaN)
    # half-groups holding an entry >= threshold (branch-free appends), then their entries stripe by stripe: the
    # candidates come out in position order
    n_lo = 0
    n_hi = 0
    for g in range(groups):
        hot_lo[n_lo] = g
        n_lo += max_lo[g] >= threshold
        hot_hi[n_hi] = g
        n_hi += max_hi[g] >= threshold
    size = _gather_hot(row, groups, 0, half, hot_lo, n_lo, threshold, pos, val, 0)
    size = _gather_hot(row, groups, half, STRIPES, hot_hi, n_hi, threshold, pos, val, size)
    k = min(m, size)
    _order_candidates(
        pos,
        val,
        size,
        threshold if finite_cut else -np.inf,
        k,
        keys,
        buckets,
        sorted_pos,
        sorted_val,
        res_pos,
        res_val,
    )
    return k


@njit(cache=True)
def _fill_capped(
    pool_pos: np.ndarray,
    pool_val: np.ndarray,
    k: int,
    categories: np.ndarray,
    cap: int,
    taken: np.ndarray,
    out_pos: np.ndarray,
    out_val: np.ndarray,
) -> int:
    """The category cap: the pool's items in score order, at most ``cap`` of a category, until ``out`` is full;
    returns how many it holds."""
    n = out_pos.shape[0]
    taken[:] = 0
    filled = 0
    for t in range(k):
        c = categories[pool_pos[t]]
        if taken[c] < cap:
            taken[c] += 1
            out_pos[filled] = pool_pos[t]
            out_val[filled] = pool_val[t]
            filled += 1
            if filled == n:
                break
    return filled


@njit(nogil=True, cache=True)
def _select_rows(
    scores: np.ndarray,
    num_items: int,
    n: int,
    indptr: np.ndarray,
    cols: np.ndarray,
    categories: np.ndarray,
    cap: int,
    pool: int,
    out_pos: np.ndarray,
    out_val: np.ndarray,
) -> None:
    """Top-n of whole score rows (the rows the screening did not settle)."""
    rows, padded = scores.shape
    num_categories = categories.max() + 1 if cap > 0 else 1
    groups = padded // STRIPES
    scratch = (
        np.empty(groups, np.float32),
        np.empty(groups, np.float32),
        np.empty(groups, np.float32),
        np.empty(groups, np.int32),
        np.empty(groups, np.int32),
        np.empty(padded, np.int32),
        np.empty(padded, np.float32),
        np.empty(padded, np.uint64),
        np.empty(BUCKETS + 1, np.int64),
        np.empty(min(padded, BUCKET_SORT_MAX), np.int32),
        np.empty(min(padded, BUCKET_SORT_MAX), np.float32),
        np.full(1, 1.4),
    )
    taken = np.zeros(num_categories, np.int32)
    pool_pos = np.empty(pool if cap > 0 else 1, np.int32)
    pool_val = np.empty(pool if cap > 0 else 1, np.float32)
    for r in range(rows):
        row = scores[r]
        for j in range(num_items, padded):
            row[j] = -np.inf
        for e in range(indptr[r], indptr[r + 1]):
            row[cols[e]] = -np.inf
        if cap <= 0:
            filled = _top_into(row, n, scratch, out_pos[r], out_val[r])
        else:
            m = pool
            while True:
                if m > pool_pos.shape[0]:
                    pool_pos = np.empty(m, np.int32)
                    pool_val = np.empty(m, np.float32)
                k = _top_into(row, m, scratch, pool_pos, pool_val)
                filled = _fill_capped(pool_pos, pool_val, k, categories, cap, taken, out_pos[r], out_val[r])
                # done when the list is full, or the pool already held every remaining item
                if filled == n or k < m or m >= num_items:
                    break
                m = num_items
        for t in range(filled, n):
            out_pos[r, t] = -1
            out_val[r, t] = -np.inf


@intrinsic
def _mask_at_least(typingctx, row_t, start_t, threshold_t):  # type: ignore[no-untyped-def]
    """Bit k set where ``row[start + k] >= threshold``, k < LANES: one vector compare (LLVM gives vcmpps into a mask
    register on AVX-512, two or four compares elsewhere), which numba's loops do not produce by themselves."""
    signature = types.uint32(row_t, types.intp, types.float32)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        row, start, threshold = args
        array = context.make_array(sig.args[0])(context, builder, row)
        vector = ir.VectorType(ir.FloatType(), LANES)
        values = builder.load(builder.bitcast(builder.gep(array.data, [start]), vector.as_pointer()), align=4)
        splat = ir.Constant(vector, ir.Undefined)
        for lane in range(LANES):
            splat = builder.insert_element(splat, threshold, ir.Constant(ir.IntType(32), lane))
        at_least = builder.fcmp_ordered(">=", values, splat)  # ordered: NaN never is
        return builder.zext(builder.bitcast(at_least, ir.IntType(LANES)), ir.IntType(32))

    return signature, codegen


@intrinsic
def _sgemm(typingctx, sgemm_t, a_t, lda_t, b_t, ldb_t, c_t, ldc_t, m_t, n_t, k_t):  # type: ignore[no-untyped-def]
    """``c[:m, :n] = a[:m, :k] @ b[:k, :n]`` (float32, row-major, leading dimensions ``lda``, ``ldb``, ``ldc``) by the
    ``cblas_sgemm`` that ``sgemm`` names (see _find_sgemm), with 64- or 32-bit ints as it takes them."""
    signature = types.void(
        sgemm_t, a_t, types.intp, b_t, types.intp, c_t, types.intp, types.intp, types.intp, types.intp
    )

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        sgemm, a, lda, b, ldb, c, ldc, m, n, k = args
        address, ilp64 = builder.extract_value(sgemm, 0), builder.extract_value(sgemm, 1)
        i32, f32 = ir.IntType(32), ir.FloatType()
        floats = f32.as_pointer()

        def data(array_type, value):  # type: ignore[no-untyped-def]
            return builder.bitcast(context.make_array(array_type)(context, builder, value).data, floats)

        pointers = data(sig.args[1], a), data(sig.args[3], b), data(sig.args[5], c)
        row_major, no_trans = ir.Constant(i32, 101), ir.Constant(i32, 111)
        wide_ints = ilp64 if ilp64.type.width == 1 else builder.icmp_unsigned("!=", ilp64, ilp64.type(0))
        with builder.if_else(wide_ints) as (wide, narrow):
            for branch, integer in ((wide, ir.IntType(64)), (narrow, i32)):
                with branch:
                    cblas = ir.FunctionType(
                        ir.VoidType(),
                        [
                            i32,
                            i32,
                            i32,
                            integer,
                            integer,
                            integer,
                            f32,
                            floats,
                            integer,
                            floats,
                            integer,
                            f32,
                            floats,
                            integer,
                        ],
                    )
                    m_, n_, k_, lda_, ldb_, ldc_ = (
                        builder.trunc(v, integer) if integer.width < 64 else v
                        for v in (m, n, k, lda, ldb, ldc)
                    )
                    builder.call(
                        builder.inttoptr(address, cblas.as_pointer()),
                        [
                            row_major,
                            no_trans,
                            no_trans,
                            m_,
                            n_,
                            k_,
                            ir.Constant(f32, 1.0),
                            pointers[0],
                            lda_,
                            pointers[1],
                            ldb_,
                            ir.Constant(f32, 0.0),
                            pointers[2],
                            ldc_,
                        ],
                    )
        return context.get_dummy_value()

    return signature, codegen


@njit(cache=True, inline="always")
def _leading(array: np.ndarray) -> int:
    """A row-major float32 matrix's leading dimension for BLAS (numpy may give a one-row or empty array any row
    stride: then any value >= its width will do)."""
    return array.strides[0] // 4 if array.shape[0] > 1 else max(1, array.shape[1])


Items = tuple  # TopNScorer._items: chunks [C, d, W], [mean | covariance] [d, 1 + d], tail columns and coefficients


@njit(nogil=True, cache=True)
def _product(sgemm: Sgemm, users: np.ndarray, head_dim: int, right: np.ndarray, out: np.ndarray) -> None:
    """``out`` [B, W] = ``users[:, :head_dim] @ right`` ([head_dim, W]) by one BLAS call; ``users``: whole rows,
    [B, d] C-contiguous."""
    rows, width = out.shape
    if rows == 0:
        return
    if head_dim == 0:
        out[:] = 0.0
        return
    _sgemm(sgemm, users, _leading(users), right, _leading(right), out, _leading(out), rows, width, head_dim)  # type: ignore[call-arg]  # typingctx is numba's


@njit(nogil=True, cache=True)
def _score_chunk(
    sgemm: Sgemm, users: np.ndarray, items: Items, head_dim: int, num_items: int, number: int, out: np.ndarray
) -> None:
    """``out`` [B, W] = the scores of ``users`` (whole rows, [B, d] C-contiguous) for chunk ``number`` of the items:
    one BLAS call for the head, the indicator tail added by a gather (see indicator_tail)."""
    chunks, _, tail_cols, tail_coef = items
    rows, width = out.shape
    _product(sgemm, users, head_dim, chunks[number], out)
    if tail_cols.shape[0] == 0:
        return
    offset = number * width
    for r in range(rows):
        for j in range(max(0, min(width, num_items - offset))):
            out[r, j] += users[r, tail_cols[offset + j]] * tail_coef[offset + j]


@njit(nogil=True, cache=True)
def _score_whole_rows(
    sgemm: Sgemm, users: np.ndarray, items: Items, head_dim: int, num_items: int, out: np.ndarray
) -> None:
    """``out`` [B, padded items] = the scores of ``users`` for every chunk (the rows the screening missed)."""
    width = items[0].shape[2]
    for number in range(items[0].shape[0]):
        _score_chunk(
            sgemm, users, items, head_dim, num_items, number, out[:, number * width : (number + 1) * width]
        )


@njit(nogil=True, cache=True)
def _score_step(
    sgemm: Sgemm,
    users: np.ndarray,
    items: Items,
    head_dim: int,
    num_items: int,
    indptr: np.ndarray,
    cols: np.ndarray,
    margin: float,
    screen: Screen,
    chunk: np.ndarray,
    moments: np.ndarray,
) -> None:
    """A step of users (rows of ``users``) scored one chunk of items at a time into ``chunk``, each chunk screened
    while it is in cache: the candidates _finish_rows then orders."""
    rows = users.shape[0]
    _, item_moments, _, _ = items
    step_moments = moments[:rows]
    _product(sgemm, users, head_dim, item_moments, step_moments)
    _start_rows(users[:, :head_dim], step_moments, margin, screen)
    excluded = _sorted_per_row(indptr, cols)  # each chunk takes each row's next exclusions from there
    next_excluded = indptr[:-1].copy()
    width = chunk.shape[1]
    step_chunk = chunk[:rows]
    for number in range(items[0].shape[0]):
        _score_chunk(sgemm, users, items, head_dim, num_items, number, step_chunk)
        _screen_chunk(step_chunk, number * width, num_items, indptr, excluded, next_excluded, screen)


@njit(nogil=True, cache=True)
def _sorted_per_row(indptr: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A copy of CSR ``cols`` with each row's entries in ascending order."""
    ordered = cols.copy()
    for r in range(indptr.shape[0] - 1):
        lo, hi = indptr[r], indptr[r + 1]
        if hi - lo > 32:
            ordered[lo:hi] = np.sort(ordered[lo:hi])
            continue
        for e in range(lo + 1, hi):  # insertion sort: most rows have a few dozen
            value = ordered[e]
            t = e
            while t > lo and ordered[t - 1] > value:
                ordered[t] = ordered[t - 1]
                t -= 1
            ordered[t] = value
    return ordered


@njit(nogil=True, cache=True)
def _start_rows(users: np.ndarray, moments: np.ndarray, margin: float, screen: Screen) -> None:
    """Each row's screening threshold: its mean score + z * its score deviation, z the running mean of the settled
    rows' z less ``margin`` times its mean change. ``moments``: ``users @ [mean | Cov]``."""
    state, provisional, mean, spread, _, _, count, _ = screen
    rows, dim = users.shape
    z = state[0] - margin * state[1]
    for r in range(rows):
        variance = 0.0
        for d in range(dim):
            variance += moments[r, 1 + d] * users[r, d]
        mean[r] = moments[r, 0]
        spread[r] = math.sqrt(max(variance, 0.0))
        provisional[r] = mean[r] + z * spread[r]
        count[r] = 0


@njit(nogil=True, cache=True)
def _screen_chunk(
    chunk: np.ndarray,
    offset: int,
    num_items: int,
    indptr: np.ndarray,
    excluded: np.ndarray,
    next_excluded: np.ndarray,
    screen: Screen,
) -> None:
    """One chunk of a step's scores (items ``offset ..``), while it is in cache: excluded items and padding set to
    -inf, then the entries >= the row's screening threshold appended to its candidates, in position order.
    ``excluded``: each row's excluded positions, ascending; ``next_excluded[r]``: row r's first one not yet reached."""
    _, provisional, _, _, cand_pos, cand_val, count, _ = screen
    rows, width = chunk.shape
    capacity = cand_pos.shape[1]
    flat = chunk.reshape(
        rows * width
    )  # one view: indexing rows by offset takes no per-row view (and refcount)
    for r in range(rows):
        base = r * width
        e = next_excluded[r]
        while e < indptr[r + 1] and excluded[e] < offset + width:
            flat[base + excluded[e] - offset] = -np.inf
            e += 1
        next_excluded[r] = e
        size = count[r]
        if size < 0:
            continue
        for j in range(max(0, num_items - offset), width):
            flat[base + j] = -np.inf
        threshold = provisional[r]
        for block in range(base, base + width, LANES):
            mask: int = _mask_at_least(flat, block, threshold)  # type: ignore[call-arg]  # typingctx is numba's
            if mask:  # ~1 block in 10: a branch, each hit then costs a few cycles per candidate
                if size + LANES > capacity:
                    size = -1
                    break
                while mask:
                    j = block + trailing_zeros(mask)
                    cand_pos[r, size] = offset + j - base
                    cand_val[r, size] = flat[j]
                    size += 1
                    mask &= mask - np.uint32(1)
        count[r] = size


@njit(nogil=True, cache=True)
def _finish_rows(
    screen: Screen,
    rows: int,
    n: int,
    m: int,
    categories: np.ndarray,
    cap: int,
    num_items: int,
    out_pos: np.ndarray,
    out_val: np.ndarray,
) -> None:
    """Each screened row's top-n from its candidates, exact: when it has at least m, the row's top m are all >= the
    screening threshold, so all candidates. Rows with fewer (the threshold was too high), an overflow (far too low)
    or a category-capped list left short are marked in ``redo`` for :meth:`TopNScorer._select_whole_rows`. Each row
    also moves the running z the next step's thresholds are placed by."""
    state, provisional, mean, spread, cand_pos, cand_val, count, redo = screen
    capacity = cand_pos.shape[1]
    keys = np.empty(capacity, np.uint64)
    buckets = np.empty(BUCKETS + 1, np.int64)
    sorted_pos = np.empty(min(capacity, BUCKET_SORT_MAX), np.int32)
    sorted_val = np.empty(min(capacity, BUCKET_SORT_MAX), np.float32)
    pool_pos = np.empty(m, np.int32)
    pool_val = np.empty(m, np.float32)
    taken = np.zeros(categories.max() + 1 if cap > 0 else 1, np.int32)
    too_high = too_low = False
    for r in range(rows):
        redo[r] = True
        size = count[r]
        if size < m:
            too_low |= size < 0
            too_high |= size >= 0
            continue
        # the row's best: without a cap its list itself, with one a pool of m the cap then picks from
        ranked_pos, ranked_val, ranked = (out_pos[r], out_val[r], n) if cap <= 0 else (pool_pos, pool_val, m)
        _order_candidates(
            cand_pos[r],
            cand_val[r],
            size,
            provisional[r],
            ranked,
            keys,
            buckets,
            sorted_pos,
            sorted_val,
            ranked_pos,
            ranked_val,
        )
        cut = ranked_val[ranked - 1]
        if cap <= 0:
            redo[r] = False
        else:
            filled = _fill_capped(pool_pos, pool_val, m, categories, cap, taken, out_pos[r], out_val[r])
            if filled == n or m >= num_items:
                for t in range(filled, n):
                    out_pos[r, t] = -1
                    out_val[r, t] = -np.inf
                redo[r] = False
        z = (cut - mean[r]) / spread[r] if spread[r] > 0 else np.nan
        if math.isfinite(z):
            state[1] += SCREEN_LEARNING * (abs(z - state[0]) - state[1])
            state[0] += SCREEN_LEARNING * (z - state[0])
    if too_high != too_low:  # a step with misses of one kind: the next one's thresholds move away from them
        state[0] += (1.0 if too_low else -1.0) * max(state[1], 0.05)
    if too_high or too_low:  # and spread wider, within reason
        state[1] = min(1.5 * state[1], 1.0)
