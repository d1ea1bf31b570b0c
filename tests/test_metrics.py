"""Ranking metrics against numbers computed by hand (definitions in ../shared/data/README.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import metrics

# Two users, K = 3.
# User A: top [5, 2, 7], relevant {2, 7, 9}: hits at ranks 2 and 3.
#   P = 2/3, R = 2/3, F1 = 2/3
#   DCG = 1/log2(3) + 1/log2(4) = 0.6309298 + 0.5 = 1.1309298; IDCG (min(3, 3) = 3) = 1 + 0.6309298 + 0.5
#   nDCG = 1.1309298 / 2.1309298 = 0.5307212
#   AP = (1/2 + 2/3) / 3 = 0.3888889; hit = 1; RR = 1/2
# User B: top [4, 1, 8], relevant {4}: hit at rank 1.
#   P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 0.5, nDCG = 1, AP = 1, hit = 1, RR = 1
TOPK = np.array([[5, 2, 7], [4, 1, 8]])
RELEVANT = [[2, 7, 9], [4]]


def test_two_user_example_by_hand() -> None:
    got = metrics.ranking_metrics(TOPK, RELEVANT)
    assert got["users"] == 2
    assert got["precision_at_3"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # 0.5
    assert got["recall_at_3"] == pytest.approx((2 / 3 + 1) / 2)  # 0.8333
    assert got["f1_at_3"] == pytest.approx((2 / 3 + 0.5) / 2)  # 0.5833
    assert got["ndcg_at_3"] == pytest.approx((0.5307212 + 1) / 2, abs=1e-6)  # 0.7653606
    assert got["map"] == pytest.approx((0.3888889 + 1) / 2, abs=1e-6)  # 0.6944444
    assert got["hit_rate_at_3"] == pytest.approx(1.0)
    assert got["mrr_at_3"] == pytest.approx(0.75)


def test_map_divides_by_all_test_items_not_min_n_k() -> None:
    # 20 relevant items, both top-2 slots hit: AP = (1/1 + 2/2) / 20 = 0.1 (it would be 1.0 divided by min(n, K))
    got = metrics.ranking_metrics(np.array([[1, 2]]), [list(range(1, 21))])
    assert got["map"] == pytest.approx(0.1)
    assert got["ndcg_at_2"] == pytest.approx(1.0)  # IDCG uses min(n, K) = 2 ideal slots
    assert got["recall_at_2"] == pytest.approx(0.1)
    assert got["precision_at_2"] == pytest.approx(1.0)


def test_no_hit_scores_zero_and_users_without_relevant_items_are_dropped() -> None:
    got = metrics.ranking_metrics(np.array([[1, 2], [3, 4]]), [[9], []])
    assert got["users"] == 1
    for name in ("precision_at_2", "recall_at_2", "f1_at_2", "ndcg_at_2", "map", "hit_rate_at_2", "mrr_at_2"):
        assert got[name] == 0.0


def test_later_first_hit_lowers_mrr_and_ndcg() -> None:
    early = metrics.ranking_metrics(np.array([[7, 1, 2]]), [[7]])
    late = metrics.ranking_metrics(np.array([[1, 2, 7]]), [[7]])
    assert late["mrr_at_3"] == pytest.approx(1 / 3)
    assert late["ndcg_at_3"] == pytest.approx(1 / math.log2(4))  # 0.5
    assert early["ndcg_at_3"] > late["ndcg_at_3"]
    assert early["precision_at_3"] == late["precision_at_3"]


def test_coverage_and_novelty_by_hand() -> None:
    topk = np.array([[1, 2], [3, 4]])
    # catalogue of 10 items, 4 distinct recommended
    assert metrics.coverage(np.array([[1, 2], [2, 3]]), n_items=10) == pytest.approx(0.3)
    # counts by item index (0 = padding): total 8 interactions; shares 4/8, 2/8, 1/8, 1/8 -> 1, 2, 3, 3 bits
    counts = np.array([0, 4, 2, 1, 1])
    assert metrics.novelty(topk, counts) == pytest.approx((1 + 2 + 3 + 3) / 4)
    got = metrics.ranking_metrics(topk, [[1], [4]], item_counts=counts, n_items=4)
    assert got["coverage_at_2"] == pytest.approx(1.0)
    assert got["novelty_at_2"] == pytest.approx(2.25)


def test_hits_matrix_handles_ragged_relevance_and_duplicates_across_users() -> None:
    hits = metrics.hits_matrix(np.array([[3, 1], [3, 1], [2, 2]]), [[1], [3, 5, 6], [9]])
    assert hits.tolist() == [[False, True], [True, False], [False, False]]


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        metrics.hits_matrix(np.array([[1, 2]]), [[1], [2]])


def test_per_user_values_are_those_the_means_average() -> None:
    topk = np.vstack([TOPK, [[1, 2, 3]]])
    users, per_user = metrics.per_user_ranking(topk, [*RELEVANT, []])  # the third user has nothing relevant
    assert users.tolist() == [0, 1]
    np.testing.assert_allclose(per_user["ndcg_at_3"], [0.5307212, 1.0], atol=1e-6)
    np.testing.assert_allclose(per_user["map"], [0.3888889, 1.0], atol=1e-6)
    means = metrics.ranking_metrics(topk, [*RELEVANT, []])
    for name, values in per_user.items():
        assert means[name] == pytest.approx(values.mean())


def test_paired_bootstrap_interval_of_the_mean_difference() -> None:
    rng = np.random.default_rng(7)
    baseline = rng.random(2_000)
    candidate = baseline + rng.normal(0.1, 1.0, 2_000)
    got = metrics.paired_bootstrap(candidate, baseline, confidence=0.95, resamples=2_000, seed=3)
    assert got == metrics.paired_bootstrap(candidate, baseline, confidence=0.95, resamples=2_000, seed=3)
    assert got["users"] == 2_000 and got["lead"] == pytest.approx(np.mean(candidate - baseline))
    assert got["ci_low"] < got["lead"] < got["ci_high"]
    # normal differences, sd 1: the interval is close to the textbook mean +- 1.96 sd / sqrt(n)
    half = 1.96 * np.std(candidate - baseline, ddof=1) / np.sqrt(2_000)
    assert (got["ci_high"] - got["ci_low"]) / 2 == pytest.approx(half, rel=0.1)
    other_seed = metrics.paired_bootstrap(candidate, baseline, confidence=0.95, resamples=2_000, seed=4)
    assert other_seed["ci_low"] != got["ci_low"]
    same = metrics.paired_bootstrap(baseline, baseline, resamples=200, seed=0)
    assert (same["lead"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        metrics.paired_bootstrap(candidate[:3], baseline[:4])
