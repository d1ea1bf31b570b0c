"""The feature job on a tiny hand-made lake: exact vocabularies, histories, examples, decay and reuse.

One module-scoped lake is run three times (D1; D1 again after a window day was re-cleaned; D2) because every run
costs seconds of Spark; the tests assert on those runs' outputs. Pure transforms are tested on inline frames.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import features
from schemas import lake
from schemas.clean import CLEAN_EVENT, CLEAN_ITEM, CLEAN_USER
from schemas.raw import EVENT_STRENGTH
from schemas.settings import Settings
from schemas.spark import to_spark
from storage.spark import check_schema, in_parallel, write_partition

pytestmark = pytest.mark.spark

UTC = dt.UTC
D1 = dt.date(2026, 1, 4)  # window: 01, 02, 03
D2 = dt.date(2026, 1, 5)  # window: 02, 03, 04
HALF_LIFE = 2.0


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 1, day, hour, minute, tzinfo=UTC)


# (day, hour, minute, user, event_type, item)
EVENTS = [
    (1, 10, 0, "u1", "view", "a"),
    (1, 10, 5, "u1", "cart", "a"),
    (1, 11, 0, "u1", "view", "b"),
    (2, 9, 0, "u1", "click", "c"),
    (2, 10, 0, "u1", "view", "a"),
    (3, 9, 0, "u1", "purchase", "d"),
    (4, 9, 0, "u1", "view", "a"),
    (4, 10, 0, "u1", "view", "e"),
    (1, 12, 0, "u2", "view", "a"),
    (3, 12, 0, "u2", "view", "b"),
    (4, 12, 0, "u2", "view", "b"),
    (4, 8, 0, "u3", "view", "f"),
    (2, 8, 0, "u4", "view", "c"),
    (3, 8, 0, "u4", "view", "c"),
    (5, 9, 0, "u1", "view", "g"),
    (5, 9, 30, "u5", "view", "a"),
]
# item -> (category, price, title, publish day, available)
CATALOGUE = {
    "a": ("shoes", 10.0, "Red Running Shoes", 3, True),
    "b": ("shoes", 20.0, "red  SHOES!", 1, True),
    "c": ("books", 30.0, None, 1, True),
    "d": ("books", 40.0, "A book", 1, True),
    "e": ("toys", None, "Toy", 1, True),
    "f": (None, 50.0, "Mystery", 1, True),
    "h": ("toys", 60.0, "Never clicked", 1, False),
}
CATALOGUE_D2 = {k: v for k, v in CATALOGUE.items() if k != "f"} | {"g": ("art", 70.0, "Painting", 5, True)}
PROFILES = {"u1": ("25-34", "north"), "u2": (None, "south"), "u3": (None, None)}
PROFILES_D2 = PROFILES | {"u5": ("18-24", "east")}


def write_days(
    spark: Any, root: str, name: str, schema: pa.Schema, rows_by_day: dict[dt.date, list[tuple]]
) -> None:
    """Several dt= partitions of a clean table in one write (same layout as storage.spark.write_partition)."""
    rows = [(*row, day) for day, day_rows in rows_by_day.items() for row in day_rows]
    df = spark.createDataFrame(rows, to_spark(schema).add("dt", "date"))
    check_schema(df, schema, name)
    df.write.mode("overwrite").partitionBy("dt").parquet(lake.table(root, name))


def clean_events(days: list[int]) -> dict[dt.date, list[tuple]]:
    return {
        dt.date(2026, 1, day): [
            (f"e{i}", at(d, h, m), u, f"s-{u}-{d}", t, item, None)
            for i, (d, h, m, u, t, item) in enumerate(EVENTS)
            if d == day
        ]
        for day in days
    }


def catalogue_rows(catalogue: dict[str, tuple[Any, ...]]) -> list[tuple]:
    return [
        (item, cat, price, title, at(pub, 0), available, None)
        for item, (cat, price, title, pub, available) in catalogue.items()
    ]


def profile_rows(profiles: dict[str, tuple[Any, Any]]) -> list[tuple]:
    return [(user, age, region) for user, (age, region) in profiles.items()]


def settings_for(root: str, run_date: dt.date, **extra: Any) -> Settings:
    return Settings.load(
        {
            "lake_root": root,
            "run_date": run_date,
            "window_days": 3,
            "history_length": 2,
            "decay_half_life_days": HALF_LIFE,
            "price_buckets": 2,
            **extra,
        },
        env={},
    )


def snapshot(spark: Any, root: str, run_date: dt.date) -> dict[str, list[tuple[Any, ...]]]:
    """Every output table of a run as sorted plain tuples (what a consumer reads back)."""
    out = {}
    for name in features.OUTPUT_SCHEMAS:
        df = spark.read.parquet(lake.partition(root, name, run_date))
        out[name] = sorted((tuple(row) for row in df.collect()), key=repr)
    return out


def daily_mtimes(root: str) -> dict[str, float]:
    base = Path(lake.table(root, lake.DAILY_INTERACTIONS))
    return {p.name: max(f.stat().st_mtime_ns for f in p.glob("*.parquet")) for p in sorted(base.glob("dt=*"))}


@pytest.fixture(scope="module")
def runs(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = str(tmp_path_factory.mktemp("features") / "lake")
    write_days(spark, root, lake.CLEAN_EVENTS, CLEAN_EVENT, clean_events([1, 2, 3, 4, 5]))
    write_days(
        spark,
        root,
        lake.CLEAN_ITEMS,
        CLEAN_ITEM,
        {D1: catalogue_rows(CATALOGUE), D2: catalogue_rows(CATALOGUE_D2)},
    )
    write_days(
        spark, root, lake.CLEAN_USERS, CLEAN_USER, {D1: profile_rows(PROFILES), D2: profile_rows(PROFILES_D2)}
    )
    result: dict[str, Any] = {"root": root}
    result["d1_summary"] = features.run(spark, settings_for(root, D1))
    result["d1"] = snapshot(spark, root, D1)
    result["mtimes_after_d1"] = daily_mtimes(root)
    # day 02 is cleaned again (same content, newer files): its daily aggregate is stale now, 01 and 03 are not
    write_partition(
        spark.createDataFrame(clean_events([2])[dt.date(2026, 1, 2)], to_spark(CLEAN_EVENT)),
        root,
        lake.CLEAN_EVENTS,
        dt.date(2026, 1, 2),
        CLEAN_EVENT,
    )
    result["d1_again_summary"] = features.run(spark, settings_for(root, D1))
    result["d1_again"] = snapshot(spark, root, D1)
    result["mtimes_after_d1_again"] = daily_mtimes(root)
    result["d2_summary"] = features.run(spark, settings_for(root, D2))
    result["d2"] = snapshot(spark, root, D2)
    yield result


def rows_by_key(rows: list[tuple[Any, ...]], key: int = 0) -> dict[Any, tuple[Any, ...]]:
    return {row[key]: row for row in rows}


# ---- vocabularies --------------------------------------------------------------------------------------
def test_vocab_indices_ordered_by_first_seen_then_id(runs: dict[str, Any]) -> None:
    users = {row[0]: (row[1], row[2]) for row in runs["d1"][lake.VOCAB_USERS]}
    assert users == {
        "u1": (1, dt.date(2026, 1, 1)),
        "u2": (2, dt.date(2026, 1, 1)),
        "u4": (3, dt.date(2026, 1, 2)),
        "u3": (4, D1),
    }
    items = {row[0]: row[1] for row in runs["d1"][lake.VOCAB_ITEMS]}
    # h is only in the catalogue: it still gets an index, so a new item can be scored before its first click
    assert items == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "h": 7}


def test_vocab_is_stable_and_extended_across_runs(runs: dict[str, Any]) -> None:
    d1_items = {row[0]: row[1] for row in runs["d1"][lake.VOCAB_ITEMS]}
    d2_items = {row[0]: row[1] for row in runs["d2"][lake.VOCAB_ITEMS]}
    assert {k: d2_items[k] for k in d1_items} == d1_items  # nothing renumbered
    assert d2_items["g"] == max(d1_items.values()) + 1  # the new item gets the next index
    assert "f" in d2_items  # an item gone from the catalogue keeps its index
    d1_users = {row[0]: row[1] for row in runs["d1"][lake.VOCAB_USERS]}
    d2_users = {row[0]: row[1] for row in runs["d2"][lake.VOCAB_USERS]}
    assert {k: d2_users[k] for k in d1_users} == d1_users
    assert d2_users["u5"] == 5
    assert sorted(d2_items.values()) == list(range(1, len(d2_items) + 1))


# ---- strength and decay --------------------------------------------------------------------------------
def test_daily_strength_follows_event_type_order(spark: Any) -> None:
    rows = [
        (f"x{i}", at(1, 10, i), "u", None, t, f"item-{t}", None)
        for i, t in enumerate(["view", "click", "cart", "purchase"])
    ]
    rows.append(("x9", at(1, 11), "u", None, "view", "item-cart", None))
    events = spark.createDataFrame(rows, to_spark(CLEAN_EVENT)).withColumn("dt", features.F.lit(D1))
    daily = {r["item_id"]: r for r in features.daily_interactions(events).collect()}
    strength = {k.removeprefix("item-"): v["strength"] for k, v in daily.items()}
    assert strength["purchase"] > strength["cart"] > strength["click"] > strength["view"]
    assert strength["cart"] == EVENT_STRENGTH["cart"] + EVENT_STRENGTH["view"]
    assert daily["item-cart"]["events"] == 2
    assert daily["item-cart"]["first_time"] == at(1, 10, 2).replace(tzinfo=None)
    assert daily["item-cart"]["last_time"] == at(1, 11).replace(tzinfo=None)


def test_interaction_strength_decays_to_the_run_date(runs: dict[str, Any]) -> None:
    # u2 viewed a at 01 12:00 (2.5 days before D1 00:00) and b at 03 12:00 (0.5 days before)
    strength = {(r[0], r[1]): r[2] for r in runs["d1"][lake.INTERACTIONS]}
    assert strength[(2, 1)] == pytest.approx(0.5 ** (2.5 / HALF_LIFE))
    assert strength[(2, 2)] == pytest.approx(0.5 ** (0.5 / HALF_LIFE))
    assert strength[(2, 2)] / strength[(2, 1)] == pytest.approx(2.0)  # two days apart = one half life
    # u1's a: view+cart on 01 (5, decayed from 10:05) and a view on 02 (1, decayed from 10:00); D1 itself excluded
    expected = 5 * 0.5 ** ((3 - 10 / 24 - 5 / 1440) / HALF_LIFE) + 0.5 ** ((2 - 10 / 24) / HALF_LIFE)
    assert strength[(1, 1)] == pytest.approx(expected)
    events = {(r[0], r[1]): r[3] for r in runs["d1"][lake.INTERACTIONS]}
    assert events[(1, 1)] == 3


# ---- histories and examples ----------------------------------------------------------------------------
def test_train_histories_are_previous_distinct_items_in_order(runs: dict[str, Any]) -> None:
    # ids: a=1 b=2 c=3 d=4; u1 sequence before D1: a, b | c, a(again) | d ; history_length 2
    examples = {(r[0], r[2]): (r[1], r[3], r[4]) for r in runs["d1"][lake.TRAIN_EXAMPLES]}
    u1 = {item: value[0] for (user, item), value in examples.items() if user == 1}
    assert u1 == {1: [], 2: [1], 3: [1, 2], 4: [3, 1]}  # a's repeat refreshed it; no target, no future item
    assert {item: value[0] for (user, item), value in examples.items() if user == 2} == {1: [], 2: [1]}
    assert {item: value[0] for (user, item), value in examples.items() if user == 3} == {3: []}  # u4: c once
    assert all(item not in history for (_, item), (history, _, _) in examples.items())
    assert examples[(1, 1)][1] == pytest.approx(math.log2(1 + 5))  # view + cart on day 01
    assert examples[(1, 4)][1] == pytest.approx(math.log2(1 + 8))  # purchase
    assert examples[(1, 3)][2] == at(2, 9).replace(tzinfo=None)  # time of the first engagement
    assert all(event_time.date() < D1 for (_, _, event_time) in examples.values())  # D1 is validation


def test_validation_targets_exclude_seen_items(runs: dict[str, Any]) -> None:
    validation = {r[0]: r[1:] for r in runs["d1"][lake.VALIDATION]}
    # u1 on D1: a (seen) and e (new); u2 only b (seen): dropped; u3 is new: no history, target f
    assert validation == {1: ([1, 4], [2, 3, 1, 4], [5]), 4: ([], [], [6])}
    for _, seen, targets in validation.values():
        assert not set(seen) & set(targets)


def test_user_histories_hold_state_through_the_run_date(runs: dict[str, Any]) -> None:
    histories = {r[0]: r[1:] for r in runs["d1"][lake.USER_HISTORIES]}
    assert histories == {
        1: ("u1", [1, 5], [2, 3, 4, 1, 5]),
        2: ("u2", [1, 2], [1, 2]),
        3: ("u4", [3], [3]),
        4: ("u3", [6], [6]),
    }


# ---- content and profile features ----------------------------------------------------------------------
def test_item_features(runs: dict[str, Any]) -> None:
    items = {r[1]: r for r in runs["d1"][lake.ITEM_FEATURES]}
    category = {k: v[3] for k, v in items.items()}
    assert category == {"a": 2, "b": 2, "c": 1, "d": 1, "e": 3, "f": 0, "h": 3}  # books, shoes, toys by name
    # two price buckets: the median of 10..60 is 35; e has no price
    assert {k: v[4] for k, v in items.items()} == {"a": 1, "b": 1, "c": 1, "d": 2, "e": 0, "f": 2, "h": 2}
    tokens = {k: v[5] for k, v in items.items()}
    assert len(tokens["a"]) == 3 and set(tokens["b"]) == set(tokens["a"]) - {tokens["a"][1]}  # red, shoes
    assert tokens["c"] == []
    assert all(1 <= t <= 4096 for ts in tokens.values() for t in ts)
    assert items["a"][6] == pytest.approx(2.0)  # published 03 00:00, D1 ends 05 00:00
    assert items["h"][7] is False
    assert items["e"][8] == pytest.approx(0.5 ** ((14 / 24) / HALF_LIFE))  # one view at 04 10:00
    assert items["h"][8] == 0.0
    assert items["a"][9] == "Red Running Shoes"


def test_category_indices_stable_when_a_category_appears(runs: dict[str, Any]) -> None:
    d2 = {r[1]: r for r in runs["d2"][lake.ITEM_FEATURES]}
    assert d2["a"][3] == 2 and d2["c"][3] == 1 and d2["e"][3] == 3
    assert d2["g"][3] == 4  # "art" sorts first but is appended
    assert d2["f"][3] == 0 and d2["f"][7] is False  # gone from the catalogue: unavailable, unknown content
    assert d2["a"][5] == {r[1]: r for r in runs["d1"][lake.ITEM_FEATURES]}["a"][5]  # same hashing every run


def test_news_items_without_price_get_bucket_zero(spark: Any) -> None:
    rows = [
        ("n1", "politics", None, "Vote today", at(4, 6), True, "paper"),
        ("n2", "sport", None, "Cup final", at(4, 7), True, "paper"),
    ]
    catalogue = spark.createDataFrame(rows, to_spark(CLEAN_ITEM))
    vocab = spark.createDataFrame([("n1", 1), ("n2", 2)], "item_id string, item_idx int")
    popularity = spark.createDataFrame([(1, 3.0)], "item_idx int, popularity double")
    categories = features.extend_labels({}, ["sport", "politics"])
    settings = settings_for("/unused", D1, scenario="news", title_tokens=1)
    out = {
        r["item_id"]: r
        for r in features.item_features(vocab, catalogue, categories, popularity, settings).collect()
    }
    assert {k: v["price_bucket"] for k, v in out.items()} == {"n1": 0, "n2": 0}
    assert {k: v["category_idx"] for k, v in out.items()} == {"n1": 1, "n2": 2}
    assert all(len(v["title_tokens"]) == 1 for v in out.values())
    assert out["n1"]["age_days"] == pytest.approx(18 / 24)
    assert out["n2"]["popularity"] == 0.0


def test_extend_labels_keeps_indices_and_appends_by_name() -> None:
    assert features.extend_labels({}, ["toys", "books"]) == {"books": 1, "toys": 2}
    assert features.extend_labels({"toys": 1, "books": 2}, ["art", "books", "zoo"]) == {
        "toys": 1,
        "books": 2,
        "art": 3,
        "zoo": 4,
    }


def test_user_features_and_stable_profile_indices(runs: dict[str, Any]) -> None:
    d1 = {r[1]: r[2:] for r in runs["d1"][lake.USER_FEATURES]}
    assert d1 == {
        "u1": (1, 1, "25-34|north"),
        "u2": (0, 2, "unknown|south"),
        "u3": (0, 0, "unknown"),
        "u4": (0, 0, "unknown"),
    }
    d2 = {r[1]: r[2:] for r in runs["d2"][lake.USER_FEATURES]}
    assert d2["u1"] == d1["u1"]
    assert d2["u5"] == (2, 3, "18-24|east")  # new bucket and region appended, not slotted in by name


# ---- incremental, idempotent, contract -----------------------------------------------------------------
def test_daily_aggregates_are_reused(runs: dict[str, Any]) -> None:
    assert runs["d1_summary"]["daily_computed"] == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    # rerun: the re-cleaned day and the run date (always refreshed); 01 and 03 reused
    assert runs["d1_again_summary"]["daily_computed"] == ["2026-01-02", "2026-01-04"]
    assert runs["d2_summary"]["daily_computed"] == ["2026-01-05"]  # 02..04 reused
    before, after = runs["mtimes_after_d1"], runs["mtimes_after_d1_again"]
    assert (
        after["dt=2026-01-01"] == before["dt=2026-01-01"]
        and after["dt=2026-01-03"] == before["dt=2026-01-03"]
    )
    assert (
        after["dt=2026-01-02"] > before["dt=2026-01-02"] and after["dt=2026-01-04"] > before["dt=2026-01-04"]
    )


def test_run_manifest_counts(runs: dict[str, Any]) -> None:
    from storage import manifest as manifests

    run = manifests.read_manifest(runs["root"], "features", D2)
    assert run is not None and run["stage"] == "features" and run["seconds"] > 0
    counts = run["counts"]
    assert counts["rows_in"] == sum(1 for event in EVENTS if 2 <= event[0] <= 5)  # clean events of 02..05
    assert counts["rows_out"] == sum(counts["rows_by_table"].values()) > 0
    assert counts["users"] == 5 and counts["items"] == len(
        CATALOGUE.keys() | CATALOGUE_D2.keys()
    )  # vocab keeps f
    assert counts["rows_by_table"][lake.TRAIN_EXAMPLES] == runs["d2_summary"]["rows"][lake.TRAIN_EXAMPLES]


def test_reruns_are_identical(runs: dict[str, Any]) -> None:
    assert runs["d1_again"] == runs["d1"]
    assert all(runs["d1"][name] for name in features.OUTPUT_SCHEMAS)  # not trivially equal: nothing empty


def _same_type(actual: pa.DataType, declared: pa.DataType) -> bool:
    if pa.types.is_list(declared):
        return pa.types.is_list(actual) and actual.value_type == declared.value_type
    if pa.types.is_timestamp(declared):
        return pa.types.is_timestamp(actual)
    return actual == declared


def test_outputs_match_their_contracts(runs: dict[str, Any]) -> None:
    for run_date in (D1, D2):
        for name, schema in features.OUTPUT_SCHEMAS.items():
            table = pq.read_table(lake.partition(runs["root"], name, run_date))  # what the TF trainer reads
            for field in schema:
                assert field.name in table.column_names, (name, field.name)
                actual = table.schema.field(field.name).type
                assert _same_type(actual, field.type), (name, field.name, actual, field.type)
                if not field.nullable:
                    assert table.column(field.name).null_count == 0, (name, field.name)


def test_missing_clean_events_for_the_run_date_is_an_error(spark: Any, tmp_lake: str) -> None:
    with pytest.raises(FileNotFoundError, match="clean/events/dt=2026-01-04"):
        features.run(spark, settings_for(tmp_lake, D1))


def test_a_day_without_events_gives_empty_but_valid_tables(spark: Any, tmp_lake: str) -> None:
    """D's clean partition exists but holds no events: validation is empty (not missing), the rest is built."""
    write_days(spark, tmp_lake, lake.CLEAN_EVENTS, CLEAN_EVENT, clean_events([3]))
    empty_day = lake.partition(tmp_lake, lake.CLEAN_EVENTS, D1)
    spark.createDataFrame([], to_spark(CLEAN_EVENT)).write.mode("overwrite").parquet(empty_day)
    write_days(spark, tmp_lake, lake.CLEAN_ITEMS, CLEAN_ITEM, {D1: catalogue_rows(CATALOGUE)})
    summary = features.run(spark, settings_for(tmp_lake, D1))
    rows = summary["rows"]
    assert rows[lake.VALIDATION] == 0
    assert rows[lake.TRAIN_EXAMPLES] == 3  # u1 d, u2 b, u4 c from day 03
    assert rows[lake.USER_HISTORIES] == 3
    assert rows[lake.ITEM_FEATURES] == len(CATALOGUE)
    table = pq.read_table(lake.partition(tmp_lake, lake.VALIDATION, D1))
    assert table.num_rows == 0 and set(features.OUTPUT_SCHEMAS[lake.VALIDATION].names) <= set(
        table.column_names
    )


def tree_bytes(path: str) -> dict[str, bytes]:
    """Every file under a folder, by relative path: to tell a table that changed from one that did not."""
    base = Path(path)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_a_failed_table_write_changes_no_feature_table(spark: Any, tmp_lake: str) -> None:
    """The job's tables (the daily aggregates included) change together or not at all. The failure: a regular
    file where one table's folder must be, which fails its write even for root, who ignores permissions."""
    write_days(spark, tmp_lake, lake.CLEAN_EVENTS, CLEAN_EVENT, clean_events([1, 2, 3, 4]))
    write_days(spark, tmp_lake, lake.CLEAN_ITEMS, CLEAN_ITEM, {D1: catalogue_rows(CATALOGUE)})
    write_days(spark, tmp_lake, lake.CLEAN_USERS, CLEAN_USER, {D1: profile_rows(PROFILES)})
    features.run(spark, settings_for(tmp_lake, D1))
    names = [lake.DAILY_INTERACTIONS, *features.OUTPUT_SCHEMAS]
    before = {name: tree_bytes(lake.table(tmp_lake, name)) for name in names}
    # D1 is cleaned again with fewer events: a successful rerun would rewrite its aggregate and the tables
    day = clean_events([4])[D1][:2]
    write_partition(
        spark.createDataFrame(day, to_spark(CLEAN_EVENT)), tmp_lake, lake.CLEAN_EVENTS, D1, CLEAN_EVENT
    )
    blocked = lake.USER_HISTORIES
    shutil.rmtree(lake.table(tmp_lake, blocked))
    Path(lake.table(tmp_lake, blocked)).write_text("a file where a folder must be")

    with pytest.raises(Exception, match="user_histories"):
        features.run(spark, settings_for(tmp_lake, D1))
    after = {name: tree_bytes(lake.table(tmp_lake, name)) for name in names if name != blocked}
    assert after == {name: files for name, files in before.items() if name != blocked}
    staging = Path(lake.table(tmp_lake, f"{lake.STAGING}/features_outputs"))
    assert not staging.exists() or list(staging.iterdir()) == []

    Path(lake.table(tmp_lake, blocked)).unlink()  # the obstacle removed, a rerun replaces every table
    summary = features.run(spark, settings_for(tmp_lake, D1))
    assert summary["rows"][lake.USER_HISTORIES] > 0
    assert tree_bytes(lake.partition(tmp_lake, lake.DAILY_INTERACTIONS, D1)) != {
        path.removeprefix(f"dt={D1}/"): data
        for path, data in before[lake.DAILY_INTERACTIONS].items()
        if path.startswith(f"dt={D1}/")
    }


def test_in_parallel_returns_results_in_order_and_reraises(spark: Any) -> None:
    """Concurrent Spark actions from driver threads (the feature tables' writes): every result, in the order the
    actions were given, and a failing action's error reaches the caller after the others have finished."""
    frames = [spark.range(n) for n in (5, 50, 500)]
    assert in_parallel([frame.count for frame in frames]) == [5, 50, 500]
    done: list[int] = []

    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        in_parallel([fails, lambda: done.append(spark.range(7).count())])
    assert done == [7]
