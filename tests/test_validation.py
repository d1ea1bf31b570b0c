"""Great Expectations suites: each catches its injected defect (the named expectation fails) and passes clean input.

Tables are tiny, written with pyarrow into a fresh lake. One ephemeral GE context serves the whole process.
``inject_volume_drop`` is for the end-to-end test: it makes one day's raw data fail ``validate_clean``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import validate as V
from schemas import lake
from schemas import suites as S
from schemas.clean import CLEAN_EVENT, CLEAN_ITEM
from schemas.features import ITEM_FEATURE, TRAIN_EXAMPLE, USER_HISTORY, VOCAB_ITEM, VOCAB_USER
from schemas.outputs import METRIC, RECOMMENDATION
from schemas.settings import Settings

D = dt.date(2026, 1, 14)
UTC = dt.UTC


def inject_volume_drop(lake_root: str, date: dt.date | str, keep_share: float = 0.1) -> int:
    """Keep only the first ``keep_share`` of every raw event file of ``date``; returns the lines kept.

    Cleaning accepts the rest as valid, so the day's clean volume falls far below the recent median and
    ``validate_clean`` fails (needs ``volume_min_history`` earlier clean days): the DAG stops before publish.
    """
    kept = 0
    folder = lake.raw_events(lake_root, date).removeprefix("file://")
    for name in sorted(os.listdir(folder)):
        if name.startswith(("_", ".")):
            continue
        path = os.path.join(folder, name)
        opener: Callable[..., Any] = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            lines = handle.readlines()
        keep = lines[: max(1, int(len(lines) * keep_share))]
        kept += len(keep)
        with opener(path, "wb") as handle:
            handle.writelines(keep)
    return kept


# ---- tiny lake builders ---------------------------------------------------------------------------------------
def write(root: str, name: str, date: dt.date, rows: dict[str, list[Any]], schema: pa.Schema) -> str:
    folder = lake.partition(root, name, date)
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.table(rows, schema=schema), f"{folder}/part-0.parquet")
    return folder


def settings_for(root: str, **overrides: Any) -> Settings:
    return Settings.load({"lake_root": root, "run_date": D, **overrides}, env={})


def failed(report: V.ValidationReport) -> set[tuple[str, str, str | None]]:
    return set(report.failed_expectations())


def at(date: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(date.year, date.month, date.day, hour, tzinfo=UTC)


# ---- raw events ------------------------------------------------------------------------------------------------
def raw_lines(n: int = 40) -> list[str]:
    types = ("view", "click", "cart", "purchase")
    return [
        json.dumps(
            {
                "event_id": f"e{i}",
                "event_time": f"2026-01-14T{i % 24:02d}:00:00.000Z",
                "user_id": f"u{i % 7}",
                "session_id": f"s{i % 5}",
                "event_type": types[i % 4],
                "item_id": f"i{i % 9}",
                "price": 9.5,
                "ip": "10.0.0.1",
                "user_agent": "ua",
            }
        )
        for i in range(n)
    ]


def write_raw(root: str, lines: list[str], gz: bool = True) -> None:
    folder = lake.raw_events(root, D)
    os.makedirs(folder, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode()
    if gz:
        with gzip.open(f"{folder}/part-0.jsonl.gz", "wb") as handle:
            handle.write(data)
    else:
        Path(f"{folder}/part-0.jsonl").write_bytes(data)


def test_raw_events_pass_with_a_few_bad_lines(tmp_lake: str) -> None:
    lines = raw_lines(40)
    lines[3] = '{"event_id": "e3", "event_time": '  # truncated line: quarantined by cleaning, tolerated here
    write_raw(tmp_lake, lines)
    report = V.validate(settings_for(tmp_lake, raw_max_bad_share=0.05), "raw", build_docs=False)
    assert report.success, report.summary()
    assert report.tables[0].rows == 40


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        ("renamed_event_type", {("raw_events", "expect_column_values_to_be_in_set", "event_type")}),
        (
            "garbage",
            {
                ("raw_events", "expect_column_values_to_be_in_set", S.RAW_PARSED),
                *{
                    ("raw_events", "expect_column_values_to_not_be_null", f)
                    for f in ("event_id", "event_time", "user_id", "event_type", "item_id")
                },
                ("raw_events", "expect_column_values_to_be_in_set", S.RAW_TIME_VALID),
            },
        ),
        ("epoch_times", {("raw_events", "expect_column_values_to_be_in_set", S.RAW_TIME_VALID)}),
    ],
)
def test_raw_events_defects(tmp_lake: str, defect: str, expected: set[Any]) -> None:
    records = [json.loads(line) for line in raw_lines(40)]
    lines = []
    for i, record in enumerate(records):
        if i % 4 == 0:  # a quarter of the lines: far above the tolerated 5 %
            if defect == "renamed_event_type":
                record["event_type"] = "page_view"
            elif defect == "epoch_times":
                record["event_time"] = 1768348800
            else:
                lines.append("<html>502 Bad Gateway</html>")
                continue
        lines.append(json.dumps(record))
    write_raw(tmp_lake, lines, gz=False)
    report = V.validate(settings_for(tmp_lake), "raw", build_docs=False)
    assert failed(report) == expected, report.summary()


# ---- clean events ----------------------------------------------------------------------------------------------
CATALOGUE = [f"i{k}" for k in range(9)]


def clean_rows(date: dt.date, n: int) -> dict[str, list[Any]]:
    types = ("view", "click", "cart", "purchase")
    return {
        "event_id": [f"{date}-e{i}" for i in range(n)],
        "event_time": [at(date, i % 24) for i in range(n)],
        "user_id": [f"{i % 7:016x}" for i in range(n)],
        "session_id": [f"s{i % 5}" for i in range(n)],
        "event_type": [types[i % 4] for i in range(n)],
        "item_id": [CATALOGUE[i % 9] for i in range(n)],
        "price": [float(i % 50) for i in range(n)],
    }


def write_clean_lake(
    root: str, today: dict[str, list[Any]], history_days: int = 7, per_day: int = 100
) -> None:
    for back in range(1, history_days + 1):
        day = D - dt.timedelta(days=back)
        write(root, lake.CLEAN_EVENTS, day, clean_rows(day, per_day + back), CLEAN_EVENT)  # median 104
    write(root, lake.CLEAN_EVENTS, D, today, CLEAN_EVENT)
    n = len(CATALOGUE)
    write(
        root,
        lake.CLEAN_ITEMS,
        D,
        {
            "item_id": CATALOGUE,
            "category": ["c"] * n,
            "price": [1.0] * n,
            "title": ["t"] * n,
            "publish_time": [at(D, 0)] * n,
            "available": [True] * n,
            "source": [None] * n,
        },
        CLEAN_ITEM,
    )


def test_clean_events_pass(tmp_lake: str) -> None:
    write_clean_lake(tmp_lake, clean_rows(D, 100))
    report = V.validate(settings_for(tmp_lake), "clean", build_docs=False)
    assert report.success, report.summary()
    params = report.tables[0].parameters
    assert (params["min_rows"], params["max_rows"]) == (52, 156)  # median 104 -/+ 50 %


def _set(rows: dict[str, list[Any]], column: str, index: int, value: Any) -> dict[str, list[Any]]:
    rows[column][index] = value
    return rows


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        ("volume_drop", ("expect_table_row_count_to_be_between", None)),
        ("volume_spike", ("expect_table_row_count_to_be_between", None)),
        ("late_event", ("expect_column_values_to_be_between", "event_time")),
        ("unknown_item", ("expect_column_values_to_be_in_set", S.ITEM_KNOWN)),
        ("event_type", ("expect_column_values_to_be_in_set", "event_type")),
        ("placeholder_user", ("expect_column_values_to_not_be_in_set", "user_id")),
        ("duplicate_event", ("expect_column_values_to_be_unique", "event_id")),
    ],
)
def test_clean_events_defects(tmp_lake: str, defect: str, expected: tuple[str, str | None]) -> None:
    rows = clean_rows(D, {"volume_drop": 30, "volume_spike": 300}.get(defect, 100))
    if defect == "late_event":
        _set(
            rows, "event_time", 5, at(D + dt.timedelta(days=1), 0)
        )  # the next day's midnight: outside [D, D+1)
    elif defect == "unknown_item":
        _set(rows, "item_id", 7, "i999")
    elif defect == "event_type":
        _set(rows, "event_type", 2, "share")  # a news event in an ecommerce run
    elif defect == "placeholder_user":
        _set(rows, "user_id", 1, "null")
    elif defect == "duplicate_event":
        _set(rows, "event_id", 9, rows["event_id"][8])
    write_clean_lake(tmp_lake, rows)
    report = V.validate(settings_for(tmp_lake), "clean", build_docs=False)
    assert failed(report) == {("clean_events", *expected)}, report.summary()


def test_clean_volume_needs_history(tmp_lake: str) -> None:
    write_clean_lake(tmp_lake, clean_rows(D, 30), history_days=2)  # 2 < volume_min_history: only non-empty
    report = V.validate(settings_for(tmp_lake), "clean", build_docs=False)
    assert report.success, report.summary()
    assert report.tables[0].parameters["max_rows"] is None


def write_item_features(root: str, n: int, first_price_bucket: int = 1) -> None:
    """``n`` items of one category for D, the last one unavailable."""
    write(
        root,
        lake.ITEM_FEATURES,
        D,
        {
            "item_idx": list(range(1, n + 1)),
            "item_id": [f"i{k}" for k in range(1, n + 1)],
            "category": ["c"] * n,
            "category_idx": [1] * n,
            "price_bucket": [first_price_bucket] + [1] * (n - 1),
            "title_tokens": [[1, 2]] * n,
            "age_days": [1.0] * n,
            "available": [True] * (n - 1) + [False],
            "popularity": [1.0] * n,
            "title": ["t"] * n,
        },
        ITEM_FEATURE,
    )


# ---- features ----------------------------------------------------------------------------------------------------
def write_features(
    root: str,
    *,
    shrink_vocab: bool = False,
    price_bucket: int = 3,
    history_id: int = 2,
    weight: float = 1.0,
    naive_times: bool = False,
) -> None:
    previous = D - dt.timedelta(days=1)
    items_before, items_now = 5, (4 if shrink_vocab else 6)
    for day, n in ((previous, items_before), (D, items_now)):
        write(
            root,
            lake.VOCAB_ITEMS,
            day,
            {
                "item_id": [f"i{k}" for k in range(1, n + 1)],
                "item_idx": list(range(1, n + 1)),
                "first_seen": [previous] * n,
            },
            VOCAB_ITEM,
        )
        write(
            root,
            lake.VOCAB_USERS,
            day,
            {"user_id": ["ua", "ub", "uc"], "user_idx": [1, 2, 3], "first_seen": [previous] * 3},
            VOCAB_USER,
        )
    n = items_now
    write_item_features(root, n, first_price_bucket=price_bucket)
    examples = TRAIN_EXAMPLE
    if naive_times:  # what Spark may write: instants without the UTC flag
        examples = TRAIN_EXAMPLE.set(
            TRAIN_EXAMPLE.get_field_index("event_time"),
            pa.field("event_time", pa.timestamp("ns"), nullable=False),
        )
    write(
        root,
        lake.TRAIN_EXAMPLES,
        D,
        {
            "user_idx": [1, 2, 3],
            "history": [[1, history_id], [3], []],
            "item_idx": [3, 4, 1],
            "weight": [weight, 2.0, 1.0],
            "event_time": [at(D - dt.timedelta(days=2), 5)] * 3,
        },
        examples,
    )
    write(
        root,
        lake.USER_HISTORIES,
        D,
        {
            "user_idx": [1, 2, 3],
            "user_id": ["ua", "ub", "uc"],
            "history": [[1, 3], [3, 4], [1]],
            "seen": [[1, 3], [3, 4], [1]],
        },
        USER_HISTORY,
    )


def test_features_pass(tmp_lake: str) -> None:
    write_features(tmp_lake)
    report = V.validate(settings_for(tmp_lake), "features", build_docs=False)
    assert report.success, report.summary()
    assert [t.suite for t in report.tables] == list(S.SUITE_GROUPS["features"])


def test_features_naive_timestamps_are_utc(tmp_lake: str) -> None:
    write_features(tmp_lake, naive_times=True)
    report = V.validate(settings_for(tmp_lake), "features_train_examples", build_docs=False)
    assert report.success, report.summary()


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        (
            {"shrink_vocab": True},
            {
                ("features_vocab_items", "expect_table_row_count_to_be_between", None),
                ("features_vocab_items", "expect_column_max_to_be_between", "item_idx"),
            },
        ),
        ({"price_bucket": 11}, {("features_items", "expect_column_values_to_be_between", "price_bucket")}),
        (
            {"history_id": 99},
            {("features_train_examples", "expect_column_values_to_be_between", S.HISTORY_MAX)},
        ),
        ({"weight": 0.0}, {("features_train_examples", "expect_column_values_to_be_between", "weight")}),
    ],
    ids=["vocab_shrinks", "price_bucket", "history_id", "weight"],
)
def test_features_defects(tmp_lake: str, defect: dict[str, Any], expected: set[Any]) -> None:
    write_features(tmp_lake, **defect)
    report = V.validate(settings_for(tmp_lake), "features", build_docs=False)
    assert failed(report) == expected, report.summary()


# ---- model metrics -------------------------------------------------------------------------------------------------
def write_metrics(
    root: str, model: tuple[float, float], popularity: tuple[float, float] | None = (0.10, 0.08)
) -> None:
    rows: dict[str, list[Any]] = {name: [] for name in METRIC.names}
    entries = [("two_tower", "v2", "candidate", model), ("item_cosine", "v1", "baseline", (0.01, 0.01))]
    if popularity is not None:
        entries.append(("popularity", "v1", "baseline", popularity))
    for name, version, role, (recall, ndcg) in entries:
        for segment in ("all", "warm"):
            for metric, value in (("recall_at_10", recall), ("ndcg_at_10", ndcg), ("novelty_at_10", 7.5)):
                for column, item in zip(
                    METRIC.names, (name, version, role, segment, metric, 10, value, 50), strict=True
                ):
                    rows[column].append(item)
    write(root, lake.METRICS, D, rows, METRIC)


def test_model_metrics_pass(tmp_lake: str) -> None:
    write_metrics(tmp_lake, model=(0.20, 0.15))
    report = V.validate(settings_for(tmp_lake), "metrics", build_docs=False)
    assert report.success, report.summary()


@pytest.mark.parametrize(
    ("model", "popularity", "overrides", "expected"),
    [
        ((0.08, 0.15), (0.10, 0.08), {}, {("expect_column_values_to_be_between", S.RECALL_LIFT)}),
        (
            (0.20, 0.15),
            (0.10, 0.08),
            {"min_ndcg_at_k": 0.2},
            {("expect_column_values_to_be_between", S.NDCG)},
        ),
        ((0.20, 0.15), None, {}, {("expect_column_values_to_not_be_null", S.RECALL_LIFT)}),
    ],
)
def test_model_metrics_defects(
    tmp_lake: str, model: tuple[float, float], popularity: Any, overrides: dict[str, Any], expected: set[Any]
) -> None:
    write_metrics(tmp_lake, model=model, popularity=popularity)
    report = V.validate(settings_for(tmp_lake, **overrides), "metrics", build_docs=False)
    assert {(kind, column) for _, kind, column in report.failed_expectations()} == expected, report.summary()


def test_model_metrics_lift_can_be_waived(tmp_lake: str) -> None:
    write_metrics(tmp_lake, model=(0.08, 0.07))
    report = V.validate(settings_for(tmp_lake, min_lift_over_popularity=-1.0), "metrics", build_docs=False)
    assert report.success, report.summary()


# ---- recommendations ---------------------------------------------------------------------------------------------
# catalogue i1..i6 (i6 unavailable); ua saw i1, ub saw i1 and i2; uc has no history (cold start)
GENERATED = dt.datetime(2026, 1, 14, 23, 0, tzinfo=UTC)
RECS = [
    ("ua", "i2", "model"),
    ("ua", "i3", "model"),
    ("ua", "i4", "model"),
    ("ub", "i3", "model"),
    ("ub", "i4", "model"),
    ("ub", "i5", "model"),
    ("uc", "i1", "cold_start"),
    ("uc", "i2", "cold_start"),
    ("uc", "i3", "cold_start"),
]


def write_recommendation_inputs(root: str, items: int = 6) -> None:
    write_item_features(root, items)
    write(
        root,
        lake.USER_HISTORIES,
        D,
        {"user_idx": [1, 2], "user_id": ["ua", "ub"], "history": [[1], [1, 2]], "seen": [[1], [1, 2]]},
        USER_HISTORY,
    )


def write_staging(
    root: str,
    recs: list[tuple[str, str, str]],
    scores: list[float] | None = None,
    ranks: list[int] | None = None,
) -> str:
    folder = lake.staging(root, lake.RECOMMENDATIONS, D, "manual__1")
    os.makedirs(folder, exist_ok=True)
    ranks = ranks or [i % 3 + 1 for i in range(len(recs))]
    scores = scores or [1.0 - 0.1 * r for r in ranks]
    pq.write_table(
        pa.table(
            {
                "user_id": [r[0] for r in recs],
                "rank": ranks,
                "item_id": [r[1] for r in recs],
                "score": scores,
                "model_version": ["two_tower/v2"] * len(recs),
                "strategy": [r[2] for r in recs],
                "generated_at": [GENERATED] * len(recs),
            },
            schema=RECOMMENDATION,
        ),
        f"{folder}/part-0.parquet",
    )
    return folder


def recs_settings(root: str, **overrides: Any) -> Settings:
    return settings_for(root, top_n=3, **overrides)


def test_recommendations_pass(tmp_lake: str) -> None:
    write_recommendation_inputs(tmp_lake)
    write_staging(tmp_lake, RECS)
    report = V.validate(recs_settings(tmp_lake), "recommendations", build_docs=False)
    assert report.success, report.summary()
    assert report.tables[0].table_path.endswith("run=manual__1")


def test_recommendations_small_catalogue_gives_fewer_rows(tmp_lake: str) -> None:
    """top_n 5 but ua has only 3 available unseen items (i2..i4): 3 rows are right, 2 rows are short."""
    write_recommendation_inputs(tmp_lake, items=5)  # i1..i4 available, i5 not
    write_staging(tmp_lake, RECS[:3])
    write_recommendation_inputs(tmp_lake, items=5)
    report = V.validate(settings_for(tmp_lake, top_n=5), "recommendations", build_docs=False)
    assert S.ROWS_SHORT not in {c for _, _, c in report.failed_expectations()}, report.summary()
    write_staging(tmp_lake, RECS[:2])
    report = V.validate(settings_for(tmp_lake, top_n=5), "recommendations", build_docs=False)
    assert ("recommendations", "expect_column_values_to_be_between", S.ROWS_SHORT) in failed(report)


def _recs_with(defect: str) -> tuple[list[tuple[str, str, str]], list[float] | None, list[int] | None]:
    recs, scores, ranks = list(RECS), None, None
    if defect == "duplicate_item":
        recs[1] = ("ua", "i2", "model")
    elif defect == "wrong_count":
        recs, ranks = recs[:5] + recs[6:], [1, 2, 3, 1, 2, 1, 2, 3]
    elif defect == "misordered":
        scores = [0.9, 0.95, 0.7, 0.9, 0.8, 0.7, 0.9, 0.8, 0.7]
    elif defect == "unavailable":
        recs[4] = ("ub", "i6", "model")
    elif defect == "unknown_item":
        recs[4] = ("ub", "i42", "model")
    elif defect == "seen":
        recs[0] = ("ua", "i1", "model")
    elif defect == "missing_user":
        recs = recs[3:]
    return recs, scores, ranks


RECS_DEFECTS = [
    ("duplicate_item", {("expect_compound_columns_to_be_unique", "['user_id', 'item_id']")}, {}),
    ("wrong_count", {("expect_column_values_to_be_between", S.ROWS_SHORT)}, {}),
    ("misordered", {("expect_column_values_to_be_between", S.SCORE_RISE)}, {}),
    ("unavailable", {("expect_column_values_to_be_in_set", S.ITEM_AVAILABLE)}, {}),
    (
        "unknown_item",
        {
            ("expect_column_values_to_be_in_set", S.ITEM_KNOWN),
            ("expect_column_values_to_be_in_set", S.ITEM_AVAILABLE),
        },
        {},
    ),
    ("seen", {("expect_column_values_to_be_in_set", S.ITEM_SEEN)}, {}),
    ("missing_user", {("expect_column_unique_value_count_to_be_between", "user_id")}, {}),
    (
        "cold_start_share",
        {("expect_column_mean_to_be_between", S.IS_COLD_START)},
        {"max_cold_start_share": 0.2},
    ),
]


@pytest.mark.parametrize(("defect", "expected", "overrides"), RECS_DEFECTS, ids=[d[0] for d in RECS_DEFECTS])
def test_recommendations_defects(
    tmp_lake: str, defect: str, expected: set[Any], overrides: dict[str, Any]
) -> None:
    write_recommendation_inputs(tmp_lake)
    recs, scores, ranks = _recs_with(defect)
    write_staging(tmp_lake, recs, scores, ranks)
    report = V.validate(recs_settings(tmp_lake, **overrides), "recommendations", build_docs=False)
    assert {(kind, column) for _, kind, column in report.failed_expectations()} == expected, report.summary()


# ---- the job: CLI, exit code, message, Data Docs ------------------------------------------------------------------
def test_main_fails_naming_expectation_and_values_and_keeps_data_docs(
    tmp_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_recommendation_inputs(tmp_lake)
    write_staging(tmp_lake, _recs_with("seen")[0])
    argv = ["--suite", "recommendations", "--lake-root", tmp_lake, "--date", D.isoformat(), "--top-n", "3"]
    with pytest.raises(SystemExit) as exit_:
        V.main(argv)
    message = str(exit_.value.code)
    assert "expect_column_values_to_be_in_set(column=item_seen" in message
    assert "unexpected 1 of 9" in message and "True" in message
    docs = Path(lake.report_dir(tmp_lake, D)) / "data_docs" / "index.html"
    assert f"Data Docs: file://{docs}" in message
    assert docs.exists()
    pages = list((docs.parent / "validations" / "recommendations").rglob("*.html"))
    assert pages and "item_seen" in pages[0].read_text()

    # a later suite of the same day joins the same index
    write_metrics(tmp_lake, model=(0.2, 0.15))
    V.main(["--suite", "metrics", "--lake-root", tmp_lake, "--date", D.isoformat()])
    assert "Data Docs: file://" in capsys.readouterr().out
    index = docs.read_text()
    assert "model_metrics" in index and "recommendations" in index


def test_check_raises_with_failures(tmp_lake: str) -> None:
    write_metrics(tmp_lake, model=(0.08, 0.07))
    with pytest.raises(V.ValidationFailed, match="recall_lift_over_popularity"):
        V.check(settings_for(tmp_lake), "metrics", build_docs=False)


def test_unknown_suite_is_a_clear_error(tmp_lake: str) -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        V.validate(settings_for(tmp_lake), "nope")


def test_inject_volume_drop_makes_clean_volume_fail(tmp_lake: str) -> None:
    write_raw(tmp_lake, raw_lines(40))
    assert inject_volume_drop(tmp_lake, D, keep_share=0.25) == 10
    assert V.validate(settings_for(tmp_lake), "raw", build_docs=False).tables[0].rows == 10


# ---- the Spark engine: same suites, same verdicts ----------------------------------------------------------------
@pytest.mark.spark
@pytest.mark.slow
def test_spark_engine_agrees_with_pandas(tmp_lake: str, spark: Any) -> None:
    """One Spark run (GE on Spark runs a job per metric: slow): ua's rows are defective, ub's and uc's are clean,
    so the failed set is exactly the three defects and the other expectations hold on Spark too."""
    write_recommendation_inputs(tmp_lake)
    recs = list(RECS)
    recs[0] = ("ua", "i1", "model")  # seen
    recs[1] = ("ua", "i6", "model")  # unavailable
    path = write_staging(tmp_lake, recs, scores=[0.9, 0.95, 0.7, 0.9, 0.8, 0.7, 0.9, 0.8, 0.7])  # misordered
    expected = {
        ("recommendations", "expect_column_values_to_be_in_set", S.ITEM_SEEN),
        ("recommendations", "expect_column_values_to_be_in_set", S.ITEM_AVAILABLE),
        ("recommendations", "expect_column_values_to_be_between", S.SCORE_RISE),
    }
    on_spark = V.validate(
        recs_settings(tmp_lake), "recommendations", spark=spark, table_path=path, build_docs=False
    )
    on_pandas = V.validate(recs_settings(tmp_lake), "recommendations", table_path=path, build_docs=False)
    assert on_spark.engine == "spark"
    assert failed(on_spark) == failed(on_pandas) == expected, on_spark.summary()
    assert on_spark.tables[0].parameters == on_pandas.tables[0].parameters
