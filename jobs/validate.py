"""Run a Great Expectations suite (``schemas/suites.py``) on a table partition; fail loudly when it does not hold.

    python -m jobs.validate --suite clean --date 2026-01-14 [--engine spark] [--table-path P] [--volume-band 0.3]

Suites: ``raw``, ``clean``, ``features`` (five feature tables), ``metrics``, ``recommendations`` (the newest staging
copy of the day unless ``--table-path`` names one), ``embeddings`` (``user_embeddings`` and ``item_embeddings``,
likewise; a table the score job did not stage is reported as such, not failed), or a single suite of
``schemas.suites.SUITES``.

Engines run the same suites. ``pandas`` (default) reads with pyarrow and starts no JVM: the right choice for the
local lake and for tables that fit one process. ``spark`` (``--engine spark`` or ``--validation-engine spark``)
reads with Spark and lets Great Expectations compute on Spark DataFrames, for big tables on a cluster.

Each run adds its results to the Data Docs site of the run's date, ``reports/dt=D/data_docs/index.html`` (results
are kept as JSON in ``reports/dt=D/gx_validations/``, so every suite of the day appears in one index), and logs
its location. A failed expectation makes ``main`` exit nonzero with a message naming each failed expectation,
its observed value and a sample of the unexpected values.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import glob
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import lake
from schemas import suites as S
from schemas.raw import RAW_EVENT, SCENARIO_EVENT_TYPES
from schemas.settings import Settings

log = logging.getLogger("recflow.validate")

ENGINES = ("pandas", "spark")
SUITE_ALIASES = {
    "raw_events": "raw",
    "clean_events": "clean",
    "model_metrics": "metrics",
    "recs": "recommendations",
}
DOCS_SITE = "recflow"
SAMPLE_VALUES = 10  # unexpected values quoted per failed expectation
SCORE_TOLERANCE = 1e-6  # float32 scores: a rise smaller than this is rounding, not misordering
# keys of a prepared table's parameters that explain a verdict but are no expectation parameters
INFO_KEYS = ("previous_counts", "previous_dt", "checked_model", "paired_with")


class ValidationFailed(RuntimeError):
    """A suite did not hold; the message lists every failed expectation with its values."""


@dataclasses.dataclass
class TableResult:
    suite: str
    table_path: str
    rows: int
    parameters: dict[str, Any]
    result: Any  # great_expectations ExpectationSuiteValidationResult

    @property
    def success(self) -> bool:
        return bool(self.result.success)

    @property
    def failures(self) -> list[str]:
        return [describe_failure(self.suite, r) for r in self.result.results if not r.success]

    @property
    def info(self) -> str:
        shown = {k: v for k, v in self.parameters.items() if k in INFO_KEYS or k in ("min_rows", "max_rows")}
        return ", ".join(f"{k}={_short(v, 200)}" for k, v in shown.items())

    def failed_expectations(self) -> list[tuple[str, str | None]]:
        """(expectation type, column or columns) of each failed expectation, for tests and callers."""
        out = []
        for r in self.result.results:
            if not r.success:
                kwargs = r.expectation_config.kwargs
                column = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_A")
                out.append((r.expectation_config.type, None if column is None else str(column)))
        return out


@dataclasses.dataclass
class ValidationReport:
    suite: str
    date: str
    engine: str
    tables: list[TableResult]
    data_docs: str | None
    seconds: float
    # suite -> why its table was not validated: the score job did not stage it (its _SKIPPED.json's reason)
    not_staged: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(t.success for t in self.tables)

    @property
    def failures(self) -> list[str]:
        return [f for t in self.tables for f in t.failures]

    def failed_expectations(self) -> list[tuple[str, str, str | None]]:
        """(suite, expectation type, column) of every failed expectation."""
        return [(t.suite, kind, column) for t in self.tables for kind, column in t.failed_expectations()]

    def summary(self) -> str:
        status = "passed" if self.success else "FAILED"
        lines = [f"validation {self.suite} dt={self.date} ({self.engine}): {status} in {self.seconds:.1f}s"]
        for t in self.tables:
            stats = t.result.statistics
            lines.append(
                f"  {t.suite}: {'ok' if t.success else 'FAILED'} "
                f"({stats['successful_expectations']}/{stats['evaluated_expectations']} expectations, "
                f"{t.rows} rows) {t.table_path}" + (f" [{t.info}]" if t.info else "")
            )
        lines += [f"  {name}: not staged ({reason})" for name, reason in self.not_staged.items()]
        lines += [f"  - {f}" for f in self.failures]
        if self.data_docs:
            lines.append(f"Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        if not self.success:
            raise ValidationFailed(self.summary())


def describe_failure(suite: str, result: Any) -> str:
    """One line: which expectation failed, on which column, with what observed and unexpected values."""
    config = result.expectation_config
    shown = {
        k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format") and v is not None
    }
    text = f"{suite}: {config.type}({', '.join(f'{k}={_short(v)}' for k, v in shown.items())})"
    info = result.result or {}
    if info.get("observed_value") is not None:
        text += f" observed {_short(info['observed_value'])}"
    if info.get("unexpected_count"):
        text += (
            f" unexpected {info['unexpected_count']} of {info.get('element_count')}"
            f" ({info.get('unexpected_percent', 0.0):.2f}%)"
        )
    values = info.get("partial_unexpected_counts") or info.get("partial_unexpected_list")
    if values:
        text += f" e.g. {_short(values[:SAMPLE_VALUES], 400)}"
    for error in _exception_messages(result.exception_info):
        text += f" error: {_short(error, 300)}"
    return text


def _exception_messages(info: Any) -> list[str]:
    """GE reports one exception flat, several as a dict keyed by metric; both shapes appear."""
    if not isinstance(info, dict):
        return []
    if "raised_exception" in info:
        return [str(info.get("exception_message"))] if info.get("raised_exception") else []
    return sorted({m for value in info.values() for m in _exception_messages(value)})


def _short(value: Any, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- reading the lake with either engine ---------------------------------------------------------------------
def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _partitions_before(root: str, name: str, date: dt.date) -> list[dt.date]:
    """Dates of the table's partitions before ``date``, newest first (local and file:// lakes)."""
    found = []
    for folder in glob.glob(f"{_local(lake.table(root, name))}/dt=*"):
        try:
            day = dt.date.fromisoformat(folder.rsplit("dt=", 1)[1][:10])
        except ValueError:
            continue
        if day < date and _has_data(folder):
            found.append(day)
    return sorted(found, reverse=True)


def _has_data(folder: str) -> bool:
    return any(not os.path.basename(p).startswith(("_", ".")) for p in glob.glob(f"{folder}/*"))


class PandasLake:
    """pyarrow reads, pandas frames: no JVM."""

    engine = "pandas"

    def arrow(self, path: str, columns: list[str] | None = None) -> pa.Table:
        local = _local(path)
        if not os.path.isdir(local) or not _has_data(local):
            raise FileNotFoundError(f"no data at {path}")
        table = pq.read_table(local, columns=columns, partitioning=None)
        return table.drop_columns([c for c in ("dt", "run") if c in table.column_names])

    def read(self, path: str, columns: list[str] | None = None) -> pd.DataFrame:
        return self.arrow(path, columns).to_pandas()

    def count(self, path: str) -> int:
        from storage.lake_io import count_rows

        return count_rows(path)

    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        return df


class SparkLake:
    """Spark reads, Spark DataFrames: Great Expectations computes with Spark."""

    engine = "spark"

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def read(self, path: str, columns: list[str] | None = None) -> Any:
        df = self.spark.read.parquet(path)
        df = df.drop(*[c for c in ("dt", "run") if c in df.columns])
        return df.select(*columns) if columns else df

    def count(self, path: str) -> int:
        return int(self.spark.read.parquet(path).count())

    def frame(self, df: pd.DataFrame) -> Any:
        return (
            self.spark.createDataFrame(df)
            if len(df)
            else self.spark.createDataFrame(df, schema=_spark_schema(df))
        )


def _spark_schema(df: pd.DataFrame) -> Any:
    from schemas.spark import to_spark

    return to_spark(pa.Schema.from_pandas(df, preserve_index=False))


Lake = PandasLake | SparkLake
Prepared = tuple[str, Any, dict[str, Any]]  # (table path, frame to validate, expectation parameters)


# ---- per-suite preparation: read, add helper columns, compute parameters ------------------------------------
def _day_bounds(date: dt.date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(date, tz="UTC")
    return start, start + pd.Timedelta(days=1)


def prepare_raw_events(io: Lake, settings: Settings, path: str | None) -> Prepared:
    path = path or lake.raw_events(settings.lake_root, settings.run_date)
    params = {
        "min_good_share": 1.0 - settings.raw_max_bad_share,
        "event_types": list(SCENARIO_EVENT_TYPES[settings.scenario]),
    }
    if isinstance(io, SparkLake):
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        schema = T.StructType(
            [T.StructField(f.name, T.StringType()) for f in RAW_EVENT if f.name != "price"]
            + [T.StructField("price", T.DoubleType()), T.StructField("_corrupt_record", T.StringType())]
        )
        df = (
            io.spark.read.schema(schema)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .json(path)
            .cache()
        )
        df = (
            df.withColumn(S.RAW_PARSED, F.col("_corrupt_record").isNull())
            .withColumn(S.RAW_TIME_VALID, F.expr("try_to_timestamp(event_time)").isNotNull())
            .drop("_corrupt_record")
        )
        return path, df, params
    return path, _parse_raw_lines(path), params


def _parse_raw_lines(path: str) -> pd.DataFrame:
    """JSON lines, tolerant: a line that is not a JSON object is a row with ``parsed`` False."""
    import gzip

    files = sorted(
        p for p in glob.glob(f"{_local(path)}/*") if not os.path.basename(p).startswith(("_", "."))
    )
    if not files:
        raise FileNotFoundError(f"no raw files at {path}")
    names = [f.name for f in RAW_EVENT]
    columns: dict[str, list[Any]] = {name: [] for name in [*names, S.RAW_PARSED, S.RAW_TIME_VALID]}
    for file in files:
        opener: Callable[..., Any] = gzip.open if file.endswith(".gz") else open
        with opener(file, "rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    record = None
                parsed = isinstance(record, dict)
                record = record if parsed else {}
                for name in names:
                    value = record.get(name)
                    if name == "price":
                        value = (
                            float(value)
                            if isinstance(value, int | float) and not isinstance(value, bool)
                            else None
                        )
                    elif value is not None:
                        value = str(value)
                    columns[name].append(value)
                columns[S.RAW_PARSED].append(parsed)
                columns[S.RAW_TIME_VALID].append(_iso_time_valid(record.get("event_time")))
    return pd.DataFrame(columns)


def _iso_time_valid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def volume_band(io: Lake, settings: Settings, name: str) -> dict[str, Any]:
    """min_rows/max_rows: median of up to ``volume_history_days`` earlier partitions -/+ ``volume_band``."""
    earlier = _partitions_before(settings.lake_root, name, settings.run_date)
    earlier = [d for d in earlier if (settings.run_date - d).days <= settings.volume_history_days]
    counts = [io.count(lake.partition(settings.lake_root, name, d)) for d in earlier]
    if len(counts) < settings.volume_min_history:
        return {"min_rows": 1, "max_rows": None, "previous_counts": counts}
    median = statistics.median(counts)
    return {
        "min_rows": max(1, math.floor(median * (1.0 - settings.volume_band))),
        "max_rows": math.ceil(median * (1.0 + settings.volume_band)),
        "previous_counts": counts,
    }


def _latest_partition(root: str, name: str, date: dt.date) -> str:
    """The partition of ``date``, else the newest one before it (catalogue snapshots may skip days)."""
    path = lake.partition(root, name, date)
    remote = "://" in path and not path.startswith("file://")
    if remote or os.path.isdir(_local(path)):
        return path
    earlier = _partitions_before(root, name, date)
    if not earlier:
        raise FileNotFoundError(f"no partition of {lake.table(root, name)} at or before {date}")
    return lake.partition(root, name, earlier[0])


def prepare_clean_events(io: Lake, settings: Settings, path: str | None) -> Prepared:
    root = settings.lake_root
    path = path or lake.partition(root, lake.CLEAN_EVENTS, settings.run_date)
    day_start, day_end = _day_bounds(settings.run_date)
    params = {
        "event_types": list(SCENARIO_EVENT_TYPES[settings.scenario]),
        "day_start": day_start,
        "day_end": day_end,
        "max_price": settings.max_price,
        **volume_band(io, settings, lake.CLEAN_EVENTS),
    }
    catalogue = _latest_partition(root, lake.CLEAN_ITEMS, settings.run_date)
    if isinstance(io, SparkLake):
        from pyspark.sql import functions as F

        items = io.read(catalogue, ["item_id"]).distinct().withColumn(S.ITEM_KNOWN, F.lit(True))
        df = (
            io.read(path)
            .join(items, "item_id", "left")
            .withColumn(S.ITEM_KNOWN, F.coalesce(F.col(S.ITEM_KNOWN), F.lit(False)))
        )
        return path, df, params
    df = io.read(path)
    known = set(io.arrow(catalogue, ["item_id"]).column("item_id").to_pylist())
    df[S.ITEM_KNOWN] = df["item_id"].isin(known)
    return path, df, params


def _list_extremes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row min and max of an id-list column (NaN for empty lists), vectorised with pyarrow."""
    n = len(column)
    flat = pc.list_flatten(column)
    parents = pc.list_parent_indices(column)
    low, high = np.full(n, np.nan), np.full(n, np.nan)
    if len(flat):
        grouped = pa.table({"p": parents, "v": flat}).group_by("p").aggregate([("v", "min"), ("v", "max")])
        index = grouped.column("p").to_numpy()
        low[index] = grouped.column("v_min").to_numpy()
        high[index] = grouped.column("v_max").to_numpy()
    return low, high


def _with_list_extremes(io: Lake, path: str, lists: dict[str, tuple[str, str]]) -> Any:
    """Read ``path`` and replace each id-list column by its min and max helper columns."""
    if isinstance(io, SparkLake):
        from pyspark.sql import functions as F

        df = io.read(path)
        for column, (low, high) in lists.items():
            df = df.withColumn(low, F.array_min(column)).withColumn(high, F.array_max(column)).drop(column)
        return df
    table = io.arrow(path)
    df = table.drop_columns(list(lists)).to_pandas()
    for column, (low, high) in lists.items():
        df[low], df[high] = _list_extremes(table.column(column))
    return df


def _vocab_stats(io: Lake, path: str, idx: str) -> tuple[int, int | None]:
    """(rows, max index) of a vocabulary partition."""
    if isinstance(io, SparkLake):
        from pyspark.sql import functions as F

        row = io.read(path).agg(F.count("*").alias("n"), F.max(idx).alias("m")).collect()[0]
        return int(row["n"]), None if row["m"] is None else int(row["m"])
    column = io.arrow(path, [idx]).column(idx)
    top = pc.max(column).as_py()
    return len(column), None if top is None else int(top)


def prepare_vocabulary(name: str, idx: str) -> Callable[[Lake, Settings, str | None], Prepared]:
    def prepare(io: Lake, settings: Settings, path: str | None) -> Prepared:
        root = settings.lake_root
        path = path or lake.partition(root, name, settings.run_date)
        rows, _ = _vocab_stats(io, path, idx)
        earlier = _partitions_before(root, name, settings.run_date)
        previous_rows, previous_max = (
            _vocab_stats(io, lake.partition(root, name, earlier[0]), idx) if earlier else (0, None)
        )
        params = {
            "rows": rows,
            "previous_rows": previous_rows,
            "previous_max_idx": previous_max,
            "previous_dt": earlier[0].isoformat() if earlier else None,
        }
        return path, io.read(path), params

    return prepare


def _feature_params(io: Lake, settings: Settings) -> dict[str, Any]:
    root, date = settings.lake_root, settings.run_date
    _, max_item = _vocab_stats(io, lake.partition(root, lake.VOCAB_ITEMS, date), "item_idx")
    _, max_user = _vocab_stats(io, lake.partition(root, lake.VOCAB_USERS, date), "user_idx")
    day_start, _ = _day_bounds(date)
    return {
        "max_item_idx": max_item or 0,
        "max_user_idx": max_user or 0,
        "price_buckets": settings.price_buckets,
        "day_start": day_start,
        "window_start": day_start - pd.Timedelta(days=settings.window_days),
    }


def prepare_item_features(io: Lake, settings: Settings, path: str | None) -> Prepared:
    path = path or lake.partition(settings.lake_root, lake.ITEM_FEATURES, settings.run_date)
    df = io.read(path)
    df = df.drop(columns=["title_tokens"]) if isinstance(io, PandasLake) else df.drop("title_tokens")
    return path, df, _feature_params(io, settings)


def prepare_train_examples(io: Lake, settings: Settings, path: str | None) -> Prepared:
    path = path or lake.partition(settings.lake_root, lake.TRAIN_EXAMPLES, settings.run_date)
    df = _with_list_extremes(io, path, {"history": (S.HISTORY_MIN, S.HISTORY_MAX)})
    return path, df, _feature_params(io, settings)


def prepare_user_histories(io: Lake, settings: Settings, path: str | None) -> Prepared:
    path = path or lake.partition(settings.lake_root, lake.USER_HISTORIES, settings.run_date)
    df = _with_list_extremes(
        io, path, {"history": (S.HISTORY_MIN, S.HISTORY_MAX), "seen": (S.SEEN_MIN, S.SEEN_MAX)}
    )
    return path, df, _feature_params(io, settings)


def prepare_model_metrics(io: Lake, settings: Settings, path: str | None) -> Prepared:
    """One row: the best non-popularity model of any role (the gate may promote a baseline), next to popularity."""
    path = path or lake.partition(settings.lake_root, lake.METRICS, settings.run_date)
    rows = PandasLake().read(path)
    rows = rows[rows["segment"] == "all"]
    k = settings.eval_k
    wide = rows.pivot_table(
        index=["model", "model_version", "role"], columns="metric", values="value", aggfunc="max"
    ).reset_index()
    for name in (f"recall_at_{k}", f"ndcg_at_{k}", settings.gate_metric):
        if name not in wide:
            wide[name] = np.nan
    popularity = wide[wide["model"] == "popularity"]
    models = wide[
        wide["role"].isin(["candidate", "baseline", "production"]) & (wide["model"] != "popularity")
    ]
    best = models.sort_values(settings.gate_metric, ascending=False, na_position="last").head(1)
    out = pd.DataFrame(
        {
            "model": best["model"].astype(str),
            "model_version": best["model_version"].astype(str),
            "role": best["role"].astype(str),
            S.RECALL: best[f"recall_at_{k}"].astype(float),
            S.NDCG: best[f"ndcg_at_{k}"].astype(float),
        }
    )
    pop_recall = popularity[f"recall_at_{k}"].max() if len(popularity) else np.nan
    pop_ndcg = popularity[f"ndcg_at_{k}"].max() if len(popularity) else np.nan
    out["popularity_" + S.RECALL] = float(pop_recall)
    out["popularity_" + S.NDCG] = float(pop_ndcg)
    out[S.RECALL_LIFT] = out[S.RECALL] - float(pop_recall)
    out[S.NDCG_LIFT] = out[S.NDCG] - float(pop_ndcg)
    params: dict[str, Any] = {
        "min_recall": settings.min_recall_at_k,
        "min_ndcg": settings.min_ndcg_at_k,
        "min_lift": settings.min_lift_over_popularity,
        "checked_model": None,
    }
    if len(out):
        row = out.iloc[0]
        params["checked_model"] = (
            f"{row['model']}/{row['model_version']} ({row['role']}): recall@{k}={row[S.RECALL]:.4f} "
            f"ndcg@{k}={row[S.NDCG]:.4f}; popularity recall@{k}={pop_recall:.4f} ndcg@{k}={pop_ndcg:.4f}"
        )
    return path, io.frame(out.reset_index(drop=True)), params


def staging_path(settings: Settings, name: str = lake.RECOMMENDATIONS) -> str:
    """The newest staging copy of ``name`` for the run's date (the run that just scored)."""
    base = _local(f"{lake.table(settings.lake_root, lake.STAGING)}/{name}/dt={settings.ds}")
    runs = [p for p in glob.glob(f"{base}/run=*") if os.path.isdir(p) and _has_data(p)]
    if not runs:
        if os.path.isdir(base) and _has_data(base):
            return base
        raise FileNotFoundError(f"no staging copy of {name} for dt={settings.ds} under {base}")
    return max(runs, key=os.path.getmtime)


def prepare_recommendations(io: Lake, settings: Settings, path: str | None) -> Prepared:
    root, date = settings.lake_root, settings.run_date
    path = path or staging_path(settings)
    items_path = lake.partition(root, lake.ITEM_FEATURES, date)
    histories_path = lake.partition(root, lake.USER_HISTORIES, date)
    params = {
        "top_n": settings.top_n,
        "max_rows_short": settings.top_n if settings.category_cap else 0,
        "score_tolerance": SCORE_TOLERANCE,
        "max_cold_start_share": settings.max_cold_start_share,
    }
    if isinstance(io, SparkLake):
        df, users = _recommendation_helpers_spark(io, settings, path, items_path, histories_path)
    else:
        df, users = _recommendation_helpers_pandas(io, settings, path, items_path, histories_path)
    params["expected_users"] = users
    return path, df, params


def _recommendation_helpers_pandas(
    io: PandasLake, settings: Settings, path: str, items_path: str, histories_path: str
) -> tuple[pd.DataFrame, int]:
    recs = io.read(path)
    items = io.read(items_path, ["item_id", "item_idx", "available"])
    available_idx = pa.array(items.loc[items["available"], "item_idx"].to_numpy(), pa.int32())
    histories = io.arrow(histories_path, ["user_id", "seen"])
    seen = pa.table(
        {
            "user_id": pc.take(histories.column("user_id"), pc.list_parent_indices(histories.column("seen"))),
            "item_idx": pc.list_flatten(histories.column("seen")),
        }
    ).to_pandas()
    seen_available = (
        seen[seen["item_idx"].isin(available_idx.to_numpy())]
        .groupby("user_id")
        .size()
        .rename("seen_available")
    )

    recs = recs.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
    by_user = recs.groupby("user_id", sort=False)
    recs[S.USER_ROWS] = by_user["rank"].transform("size")
    recs[S.SCORE_RISE] = recs["score"].astype("float64") - by_user["score"].shift(1).astype("float64")
    recs = recs.merge(items.rename(columns={"available": S.ITEM_AVAILABLE}), on="item_id", how="left")
    recs[S.ITEM_KNOWN] = recs["item_idx"].notna()
    recs[S.ITEM_AVAILABLE] = recs[S.ITEM_AVAILABLE].eq(True)  # unknown items are not available
    seen_pairs = seen.assign(**{S.ITEM_SEEN: True}).drop_duplicates(["user_id", "item_idx"])
    recs = recs.merge(seen_pairs, on=["user_id", "item_idx"], how="left")
    recs[S.ITEM_SEEN] = recs[S.ITEM_SEEN].eq(True)
    recs = recs.merge(seen_available, left_on="user_id", right_index=True, how="left")
    unseen_available = len(available_idx) - recs["seen_available"].fillna(0).astype("int64")
    recs[S.ROWS_SHORT] = np.minimum(settings.top_n, unseen_available) - recs[S.USER_ROWS]
    recs[S.IS_COLD_START] = (recs["strategy"] == "cold_start").astype("int64")
    recs = recs.drop(columns=["item_idx", "seen_available"])
    # ids and labels as categories: GE's pandas engine copies the frame per metric, and copying (and null-testing)
    # integer codes is many times cheaper than object columns of 2M strings
    recs = recs.astype({name: "category" for name in ("user_id", "item_id", "model_version", "strategy")})
    # every user with history must appear: expected = users with history + the table's other (cold) users
    expected_users = len(set(histories.column("user_id").to_pylist()) | set(recs["user_id"].unique()))
    return recs, expected_users


def _recommendation_helpers_spark(
    io: SparkLake, settings: Settings, path: str, items_path: str, histories_path: str
) -> tuple[Any, int]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    recs = io.read(path)
    items = io.read(items_path, ["item_id", "item_idx", "available"])
    available = items.where("available").select("item_idx")
    n_available = available.count()
    histories = io.read(histories_path, ["user_id", "seen"])
    seen = histories.select("user_id", F.explode("seen").alias("item_idx")).distinct()
    seen_available = (
        seen.join(available, "item_idx").groupBy("user_id").agg(F.count("*").alias("seen_available"))
    )
    per_user = Window.partitionBy("user_id")
    by_rank = per_user.orderBy("rank")
    df = (
        recs.withColumn(S.USER_ROWS, F.count("*").over(per_user))
        .withColumn(
            S.SCORE_RISE, F.col("score").cast("double") - F.lag(F.col("score").cast("double")).over(by_rank)
        )
        .join(items.withColumnRenamed("available", S.ITEM_AVAILABLE), "item_id", "left")
        .withColumn(S.ITEM_KNOWN, F.col("item_idx").isNotNull())
        .withColumn(S.ITEM_AVAILABLE, F.coalesce(F.col(S.ITEM_AVAILABLE), F.lit(False)))
        .join(seen.withColumn(S.ITEM_SEEN, F.lit(True)), ["user_id", "item_idx"], "left")
        .withColumn(S.ITEM_SEEN, F.coalesce(F.col(S.ITEM_SEEN), F.lit(False)))
        .join(seen_available, "user_id", "left")
        .withColumn(
            S.ROWS_SHORT,
            F.least(F.lit(settings.top_n), F.lit(n_available) - F.coalesce(F.col("seen_available"), F.lit(0)))
            - F.col(S.USER_ROWS),
        )
        .withColumn(S.IS_COLD_START, (F.col("strategy") == "cold_start").cast("long"))
        .drop("item_idx", "seen_available")
    )
    expected_users = histories.select("user_id").union(recs.select("user_id")).distinct().count()
    return df.cache(), expected_users


class NotStaged(Exception):  # noqa: N818 - a state, not an error: the report lists it, nothing fails
    """The score job did not stage the table for this date (its staging folder holds ``_SKIPPED.json``)."""


def staged_copy(settings: Settings, name: str, path: str | None) -> str:
    """``path``, else the newest staging copy of ``name``; raises :class:`NotStaged` (with the score job's reason)
    when the newest staging folder of the date is a ``_SKIPPED.json`` alone."""
    from storage.publish import SKIPPED

    if path:
        return path
    base = _local(f"{lake.table(settings.lake_root, lake.STAGING)}/{name}/dt={settings.ds}")
    runs = [p for p in glob.glob(f"{base}/run=*") if os.path.isdir(p)]
    newest = max(runs, key=os.path.getmtime) if runs else None
    if newest is not None and os.path.exists(f"{newest}/{SKIPPED}") and not _has_data(newest):
        with open(f"{newest}/{SKIPPED}", encoding="utf-8") as handle:
            raise NotStaged(json.load(handle).get("reason", "the score job staged no rows"))
    return staging_path(settings, name)


def _day_recommendations(settings: Settings) -> str:
    """The recommendations the embeddings belong to: the newest staging copy, else (validating a given folder
    after publish) the published partition of the date."""
    try:
        return staging_path(settings)
    except FileNotFoundError:
        published = lake.partition(settings.lake_root, lake.RECOMMENDATIONS, settings.run_date)
        if os.path.isdir(_local(published)) and _has_data(_local(published)):
            return published
        raise


def _embedding_params(io: Lake, settings: Settings, name: str, path: str) -> dict[str, Any]:
    """The expectation parameters both embeddings suites share: the staged recommendations' model versions and
    the other embeddings table's dimension (this table's own when that one is not staged)."""
    from schemas.outputs import EMBEDDINGS_MAX_DIMENSION

    recs = PandasLake().arrow(_day_recommendations(settings), ["model_version"])
    other = lake.ITEM_EMBEDDINGS if name == lake.USER_EMBEDDINGS else lake.USER_EMBEDDINGS
    try:
        paired_path = staged_copy(settings, other, None)
    except (FileNotFoundError, NotStaged):
        paired_path = path
    dimensions = PandasLake().arrow(paired_path, ["dimension"]).column("dimension")
    return {
        "max_dimension": EMBEDDINGS_MAX_DIMENSION,
        "model_versions": sorted(set(recs.column("model_version").to_pylist())),
        "paired_dimension": int(dimensions[0].as_py()) if len(dimensions) else 0,
        "paired_with": paired_path,
    }


def _vector_helpers_pandas(table: pa.Table) -> pd.DataFrame:
    """The table without its list columns, which become their lengths (null stays null), plus VECTOR_LENGTH and
    VECTOR_FINITE: GE's pandas engine copies the frame per metric, and lists of floats would be copied too."""
    vector = table.column("vector")
    lengths = pc.list_value_length(vector).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(vector)
    finite = pc.fill_null(pc.is_finite(flat), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(vector).to_numpy()
    bad = (
        np.bincount(parents[~finite], minlength=table.num_rows) if len(parents) else np.zeros(table.num_rows)
    )
    lists = [name for name in table.column_names if pa.types.is_list(table.schema.field(name).type)]
    df = table.drop_columns(lists).to_pandas()
    for name in lists:
        df[name] = pc.list_value_length(table.column(name)).to_pandas()  # float with NaN where null
    df[S.VECTOR_LENGTH] = np.nan_to_num(lengths.astype("float64"), nan=-1).astype("int64")
    df[S.VECTOR_FINITE] = (bad == 0) & table.column("vector").is_valid().to_numpy(zero_copy_only=False)
    return df


def _vector_helpers_spark(df: Any) -> Any:
    from pyspark.sql import functions as F

    finite = F.forall("vector", lambda x: x.isNotNull() & ~F.isnan(x) & (F.abs(x) != float("inf")))
    df = df.withColumn(S.VECTOR_LENGTH, F.coalesce(F.size("vector"), F.lit(-1)))
    df = df.withColumn(S.VECTOR_FINITE, F.coalesce(finite, F.lit(False)))
    for name, kind in df.dtypes:
        if kind.startswith("array"):
            df = df.withColumn(name, F.when(F.col(name).isNotNull(), F.size(name)))
    return df


def prepare_user_embeddings(io: Lake, settings: Settings, path: str | None) -> Prepared:
    path = staged_copy(settings, lake.USER_EMBEDDINGS, path)
    params = _embedding_params(io, settings, lake.USER_EMBEDDINGS, path)
    recs = PandasLake().arrow(_day_recommendations(settings), ["user_id", "strategy"])
    model_users = set(pc.filter(recs["user_id"], pc.equal(recs["strategy"], "model")).to_pylist())
    params["model_users"] = len(model_users)
    if isinstance(io, SparkLake):
        from pyspark.sql import functions as F

        users = io.spark.createDataFrame([(u,) for u in sorted(model_users)], "user_id string")
        df = _vector_helpers_spark(io.read(path)).join(
            users.withColumn(S.IN_RECOMMENDATIONS, F.lit(True)), "user_id", "left"
        )
        return path, df.fillna({S.IN_RECOMMENDATIONS: False}).cache(), params
    df = _vector_helpers_pandas(io.arrow(path))
    df[S.IN_RECOMMENDATIONS] = df["user_id"].isin(model_users)
    return path, df, params


def prepare_item_embeddings(io: Lake, settings: Settings, path: str | None) -> Prepared:
    path = staged_copy(settings, lake.ITEM_EMBEDDINGS, path)
    params = _embedding_params(io, settings, lake.ITEM_EMBEDDINGS, path)
    items_path = lake.partition(settings.lake_root, lake.ITEM_FEATURES, settings.run_date)
    catalogue = (
        PandasLake().read(items_path, ["item_id", "available"]).rename(columns={"available": "listed"})
    )
    params["catalogue_items"] = len(catalogue)
    if isinstance(io, SparkLake):
        from pyspark.sql import functions as F

        listed = io.spark.createDataFrame(catalogue).withColumn(S.ITEM_KNOWN, F.lit(True))
        df = (
            _vector_helpers_spark(io.read(path))
            .join(listed, "item_id", "left")
            .withColumn(S.ITEM_KNOWN, F.coalesce(F.col(S.ITEM_KNOWN), F.lit(False)))
            .withColumn(
                S.AVAILABLE_AS_CATALOGUE, F.coalesce(F.col("available") == F.col("listed"), F.lit(False))
            )
            .drop("listed")
        )
        return path, df.cache(), params
    df = _vector_helpers_pandas(io.arrow(path)).merge(catalogue, on="item_id", how="left")
    df[S.ITEM_KNOWN] = df["listed"].notna()
    df[S.AVAILABLE_AS_CATALOGUE] = df["available"].eq(df["listed"]) & df[S.ITEM_KNOWN]
    df = df.drop(columns=["listed"])
    df = df.astype({name: "category" for name in ("item_id", "model_version")})
    return path, df, params


PREPARE: dict[str, Callable[[Lake, Settings, str | None], Prepared]] = {
    "raw_events": prepare_raw_events,
    "clean_events": prepare_clean_events,
    "features_vocab_items": prepare_vocabulary(lake.VOCAB_ITEMS, "item_idx"),
    "features_vocab_users": prepare_vocabulary(lake.VOCAB_USERS, "user_idx"),
    "features_items": prepare_item_features,
    "features_train_examples": prepare_train_examples,
    "features_user_histories": prepare_user_histories,
    "model_metrics": prepare_model_metrics,
    "recommendations": prepare_recommendations,
    "user_embeddings": prepare_user_embeddings,
    "item_embeddings": prepare_item_embeddings,
}


# ---- Great Expectations: one ephemeral context per process ----------------------------------------------------
_CONTEXT: Any = None


def gx_context() -> Any:
    """The process's ephemeral context with every suite registered (creating one costs time; reuse it)."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        for suite in S.SUITES.values():
            context.suites.add(suite)
        _CONTEXT = context
    return _CONTEXT


def _validation_definition(context: Any, engine: str, suite_name: str) -> Any:
    import great_expectations as gx

    name = f"{suite_name}:{engine}"
    try:
        return context.validation_definitions.get(name)
    except Exception:  # noqa: BLE001 - GE raises its own not-found types; absent means create it
        pass
    try:
        source = context.data_sources.get(engine)
    except KeyError:
        source = (
            context.data_sources.add_spark(engine)
            if engine == "spark"
            else context.data_sources.add_pandas(engine)
        )
    asset = source.add_dataframe_asset(suite_name)
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.get(suite_name)
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )


def _use_report_dir(context: Any, settings: Settings) -> str | None:
    """Results store and Data Docs site of the run's date, so one index lists every suite of the day."""
    report = _local(lake.report_dir(settings.lake_root, settings.run_date))
    if "://" in report:  # Data Docs only for local lakes; results still go to the log
        return None
    store = f"validations_{settings.ds}_{abs(hash(report))}"
    if store not in context.stores:
        context.add_store(
            store,
            {
                "class_name": "ValidationResultsStore",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": f"{report}/gx_validations",
                },
            },
        )
    context.variables.validation_results_store_name = store
    context.config.validation_results_store_name = store
    site = {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": f"{report}/data_docs",
        },
    }
    if DOCS_SITE in context.list_data_docs_sites():
        context.update_data_docs_site(DOCS_SITE, site)
    else:
        context.add_data_docs_site(DOCS_SITE, site)
    return report


def suite_names(name: str) -> tuple[str, ...]:
    name = SUITE_ALIASES.get(name, name)
    if name in S.SUITE_GROUPS:
        return S.SUITE_GROUPS[name]
    if name in S.SUITES:
        return (name,)
    raise ValueError(f"unknown suite {name!r}; one of {sorted(S.SUITE_GROUPS)} or {sorted(S.SUITES)}")


def validate(
    settings: Settings,
    suite_name: str,
    spark: Any = None,
    table_path: str | None = None,
    engine: str | None = None,
    build_docs: bool = True,
) -> ValidationReport:
    """Run the suite (or suite group) on the run date's partition(s); returns the report, never raises on failure.

    ``spark``: a SparkSession for the Spark engine (created from settings when the engine is spark and none is
    given). ``table_path`` overrides the table location (only for single-table suites).
    """
    from great_expectations.core.run_identifier import RunIdentifier

    started = time.perf_counter()
    names = suite_names(suite_name)
    engine = engine or ("spark" if spark is not None else settings.validation_engine)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if table_path and len(names) > 1:
        raise ValueError(f"--table-path needs a single-table suite; {suite_name!r} validates {names}")
    if engine == "spark" and spark is None:
        from storage.spark import spark_session

        spark = spark_session(settings, "validate")
    io: Lake = SparkLake(spark) if engine == "spark" else PandasLake()

    context = gx_context()
    report_dir = _use_report_dir(context, settings) if build_docs else None
    run_id = RunIdentifier(run_name=f"dt={settings.ds}")
    tables = []
    not_staged: dict[str, str] = {}
    for name in names:
        try:
            path, frame, params = PREPARE[name](io, settings, table_path)
        except NotStaged as skipped:
            not_staged[name] = str(skipped)
            log.info("%s: not staged for dt=%s: %s", name, settings.ds, skipped)
            continue
        if isinstance(frame, pd.DataFrame):
            frame = _widen_numbers(frame)
        rows = len(frame) if isinstance(frame, pd.DataFrame) else int(frame.count())
        gx_params = {k: v for k, v in params.items() if k not in INFO_KEYS}
        definition = _validation_definition(context, engine, name)
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=gx_params,
            result_format="SUMMARY",
            run_id=run_id,
        )
        if hasattr(frame, "unpersist"):  # Spark: a cached helper frame must not outlive its run
            frame.unpersist()
        tables.append(TableResult(name, path, rows, params, result))
        log.info(
            "%s: %s on %s rows (%s) params=%s",
            name,
            "ok" if result.success else "FAILED",
            rows,
            path,
            {k: _short(v, 80) for k, v in params.items()},
        )
    docs = None
    if report_dir is not None:
        docs = context.build_data_docs(site_names=[DOCS_SITE]).get(DOCS_SITE)
    return ValidationReport(
        suite_name, settings.ds, engine, tables, docs, time.perf_counter() - started, not_staged
    )


def _widen_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """int64/float64 columns: GE's pandas range checks are vectorised only for those, per value (slow) otherwise.

    Naive timestamps (Spark may write them without the UTC flag) are the lake's UTC instants: localised to UTC,
    so they compare with the UTC window bounds.
    """
    changes: dict[str, Any] = {}
    for name, dtype in df.dtypes.items():
        if pd.api.types.is_datetime64_dtype(dtype) and not isinstance(dtype, pd.DatetimeTZDtype):
            df = df.assign(**{str(name): df[name].dt.tz_localize("UTC")})
            continue
        if (
            pd.api.types.is_integer_dtype(dtype)
            and dtype != np.int64
            and not isinstance(dtype, pd.api.extensions.ExtensionDtype)
        ):
            changes[name] = np.int64
        elif pd.api.types.is_float_dtype(dtype) and dtype != np.float64:
            changes[name] = np.float64
    # one consolidated block per dtype: GE copies the frame per metric, and unconsolidated frames copy slowly
    return (df.astype(changes) if changes else df).copy()


def check(settings: Settings, suite_name: str, **kwargs: Any) -> ValidationReport:
    """``validate`` that raises :class:`ValidationFailed` (message: every failed expectation) when a suite fails."""
    report = validate(settings, suite_name, **kwargs)
    report.raise_for_failure()
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", required=True, help=f"one of {sorted(S.SUITE_GROUPS)} or a suite name")
    parser.add_argument(
        "--table-path", default=None, help="validate this folder instead of the lake partition"
    )
    parser.add_argument("--engine", choices=ENGINES, default=None, help="overrides --validation-engine")
    Settings.add_arguments(parser)
    args = vars(parser.parse_args(argv))
    suite, table_path, engine = args.pop("suite"), args.pop("table_path"), args.pop("engine")
    settings = Settings.load(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        report = validate(settings, suite, table_path=table_path, engine=engine)
    except (
        FileNotFoundError
    ) as missing:  # a missing input is no transient fault: a retry cannot find it either
        raise SystemExit(f"missing input for suite {suite!r}: {missing}") from None
    if not report.success:  # the message (on stderr, or in the task's error) names every failed expectation
        raise SystemExit(report.summary())
    print(report.summary(), flush=True)


if __name__ == "__main__":
    main()
