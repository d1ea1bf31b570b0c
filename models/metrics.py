"""Ranking metrics over top-K recommendation arrays, vectorised with numpy.

Inputs: ``topk`` int [users, K] (item indices, best first) and, per user, the set of relevant items (binary
relevance). Definitions follow ``../shared/data/README.md`` (the Microsoft Recommenders protocol) so our numbers
are comparable with its published MovieLens table:

- Precision@K = hits in top K / K
- Recall@K    = hits in top K / number of relevant items
- F1@K        = per-user harmonic mean of Precision@K and Recall@K (0 when both are 0), then averaged
- nDCG@K      = sum over hits of 1/log2(1+rank) / sum_{i=1..min(n_relevant, K)} 1/log2(1+i)
- MAP         = sum over hits of (hits up to and including that rank / rank) / n_relevant (not min(n, K))
- hit rate    = share of users with at least one hit in the top K
- MRR         = 1 / rank of the first hit in the top K (0 without a hit)
- coverage    = distinct recommended items / catalogue size
- novelty     = mean over recommended slots of -log2(popularity share), share = item's interactions / all
                interactions in training (items never seen in training count as one interaction)

Users without relevant items are dropped before averaging (they are not "present in the test set").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PER_USER_METRICS = ("precision", "recall", "f1", "ndcg", "map", "hit_rate", "mrr")


def hits_matrix(topk: np.ndarray, relevant: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    """Bool [users, K]: is ``topk[u, r]`` among user u's relevant items. One vectorised membership test."""
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[0] != len(relevant):
        raise ValueError(
            f"topk must be [users, K] with one relevance set per user; got {topk.shape} and {len(relevant)}"
        )
    lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))
    flat = (
        np.concatenate([np.asarray(r, dtype=np.int64) for r in relevant])
        if lengths.sum()
        else np.zeros(0, np.int64)
    )
    stride = int(max(topk.max(initial=0), flat.max(initial=0))) + 1
    # encode (user, item) pairs as one int64 so membership is a single np.isin over all users
    relevant_codes = np.repeat(np.arange(len(relevant), dtype=np.int64), lengths) * stride + flat
    topk_codes = np.arange(topk.shape[0], dtype=np.int64)[:, None] * stride + topk
    return np.isin(topk_codes, relevant_codes)


def per_user_metrics(hits: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric per user from the hit matrix [users, K] and the users' relevant counts (all > 0)."""
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if np.any(n_relevant <= 0):
        raise ValueError("every user needs at least one relevant item; drop the others first")
    k = hits.shape[1]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(ranks + 1.0)
    n_hits = hits.sum(axis=1).astype(np.float64)

    precision = n_hits / k
    recall = n_hits / n_relevant
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(precision), where=denominator > 0)

    dcg = (hits * discounts).sum(axis=1)
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cumulative[np.minimum(n_relevant, k).astype(np.int64)]
    ndcg = dcg / idcg

    precision_at_rank = np.cumsum(hits, axis=1) / ranks
    average_precision = (precision_at_rank * hits).sum(axis=1) / n_relevant

    has_hit = hits.any(axis=1)
    first_hit_rank = np.argmax(hits, axis=1) + 1.0
    mrr = np.where(has_hit, 1.0 / first_hit_rank, 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ndcg": ndcg,
        "map": average_precision,
        "hit_rate": has_hit.astype(np.float64),
        "mrr": mrr,
    }


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalogue (``n_items`` items) that appears in anyone's top K."""
    return float(np.unique(np.asarray(topk)).size / n_items) if n_items else 0.0


def novelty(topk: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean -log2(popularity share) of the recommended items; ``item_counts`` indexed by item index."""
    counts = np.asarray(item_counts, dtype=np.float64)
    share = np.maximum(counts, 1.0) / max(counts.sum(), 1.0)  # unseen items count once: finite novelty
    return float(np.mean(-np.log2(share[np.asarray(topk)]))) if np.size(topk) else 0.0


def per_user_ranking(
    topk: np.ndarray, relevant: Sequence[Sequence[int] | np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The rows of the users with at least one relevant item, and each per-user metric of those users, named as
    in :func:`ranking_metrics` (``ndcg_at_K``, ``map``, ...): the values its means are taken over."""
    topk = np.asarray(topk)
    k = topk.shape[1]
    keep = np.fromiter((len(r) > 0 for r in relevant), dtype=bool, count=len(relevant))
    rows = np.flatnonzero(keep)
    if not len(rows):
        return rows, {_name(m, k): np.zeros(0, np.float64) for m in PER_USER_METRICS}
    kept_relevant = [relevant[int(i)] for i in rows]
    per_user = per_user_metrics(
        hits_matrix(topk[rows], kept_relevant),
        np.fromiter((len(r) for r in kept_relevant), dtype=np.float64, count=len(rows)),
    )
    return rows, {_name(m, k): values for m, values in per_user.items()}


def _name(metric: str, k: int) -> str:
    return "map" if metric == "map" else f"{metric}_at_{k}"


def ranking_metrics(
    topk: np.ndarray,
    relevant: Sequence[Sequence[int] | np.ndarray],
    item_counts: np.ndarray | None = None,
    n_items: int | None = None,
) -> dict[str, float]:
    """All metrics averaged over users with at least one relevant item.

    Keys: ``precision_at_K``, ``recall_at_K``, ``f1_at_K``, ``ndcg_at_K``, ``map``, ``hit_rate_at_K``,
    ``mrr_at_K``, ``users``, and, when the catalogue is given, ``coverage_at_K`` and ``novelty_at_K``.
    """
    topk = np.asarray(topk)
    k = topk.shape[1]
    rows, per_user = per_user_ranking(topk, relevant)
    out: dict[str, float] = {"users": float(len(rows))}
    for name, values in per_user.items():
        out[name] = float(values.mean()) if len(rows) else 0.0
    kept_topk = topk[rows]
    if n_items is not None:
        out[f"coverage_at_{k}"] = coverage(kept_topk, n_items)
    if item_counts is not None:
        out[f"novelty_at_{k}"] = novelty(kept_topk, item_counts)
    return out


# ---- is one model's lead over another real ---------------------------------------------------------------
# Per-user nDCG differences are zero-inflated (users neither model hits), bounded and skewed. A paired
# bootstrap of their mean gives an interval in the metric's own units without a normality assumption and tests
# what the gate compares (the mean); a t-interval leans on normality that small nights lack, and Wilcoxon
# tests the median difference, which is 0 when most users have no hit under either model.
BOOTSTRAP_CELLS = 4_000_000  # resampled values drawn per chunk: bounds memory on large nights


def paired_bootstrap(
    candidate: np.ndarray,
    baseline: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2_000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``candidate - baseline`` (paired: the same users, in the same order) and its percentile bootstrap
    interval: users resampled with replacement ``resamples`` times from a generator seeded with ``seed``, so
    the same values always give the same interval. Returns ``lead``, ``ci_low``, ``ci_high``, ``users``."""
    candidate, baseline = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    if candidate.shape != baseline.shape or candidate.ndim != 1:
        raise ValueError(
            f"paired values need one value per user each; got {candidate.shape}, {baseline.shape}"
        )
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1; got {confidence}, {resamples}")
    difference = candidate - baseline
    n = len(difference)
    if n == 0:
        return {"lead": 0.0, "ci_low": float("nan"), "ci_high": float("nan"), "users": 0}
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, BOOTSTRAP_CELLS // n)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = difference[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"lead": float(difference.mean()), "ci_low": float(low), "ci_high": float(high), "users": n}
