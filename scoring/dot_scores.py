"""Exact user x item score products that use the structure of the contract's embeddings (numpy only, no TF).

Shared by evaluation (:class:`CatalogueProduct`) and the batch-scoring kernel (``scoring.topn``), which both need
``u . v`` for every candidate item and gain from the same two facts: a deep+wide model's item side ends in a
one-hot part (gathered, not multiplied), and the item-to-item baselines' user side is multi-hot (a sparse product).
"""

from __future__ import annotations

import numpy as np


def indicator_tail(
    items: np.ndarray, min_width: int = 32
) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """Splits ``items`` [N, d] into a dense head and an indicator tail: the longest run of last columns in which
    every column has at most one non-zero, if every row then has at most one there too. Then
    ``u . v_j = u[:head] . v_j[:head] + u[c_j] * v_j[c_j]`` exactly, with ``c_j`` the column of item j's non-zero
    (coefficient 0 when it has none). A deep+wide model's item side ends in such a one-hot part.

    Returns (head width, tail column per item, tail coefficient per item); (d, None, None) when the tail is narrower
    than ``min_width`` columns, where a gather would not beat the product."""
    num_items, dim = items.shape
    nonzero = items != 0
    single_column = nonzero.sum(axis=0) <= 1
    head = dim
    while head > 0 and single_column[head - 1]:
        head -= 1
    if dim - head < min_width or (nonzero[:, head:].sum(axis=1) > 1).any():
        return dim, None, None
    tail = nonzero[:, head:]
    has = tail.any(axis=1)
    cols = np.where(has, head + tail.argmax(axis=1), 0).astype(np.intp)
    coef = np.where(has, items[np.arange(num_items), cols], 0.0).astype(np.float32)
    return head, cols, coef


class CatalogueProduct:
    """``users @ items.T`` for a fixed candidate catalogue, exact, using the shapes the contract's models produce:
    an indicator tail on the item side is gathered instead of multiplied, and multi-hot user rows (the item-to-item
    baselines) go through a sparse product: nnz(users) x N instead of B x d x N multiply-adds."""

    SPARSE_BELOW = 0.05  # user-row density under which the sparse product wins

    def __init__(self, item_embeddings: np.ndarray) -> None:
        items = np.asarray(item_embeddings, np.float32)
        self.head, self.tail_cols, self.tail_coef = indicator_tail(items)
        self.items_t = np.ascontiguousarray(items[:, : self.head].T)  # [head, N]

    def __call__(self, user_embeddings: np.ndarray) -> np.ndarray:
        users = np.asarray(user_embeddings, np.float32)
        head = users[:, : self.head]
        if head.size and np.count_nonzero(head) < self.SPARSE_BELOW * head.size:
            import scipy.sparse as sp

            scores = np.asarray(sp.csr_matrix(head) @ self.items_t, np.float32)
        else:
            scores = head @ self.items_t
        if self.tail_cols is not None and self.tail_coef is not None:  # both or neither
            scores += users[:, self.tail_cols] * self.tail_coef
        return scores
