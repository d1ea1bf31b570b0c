"""Scoring: the top-N kernel against brute force, and the Spark job on a tiny lake with a hand-made model."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import lake
from schemas.features import ITEM_FEATURE, USER_FEATURE, USER_HISTORY
from schemas.outputs import RECOMMENDATION, SIMILAR_ITEM
from schemas.settings import Settings
from scoring.topn import TopNScorer

DATE = dt.date(2026, 1, 14)


# ---- the kernel --------------------------------------------------------------------------------------------
def brute_force(
    users: np.ndarray,
    items: np.ndarray,
    n: int,
    excluded: set[tuple[int, int]],
    categories: np.ndarray | None = None,
    cap: int = 0,
) -> list[list[int]]:
    scores = users @ items.T
    out = []
    for r, row in enumerate(scores):
        picked: list[int] = []
        per_category: dict[int, int] = {}
        for j in np.argsort(-row, kind="stable"):
            if (r, int(j)) in excluded:
                continue
            if cap:
                c = int(categories[j])  # type: ignore[index]
                if per_category.get(c, 0) >= cap:
                    continue
                per_category[c] = per_category.get(c, 0) + 1
            picked.append(int(j))
            if len(picked) == n:
                break
        out.append(picked)
    return out


@pytest.mark.parametrize(
    ("num_items", "rows", "n", "cap"),
    [
        (2000, 90, 50, 0),
        (2000, 90, 50, 2),
        (37, 10, 50, 0),
        (37, 10, 50, 1),
        (333, 40, 7, 0),
        (333, 40, 7, 3),
    ],
)
def test_kernel_matches_brute_force(num_items: int, rows: int, n: int, cap: int) -> None:
    rng = np.random.default_rng(num_items + rows + n + cap)
    items = rng.standard_normal((num_items, 8)).astype(np.float32)
    users = rng.standard_normal((rows, 8)).astype(np.float32)
    categories = rng.integers(0, 6, num_items)
    ex_rows = rng.integers(0, rows, rows * 15)
    ex_cols = rng.integers(-2, num_items + 2, rows * 15)  # out-of-range positions are ignored
    excluded = {(int(r), int(c)) for r, c in zip(ex_rows, ex_cols, strict=True) if 0 <= c < num_items}
    top = TopNScorer(items, categories, step_rows=16).top_n(users, n, ex_rows, ex_cols, category_cap=cap)
    expected = brute_force(users, items, n, excluded, categories, cap)
    scores = users @ items.T
    for r in range(rows):
        got = [int(p) for p in top.positions[r] if p >= 0]
        assert len(got) == len(expected[r])
        # equal scores may come in either order; the score sequence must match exactly
        np.testing.assert_allclose(scores[r, got], scores[r, expected[r]], rtol=1e-5, atol=1e-5)
        assert not {(r, p) for p in got} & excluded
        assert len(set(got)) == len(got)
        assert np.all(np.diff(top.scores[r, : len(got)]) <= 0)
        assert np.all(top.positions[r, len(got) :] == -1)


def test_kernel_with_an_indicator_tail_gathers_it_and_matches_brute_force() -> None:
    # a deep+wide model's item side: [dense part, scaled one-hot of the item]; one item has no one-hot entry
    rng = np.random.default_rng(7)
    num_items, dense = 300, 9
    onehot = np.zeros((num_items, num_items + 1), np.float32)
    onehot[np.arange(num_items), rng.permutation(num_items) + 1] = rng.uniform(0.5, 2, num_items)
    onehot[5] = 0.0
    items = np.hstack([rng.standard_normal((num_items, dense)).astype(np.float32), onehot])
    users = rng.standard_normal((40, items.shape[1])).astype(np.float32)
    scorer = TopNScorer(items, step_rows=16)
    assert scorer.head_dim == dense  # the tail is gathered, not multiplied
    top = scorer.top_n(users, 25)
    scores = users @ items.T
    for r, expected in enumerate(brute_force(users, items, 25, set())):
        np.testing.assert_allclose(top.scores[r], scores[r, expected], rtol=1e-5, atol=1e-5)
    assert TopNScorer(np.hstack([items, np.ones((num_items, 1), np.float32)])).head_dim == items.shape[1] + 1


def test_kernel_row_that_excluded_everything_gets_nothing() -> None:
    items = np.eye(4, dtype=np.float32)
    top = TopNScorer(items).top_n(np.ones((2, 4), np.float32), 3, np.zeros(4, int), np.arange(4))
    assert top.counts.tolist() == [0, 3]
    assert np.isneginf(top.scores[0]).all()


def test_kernel_ties_still_give_distinct_items() -> None:
    items = np.ones((500, 4), np.float32)  # every score equal
    top = TopNScorer(items).top_n(np.ones((3, 4), np.float32), 100)
    for row in top.positions:
        assert len(set(row.tolist())) == 100 and (row >= 0).all()


# ---- the job on a tiny lake -----------------------------------------------------------------------------------
NUM_ITEMS = 12  # item_idx 1..12
UNAVAILABLE = {4, 9}
CATEGORIES = {i: 1 + (i % 3) for i in range(1, NUM_ITEMS + 1)}
HISTORIES = {  # user_idx -> seen (history = seen, oldest first)
    1: [1, 2],
    2: [3],
    3: [5, 6, 7, 8],
    4: [4, 10],
    5: [11],
    6: [1, 2, 3, 5, 6, 7, 8, 10],
}
SEGMENTS = {1: "a", 2: "a", 3: "b", 4: "b", 5: "b", 6: "a", 7: "a", 8: "b"}  # 7 and 8 have no history: cold
POPULARITY = {i: float(100 - i) for i in range(1, NUM_ITEMS + 1)}
DIM = 4


def user_id(idx: int) -> str:
    return f"u{idx:03d}"


def item_id(idx: int) -> str:
    return f"i{idx:03d}"


def tiny_vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    users = rng.standard_normal((len(SEGMENTS) + 1, DIM)).astype(np.float32)
    items = rng.standard_normal((NUM_ITEMS + 1, DIM)).astype(np.float32)
    users[0] = items[0] = 0.0  # index 0 = padding
    return users, items


def save_tiny_model(model_dir: str) -> None:
    import tensorflow as tf

    from scoring.contract import ScoringModule, save

    class FixedEmbeddings(ScoringModule):
        def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
            super().__init__()
            self.users = tf.Variable(users)
            self.items = tf.Variable(items)

        def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):  # type: ignore[no-untyped-def]
            return tf.gather(self.users, user_idx)

        def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):  # type: ignore[no-untyped-def]
            return tf.gather(self.items, item_idx)

    save(FixedEmbeddings(*tiny_vectors()), model_dir, {"version": "tiny-1", "name": "fixed"})


def write_table(root: str, name: str, table: pa.Table) -> None:
    folder = Path(lake.partition(root, name, DATE))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")


def build_tiny_lake(root: str) -> str:
    ids = list(range(1, NUM_ITEMS + 1))
    write_table(
        root,
        lake.ITEM_FEATURES,
        pa.Table.from_pylist(
            [
                {
                    "item_idx": i,
                    "item_id": item_id(i),
                    "category": f"c{CATEGORIES[i]}",
                    "category_idx": CATEGORIES[i],
                    "price_bucket": 1,
                    "title_tokens": [1, 2],
                    "age_days": 1.0,
                    "available": i not in UNAVAILABLE,
                    "popularity": POPULARITY[i],
                    "title": f"title {i}",
                }
                for i in ids
            ],
            schema=ITEM_FEATURE,
        ),
    )
    write_table(
        root,
        lake.USER_FEATURES,
        pa.Table.from_pylist(
            [
                {"user_idx": u, "user_id": user_id(u), "age_bucket_idx": 1, "region_idx": 1, "segment": s}
                for u, s in SEGMENTS.items()
            ],
            schema=USER_FEATURE,
        ),
    )
    write_table(
        root,
        lake.USER_HISTORIES,
        pa.Table.from_pylist(
            [
                {"user_idx": u, "user_id": user_id(u), "history": seen, "seen": seen}
                for u, seen in HISTORIES.items()
            ],
            schema=USER_HISTORY,
        ),
    )
    model_dir = lake.model_dir(root, "fixed", "tiny-1")
    save_tiny_model(model_dir)
    return model_dir


def expected_model_lists(top_n: int, cap: int = 0) -> dict[str, list[str]]:
    users, items = tiny_vectors()
    out = {}
    for u, seen in HISTORIES.items():
        scores = items @ users[u]
        picked: list[int] = []
        per_category: dict[int, int] = {}
        for i in sorted(range(1, NUM_ITEMS + 1), key=lambda i: -scores[i]):
            if i in seen or i in UNAVAILABLE:
                continue
            if cap and per_category.get(CATEGORIES[i], 0) >= cap:
                continue
            per_category[CATEGORIES[i]] = per_category.get(CATEGORIES[i], 0) + 1
            picked.append(i)
        out[user_id(u)] = [item_id(i) for i in picked[:top_n]]
    return out


def expected_cold_lists(top_n: int) -> dict[str, list[str]]:
    out = {}
    for u in (7, 8):
        segment_users = {
            i: sum(1 for v, seen in HISTORIES.items() if SEGMENTS[v] == SEGMENTS[u] and i in seen)
            for i in range(1, NUM_ITEMS + 1)
            if i not in UNAVAILABLE
        }
        order = sorted(segment_users, key=lambda i: (-segment_users[i], -POPULARITY[i], i))
        out[user_id(u)] = [item_id(i) for i in order[:top_n]]
    return out


def read(path: str) -> pa.Table:
    return pq.read_table(path)


def read_checked(path: str, schema: pa.Schema) -> pa.Table:
    """The table at ``path``, checked against its contract: some rows, the schema's types, no nulls."""
    table = read(path)
    assert table.num_rows > 0
    for field in schema:
        assert table.schema.field(field.name).type == field.type, field.name
        assert table[field.name].null_count == 0, field.name
    return table


def lists_of(table: pa.Table, key: str, value: str) -> dict[str, list[str]]:
    rows = sorted(table.select([key, "rank", value]).to_pylist(), key=lambda r: (r[key], r["rank"]))
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r[value])
    return out


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory) -> tuple[Settings, dict[str, str]]:  # type: ignore[no-untyped-def]
    from jobs import score

    root = str(tmp_path_factory.mktemp("score-lake"))
    model_dir = build_tiny_lake(root)
    settings = Settings.load(
        {"lake_root": root, "run_date": DATE, "top_n": 5, "similar_items_n": 3, "score_block_users": 4},
        env={},
    )
    return settings, score.run(settings, spark, model_dir=model_dir, run_id="test")


@pytest.mark.spark
@pytest.mark.tf
def test_recommendations_exclude_seen_and_unavailable_and_match_brute_force(scored) -> None:  # type: ignore[no-untyped-def]
    settings, paths = scored
    table = read_checked(paths[lake.RECOMMENDATIONS], RECOMMENDATION)
    assert Path(paths[lake.RECOMMENDATIONS], "_SUCCESS").exists()
    model_rows = table.filter(pa.compute.equal(table["strategy"], "model"))
    got = lists_of(model_rows, "user_id", "item_id")
    assert got == expected_model_lists(settings.top_n)
    for u, seen in HISTORIES.items():
        banned = {item_id(i) for i in set(seen) | UNAVAILABLE}
        assert not banned & set(got[user_id(u)])
    # user 6 has seen all but 2 available items: a short list, not padding
    assert len(got[user_id(6)]) == NUM_ITEMS - len(UNAVAILABLE) - len(set(HISTORIES[6]) - UNAVAILABLE)
    for rows in [model_rows.filter(pa.compute.equal(model_rows["user_id"], u)) for u in got]:
        by_rank = sorted(rows.to_pylist(), key=lambda r: r["rank"])
        assert [r["rank"] for r in by_rank] == list(range(1, len(by_rank) + 1))
        scores = [r["score"] for r in by_rank]
        assert scores == sorted(scores, reverse=True)
    assert set(table["model_version"].to_pylist()) == {"tiny-1"}
    assert set(table["generated_at"].to_pylist()) == {dt.datetime(2026, 1, 15, tzinfo=dt.UTC)}
    # the stage's run manifest: users in, staged rows out, users and items recommended
    counts = json.loads(Path(lake.run_manifest(settings.lake_root, "score", DATE)).read_text())["counts"]
    assert counts["recommendations_rows"] == table.num_rows and counts["users"] == len(
        set(table["user_id"].to_pylist())
    )
    assert (
        counts["rows_out"]
        == sum(read(paths[name]).num_rows for name in (lake.SIMILAR_ITEMS, *lake.EMBEDDINGS)) + table.num_rows
    )
    assert counts["rows_in"] >= counts["users"] > 0 and counts["items"] == len(
        set(table["item_id"].to_pylist())
    )


@pytest.mark.spark
@pytest.mark.tf
def test_users_without_history_get_popular_items_of_their_segment(scored) -> None:  # type: ignore[no-untyped-def]
    settings, paths = scored
    table = read(paths[lake.RECOMMENDATIONS])
    strategies = dict(zip(table["user_id"].to_pylist(), table["strategy"].to_pylist(), strict=True))
    assert {u for u, s in strategies.items() if s == "cold_start"} == {user_id(7), user_id(8)}
    assert {u for u, s in strategies.items() if s == "model"} == {user_id(u) for u in HISTORIES}
    cold = table.filter(pa.compute.equal(table["strategy"], "cold_start"))
    assert lists_of(cold, "user_id", "item_id") == expected_cold_lists(settings.top_n)
    for u in (user_id(7), user_id(8)):
        scores = [
            r["score"]
            for r in sorted(
                cold.filter(pa.compute.equal(cold["user_id"], u)).to_pylist(), key=lambda r: r["rank"]
            )
        ]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.spark
@pytest.mark.tf
def test_similar_items_exclude_self_and_unavailable(scored) -> None:  # type: ignore[no-untyped-def]
    settings, paths = scored
    table = read_checked(paths[lake.SIMILAR_ITEMS], SIMILAR_ITEM)
    got = lists_of(table, "item_id", "similar_item_id")
    _, items = tiny_vectors()
    unit = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    assert set(got) == {item_id(i) for i in range(1, NUM_ITEMS + 1)}  # unavailable items still get neighbours
    for i in range(1, NUM_ITEMS + 1):
        cosine = unit[1:] @ unit[i]
        order = [j for j in np.argsort(-cosine) + 1 if j != i and j not in UNAVAILABLE]
        assert got[item_id(i)] == [item_id(j) for j in order[: settings.similar_items_n]]


@pytest.mark.spark
@pytest.mark.tf
@pytest.mark.slow
def test_category_cap_and_rerun_identity(spark, scored, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from jobs import score

    settings, paths = scored
    capped = settings.replace(category_cap=1)
    model_dir = lake.model_dir(settings.lake_root, "fixed", "tiny-1")
    capped_paths = score.run(capped, spark, model_dir=model_dir, run_id="capped")
    table = read(capped_paths[lake.RECOMMENDATIONS])
    model_rows = table.filter(pa.compute.equal(table["strategy"], "model"))
    assert lists_of(model_rows, "user_id", "item_id") == expected_model_lists(settings.top_n, cap=1)
    category_of = {item_id(i): CATEGORIES[i] for i in CATEGORIES}
    for items in lists_of(table, "user_id", "item_id").values():  # cold-start lists are capped too
        cats = [category_of[i] for i in items]
        assert len(cats) == len(set(cats))
    # the same run again writes identical rows (generated_at is logical time, not the clock)
    again = score.run(settings, spark, model_dir=model_dir, run_id="again")
    for name in (lake.RECOMMENDATIONS, lake.SIMILAR_ITEMS):
        first, second = read(paths[name]), read(again[name])
        keys = [(c, "ascending") for c in first.column_names]
        assert first.sort_by(keys).equals(second.sort_by(keys))


def test_task_files_commit_keeps_only_returned_attempts_and_marks_success_last(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from jobs import publish, score

    staging = tmp_path / "staging" / "recommendations" / "dt=2026-01-14" / "run=r1"
    at = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)

    def part(path: Path, users: list[str], strategy: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table(
                {
                    "user_id": users,
                    "rank": [1] * len(users),
                    "item_id": ["i1"] * len(users),
                    "score": [0.5] * len(users),
                    "model_version": ["v1"] * len(users),
                    "strategy": [strategy] * len(users),
                    "generated_at": [at] * len(users),
                },
                schema=RECOMMENDATION,
            ),
            path,
        )

    part(staging / score.TASKS / "part-00000-7.parquet", ["ua", "ub"], "model")  # the attempt that succeeded
    part(staging / score.TASKS / "part-00000-3.parquet", ["ua"], "model")  # a failed attempt's partial file
    part(staging / score.TASKS / "part-00001-8.parquet", ["uc"], "model")
    part(staging / score.SPARK_WRITTEN / "part-00000-abc.snappy.parquet", ["ud"], "cold_start")
    (staging / score.SPARK_WRITTEN / "_SUCCESS").touch()
    # before the commit: readers skip the _ folders and publish refuses the folder (no _SUCCESS of its own)
    assert pq.read_table(staging).num_rows == 0
    with pytest.raises(publish.StagingError, match="_SUCCESS"):
        publish.verify(str(staging), RECOMMENDATION)
    returned = [
        {"file": str(staging / score.TASKS / name)}
        for name in ("part-00001-8.parquet", "part-00000-7.parquet")
    ]
    score.commit_task_files(returned, str(staging))
    assert sorted(p.name for p in staging.iterdir()) == [
        "_SUCCESS",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = pq.read_table(staging)
    assert sorted(table["user_id"].to_pylist()) == [
        "ua",
        "ub",
        "uc",
        "ud",
    ]  # the failed attempt's "ua" is gone
    assert publish.verify(str(staging), RECOMMENDATION)["rows"] == 4


@pytest.mark.spark
def test_an_item_item_model_scores_from_its_sparse_neighbours(spark, scored, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The sparse item-item export: a user's score is the sum of its seen items' neighbour rows, seen and
    unavailable items never listed, short lists filled by popularity; similar items are each item's own
    neighbours; no embeddings are staged, with the reason."""
    import json

    import scipy.sparse as sp

    from jobs import score
    from scoring import neighbours

    settings, _ = scored
    rng = np.random.default_rng(3)
    dense = rng.random((NUM_ITEMS + 1, NUM_ITEMS + 1)).astype(np.float32)
    dense[dense < 0.6] = 0.0  # sparse: many items reach only a few others
    dense[0, :] = dense[:, 0] = 0.0
    np.fill_diagonal(dense, 0.0)
    popularity = np.array([0.0, *[POPULARITY[i] for i in range(1, NUM_ITEMS + 1)]])
    model_dir = lake.model_dir(settings.lake_root, "item_cosine", "tiny-ii")
    neighbours.save(
        neighbours.NeighbourModel(sp.csr_matrix(dense), popularity), model_dir, {"version": "tiny-ii"}
    )
    paths = score.run(settings, spark, model_dir=model_dir, run_id="item-item")

    table = read(paths[lake.RECOMMENDATIONS])
    model_rows = table.filter(pa.compute.equal(table["strategy"], "model"))
    got = lists_of(model_rows, "user_id", "item_id")
    for u, seen in HISTORIES.items():
        scores = dense[seen].sum(axis=0)
        allowed = [i for i in range(1, NUM_ITEMS + 1) if i not in seen and i not in UNAVAILABLE]
        reached = sorted((i for i in allowed if scores[i] > 0), key=lambda i: (-scores[i], i))
        fill = sorted((i for i in allowed if scores[i] <= 0), key=lambda i: (-POPULARITY[i], i))
        assert got[user_id(u)] == [item_id(i) for i in (reached + fill)[: settings.top_n]], u
    similar = lists_of(read(paths[lake.SIMILAR_ITEMS]), "item_id", "similar_item_id")
    for i in range(1, NUM_ITEMS + 1):
        order = sorted(
            (j for j in range(1, NUM_ITEMS + 1) if dense[j, i] > 0 and j != i and j not in UNAVAILABLE),
            key=lambda j: (-dense[j, i], j),
        )
        assert similar.get(item_id(i), []) == [item_id(j) for j in order[: settings.similar_items_n]], i
    for name in lake.EMBEDDINGS:
        marker = json.loads((Path(paths[name]) / "_SKIPPED.json").read_text())
        assert "item-item model" in marker["reason"]
    with pytest.raises(ValueError, match="category_cap"):
        score.run(settings.replace(category_cap=1), spark, model_dir=model_dir, run_id="capped-ii")
