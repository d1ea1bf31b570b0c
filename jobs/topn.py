"""Exact top-N over dot-product scores, with exclusions and an optional per-category cap, fast on the CPU.

Selection, not arithmetic, is what costs: a full ``tf.math.top_k`` or ``np.argpartition`` over every item of
every user costs 2-10x the matrix product. Here scores come from one BLAS call per cache-sized step of users, and
each row is then selected by a compiled (numba) kernel in three cheap passes, all exact:

1. Stripe maxima: the row is cut into ``STRIPES`` contiguous stripes of ``G`` items; ``maxes[g]`` is the maximum
   of items ``g, g + G, g + 2G, ...`` (vectorised as selects from registers; kept for both halves of each group).
2. A threshold ``t`` with between ``m`` and ``m + SLACK`` groups whose maximum is >= ``t``, searched by
   branch-free counting from the previous row's threshold (in deviations of the group maxima): 1-3 counts.
   Then at least ``m`` items are >= ``t``, so the row's top ``m`` are all >= ``t``: only the half-groups with a
   maximum >= ``t`` are scanned, stripe by stripe, so the ~m candidates come out in position order.
3. The candidates are bucket-sorted by score and finished by a stable insertion sort: score descending, equal
   scores by position, exactly the order of a full stable sort (``np.argsort(-row, kind="stable")``).
Exclusions (items the user already interacted with) are set to -inf in the row before selection. The category cap
(at most ``cap`` items of one category per list) is applied greedily in score order to the top ``pool`` items;
a row whose pool runs out before its list is full is redone over all items, so the result stays exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np
from threadpoolctl import ThreadpoolController

from models.allocator import retain_freed_memory
from models.dot_scores import indicator_tail

STRIPES = 16
# A step's score matrix should stay in the last-level cache (32 MiB on the reference machine, shared by 2 cores),
# so selection reads it from cache instead of RAM; measured by tests/benchmarks/bench_score.py. Each scoring
# thread owns one step buffer: its product runs on one BLAS thread, then its kernel selects (GIL released).
# Large catalogues take the minimum instead: OpenBLAS re-packs the item matrix on every call, so at 100k items
# a 20-row step cost 648 us per row against 201 us at 416 rows (one thread).
STEP_BYTES = 8 * 1024 * 1024
MIN_STEP_ROWS = 96
NEG_INF = np.float32(-np.inf)
SLACK = 16  # the threshold keeps between m and m + SLACK stripe groups (when ties allow)
BUCKETS = 256  # candidates up to BUCKET_SORT_MAX are ordered by a bucket sort on the score, more by a key sort
BUCKET_SORT_MAX = 512


@dataclasses.dataclass
class TopN:
    """Result for a block of users: item positions (-1 = no item) and scores (-inf = no item), best first."""

    positions: np.ndarray  # int32 [B, n]
    scores: np.ndarray  # float32 [B, n]

    @property
    def counts(self) -> np.ndarray:
        """How many real items each row holds (fewer than n when the user excluded most of the catalogue)."""
        return (self.positions >= 0).sum(axis=1)


class TopNScorer:
    """Holds the candidate items' embeddings (the broadcast side) and answers top-N queries for user blocks.

    ``item_embeddings``: float32 [N, d], one row per candidate item (unavailable items are left out by the caller,
    which is cheaper than masking them). ``item_categories``: int [N] >= 0, needed only for the category cap.
    """

    def __init__(self, item_embeddings: np.ndarray, item_categories: np.ndarray | None = None,
                 step_rows: int | None = None, threads: int | None = None) -> None:
        retain_freed_memory()  # every block allocates its result arrays again: reuse the heap, no fresh pages
        items = np.asarray(item_embeddings, dtype=np.float32)
        if items.ndim != 2:
            raise ValueError(f"item_embeddings must be [N, d], got shape {items.shape}")
        self.num_items, self.dim = items.shape
        # an indicator tail (a deep+wide model's one-hot item part) is added by a gather, not multiplied
        self.head_dim, self._tail_cols, self._tail_coef = indicator_tail(items)
        # pad to a multiple of STRIPES with zero vectors; their scores are overwritten with -inf per step
        self.padded_items = max(1, math.ceil(self.num_items / STRIPES)) * STRIPES
        padded = np.zeros((self.padded_items, self.head_dim), np.float32)
        padded[: self.num_items] = items[:, : self.head_dim]
        self._items_t = np.ascontiguousarray(padded.T)  # [d, N_pad]: the BLAS-friendly layout for U @ I^T
        if item_categories is None:
            self.item_categories = np.zeros(self.num_items, np.int32)
        else:
            self.item_categories = np.asarray(item_categories, dtype=np.int32)
            if self.item_categories.shape != (self.num_items,) or (self.item_categories < 0).any():
                raise ValueError("item_categories must hold one non-negative int per item")
        self.step_rows = step_rows or max(MIN_STEP_ROWS, STEP_BYTES // (4 * self.padded_items))
        # one thread per core by default; a Spark task owns one core, so jobs/score.py passes threads=1
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))

    def top_n(self, user_embeddings: np.ndarray, n: int, exclude_rows: np.ndarray | None = None,
              exclude_cols: np.ndarray | None = None, category_cap: int = 0, pool_factor: int = 4) -> TopN:
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
        positions = np.full((rows, n), -1, np.int32)
        scores = np.full((rows, n), NEG_INF, np.float32)
        if rows == 0 or self.num_items == 0:
            return TopN(positions, scores)
        indptr, cols = _exclusions_csr(exclude_rows, exclude_cols, rows, self.num_items)
        cap = max(0, int(category_cap))
        pool = min(self.num_items, max(n, pool_factor * n)) if cap else n
        # the threads take the next step as they get free (a shared counter: atomic under the GIL), so a thread that
        # gets less CPU (the Parquet writer or another process beside it) does fewer steps instead of being waited for
        starts = range(0, rows, self.step_rows)
        threads = max(1, min(self.threads, len(starts)))
        next_step = itertools.count()

        def score_steps(_: int) -> None:  # on this thread's own step buffer
            buffer = np.empty((min(self.step_rows, rows), self.padded_items), np.float32)
            for step in next_step:
                if step >= len(starts):
                    return
                start = starts[step]
                stop = min(start + self.step_rows, rows)
                step_scores = buffer[: stop - start]
                np.matmul(users[start:stop, : self.head_dim], self._items_t, out=step_scores)
                if self._tail_cols is not None:
                    step_scores[:, : self.num_items] += users[start:stop, self._tail_cols] * self._tail_coef
                step_indptr = indptr[start: stop + 1] - indptr[start]
                step_cols = cols[indptr[start]: indptr[stop]]
                _select_rows(step_scores, self.num_items, n, step_indptr, step_cols, self.item_categories, cap,
                             pool, positions[start:stop], scores[start:stop])

        with _blas_controller().limit(limits=1, user_api="blas"):
            if threads == 1:
                score_steps(0)
            else:
                with ThreadPoolExecutor(threads) as executor:
                    list(executor.map(score_steps, range(threads)))  # list(): re-raises a thread's error
        return TopN(positions, scores)


_CONTROLLER: list[ThreadpoolController] = []


def _blas_controller() -> ThreadpoolController:
    """The loaded BLAS libraries, found once (``threadpool_limits`` would scan every loaded library per call)."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def _exclusions_csr(rows_ex: np.ndarray | None, cols_ex: np.ndarray | None, rows: int,
                    num_items: int) -> tuple[np.ndarray, np.ndarray]:
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


@nb.njit(cache=True, inline="always")
def _count_at_least(values: np.ndarray, size: int, threshold: float) -> int:
    count = 0
    for i in range(size):
        count += values[i] >= threshold  # branch-free: vectorised by LLVM
    return count


@nb.njit(cache=True, inline="always")
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


@nb.njit(cache=True)
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


@nb.njit(cache=True)
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


@nb.njit(cache=True, inline="always")
def _desc_key(value: float, position: int) -> np.uint64:
    """A uint64 whose ascending order is score descending, then position ascending (a stable full sort's order)."""
    bits = np.float32(value + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 becomes +0.0 (equal scores tie)
    ascending = ~bits if bits >> np.uint32(31) else bits | np.uint32(0x80000000)
    return (np.uint64(~ascending) << np.uint64(32)) | np.uint64(position)


Scratch = tuple  # maxes, lower/upper half-group maxes, hot half-groups (2), candidates (pos, val, keys),
#                 bucket counts, sorted candidates (pos, val), the last threshold in deviations above the mean


@nb.njit(cache=True, inline="always")
def _gather_hot(row: np.ndarray, groups: int, first_stripe: int, end_stripe: int, hot: np.ndarray, n_hot: int,
                threshold: float, pos: np.ndarray, val: np.ndarray, size: int) -> int:
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


@nb.njit(cache=True, fastmath={"reassoc", "contract"})
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
    mean = total / size
    return mean, math.sqrt(max(squares / size - mean * mean, 0.0))


@nb.njit(cache=True)
def _top_into(row: np.ndarray, m: int, scratch: Scratch, res_pos: np.ndarray, res_val: np.ndarray) -> int:
    """The ``m`` best finite entries of ``row`` (length a multiple of STRIPES) into ``res_pos[:k]``/``res_val[:k]``,
    best first, equal scores by position (a stable full sort's order); returns k (< m only when the row has fewer
    finite entries). NaN scores are never selected."""
    maxes, max_lo, max_hi, hot_lo, hot_hi, pos, val, keys, buckets, sorted_pos, sorted_val, state = scratch
    groups = row.shape[0] // STRIPES
    half = STRIPES // 2
    top = NEG_INF
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
        threshold = -np.finfo(np.float32).max  # every finite entry (not -inf, not NaN)
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
    for i in range(size):
        top = max(top, val[i])
    span = top - threshold
    if finite_cut and size <= BUCKET_SORT_MAX and span < np.inf:
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
        return k
    for i in range(size):
        keys[i] = _desc_key(val[i], pos[i])
    ordered = np.sort(keys[:size])
    for i in range(k):
        j = np.int32(ordered[i] & np.uint64(0xFFFFFFFF))
        res_pos[i] = j
        res_val[i] = row[j]
    return k


@nb.njit(nogil=True, cache=True)
def _select_rows(scores: np.ndarray, num_items: int, n: int, indptr: np.ndarray, cols: np.ndarray,
                 categories: np.ndarray, cap: int, pool: int, out_pos: np.ndarray, out_val: np.ndarray) -> None:
    rows, padded = scores.shape
    num_categories = categories.max() + 1 if cap > 0 else 1
    groups = padded // STRIPES
    scratch = (np.empty(groups, np.float32), np.empty(groups, np.float32), np.empty(groups, np.float32),
               np.empty(groups, np.int32), np.empty(groups, np.int32), np.empty(padded, np.int32),
               np.empty(padded, np.float32), np.empty(padded, np.uint64), np.empty(BUCKETS + 1, np.int64),
               np.empty(min(padded, BUCKET_SORT_MAX), np.int32), np.empty(min(padded, BUCKET_SORT_MAX), np.float32),
               np.full(1, 1.4))
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
            k = _top_into(row, n, scratch, out_pos[r], out_val[r])
            for t in range(k, n):
                out_pos[r, t] = -1
                out_val[r, t] = -np.inf
            continue
        m = pool
        while True:
            if m > pool_pos.shape[0]:
                pool_pos = np.empty(m, np.int32)
                pool_val = np.empty(m, np.float32)
            k = _top_into(row, m, scratch, pool_pos, pool_val)
            taken[:] = 0
            filled = 0
            for t in range(k):
                c = categories[pool_pos[t]]
                if taken[c] < cap:
                    taken[c] += 1
                    out_pos[r, filled] = pool_pos[t]
                    out_val[r, filled] = pool_val[t]
                    filled += 1
                    if filled == n:
                        break
            # done when the list is full, or the pool already held every remaining item
            if filled == n or k < m or m >= num_items:
                for t in range(filled, n):
                    out_pos[r, t] = -1
                    out_val[r, t] = -np.inf
                break
            m = num_items
