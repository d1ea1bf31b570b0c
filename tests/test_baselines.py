"""Each baseline on a tiny fixture with a known answer, through the scoring contract and the nightly entry point."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from models import baselines
from models.evaluate import item_inputs, topk_for
from schemas import features as fs
from schemas import lake
from schemas.features import user_inputs
from schemas.settings import Settings
from storage import lake_io

pytestmark = pytest.mark.tf

RUN_DATE = "2026-01-14"
N_USERS, N_ITEMS = 40, 12


def clustered_interactions(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Users 1..40 in two taste clusters: odd users take items 1-6, even users items 7-12.

    Returns per user index (0 unused): the window items and the next-day targets (other items of the cluster).
    Users 1-6 are cold (one window item).
    """
    rng = np.random.default_rng(seed)
    window, targets = [[]], [[]]
    for user in range(1, N_USERS + 1):
        cluster = np.arange(1, 7) if user % 2 else np.arange(7, 13)
        order = rng.permutation(cluster).tolist()
        taken = 1 if user <= 6 else 4
        window.append(order[:taken])
        targets.append(order[taken : taken + 2])
    return window, targets


def write_feature_lake(
    root: str, run_date: str = RUN_DATE, seed: int = 0, unavailable: tuple[int, ...] = ()
) -> Settings:
    """The four feature partitions evaluation and the baselines read, for a tiny clustered world."""
    window, targets = clustered_interactions(seed)
    settings = Settings.load({"lake_root": root, "run_date": run_date, "window_days": 3, "eval_k": 3})

    def write(name: str, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
        lake_io.write_partition(pa.Table.from_pylist(rows, schema=schema), root, name, run_date, schema)

    when = dt.datetime(2026, 1, 13, 12, tzinfo=dt.UTC)
    pairs = [(u, i) for u in range(1, N_USERS + 1) for i in window[u]]
    write(
        lake.INTERACTIONS,
        fs.INTERACTION,
        [{"user_idx": u, "item_idx": i, "strength": 1.0, "events": 1, "last_time": when} for u, i in pairs],
    )
    items = [
        {
            "item_idx": i,
            "item_id": f"i{i}",
            "category": "a" if i <= 6 else "b",
            "category_idx": 1 if i <= 6 else 2,
            "price_bucket": 1,
            "title_tokens": [i, i + 100],
            "age_days": 1.0,
            "available": i not in unavailable,
            "popularity": 1.0,
            "title": f"item {i}",
        }
        for i in range(1, N_ITEMS + 1)
    ]
    write(lake.ITEM_FEATURES, fs.ITEM_FEATURE, items)
    users = range(1, N_USERS + 1)
    profiles = [
        {
            "user_idx": u,
            "user_id": f"u{u}",
            "age_bucket_idx": 1 + u % 2,
            "region_idx": 1,
            "segment": f"{u % 2}|north",
        }
        for u in users
    ]
    write(lake.USER_FEATURES, fs.USER_FEATURE, profiles)
    validation = [
        {"user_idx": u, "history": window[u], "seen": window[u], "targets": targets[u]} for u in users
    ]
    write(lake.VALIDATION, fs.VALIDATION_EXAMPLE, validation)
    return settings


def tiny_matrix() -> tuple[np.ndarray, np.ndarray]:
    window, _ = clustered_interactions()
    pairs = [(u, i) for u in range(1, N_USERS + 1) for i in window[u]]
    return np.array([u for u, _ in pairs]), np.array([i for _, i in pairs])


def recommend(module, seen: list[list[int]], k: int = 3, age=None, user_idx=None) -> np.ndarray:
    users = user_inputs(
        np.arange(1, len(seen) + 1) if user_idx is None else np.asarray(user_idx),
        seen,
        seen,
        5,
        age_bucket_idx=age,
        region_idx=None if age is None else np.ones(len(seen), np.int32),
    )
    top, scores = topk_for(module, users, item_inputs(np.arange(1, N_ITEMS + 1), 2), k)
    assert np.all(np.diff(scores, axis=1) <= 0), "scores must not increase with rank"
    return top


def test_popularity_ranks_by_users_and_excludes_seen() -> None:
    matrix = baselines.interaction_matrix([1, 2, 3, 1, 2, 1], [5, 5, 5, 3, 3, 8], n_users=3, n_items=N_ITEMS)
    module = baselines.fit_popularity(matrix)
    top = recommend(module, [[], [5]], k=2)
    assert top[0].tolist() == [5, 3]  # 3 users took item 5, 2 took item 3
    assert top[1].tolist() == [3, 8]  # item 5 already seen


def test_segment_popularity_serves_each_segment_its_own_favourites() -> None:
    # segment (age 1) users take items 1-2, segment (age 2) users take items 7-8; region 1 everywhere
    users, items = [1, 1, 2, 2, 3, 3, 4, 4], [1, 2, 1, 2, 7, 8, 7, 8]
    matrix = baselines.interaction_matrix(users, items, n_users=4, n_items=N_ITEMS)
    module = baselines.fit_segment_popularity(
        matrix, np.array([0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 1]), prior=1.0
    )
    # two brand-new users (not in training), one per segment, no history
    top = recommend(module, [[], []], k=2, age=np.array([1, 2]), user_idx=[99, 100])
    assert set(top[0].tolist()) == {1, 2}
    assert set(top[1].tolist()) == {7, 8}
    # an unknown segment falls back to the global shares (the prior), not to zeros
    unknown = recommend(module, [[]], k=4, age=np.array([9]), user_idx=[101])
    assert set(unknown[0].tolist()) == {1, 2, 7, 8}


def test_item_cosine_matches_hand_computed_similarity_and_prunes() -> None:
    # item 1: users {1, 2}; item 2: users {2, 3}; item 3: users {1, 2}
    matrix = baselines.interaction_matrix([1, 2, 2, 3, 1, 2], [1, 1, 2, 2, 3, 3], n_users=3, n_items=3)
    similarity = baselines.cosine_similarity(matrix, neighbours=0)
    assert sp.isspmatrix_csr(similarity) and similarity.shape == (4, 4)
    assert similarity[1, 2] == pytest.approx(1 / (np.sqrt(2) * np.sqrt(2)))  # 0.5
    assert similarity[1, 3] == pytest.approx(1.0)
    assert similarity[1, 1] == 0.0 and similarity[0].sum() == 0.0
    pruned = baselines.cosine_similarity(matrix, neighbours=1)
    assert pruned[2, 1] == 0.0 and pruned[3, 1] == pytest.approx(1.0)  # item 1 keeps only its best neighbour
    assert pruned.nnz == 3  # one neighbour per item: column i holds item i's


@pytest.mark.parametrize(("n_items", "neighbours"), [(300, 5), (1500, 40), (1500, 0)])
def test_sparse_item_cosine_equals_the_dense_computation_up_to_ties(n_items: int, neighbours: int) -> None:
    from benchmarks.bench_item_item import dense_cosine_reference, long_tail_interactions

    matrix = long_tail_interactions(n_items, 3 * n_items, items_per_user=6.0, seed=3)
    dense = dense_cosine_reference(matrix, neighbours)
    # a tiny block budget: hundreds of blocks, each item's Gram row formed in another product than its neighbours'
    sparse = baselines.cosine_similarity(matrix, neighbours, block_mb=0.02)
    assert sp.isspmatrix_csr(sparse) and sparse.dtype == np.float32
    values = sparse.toarray()
    kept = values != 0
    assert np.array_equal(values[kept], dense[kept])  # bit for bit
    if neighbours:
        assert np.diff(sparse.tocsc().indptr).max() == neighbours  # at most k per column, and k reached
        # what the dense one keeps besides: only entries tied with the column's k-th value
        rows, cols = np.nonzero((dense != 0) & ~kept)
        kth = np.sort(values, axis=0)[-neighbours]
        assert np.array_equal(dense[rows, cols], kth[cols])
        assert int(kept.sum()) > 0.9 * int((dense != 0).sum())
    else:
        assert np.array_equal(values, dense)


def test_ease_solves_its_constrained_least_squares() -> None:
    users, items = tiny_matrix()
    matrix = baselines.interaction_matrix(users, items, N_USERS, N_ITEMS)
    lam = 5.0
    weights = baselines.ease_weights(matrix, lam).astype(np.float64)
    assert np.allclose(np.diag(weights), 0.0)
    # optimality: gradient of ||X - XB||^2 + lam ||B||^2 vanishes off the diagonal (diag(B) = 0 is the constraint)
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    gradient = (gram + lam * np.eye(len(gram))) @ weights - gram
    off_diagonal = gradient[~np.eye(len(gram), dtype=bool)]
    assert np.abs(off_diagonal).max() < 1e-4


@pytest.mark.parametrize("name", ["item_cosine", "ease"])
def test_item_to_item_models_recommend_within_the_users_cluster(name: str) -> None:
    users, items = tiny_matrix()
    matrix = baselines.interaction_matrix(users, items, N_USERS, N_ITEMS)
    module = baselines.fit(name, matrix, {"item_cosine": {"neighbours": 5}, "ease": {"lam": 1.0}}[name])
    top = recommend(module, [[1, 2], [7, 8]], k=3)
    assert set(top[0].tolist()) <= {3, 4, 5, 6}
    assert set(top[1].tolist()) <= {9, 10, 11, 12}


def test_unknown_items_and_users_score_zero_not_fail() -> None:
    users, items = tiny_matrix()
    module = baselines.fit_ease(baselines.interaction_matrix(users, items, N_USERS, N_ITEMS), lam=1.0)
    embeddings = module.encode_items(
        *[np.asarray(v) for v in item_inputs(np.array([1, 500]), 2).values()]
    ).numpy()
    assert np.all(embeddings[1] == 0.0)  # item 500 is not in the model's vocabulary


def test_saved_baseline_scores_like_the_in_memory_one(tmp_path: Path) -> None:
    from scoring import contract

    users, items = tiny_matrix()
    module = baselines.fit_ease(baselines.interaction_matrix(users, items, N_USERS, N_ITEMS), lam=1.0)
    contract.save(module, str(tmp_path / "ease"), {"name": "ease"})
    loaded = contract.LoadedModel(str(tmp_path / "ease"))
    seen = [[1, 2], [7], []]
    assert np.array_equal(recommend(loaded, seen, k=4), recommend(module, seen, k=4))


@pytest.mark.spark
@pytest.mark.slow  # seconds on an idle machine, a minute when other Spark jobs share the two cores
def test_als_learns_the_two_clusters(spark: Any) -> None:
    users, items = tiny_matrix()
    matrix = baselines.interaction_matrix(users, items, N_USERS, N_ITEMS)
    module = baselines.fit_als(spark, matrix, rank=4, reg=0.01, alpha=5.0, iterations=5, blocks=1)
    odd_user, even_user = 11, 12  # warm users of cluster 1-6 and 7-12
    scores_odd = module.encode_users(
        *[
            np.asarray(v)
            for v in user_inputs(np.array([odd_user, even_user, 999]), [[], [], []], [[], [], []], 3).values()
        ]
    ).numpy()
    item_vectors = module.encode_items(
        *[np.asarray(v) for v in item_inputs(np.arange(1, N_ITEMS + 1), 2).values()]
    ).numpy()
    scores = scores_odd @ item_vectors.T
    assert scores[0, :6].mean() > scores[0, 6:].mean()
    assert scores[1, 6:].mean() > scores[1, :6].mean()
    assert np.all(scores[2] == 0.0)  # unknown user: zero factor


def test_train_baselines_registers_versioned_models_idempotently(tmp_lake: str) -> None:
    settings = write_feature_lake(tmp_lake)
    dirs = baselines.train_baselines(settings, names=("popularity", "segment_popularity", "ease"))
    assert [d.split("/")[-2] for d in dirs] == ["popularity", "segment_popularity", "ease"]
    meta = json.loads(Path(dirs[2], "metadata.json").read_text())
    assert meta["name"] == "ease" and meta["kind"] == "baseline" and meta["params"] == {"lam": 400.0}
    assert meta["data_window"] == {"start": "2026-01-11", "end": "2026-01-13", "validation": RUN_DATE}
    assert meta["code_version"] and meta["version"].startswith(RUN_DATE)
    assert meta["n_items"] == N_ITEMS
    again = baselines.train_baselines(settings, names=("ease",))
    assert again == [dirs[2]]  # same date + params: same version folder, overwritten
    changed = baselines.train_baselines(settings, names=("ease",), params={"ease": {"lam": 10.0}})
    assert changed != again


def test_neighbour_scoring_equals_the_dense_product_and_fills_from_popularity() -> None:
    from benchmarks.bench_item_item import long_tail_interactions
    from scoring import neighbours

    n_items, k = 800, 10
    matrix = long_tail_interactions(n_items, 2_000, items_per_user=5.0, seed=5)
    model = baselines.fit_item_cosine(matrix, neighbours=30)
    rng = np.random.default_rng(0)
    seen = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 8), replace=False) for _ in range(300)]
    padded = fs.pad_ids([s.tolist() for s in seen], 8)
    candidates = np.arange(2, n_items + 1, 3)  # a third of the catalogue
    top, scores = neighbours.top_k_items(model, padded, candidates, k, exclude=padded, budget_mb=0.01)
    # the reference: the former scoring, multi-hot(seen) @ dense weights over the candidates, seen items at -inf
    weights = model.neighbours.toarray()
    hot = np.zeros((len(seen), n_items + 1), np.float32)
    for row, items in enumerate(seen):
        hot[row, items] = 1.0
    dense = (hot @ weights)[:, candidates]
    for row, items in enumerate(seen):
        dense[row, np.isin(candidates, items)] = -np.inf
    for row in range(len(seen)):
        positive = scores[row] > 0
        order = np.lexsort((np.arange(len(candidates)), -dense[row]))
        expected = order[dense[row, order] > 0][:k]
        assert np.array_equal(top[row, positive], candidates[expected])
        assert np.allclose(scores[row, positive], dense[row, expected], rtol=1e-6)
        # the rest of the list: the most popular candidates not seen and not listed, score 0
        fill = top[row, ~positive]
        assert np.all(scores[row, ~positive] == 0.0)
        popularity = model.popularity[candidates]
        by_popularity = candidates[np.lexsort((np.arange(len(candidates)), -popularity))]
        free = by_popularity[~np.isin(by_popularity, np.concatenate([seen[row], top[row, positive]]))]
        assert np.array_equal(fill, free[: len(fill)])
    assert not any(np.isin(top[row], seen[row]).any() for row in range(len(seen)))
    assert (scores[:, 0] > 0).mean() > 0.5  # most users get real neighbour scores, not only the fill


def test_neighbour_scoring_keeps_unknown_items_and_tiny_catalogues_safe() -> None:
    from scoring import neighbours

    users, items = tiny_matrix()
    model = baselines.fit_item_cosine(
        baselines.interaction_matrix(users, items, N_USERS, N_ITEMS), neighbours=5
    )
    # unknown history items (500) and candidates the model never saw (13) score 0; 2 candidates for k = 3
    top, scores = neighbours.top_k_items(model, np.array([[500, 1]]), np.array([2, 13]), 3, exclude=None)
    assert top[0].tolist() == [2, 13, 0] and scores[0, 2] == -np.inf and scores[0, 0] > 0 == scores[0, 1]


@pytest.mark.parametrize("budget", [0, 1])
def test_ease_is_skipped_with_its_reason_above_the_dense_budget(budget: int) -> None:
    users, items = tiny_matrix()
    matrix = baselines.interaction_matrix(users, items, N_USERS, N_ITEMS)
    assert baselines.ease_peak_bytes(20_000) == 6 * 4 * 20_001**2  # ~9.6 GB, measured 8.3 GiB
    if budget == 0:
        with pytest.raises(baselines.SkippedModel, match=r"EASE needs about .* MiB for 12 items"):
            baselines.fit("ease", matrix, {"lam": 1.0}, dense_budget_mb=budget)
    else:  # 12 items need 4 KiB
        assert baselines.fit("ease", matrix, {"lam": 1.0}, dense_budget_mb=budget) is not None


def test_nightly_item_cosine_exports_sparse_and_a_skipped_ease_reaches_the_metrics(tmp_lake: str) -> None:
    import pyarrow.parquet as pq

    from models import evaluate
    from scoring import neighbours

    settings = write_feature_lake(tmp_lake).replace(dense_item_budget_mb=0)
    dirs = baselines.train_baselines(settings, names=("popularity", "item_cosine", "ease"))
    cosine_dir, ease_dir = dirs[1], dirs[2]
    assert sorted(p.name for p in Path(cosine_dir).iterdir()) == ["metadata.json", "neighbours.npz"]
    meta = json.loads(Path(cosine_dir, "metadata.json").read_text())
    assert meta["export"] == "item_item_sparse" and meta["kind"] == "baseline" and meta["neighbour_nnz"] > 0
    loaded = neighbours.load_model(cosine_dir)
    assert isinstance(loaded, neighbours.NeighbourModel)
    fitted = baselines.fit_item_cosine(baselines.load_training_data(settings)["interactions"])
    assert (loaded.neighbours != fitted.neighbours).nnz == 0
    assert np.array_equal(recommend(loaded, [[1, 2], [7]], k=4), recommend(fitted, [[1, 2], [7]], k=4))
    assert set(recommend(loaded, [[1, 2]], k=3)[0].tolist()) <= {3, 4, 5, 6}
    # EASE: a record with the reason instead of a model
    ease_meta = json.loads(Path(ease_dir, "metadata.json").read_text())
    assert ease_meta["status"] == "skipped" and "dense_item_budget_mb=0" in ease_meta["skip_reason"]
    assert not Path(ease_dir, "saved_model").exists()

    result = evaluate.evaluate(settings, dirs)
    assert [m["name"] for m in result["models"]] == ["popularity", "item_cosine"]
    assert [(s["name"], s["reason"]) for s in result["skipped"]] == [("ease", ease_meta["skip_reason"])]
    rows = pq.read_table(result["metrics_path"]).to_pylist()
    skipped = [r for r in rows if r["model"] == "ease"]
    assert len(skipped) == 1 and skipped[0]["role"] == "skipped" and skipped[0]["users"] == 0
    assert skipped[0]["metric"] == f"skipped: {ease_meta['skip_reason']}" and np.isnan(skipped[0]["value"])
    values = {r["model"]: r["value"] for r in rows if r["metric"] == "ndcg_at_3" and r["segment"] == "all"}
    assert values["item_cosine"] > values["popularity"]


def test_similar_items_of_an_item_are_its_own_nearest_items() -> None:
    from benchmarks.bench_item_item import long_tail_interactions

    matrix = long_tail_interactions(500, 1_500, items_per_user=5.0, seed=2)
    model = baselines.fit_item_cosine(matrix, neighbours=8)
    sources = np.array([1, 2, 50, 499])
    scorer = model.similar_items().scorer(np.arange(1, 501))
    rows = np.arange(len(sources))
    top = scorer.top_n(5, rows, sources, len(sources), rows, sources, fill=False)
    column = model.neighbours.tocsc()
    for row, source in enumerate(sources):
        found = top.positions[row][top.positions[row] >= 0] + 1  # position p is item p + 1
        nearest = column[:, source].toarray().ravel()
        expected = np.lexsort((np.arange(len(nearest)), -nearest))[: len(found)]
        assert found.tolist() == expected.tolist() and source not in found
        assert np.all(nearest[found] > 0)
