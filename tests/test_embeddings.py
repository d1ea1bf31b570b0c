"""Published embeddings: an exact FAISS inner-product index over ``item_embeddings``, searched with the published
user vectors and filtered by the recommendations' exclusions, gives the published recommendations; a model with
catalogue-length vectors publishes none and says why.

The tiny lake and model are tests/test_score.py's (12 items, two unavailable, six users with a history, two cold).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_publish import settings_for
from test_score import (
    CATEGORIES,
    DATE,
    HISTORIES,
    NUM_ITEMS,
    UNAVAILABLE,
    build_tiny_lake,
    item_id,
    tiny_vectors,
    user_id,
)

from schemas import lake
from schemas.outputs import EMBEDDINGS_MAX_DIMENSION, ITEM_EMBEDDING, USER_EMBEDDING
from storage import publish as published

pytestmark = [pytest.mark.spark, pytest.mark.tf]
TOP_N = 5
SCORE_TOLERANCE = 1e-5


def score_and_publish(spark: Any, root: str, model_dir: str, category_cap: int = 0) -> dict[str, Any]:
    """The nightly order on the tiny lake: score into staging, validate, publish."""
    from jobs import publish, score
    from jobs import validate as V

    settings = settings_for(root, DATE).replace(
        top_n=TOP_N, similar_items_n=3, score_block_users=4, category_cap=category_cap
    )
    paths = score.run(settings, spark, model_dir=model_dir)
    reports = {
        suite: V.validate(settings, suite, build_docs=False) for suite in ("recommendations", "embeddings")
    }
    return {"settings": settings, "paths": paths, "reports": reports, "published": publish.publish(settings)}


@pytest.fixture(scope="module", params=[0, 1], ids=["no_cap", "category_cap_1"])
def lake_published(request, spark, tmp_path_factory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    root = str(tmp_path_factory.mktemp("embeddings-lake"))
    out = score_and_publish(spark, root, build_tiny_lake(root), category_cap=request.param)
    return {**out, "root": root, "cap": request.param}


def published_lists(recs: pa.Table) -> dict[str, list[tuple[str, float]]]:
    """The model users' published (item, score) lists, by rank."""
    model = recs.filter(pc.equal(recs["strategy"], "model"))
    out: dict[str, list[tuple[str, float]]] = {}
    for row in sorted(model.to_pylist(), key=lambda r: (r["user_id"], r["rank"])):
        out.setdefault(row["user_id"], []).append((row["item_id"], row["score"]))
    return out


def faiss_lists(items: pa.Table, users: pa.Table, top_n: int, cap: int) -> dict[str, list[tuple[str, float]]]:
    """What a consumer does with the published tables: an exact inner-product index over the available items;
    per user, search with the published vector, drop ``seen_item_ids``, keep at most ``cap`` of a category."""
    import faiss

    available = items.filter(items["available"])
    dimension = available["dimension"][0].as_py()
    index = faiss.IndexFlatIP(dimension)
    index.add(np.asarray(available["vector"].to_pylist(), np.float32))
    ids = available["item_id"].to_pylist()
    categories = available["category"].to_pylist()
    queries = np.asarray(users["vector"].to_pylist(), np.float32)
    # every available item: exclusions and a cap may push the top N far down the full ranking
    scores, positions = index.search(queries, index.ntotal)
    out = {}
    for row, user in enumerate(users.to_pylist()):
        seen = set(user["seen_item_ids"])
        per_category: dict[str | None, int] = {}
        picked: list[tuple[str, float]] = []
        # equal scores: the published order breaks ties by the catalogue's item order (ids here sort alike)
        ranked = sorted(zip(positions[row], scores[row], strict=True), key=lambda p: (-p[1], ids[p[0]]))
        for position, score in ranked:
            if ids[position] in seen:
                continue
            if cap and per_category.get(categories[position], 0) >= cap:
                continue
            per_category[categories[position]] = per_category.get(categories[position], 0) + 1
            picked.append((ids[position], float(score)))
            if len(picked) == top_n:
                break
        out[user["user_id"]] = picked
    return out


def test_a_faiss_index_over_the_published_embeddings_gives_the_published_recommendations(
    lake_published: dict[str, Any],
) -> None:
    root = lake_published["root"]
    recs = published.read_latest(root, lake.RECOMMENDATIONS)
    users = published.read_latest(root, lake.USER_EMBEDDINGS)
    items = published.read_latest(root, lake.ITEM_EMBEDDINGS)
    expected = published_lists(recs)
    got = faiss_lists(items, users, TOP_N, lake_published["cap"])
    assert set(got) == set(expected) == {user_id(u) for u in HISTORIES}
    for user, wanted in expected.items():
        found = got[user]
        assert len(found) == len(wanted), user
        # the same scores rank by rank; the same items wherever a score is not tied with another
        np.testing.assert_allclose(
            [s for _, s in found], [s for _, s in wanted], rtol=0, atol=SCORE_TOLERANCE
        )
        for (faiss_item, score), (published_item, _) in zip(found, wanted, strict=True):
            tied = sum(abs(s - score) <= SCORE_TOLERANCE for _, s in found) > 1
            assert tied or faiss_item == published_item, (user, found, wanted)
    # the inner product of the published vectors is the published score, row by row
    user_vector = dict(zip(users["user_id"].to_pylist(), users["vector"].to_pylist(), strict=True))
    item_vector = dict(zip(items["item_id"].to_pylist(), items["vector"].to_pylist(), strict=True))
    for user, wanted in expected.items():
        for item, score in wanted:
            assert abs(np.dot(user_vector[user], item_vector[item]) - score) <= SCORE_TOLERANCE


def test_the_published_vectors_and_exclusions_are_the_models_and_the_histories(
    lake_published: dict[str, Any],
) -> None:
    root = lake_published["root"]
    users = published.read_latest(root, lake.USER_EMBEDDINGS)
    items = published.read_latest(root, lake.ITEM_EMBEDDINGS)
    for table, schema in ((users, USER_EMBEDDING), (items, ITEM_EMBEDDING)):
        assert table.schema.remove_metadata() == schema.remove_metadata()
        assert set(table["model_version"].to_pylist()) == {"tiny-1"}
        assert set(table["generated_at"].to_pylist()) == {dt.datetime(2026, 1, 15, tzinfo=dt.UTC)}
    user_vectors, item_vectors = tiny_vectors()
    dimension = user_vectors.shape[1]
    # users: the ones with a history (cold-start users have no model vector), ids as in recommendations
    rows = {r["user_id"]: r for r in users.to_pylist()}
    assert set(rows) == {user_id(u) for u in HISTORIES}
    for u, seen in HISTORIES.items():
        row = rows[user_id(u)]
        assert row["dimension"] == dimension
        np.testing.assert_array_equal(np.asarray(row["vector"], np.float32), user_vectors[u])
        assert row["seen_item_ids"] == [item_id(i) for i in seen if i not in UNAVAILABLE]
    # items: the whole catalogue, with its availability and categories
    rows = {r["item_id"]: r for r in items.to_pylist()}
    assert set(rows) == {item_id(i) for i in range(1, NUM_ITEMS + 1)}
    for i in range(1, NUM_ITEMS + 1):
        row = rows[item_id(i)]
        np.testing.assert_array_equal(np.asarray(row["vector"], np.float32), item_vectors[i])
        assert (row["available"], row["category"], row["dimension"]) == (
            i not in UNAVAILABLE,
            f"c{CATEGORIES[i]}",
            dimension,
        )


def test_embeddings_are_validated_and_published_like_the_recommendations(
    lake_published: dict[str, Any],
) -> None:
    root, settings = lake_published["root"], lake_published["settings"]
    report = lake_published["reports"]["embeddings"]
    assert report.success, report.summary()
    assert [t.suite for t in report.tables] == [
        "user_embeddings",
        "item_embeddings",
    ] and not report.not_staged
    for name, rows in ((lake.USER_EMBEDDINGS, len(HISTORIES)), (lake.ITEM_EMBEDDINGS, NUM_ITEMS)):
        final = Path(lake.partition(root, name, DATE))
        manifest = json.loads((final / published.MANIFEST).read_text())
        assert (manifest["rows"], manifest["model_versions"], manifest["dimension"]) == (rows, ["tiny-1"], 4)
        assert manifest["schema_version"] == 1 and manifest["table"] == name
        assert sorted(p.name for p in final.glob("_*")) == [published.MANIFEST, published.SUCCESS]
        assert Path(lake.latest_pointer(root, name)).read_text().strip() == f"dt={DATE.isoformat()}"
        assert not Path(lake_published["paths"][name]).exists()  # moved, not copied
    score_counts = json.loads(Path(lake.run_manifest(root, "score", DATE)).read_text())["counts"]
    publish_counts = json.loads(Path(lake.run_manifest(root, "publish", DATE)).read_text())["counts"]
    for counts in (score_counts, publish_counts):
        assert (counts["user_embeddings_rows"], counts["item_embeddings_rows"]) == (len(HISTORIES), NUM_ITEMS)
    assert "embeddings_not_published" not in score_counts and "not_published" not in publish_counts
    assert settings.category_cap == lake_published["cap"]


def test_a_broken_embeddings_copy_fails_validation_and_is_refused_by_publish(
    lake_published: dict[str, Any], tmp_path: Path
) -> None:
    from jobs import publish
    from jobs import validate as V

    root, settings = lake_published["root"], lake_published["settings"]
    users = published.read_latest(root, lake.USER_EMBEDDINGS)
    vectors = users["vector"].to_pylist()
    vectors[0] = [float("nan"), *vectors[0][1:]]
    vectors[1] = vectors[1][:-1]  # shorter than the dimension
    broken = users.set_column(
        users.schema.get_field_index("vector"), "vector", pa.array(vectors, users.schema.field("vector").type)
    )
    folder = tmp_path / "user_embeddings"
    folder.mkdir()
    pq.write_table(broken, folder / "part-00000.parquet")
    (folder / published.SUCCESS).touch()
    report = V.validate(settings, "user_embeddings", table_path=str(folder), build_docs=False)
    failed = {(kind, column) for _, kind, column in report.failed_expectations()}
    assert failed == {
        ("expect_column_pair_values_to_be_equal", "vector_length"),
        ("expect_column_values_to_be_in_set", "vector_finite"),
    }, report.summary()
    with pytest.raises(publish.StagingError, match="NaN.*|length"):
        publish.verify(str(folder), USER_EMBEDDING)


def save_catalogue_length_model(model_dir: str) -> int:
    """An item-to-item model (EASE or item cosine as exported) over a vocabulary just above the publish limit."""
    from models.baselines import ItemToItemModule
    from scoring.contract import save

    size = EMBEDDINGS_MAX_DIMENSION + 1
    weights = np.random.default_rng(3).standard_normal((size, size)).astype(np.float32)
    save(ItemToItemModule(weights), model_dir, {"version": "i2i-1", "name": "item_to_item"})
    return size


@pytest.mark.slow
def test_a_catalogue_length_model_publishes_recommendations_but_no_embeddings_and_says_why(
    spark: Any, tmp_path: Path
) -> None:
    from jobs import summary

    root = str(tmp_path / "lake")
    build_tiny_lake(root)
    model_dir = lake.model_dir(root, "item_to_item", "i2i-1")
    dimension = save_catalogue_length_model(model_dir)
    out = score_and_publish(spark, root, model_dir)
    # staged: the reason only, in both embeddings folders
    for name in lake.EMBEDDINGS:
        folder = Path(out["paths"][name])
        assert sorted(p.name for p in folder.iterdir()) == [published.SKIPPED]
        marker = json.loads((folder / published.SKIPPED).read_text())
        assert (marker["dimension"], marker["max_dimension"]) == (dimension, EMBEDDINGS_MAX_DIMENSION)
    reason = json.loads((Path(out["paths"][lake.USER_EMBEDDINGS]) / published.SKIPPED).read_text())["reason"]
    assert str(dimension) in reason
    # validation reports them as not staged, and passes
    report = out["reports"]["embeddings"]
    assert (
        report.success
        and report.tables == []
        and report.not_staged == dict.fromkeys(("user_embeddings", "item_embeddings"), reason)
    )
    assert "not staged" in report.summary()
    # publish: recommendations and similar items published, the embeddings recorded as not published
    assert out["published"][lake.RECOMMENDATIONS]["rows"] > 0
    for name in lake.EMBEDDINGS:
        assert out["published"][name] == {"not_published": reason}
        assert not Path(lake.table(root, name)).exists()
    run = json.loads(Path(lake.run_manifest(root, "publish", DATE)).read_text())
    assert run["not_published"] == dict.fromkeys(lake.EMBEDDINGS, reason)
    assert run["counts"]["not_published"].count(reason) == 2
    score_run = json.loads(Path(lake.run_manifest(root, "score", DATE)).read_text())
    assert (
        score_run["embeddings"]["published"] is False
        and score_run["counts"]["embeddings_not_published"] == reason
    )
    assert score_run["counts"]["user_embeddings_rows"] == score_run["counts"]["item_embeddings_rows"] == 0
    # and the run summary shows it
    assert reason in summary.to_markdown(summary.collect(out["settings"]))
