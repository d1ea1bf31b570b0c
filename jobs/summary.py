"""The run summary: rows in/out per stage, model metrics, the gate's decision and durations for one date.

Written after every run (the DAG's ``summary`` task, trigger rule all_done, so failed runs get one too) to
``reports/dt=D/summary.json``, ``summary.md`` and ``summary.html``. Reads only what the stages left in the lake
(run manifests, the metrics table, the production pointer, the published tables), so it works on any lake root
pyarrow can open (local path, file://, s3a://, hdfs://).

    python -m jobs.summary --date 2026-01-14
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from schemas import lake
from schemas.settings import Settings
from storage import lake_io

# stages in pipeline order; manifests of other stages are listed after these
STAGE_ORDER = ("generate", "clean", "features", "train", "evaluate", "gate", "score", "validate", "publish")
HEADLINE_METRICS = ("recall", "ndcg", "precision", "map", "hit_rate", "mrr", "coverage")


def _read_json(uri: str) -> Any | None:
    """A JSON file's content, or None when it is absent or unreadable: the summary also runs after failures."""
    try:
        return lake_io.read_json(uri)
    except (OSError, ValueError):
        return None


def stage_manifests(settings: Settings) -> list[dict[str, Any]]:
    """Every ``runs/<stage>/dt=D/manifest.json`` found, in pipeline order, with a duration when it has times."""
    filesystem, runs_dir = lake_io.filesystem(lake.table(settings.lake_root, lake.RUNS))
    if not lake_io.exists(runs_dir, filesystem):
        return []
    stages = [
        info.base_name
        for info in filesystem.get_file_info(pafs.FileSelector(runs_dir))
        if info.type == pafs.FileType.Directory and info.base_name != "table"
    ]
    stages.sort(key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
    found = []
    for stage in stages:
        manifest = _read_json(lake.run_manifest(settings.lake_root, stage, settings.ds))
        if isinstance(manifest, dict):
            found.append({"stage": stage, "manifest": manifest, "seconds": _duration(manifest)})
    return found


def _duration(manifest: dict[str, Any]) -> float | None:
    if isinstance(manifest.get("seconds"), int | float):
        return float(manifest["seconds"])
    try:
        start = dt.datetime.fromisoformat(str(manifest["started_at"]).replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(str(manifest["finished_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return round((end - start).total_seconds(), 3)


def _counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's counts: its ``counts`` object, else its top-level numbers."""
    counts = manifest.get("counts")
    if isinstance(counts, dict):
        return counts
    return {k: v for k, v in manifest.items() if isinstance(v, int | float) and not isinstance(v, bool)}


# stages whose manifests predate the rows_in/rows_out keys: which of their counts are the rows in and out
ROWS_IN_OUT = {"clean": ("raw_events", "clean_events")}


def rows_in_out(stage: str, counts: dict[str, Any]) -> tuple[Any, Any]:
    """(rows in, rows out) of a stage's manifest counts; None where the stage does not say."""
    keys = (
        ("rows_in", "rows_out") if ("rows_in" in counts or "rows_out" in counts) else ROWS_IN_OUT.get(stage)
    )
    return (counts.get(keys[0]), counts.get(keys[1])) if keys else (None, None)


def metric_rows(settings: Settings) -> list[dict[str, Any]]:
    """Rows of ``metrics/dt=D`` (schemas.outputs.METRIC), or [] when evaluation did not run."""
    try:
        return lake_io.read_partition(settings.lake_root, lake.METRICS, settings.ds).to_pylist()
    except FileNotFoundError:
        return []


def metric_label(metric: str, k: int | None) -> str:
    """``recall``+10 -> ``recall@10``; names that already carry K (``ndcg_at_10``) keep it."""
    if "_at_" in metric:
        name, _, kk = metric.rpartition("_at_")
        return f"{name}@{kk}"
    return f"{metric}@{k}" if k else metric


def metric_value(
    rows: Iterable[dict[str, Any]], model_or_role: str, metric: str, k: int, segment: str = "all"
) -> float | None:
    """One number from the metrics table, matching the model name or its role (e.g. ``production``)."""
    wanted = metric_label(metric, k)
    for row in rows:
        if row.get("segment", "all") != segment:
            continue
        if model_or_role not in (row.get("model"), row.get("role")):
            continue
        if metric_label(str(row["metric"]), row.get("k")) == wanted:
            return float(row["value"])
    return None


def metrics_table(rows: list[dict[str, Any]], segment: str = "all") -> dict[str, dict[str, float]]:
    """``{model: {label: value}}`` for one segment, the headline metrics first."""
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.get("segment", "all") != segment:
            continue
        name = str(row["model"]) + (f" ({row['role']})" if row.get("role") else "")
        table.setdefault(name, {})[metric_label(str(row["metric"]), row.get("k"))] = float(row["value"])
    return table


def output_counts(settings: Settings) -> dict[str, Any]:
    """Rows and users of the published tables for D (absent when publish did not run)."""
    out: dict[str, Any] = {}
    for name in (lake.RECOMMENDATIONS, lake.SIMILAR_ITEMS):
        key_column = "user_id" if name == lake.RECOMMENDATIONS else "item_id"
        try:
            table = lake_io.read_partition(settings.lake_root, name, settings.ds, columns=[key_column])
        except FileNotFoundError:
            continue
        out[name] = {
            "path": lake.partition(settings.lake_root, name, settings.ds),
            "rows": table.num_rows,
            f"distinct_{key_column}s": len(table.column(key_column).unique()),
        }
    return out


def collect(
    settings: Settings,
    run_id: str = "",
    gate_decision: dict[str, Any] | None = None,
    run_started_at: dt.datetime | None = None,
) -> dict[str, Any]:
    production = _read_json(lake.production_pointer(settings.lake_root))
    stages = stage_manifests(settings)
    rows = metric_rows(settings)
    now = dt.datetime.now(dt.UTC)
    return {
        "run_date": settings.ds,
        "run_id": run_id,
        "generated_at": now.isoformat(timespec="seconds"),
        "run_seconds": round((now - run_started_at).total_seconds(), 1) if run_started_at else None,
        "scenario": settings.scenario,
        "lake_root": settings.lake_root,
        "stages": [
            {
                "stage": s["stage"],
                "seconds": s["seconds"],
                **dict(
                    zip(("rows_in", "rows_out"), rows_in_out(s["stage"], _counts(s["manifest"])), strict=True)
                ),
                "counts": _counts(s["manifest"]),
            }
            for s in stages
        ],
        "metrics": metrics_table(rows),
        "gate": gate_decision,
        "production": production,
        "outputs": output_counts(settings),
    }


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# recflow run summary for {summary['run_date']}",
        "",
        f"- run: `{summary['run_id']}`  scenario: `{summary['scenario']}`  lake: `{summary['lake_root']}`",
        f"- written: {summary['generated_at']}"
        + (f"  (run took {summary['run_seconds']} s so far)" if summary.get("run_seconds") else ""),
        "",
    ]
    lines += ["## Stages", ""]
    if summary["stages"]:
        lines += ["| stage | seconds | rows in | rows out | counts |", "| --- | ---: | ---: | ---: | --- |"]
        for stage in summary["stages"]:
            counts = (
                ", ".join(
                    f"{k}={_short(v)}" for k, v in stage["counts"].items() if k not in ("rows_in", "rows_out")
                )
                or "-"
            )
            seconds = "-" if stage["seconds"] is None else f"{stage['seconds']:.1f}"
            rows_in, rows_out = (
                "-" if stage.get(k) is None else _short(stage[k]) for k in ("rows_in", "rows_out")
            )
            lines.append(f"| {stage['stage']} | {seconds} | {rows_in} | {rows_out} | {counts} |")
    else:
        lines.append("No run manifests for this date.")
    lines += ["", "## Model metrics (all users, held-out next-day events)", ""]
    metrics = summary["metrics"]
    if metrics:
        labels = _metric_columns(metrics)
        lines += ["| model | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
        for model, values in metrics.items():
            lines.append(f"| {model} | " + " | ".join(_fmt(values.get(label)) for label in labels) + " |")
    else:
        lines.append("No metrics for this date (training skipped or evaluation did not run).")
    lines += ["", "## Promotion", ""]
    gate = summary.get("gate")
    lines.append(f"- gate decision: `{json.dumps(gate, default=str)}`" if gate else "- gate did not run")
    test = (gate or {}).get("significance")
    if test:
        lines.append(
            f"- lead over production ({test['metric']}): {test['lead']:+.4f}, {test['confidence']:.0%} CI "
            f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}] over {test['users']} users"
        )
    production = summary.get("production")
    lines.append(
        f"- production model: `{json.dumps(production, default=str)}`"
        if production
        else "- no production model"
    )
    lines += ["", "## Published", ""]
    if summary["outputs"]:
        for name, info in summary["outputs"].items():
            extra = ", ".join(f"{k}={v}" for k, v in info.items() if k != "path")
            lines.append(f"- `{name}`: {extra} at `{info['path']}`")
    else:
        lines.append("Nothing published for this date.")
    return "\n".join(lines) + "\n"


def to_html(summary: dict[str, Any]) -> str:
    """The Markdown page in a <pre>, plus the metrics as a real table: readable without any renderer."""
    metrics = summary["metrics"]
    table = ""
    if metrics:
        labels = _metric_columns(metrics)
        head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
        body = "".join(
            f"<tr><td>{html.escape(model)}</td>"
            + "".join(f"<td>{_fmt(values.get(label))}</td>" for label in labels)
            + "</tr>"
            for model, values in metrics.items()
        )
        table = f"<h2>Metrics</h2><table border=1 cellpadding=4><tr><th>model</th>{head}</tr>{body}</table>"
    return (
        f"<!doctype html><meta charset=utf-8><title>recflow {html.escape(summary['run_date'])}</title>"
        f"<body style='font-family:sans-serif'>{table}<h2>Summary</h2>"
        f"<pre>{html.escape(to_markdown(summary))}</pre></body>"
    )


def _metric_columns(metrics: dict[str, dict[str, float]]) -> list[str]:
    labels = sorted({label for values in metrics.values() for label in values})
    return sorted(
        labels,
        key=lambda lab: (
            next((i for i, m in enumerate(HEADLINE_METRICS) if lab.startswith(m)), len(HEADLINE_METRICS)),
            lab,
        ),
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def write(
    settings: Settings,
    run_id: str = "",
    gate_decision: dict[str, Any] | None = None,
    run_started_at: dt.datetime | None = None,
) -> dict[str, str]:
    """Collect and write ``summary.{json,md,html}`` under ``reports/dt=D/``; returns their paths."""
    summary = collect(settings, run_id, gate_decision, run_started_at)
    report_dir = lake.report_dir(settings.lake_root, settings.ds)
    bodies = {
        "json": json.dumps(summary, indent=2, default=str),
        "md": to_markdown(summary),
        "html": to_html(summary),
    }
    paths = {}
    for ext, body in bodies.items():
        path = f"{report_dir}/summary.{ext}"
        lake_io.write_text_atomic(path, body)
        paths[ext] = path
    print(to_markdown(summary))
    print(f"summary written to {paths['md']} (and .json, .html)")
    return paths


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_cli(argv, description="Write the run summary for a date.")
    write(settings)


if __name__ == "__main__":
    main()
