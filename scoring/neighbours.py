"""Item-item models as a sparse neighbour matrix, and their exact top N without catalogue-length user vectors.

An item-item model (item cosine today) is a scipy CSR matrix ``S`` [n_items + 1, n_items + 1] (index 0 =
padding, row and column 0 empty): ``score(u, i) = sum over the items h the user has seen of S[h, i]``. Item
cosine keeps, for every candidate item i, its ``k`` most similar items as column i, so S has at most k non-zeros
per column and about ``n_items * k`` in all, never ``n_items ** 2``.

Export (beside the scoring contract's SavedModel models, in the same model folders)::

    <model_dir>/neighbours.npz   S as CSR (data float32, indices int32, indptr int64, shape) + popularity
    <model_dir>/metadata.json    the registry's metadata, with "export": "item_item_sparse"

``popularity`` [n_items + 1] (users per item in the training window) orders the items that fill a list the
neighbours leave short. :func:`load_model` returns a :class:`NeighbourModel` for such a folder and a
``scoring.contract.LoadedModel`` for any other, so evaluation and batch scoring need one branch, on
:func:`is_item_item`.

Scoring (:class:`NeighbourScorer`), for a block of users: the history as a binary CSR [B, n_items + 1], then
``history @ S[:, candidates]`` as a sparse product (only the pairs some history item reaches are ever formed),
then per row the top N of the positive scores that are not excluded (score descending, equal scores by candidate
position: the order of ``tf.math.top_k`` over the dense scores), filled from popularity when fewer than N.
Users are taken in blocks whose product has at most ``budget_mb`` worth of entries (bounded from the neighbours'
row lengths before it is formed), so memory stays bounded whatever the catalogue size.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import scipy.sparse as sp

from scoring.topn import NEG_INF, TopN

NEIGHBOURS = "neighbours.npz"
METADATA = "metadata.json"  # the same file name as scoring.contract.METADATA
EXPORT_KEY = "export"
ITEM_ITEM_SPARSE = "item_item_sparse"
# bytes per entry of the block product while it is selected: the product (value + column), its rows, the sort
# keys and order, the kept masks
BYTES_PER_ENTRY = 48
DEFAULT_BUDGET_MB = 256


class NeighbourModel:
    """An item-item model in memory: the neighbour matrix, popularity for the fill, and its metadata."""

    def __init__(
        self,
        neighbours: sp.spmatrix,
        popularity: np.ndarray | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        matrix = sp.csr_matrix(neighbours, dtype=np.float32)
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"the neighbour matrix must be square, got {matrix.shape}")
        matrix.sum_duplicates()
        matrix.sort_indices()
        self.neighbours = matrix
        self.n_items = matrix.shape[0]  # vocabulary size, padding included
        self.popularity = (
            np.zeros(self.n_items, np.float64)
            if popularity is None
            else np.asarray(popularity, np.float64).reshape(-1)
        )
        if len(self.popularity) != self.n_items:
            raise ValueError(f"popularity has {len(self.popularity)} entries for {self.n_items} items")
        self.metadata: dict[str, Any] = dict(metadata or {})

    def scorer(self, candidates: np.ndarray, budget_mb: float = DEFAULT_BUDGET_MB) -> NeighbourScorer:
        """A scorer over ``candidates`` (item_idx values, in the positions the results refer to)."""
        return NeighbourScorer(self, candidates, budget_mb)

    def similar_items(self) -> NeighbourModel:
        """The model whose row s is column s of this one: scored with the one-item history {s}, it gives item
        s's own nearest items (column s), which is what a similar-items list of s shows. (Row s of this model
        holds the items that have s among their nearest, a different list.)"""
        return NeighbourModel(self.neighbours.T.tocsr(), self.popularity, self.metadata)


def is_item_item(metadata: Mapping[str, Any]) -> bool:
    """Whether a model folder's metadata names the sparse item-item export."""
    return metadata.get(EXPORT_KEY) == ITEM_ITEM_SPARSE


# ---- files ----------------------------------------------------------------------------------------------
def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _write_bytes(path: str, data: bytes) -> None:
    """Written to ``path.tmp`` then moved: a reader never sees half a file."""
    fs, inner = _filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(f"{inner}.tmp") as out:
        out.write(data)
    fs.move(f"{inner}.tmp", inner)


def _read_bytes(path: str) -> bytes:
    fs, inner = _filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return bytes(stream.read())


def save(model: NeighbourModel, model_dir: str, metadata: Mapping[str, Any]) -> str:
    """Writes ``neighbours.npz`` and then ``metadata.json`` (marked ``item_item_sparse``) into ``model_dir``."""
    matrix = model.neighbours
    buffer = io.BytesIO()
    np.savez(
        buffer,
        data=matrix.data.astype(np.float32, copy=False),
        indices=matrix.indices.astype(np.int32, copy=False),
        indptr=matrix.indptr.astype(np.int64, copy=False),
        shape=np.asarray(matrix.shape, np.int64),
        popularity=model.popularity,
    )
    _write_bytes(f"{model_dir}/{NEIGHBOURS}", buffer.getvalue())
    meta = {**metadata, EXPORT_KEY: ITEM_ITEM_SPARSE, "neighbour_nnz": int(matrix.nnz)}
    _write_bytes(f"{model_dir}/{METADATA}", json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
    return model_dir


def load(model_dir: str) -> NeighbourModel:
    """The :class:`NeighbourModel` exported in ``model_dir`` by :func:`save`."""
    meta = json.loads(_read_bytes(f"{model_dir}/{METADATA}"))
    if not is_item_item(meta):
        raise ValueError(f"{model_dir} holds no {ITEM_ITEM_SPARSE} model (export {meta.get(EXPORT_KEY)!r})")
    stored = np.load(io.BytesIO(_read_bytes(f"{model_dir}/{NEIGHBOURS}")), allow_pickle=False)
    shape = tuple(int(v) for v in stored["shape"])
    matrix = sp.csr_matrix((stored["data"], stored["indices"], stored["indptr"]), shape=shape)
    model = NeighbourModel(matrix, stored["popularity"], meta)
    model.metadata["model_dir"] = model_dir
    return model


def load_model(model_dir: str) -> Any:
    """The model in ``model_dir``: a :class:`NeighbourModel` for the sparse item-item export, else the scoring
    contract's ``LoadedModel`` (TensorFlow is imported only then)."""
    try:
        meta = json.loads(_read_bytes(f"{model_dir}/{METADATA}"))
    except (OSError, ValueError):
        meta = {}
    if is_item_item(meta):
        return load(model_dir)
    from scoring.contract import LoadedModel

    return LoadedModel(model_dir)


# ---- scoring --------------------------------------------------------------------------------------------
def history_matrix(rows: np.ndarray, items: np.ndarray, n_rows: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR [n_rows, n_items] with a 1 at each (row, item) pair; padding (0), unknown items (outside
    [1, n_items)) and duplicates are dropped."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    items = np.asarray(items, np.int64).reshape(-1)
    keep = (items > 0) & (items < n_items)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], items[keep])), shape=(n_rows, n_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def padded_pairs(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of a padded id matrix [B, S] (``schemas.features.pad_ids``; 0 = padding)."""
    padded = np.asarray(padded, np.int64)
    if padded.ndim != 2:
        raise ValueError(f"expected a padded [B, S] id matrix, got shape {padded.shape}")
    rows, cols = np.nonzero(padded > 0)
    return rows, padded[rows, cols]


class NeighbourScorer:
    """Top N for blocks of users from a :class:`NeighbourModel` over a fixed candidate list.

    ``candidates``: item_idx values; results are positions in this array (-1 = no item), as
    ``scoring.topn.TopNScorer`` returns them, so ``jobs.score.ranked_rows`` takes them as they are.
    ``budget_mb``: the most memory one block's product may take (:data:`BYTES_PER_ENTRY` per entry); a single
    user whose history reaches more entries than that is still scored, alone.
    """

    def __init__(self, model: NeighbourModel, candidates: np.ndarray, budget_mb: float = DEFAULT_BUDGET_MB):
        self.model = model
        self.candidates = np.asarray(candidates, np.int64).reshape(-1)
        n_items = model.n_items
        inside = (self.candidates > 0) & (self.candidates < n_items)
        # item_idx -> candidate position (-1: not a candidate); covers every id the candidates or model know
        size = max(n_items, int(self.candidates.max(initial=0)) + 1)
        self.position = np.full(size, -1, np.int64)
        self.position[self.candidates] = np.arange(len(self.candidates))
        # S restricted to the candidate columns, in position order (a column of a non-candidate id is empty)
        columns = np.where(inside, self.candidates, 0)
        restricted = model.neighbours[:, columns].tocsr()
        if not inside.all():
            keep = inside[restricted.indices]
            restricted.data[~keep] = 0.0
            restricted.eliminate_zeros()
        restricted.sort_indices()
        self.matrix = restricted
        self.row_nnz = np.diff(restricted.indptr).astype(np.int64)
        # the fill: candidate positions by popularity descending, then position
        popularity = np.where(inside, model.popularity[columns], 0.0)
        self.fill_order = np.lexsort((np.arange(len(self.candidates)), -popularity)).astype(np.int64)
        self.budget_entries = max(1, int(budget_mb * (1 << 20)) // BYTES_PER_ENTRY)
        # the sort key of an entry: row | score | position in 64 bits, so a block holds at most max_rows rows
        self.position_bits = max(1, int(len(self.candidates)).bit_length())
        self.max_rows = 1 << max(0, 32 - self.position_bits)

    def top_n(
        self,
        n: int,
        history_rows: np.ndarray,
        history_items: np.ndarray,
        num_rows: int,
        exclude_rows: np.ndarray | None = None,
        exclude_items: np.ndarray | None = None,
        fill: bool = True,
    ) -> TopN:
        """Top ``n`` candidate positions and scores for ``num_rows`` users, best first.

        ``history_rows``/``history_items``: parallel arrays of (row, item_idx), what each user has seen (the
        model's input); ``exclude_rows``/``exclude_items``: (row, item_idx) pairs never recommended (items that
        are not candidates are ignored). ``fill``: complete short lists from popularity (score 0), never with an
        excluded item or one already listed.
        """
        n = int(n)
        if n < 1:
            raise ValueError("n must be >= 1")
        top = TopN(np.full((num_rows, n), -1, np.int32), np.full((num_rows, n), NEG_INF, np.float32))
        if num_rows == 0 or len(self.candidates) == 0:
            return top
        history = history_matrix(history_rows, history_items, num_rows, self.model.n_items)
        excluded = self._excluded(num_rows, exclude_rows, exclude_items)
        # the product's row lengths are at most the sum of their history items' neighbour-row lengths
        bound = np.minimum(history @ self.row_nnz.astype(np.float64), len(self.candidates))
        for start, stop in row_blocks(bound, self.budget_entries, self.max_rows):
            self._select(history[start:stop], excluded[start:stop], n, top, start)
        if fill:
            self._fill(top, excluded)
        return top

    def _excluded(
        self, num_rows: int, exclude_rows: np.ndarray | None, exclude_items: np.ndarray | None
    ) -> sp.csr_matrix:
        """Binary CSR [B, candidates] of the excluded (row, position) pairs."""
        if exclude_rows is None or exclude_items is None:
            return sp.csr_matrix((num_rows, len(self.candidates)), dtype=np.float32)
        rows = np.asarray(exclude_rows, np.int64).reshape(-1)
        items = np.asarray(exclude_items, np.int64).reshape(-1)
        known = (items >= 0) & (items < len(self.position))
        positions = np.full(len(items), -1, np.int64)
        positions[known] = self.position[items[known]]
        keep = positions >= 0
        matrix = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (rows[keep], positions[keep])),
            shape=(num_rows, len(self.candidates)),
        )
        matrix.sum_duplicates()
        matrix.sort_indices()
        return matrix

    def _select(
        self, history: sp.csr_matrix, excluded: sp.csr_matrix, n: int, top: TopN, offset: int
    ) -> None:
        """The block's top ``n`` into ``top`` (rows from ``offset``): one sort of one uint64 key per entry of
        the product, (row, score descending, position), exact and a total order. A positive float32's bits
        order like the float, so the key holds the score as ~bits; a row keeps its best n + (its number of
        exclusions) entries, then drops its excluded ones."""
        scores = history @ self.matrix
        rows = np.repeat(np.arange(scores.shape[0], dtype=np.uint64), np.diff(scores.indptr))
        data = np.asarray(scores.data, np.float32)
        keep = np.isfinite(data) & (data > 0)  # only positive scores rank above the fill
        shift = np.uint64(self.position_bits)
        key = rows[keep] << (shift + np.uint64(32))
        key |= (np.uint64(0xFFFFFFFF) - data[keep].view(np.uint32).astype(np.uint64)) << shift
        key |= scores.indices[keep].astype(np.uint64)
        del rows, data, keep, scores
        key.sort()
        rows = (key >> (shift + np.uint64(32))).astype(np.int64)
        limit = n + np.diff(excluded.indptr)  # per row: enough to survive its exclusions
        rank = _rank_in_row(rows, excluded.shape[0])
        key = key[rank < limit[rows]]
        rows = (key >> (shift + np.uint64(32))).astype(np.int64)
        positions = (key & np.uint64((1 << self.position_bits) - 1)).astype(np.int64)
        if excluded.nnz:
            width = np.int64(len(self.candidates))
            excluded_rows = np.repeat(np.arange(excluded.shape[0], dtype=np.int64), np.diff(excluded.indptr))
            free = ~np.isin(rows * width + positions, excluded_rows * width + excluded.indices)
            key, rows, positions = key[free], rows[free], positions[free]
        rank = _rank_in_row(rows, excluded.shape[0])
        kept = rank < n
        bits = np.uint64(0xFFFFFFFF) - ((key[kept] >> shift) & np.uint64(0xFFFFFFFF))
        target = rows[kept] + offset
        top.positions[target, rank[kept]] = positions[kept]
        top.scores[target, rank[kept]] = bits.astype(np.uint32).view(np.float32)

    def _fill(self, top: TopN, excluded: sp.csr_matrix) -> None:
        """Complete each short list from :attr:`fill_order` (score 0), skipping excluded and listed items."""
        n = top.positions.shape[1]
        counts = top.counts
        short = np.flatnonzero(counts < n)
        if len(short) == 0:
            return
        # a row skips at most its excluded and listed items: the head of the order that long is enough
        skips = np.diff(excluded.indptr)[short] + counts[short]
        head = self.fill_order[: min(len(self.fill_order), n + int(skips.max(initial=0)))]
        rank_of = np.full(len(self.candidates), -1, np.int64)
        rank_of[head] = np.arange(len(head))
        usable = np.ones((len(short), len(head)), bool)
        sub = excluded[short]
        ex_rows = np.repeat(np.arange(len(short)), np.diff(sub.indptr))
        ex_rank = rank_of[sub.indices]
        usable[ex_rows[ex_rank >= 0], ex_rank[ex_rank >= 0]] = False
        listed = top.positions[short]
        listed_rank = np.where(listed >= 0, rank_of[np.maximum(listed, 0)], -1)
        lr, lc = np.nonzero(listed_rank >= 0)
        usable[lr, listed_rank[lr, lc]] = False
        # the first (n - count) usable entries of each row, in fill order
        order_in_row = np.cumsum(usable, axis=1)
        take = usable & (order_in_row <= (n - counts[short])[:, None])
        r, c = np.nonzero(take)
        slot = counts[short][r] + order_in_row[r, c] - 1
        top.positions[short[r], slot] = head[c]
        top.scores[short[r], slot] = 0.0


def row_blocks(bound: np.ndarray, budget: int, max_rows: int | None = None) -> list[tuple[int, int]]:
    """Consecutive row ranges [start, stop) whose summed ``bound`` stays within ``budget`` (a row above it
    alone) and which hold at most ``max_rows`` rows: how blocks of rows are chosen from a memory budget."""
    out: list[tuple[int, int]] = []
    start, total = 0, 0.0
    most = max_rows or len(bound) or 1
    for row, size in enumerate(bound.tolist()):
        if row > start and (total + size > budget or row - start >= most):
            out.append((start, row))
            start, total = row, 0.0
        total += size
    if start < len(bound):
        out.append((start, len(bound)))
    return out


def _rank_in_row(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """Each entry's place within its row, for entries grouped by row in ascending order."""
    starts = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=starts[1:])
    return np.arange(len(rows), dtype=np.int64) - starts[rows]


def top_k_items(
    model: NeighbourModel,
    seen: np.ndarray,
    candidates: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    budget_mb: float = DEFAULT_BUDGET_MB,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` item_idx values and scores [B, k] from padded ``seen`` [B, S] (the history the model reads)
    and padded ``exclude`` [B, E] (None: nothing excluded); a list the candidates cannot fill ends in item 0
    with score -inf. The evaluation's entry (``models.evaluate.topk_for``)."""
    scorer = model.scorer(candidates, budget_mb)
    rows, items = padded_pairs(seen)
    ex_rows, ex_items = (None, None) if exclude is None else padded_pairs(exclude)
    top = scorer.top_n(k, rows, items, len(seen), ex_rows, ex_items)
    found = top.positions >= 0
    return np.where(found, scorer.candidates[np.maximum(top.positions, 0)], 0), top.scores
