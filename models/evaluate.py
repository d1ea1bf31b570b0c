"""Evaluation of every candidate and the production model on the next-day split, the same way for all models.

For run date D: users active on D (``features/validation/dt=D``) get top K from each model over the available
items of ``features/items/dt=D`` (what scoring may recommend), excluding the items they had in the window; their
items on D are the relevant set. Metrics (``models.metrics``) overall, for cold users (fewer than
``COLD_HISTORY_BELOW`` items in the window) and for warm users, go to ``metrics/dt=D`` (schema
``schemas.outputs.METRIC``) and to an HTML report with PNG plots under ``reports/dt=D/``. The per-user values
behind the overall means go to ``metrics_per_user/dt=D`` (``schemas.outputs.USER_METRIC``): the gate tests a
candidate's lead over production on them, and the report shows each candidate's lead with its interval.

``topk_for`` is the one way to get top K from any model through the scoring contract: blocked matrix product of
user and item embeddings (:class:`scoring.dot_scores.CatalogueProduct`), exclusion, then ``tf.math.top_k`` per
block.
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from models import gate, metrics, registry, tracking
from models.data import load_profiles
from schemas import features as feature_schemas
from schemas import lake
from schemas.outputs import METRIC, USER_METRIC
from schemas.settings import Settings
from storage import lake_io

log = logging.getLogger(__name__)

COLD_HISTORY_BELOW = 3  # users with fewer window items than this are "cold"
SEGMENTS = ("all", "cold", "warm")
PLOT_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")


# ---- top K through the scoring contract ---------------------------------------------------------------
def _encode(model: Any, which: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Call ``encode_users``/``encode_items`` on a ``LoadedModel`` (keywords) or an in-memory ScoringModule."""
    from scoring import contract

    if isinstance(model, contract.LoadedModel):
        return getattr(model, which)(**inputs)
    import tensorflow as tf

    names, specs = (
        (contract.USER_INPUTS, contract.USER_SIGNATURE)
        if which == "encode_users"
        else (contract.ITEM_INPUTS, contract.ITEM_SIGNATURE)
    )
    args = [tf.convert_to_tensor(inputs[n], dtype=s.dtype) for n, s in zip(names, specs, strict=True)]
    return getattr(model, which)(*args).numpy()


def topk_for(
    model: Any,
    users: Mapping[str, np.ndarray],
    items: Mapping[str, np.ndarray],
    k: int,
    exclude_seen: bool = True,
    exclude: np.ndarray | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` item indices and scores [users, k] for a model (``LoadedModel`` or in-memory module).

    ``users``: the user inputs of the contract (``user_idx``, ``history``, ``seen``, ``age_bucket_idx``,
    ``region_idx``); ``items``: the item inputs (the candidate catalogue). Items in ``exclude`` (default: the
    padded ``seen`` matrix when ``exclude_seen``) score -inf. Returned indices are ``item_idx`` values.
    An item-item model (``scoring.neighbours.NeighbourModel``) is scored as a sparse product of ``seen`` with its
    neighbour matrix instead; its short lists are filled by popularity (score 0).
    """
    from scoring.neighbours import NeighbourModel, top_k_items

    item_idx = np.asarray(items["item_idx"], dtype=np.int64)
    if isinstance(model, NeighbourModel):
        if exclude is None and exclude_seen:
            exclude = np.asarray(users["seen"])
        return top_k_items(model, np.asarray(users["seen"]), item_idx, min(k, len(item_idx)), exclude)
    import tensorflow as tf

    from scoring.dot_scores import CatalogueProduct

    product = CatalogueProduct(_encode(model, "encode_items", items))
    k = min(k, len(item_idx))
    # column position of each item index, -1 for items outside the candidate catalogue
    position = np.full(int(item_idx.max(initial=0)) + 1, -1, dtype=np.int64)
    position[item_idx] = np.arange(len(item_idx))
    if exclude is None and exclude_seen:
        exclude = np.asarray(users["seen"])
    n_users = len(users["user_idx"])
    top_items = np.zeros((n_users, k), dtype=np.int64)
    top_scores = np.zeros((n_users, k), dtype=np.float32)
    for start in range(0, n_users, block):
        stop = min(start + block, n_users)
        chunk = {name: np.asarray(values)[start:stop] for name, values in users.items()}
        scores = product(_encode(model, "encode_users", chunk))
        if exclude is not None:
            excluded = np.asarray(exclude)[start:stop].astype(np.int64)
            inside = (excluded > 0) & (excluded < len(position))
            columns = np.where(inside, position[np.where(inside, excluded, 0)], -1)
            rows = np.broadcast_to(np.arange(stop - start)[:, None], columns.shape)
            hit = columns >= 0
            scores[rows[hit], columns[hit]] = -np.inf
        values, indices = tf.math.top_k(scores, k=k)
        top_items[start:stop] = item_idx[indices.numpy()]
        top_scores[start:stop] = values.numpy()
    return top_items, top_scores


def item_inputs(
    item_idx: np.ndarray,
    title_tokens: int,
    category_idx: np.ndarray | None = None,
    price_bucket: np.ndarray | None = None,
    titles: Sequence[Sequence[int]] | None = None,
    age_days: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The contract's item inputs (missing content features are zeros)."""
    n = len(item_idx)
    zeros = np.zeros(n, np.int32)
    return {
        "item_idx": np.asarray(item_idx, np.int32),
        "category_idx": zeros if category_idx is None else np.asarray(category_idx, np.int32),
        "price_bucket": zeros if price_bucket is None else np.asarray(price_bucket, np.int32),
        "title_tokens": (
            np.zeros((n, title_tokens), np.int32)
            if titles is None
            else feature_schemas.pad_ids(titles, title_tokens)
        ),
        "age_days": np.zeros(n, np.float32) if age_days is None else np.asarray(age_days, np.float32),
    }


def evaluate_topk(
    topk: np.ndarray,
    relevant: Sequence[Sequence[int]],
    cold: np.ndarray,
    item_counts: np.ndarray,
    n_items: int,
) -> dict[str, dict[str, float]]:
    """Metrics for all, cold and warm users."""
    cold = np.asarray(cold, bool)
    out = {}
    for segment, mask in (("all", np.ones_like(cold)), ("cold", cold), ("warm", ~cold)):
        chosen = np.flatnonzero(mask)
        out[segment] = metrics.ranking_metrics(
            topk[chosen], [relevant[int(i)] for i in chosen], item_counts=item_counts, n_items=n_items
        )
    return out


# ---- the nightly evaluation ---------------------------------------------------------------------------
def load_validation(settings: Settings) -> dict[str, Any]:
    """Users, items, relevance sets and training popularity for run date D (pyarrow)."""
    root, ds = settings.lake_root, settings.ds
    validation = lake_io.read_partition(root, lake.VALIDATION, ds).to_pydict()
    items_table = lake_io.read_partition(root, lake.ITEM_FEATURES, ds)
    # candidates are the items scoring may recommend: the available ones (as jobs/score does)
    items = items_table.filter(items_table.column("available")).to_pydict()
    window = lake_io.read_partition(root, lake.INTERACTIONS, ds, columns=["item_idx"])
    user_idx = np.asarray(validation["user_idx"], np.int64)
    age, region = load_profiles(settings).lookup(user_idx)
    item_idx = np.asarray(items["item_idx"], np.int64)
    all_items = items_table.column("item_idx").to_numpy()
    counts = np.bincount(window.column("item_idx").to_numpy(), minlength=int(all_items.max(initial=0)) + 1)
    seen = [s or [] for s in validation["seen"]]
    return {
        "users": feature_schemas.user_inputs(
            user_idx,
            [h or [] for h in validation["history"]],
            seen,
            settings.history_length,
            age_bucket_idx=age,
            region_idx=region,
        ),
        "items": item_inputs(
            item_idx,
            settings.title_tokens,
            items["category_idx"],
            items["price_bucket"],
            items["title_tokens"],
            items["age_days"],
        ),
        "relevant": [t or [] for t in validation["targets"]],
        "cold": np.array([len(s) < COLD_HISTORY_BELOW for s in seen]),
        "item_counts": counts.astype(np.float64),
        "n_items": len(item_idx),
    }


def training_notes(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a model's training reported that its evaluation carries along: whether the two-tower model's wide
    part was used ("used", "off", "skipped") and why not (``models.train.training_summary``)."""
    training = meta.get("training") or {}
    return {key: training[key] for key in ("wide", "wide_reason") if key in training}


def _role(meta: Mapping[str, Any]) -> str:
    return "baseline" if meta.get("kind") == "baseline" else "candidate"


def evaluate(settings: Settings, model_dirs: Sequence[str]) -> dict[str, Any]:
    """Evaluate candidates and the production model; write ``metrics/dt=D`` and ``reports/dt=D/index.html``."""
    from scoring.neighbours import load_model

    data = load_validation(settings)
    k = settings.eval_k
    production = registry.production(settings)
    entries: list[tuple[str, str]] = [(d, "") for d in model_dirs]
    if production and production.get("path") and production["path"] not in model_dirs:
        entries.append((production["path"], "production"))
    results = []
    topks: dict[str, np.ndarray] = {}
    per_user: list[tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]] = []
    skipped: list[dict[str, Any]] = []  # models training left out (e.g. over a memory budget), with why
    for folder, forced_role in entries:
        record = skipped_record(folder)
        if record is not None:
            log.warning("%s/%s was not trained: %s", record["name"], record["version"], record["reason"])
            skipped.append(record)
            continue
        try:
            model = load_model(folder)  # a SavedModel, or the sparse item-item export
        except (OSError, ValueError) as err:  # a vanished production model must not stop the run
            log.warning("cannot load %s: %s", folder, err)
            continue
        meta = model.metadata
        top, _ = topk_for(model, data["users"], data["items"], k)
        segments = evaluate_topk(top, data["relevant"], data["cold"], data["item_counts"], data["n_items"])
        is_production = production is not None and folder == production.get("path")
        label = f"{meta['name']}/{meta['version']}"
        topks[meta["name"] + (" (prod)" if is_production else "")] = top
        entry = {
            "name": meta["name"],
            "version": meta["version"],
            "path": folder,
            "kind": meta.get("kind", "unknown"),
            "role": forced_role or _role(meta),
            "is_production": is_production,
            "metrics": segments,
            "train_seconds": meta.get("train_seconds"),
            **training_notes(meta),
        }
        results.append(entry)
        rows, values = metrics.per_user_ranking(top, data["relevant"])
        per_user.append((entry, np.asarray(data["users"]["user_idx"], np.int64)[rows], values))
        if not forced_role:
            registry.record_metrics(
                folder, {"run_date": settings.ds, "k": k, **segments, **training_notes(meta)}
            )
        log.info("%s: %s", label, {m: round(v, 4) for m, v in segments["all"].items()})
    production_result = next((r for r in results if r["is_production"]), None)
    result = {
        "run_date": settings.ds,
        "k": k,
        "gate_metric": settings.gate_metric,
        "models": results,
        "production": None
        if production is None
        else {
            "name": production["name"],
            "version": production["version"],
            "path": production["path"],
            "metrics": None if production_result is None else production_result["metrics"],
        },
        "validation_users": len(data["relevant"]),
        "cold_users": int(np.sum(data["cold"])),
        "skipped": skipped,
    }
    compare_with_production(settings, per_user)
    result["metrics_path"] = lake_io.write_partition(
        metric_rows(results, skipped), settings.lake_root, lake.METRICS, settings.ds, METRIC
    )
    result["per_user_path"] = write_per_user(settings, per_user_rows(per_user))
    result["report"] = write_report(settings, result, topks, data["item_counts"])
    result["tracking"] = tracking.log_evaluation(settings, result)  # the MLflow run of the date
    return result


def skipped_record(folder: str) -> dict[str, Any] | None:
    """The record of a model training skipped (``models.baselines.register_skipped``: metadata ``status``
    "skipped" and ``skip_reason``), or None for any other folder."""
    meta = lake_io.read_json(f"{folder}/metadata.json")
    if not meta or meta.get("status") != "skipped":
        return None
    return {
        "name": meta["name"],
        "version": meta["version"],
        "path": folder,
        "kind": meta.get("kind", "unknown"),
        "reason": str(meta.get("skip_reason") or "no reason recorded"),
    }


def metric_rows(results: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, Any]] = ()) -> pa.Table:
    """METRIC rows of the evaluated models, then one row per skipped model: role "skipped", segment "all",
    metric "skipped: <reason>", value NaN, 0 users."""
    rows: dict[str, list[Any]] = {name: [] for name in METRIC.names}
    for entry in results:
        for segment, values in entry["metrics"].items():
            users = int(values.get("users", 0))
            for metric, value in values.items():
                if metric == "users":
                    continue
                rows["model"].append(entry["name"])
                rows["model_version"].append(entry["version"])
                rows["role"].append("production" if entry["is_production"] else entry["role"])
                rows["segment"].append(segment)
                rows["metric"].append(metric)
                rows["k"].append(_k_of(metric))
                rows["value"].append(float(value))
                rows["users"].append(users)
    for record in skipped:
        for column, value in (
            ("model", record["name"]),
            ("model_version", record["version"]),
            ("role", "skipped"),
            ("segment", "all"),
            ("metric", f"skipped: {record['reason']}"),
            ("k", 0),
            ("value", float("nan")),
            ("users", 0),
        ):
            rows[column].append(value)
    return pa.table(rows, schema=METRIC)


def per_user_rows(
    entries: Iterable[tuple[Mapping[str, Any], np.ndarray, Mapping[str, np.ndarray]]],
) -> pa.Table:
    """USER_METRIC rows from (model entry, user_idx of its users, per-user values by metric name)."""
    columns: dict[str, list[Any]] = {name: [] for name in USER_METRIC.names}
    for entry, users, values in entries:
        role = "production" if entry["is_production"] else entry["role"]
        for metric, per_user in values.items():
            n = len(users)
            columns["model"] += [entry["name"]] * n
            columns["model_version"] += [entry["version"]] * n
            columns["role"] += [role] * n
            columns["user_idx"].append(np.asarray(users, np.int64))
            columns["metric"] += [metric] * n
            columns["k"] += [_k_of(metric)] * n
            columns["value"].append(np.asarray(per_user, np.float64))
    for name in ("user_idx", "value"):
        columns[name] = np.concatenate(columns[name]) if columns[name] else []  # type: ignore[assignment]
    return pa.table(columns, schema=USER_METRIC)


def write_per_user(settings: Settings, table: pa.Table) -> str:
    """Replace ``metrics_per_user/dt=D``; returns its path (what the gate reads)."""
    return lake_io.write_partition(table, settings.lake_root, lake.USER_METRICS, settings.ds, USER_METRIC)


def compare_with_production(
    settings: Settings, per_user: Sequence[tuple[dict[str, Any], np.ndarray, Mapping[str, np.ndarray]]]
) -> None:
    """Each candidate's lead over production on the gate metric with its interval (``vs_production``), the
    test the gate applies to the best of them."""
    metric = settings.gate_metric
    production = next((p for p in per_user if p[0]["is_production"]), None)
    if production is None or not gate.is_per_user(metric):
        return
    for entry, users, values in per_user:
        if entry is not production[0] and metric in values and metric in production[2]:
            entry["vs_production"] = gate.lead_test(
                (users, values[metric]), (production[1], production[2][metric]), settings.gate_margin
            )


def _k_of(metric: str) -> int:
    tail = metric.rsplit("_at_", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0


# ---- report -------------------------------------------------------------------------------------------
def format_table(result: Mapping[str, Any], segment: str = "all") -> str:
    """A plain-text table of the main metrics per model (what ``make run`` prints)."""
    k = result["k"]
    columns = [
        f"recall_at_{k}",
        f"ndcg_at_{k}",
        f"precision_at_{k}",
        "map",
        f"hit_rate_at_{k}",
        f"coverage_at_{k}",
    ]
    header = f"{'model':<22}{'role':<12}" + "".join(f"{c:>15}" for c in columns) + f"{'users':>8}"
    lines = [f"segment: {segment}", header]
    for entry in result["models"]:
        values = entry["metrics"][segment]
        role = "production" if entry["is_production"] else entry["role"]
        lines.append(
            f"{entry['name']:<22}{role:<12}"
            + "".join(f"{values.get(c, 0.0):>15.4f}" for c in columns)
            + f"{int(values.get('users', 0)):>8}"
        )
    return "\n".join(lines)


def format_leads(result: Mapping[str, Any], metric: str) -> str:
    """Each candidate's lead over production with its interval, and whether it is enough to promote."""
    leads = [(m, m["vs_production"]) for m in result["models"] if "vs_production" in m]
    if not leads:
        return "No production model was evaluated: nothing to compare with (the gate then compares with popularity)."
    test = leads[0][1]
    interval_label = f"{test['confidence']:.0%} CI"
    lines = [
        f"per-user {metric}, candidate minus production on the same users; {test['method']}, "
        f"{test['resamples']} resamples, seed {test['seed']}",
        f"a candidate can replace production when the interval's lower bound is above the margin {test['margin']} "
        "(the gate tests the best candidate by mean)",
        f"{'model':<22}{'mean':>9}{'lead':>10}{interval_label:>22}{'users':>8}  above margin",
    ]
    for entry, lead in sorted(leads, key=lambda pair: -pair[1]["lead"]):
        interval = f"[{lead['ci_low']:+.4f}, {lead['ci_high']:+.4f}]"
        lines.append(
            f"{entry['name']:<22}{entry['metrics']['all'].get(metric, 0.0):>9.4f}{lead['lead']:>+10.4f}"
            f"{interval:>22}{lead['users']:>8}  {'yes' if lead['significant'] else 'no'}"
        )
    return "\n".join(lines)


def popularity_deciles(topk: np.ndarray, item_counts: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """Share of recommended slots per popularity decile of the catalogue (index 9 = most popular tenth)."""
    catalogue = np.asarray(catalogue, np.int64)
    order = catalogue[np.argsort(item_counts[catalogue], kind="stable")]
    decile_of = np.zeros(int(max(catalogue.max(initial=0), np.max(topk, initial=0))) + 1, np.int64)
    decile_of[order] = np.arange(len(order)) * 10 // max(len(order), 1)
    return np.bincount(decile_of[np.asarray(topk).ravel()], minlength=10)[:10] / max(np.size(topk), 1)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _history_of_metric(settings: Settings, metric: str) -> dict[str, list[tuple[str, float]]]:
    """Per model, (date, value) of ``metric`` (segment all) across every earlier metrics partition."""
    series: dict[str, list[tuple[str, float]]] = {}
    for ds in lake_io.list_partitions(settings.lake_root, lake.METRICS):
        if ds > settings.ds:
            continue
        table = lake_io.read_partition(settings.lake_root, lake.METRICS, ds).to_pylist()
        for row in table:
            if row["segment"] == "all" and row["metric"] == metric and row["role"] != "production":
                series.setdefault(row["model"], []).append((ds, row["value"]))
    return series


def write_report(
    settings: Settings, result: Mapping[str, Any], topks: Mapping[str, np.ndarray], item_counts: np.ndarray
) -> str:
    """``reports/dt=D/index.html`` with three PNG plots; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["k"]
    folder = lake.report_dir(settings.lake_root, settings.ds)
    models = result["models"]
    names = [f"{m['name']}{' (prod)' if m['is_production'] else ''}" for m in models]

    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(models), 1)
    for i, (label, entry) in enumerate(zip(names, models, strict=True)):
        values = [
            entry["metrics"]["all"].get("map" if m == "map" else f"{m}_at_{k}", 0.0) for m in PLOT_METRICS
        ]
        axis.bar(np.arange(len(PLOT_METRICS)) + i * width, values, width, label=label)
    axis.set_xticks(np.arange(len(PLOT_METRICS)) + 0.4 - width / 2, [f"{m}@{k}" for m in PLOT_METRICS])
    axis.set_title(f"Metrics per model, all users, {settings.ds}")
    axis.legend(fontsize=8)
    lake_io.write_bytes_atomic(f"{folder}/metrics_per_model.png", _png(figure))
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(10, 4))
    for model, points in sorted(_history_of_metric(settings, settings.gate_metric).items()):
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
    axis.set_title(f"{settings.gate_metric} across runs")
    axis.tick_params(axis="x", rotation=45)
    axis.legend(fontsize=8)
    lake_io.write_bytes_atomic(f"{folder}/metrics_across_runs.png", _png(figure))
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(10, 4))
    catalogue = np.flatnonzero(np.ones(len(item_counts), bool))[1:]
    for i, (label, top) in enumerate(topks.items()):
        axis.bar(
            np.arange(10) + i * width, popularity_deciles(top, item_counts, catalogue), width, label=label
        )
    axis.set_xticks(np.arange(10) + 0.4 - width / 2, [f"D{d}" for d in range(1, 11)])
    axis.set_xlabel("item popularity decile in the training window (D10 = most popular)")
    axis.set_ylabel("share of recommended slots")
    axis.set_title("Popularity bias of the recommendations")
    axis.legend(fontsize=8)
    lake_io.write_bytes_atomic(f"{folder}/popularity_bias.png", _png(figure))
    plt.close(figure)

    tables = "".join(
        f"<h2>{segment} users</h2><pre>{html.escape(format_table(result, segment))}</pre>"
        for segment in SEGMENTS
    )
    production = result.get("production")
    lead = html.escape(format_leads(result, settings.gate_metric))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>recflow evaluation {settings.ds}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} pre{{background:#f5f5f5;padding:8px}}</style>
</head><body><h1>recflow evaluation, run date {settings.ds}</h1>
<p>Next-day split: {result["validation_users"]} validation users ({result["cold_users"]} cold: fewer than
{COLD_HISTORY_BELOW} items in the window). Top {k} over the catalogue, window items excluded.
Production before this run: {html.escape(str(production and f"{production['name']}/{production['version']}"))}.</p>
{tables}
<h2>Lead over production, {html.escape(settings.gate_metric)}</h2><pre>{lead}</pre>
<h2>Metrics per model</h2><img src="metrics_per_model.png" alt="metrics per model">
<h2>{html.escape(settings.gate_metric)} across runs</h2><img src="metrics_across_runs.png" alt="metrics across runs">
<h2>Popularity bias</h2><img src="popularity_bias.png" alt="popularity bias">
</body></html>"""
    lake_io.write_text_atomic(f"{folder}/index.html", page)
    return f"{folder}/index.html"
