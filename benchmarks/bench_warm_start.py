"""Benchmark: the nightly deep model warm-started from the previous night's model against a cold start, 7 nights.

    python -m benchmarks.bench_warm_start [--nights 7] [--users 2000] [--items 600] [--events-per-day 10000]
        [--window-days 7] [--scenario ecommerce|news] [--epochs 1] [--work /tmp/recflow-bench-warm-start]

A generated lake (``demo.generate``) is cleaned and featurised night by night (``jobs.clean``, ``jobs.features``
in one Spark session, local[2]); each night's features are shared by both modes. Each mode has its own model
registry (a lake root whose raw, clean and feature tables are links to the shared ones): every night, both train
the deep model through the nightly entry point (``models.train.train_two_tower``: early stopping on the night's
validation users, checkpoints, export), and each night's model is promoted in its own registry, so the warm mode
starts from the night before (``warm_start=True``, the default) and the cold one never does (``warm_start=False``).

Quality is measured on the day *after* the training's validation day (the model of night D on ``features/
validation`` of D+1: users active on D+1 with their history through D, top 10 among the available items, window
items excluded, as ``models.evaluate`` does), a day neither training saw. Training wall and CPU seconds are those
of ``train_two_tower`` (data load, EASE, fit, export); CPU counts every thread of this process. The first night
has no production model yet: both modes train cold there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("cold", "warm")
SHARED_TABLES = (
    "raw",
    "clean",
    "quarantine",
    "features",
    "runs",
)  # what both modes read from the shared lake
LAST_NIGHT = dt.date(2026, 1, 14)


def machine() -> str:
    """Cores, CPU model, load average and the BLAS libraries numpy and scipy use (threadpoolctl)."""
    import numpy  # noqa: F401  (loads numpy's BLAS for threadpoolctl to see)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.read_text().splitlines()
                if ln.startswith("model name")
            ),
            model,
        )
    blas = sorted(
        {
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')} kernel, "
            f"{i.get('num_threads')} threads)"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        }
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}; BLAS: {'; '.join(blas) or 'none found'}; load average {load:.1f}"
    )


def mode_root(work: Path, mode: str) -> Path:
    """A lake root of its own (registry, checkpoints) whose input tables are the shared lake's."""
    root = work / mode
    root.mkdir(parents=True, exist_ok=True)
    for name in SHARED_TABLES:
        link = root / name
        if not link.exists():
            (work / "shared" / name).mkdir(parents=True, exist_ok=True)
            link.symlink_to(work / "shared" / name, target_is_directory=True)
    return root


def next_day_ndcg(model: Any, settings: Any) -> tuple[float, int]:
    """nDCG@K of ``model`` (a ``LoadedModel`` or an in-memory scoring module) on the validation users of
    ``settings.run_date``, and their count."""
    from models import evaluate

    data = evaluate.load_validation(settings)
    top, _ = evaluate.topk_for(model, data["users"], data["items"], settings.eval_k)
    segments = evaluate.evaluate_topk(
        top, data["relevant"], data["cold"], data["item_counts"], data["n_items"]
    )
    return float(segments["all"][f"ndcg_at_{settings.eval_k}"]), int(segments["all"]["users"])


def deep_part(model_dir: str, settings: Any) -> Any:
    """The deep part alone of the model in ``model_dir`` (the night's blend may give the wide EASE part, which a
    warm start does not touch, most of the weight): its saved weights on a model rebuilt without the wide part
    for the same night's data (``fit_two_tower`` for 0 epochs from them), as an in-memory scoring module."""
    import dataclasses

    from models import data as D
    from models import train as deep_train
    from models.two_tower import TwoTowerParams

    weights = deep_train.load_warm_start_weights(model_dir, model_dir, settings.ds)
    params = dataclasses.replace(TwoTowerParams.from_settings(settings), epochs=0, wide=False)
    module, summary = deep_train.fit_two_tower(
        D.load_training_data(settings), params=params, warm_start=weights
    )
    assert summary["warm_start"]["warm"] and summary["warm_start"]["items_new"] == 0, summary["warm_start"]
    return module


def run(args: argparse.Namespace) -> str:
    from models import registry
    from models import train as deep_train
    from schemas.settings import Settings
    from scoring.contract import LoadedModel

    work = Path(args.work)
    os.environ.setdefault("RECFLOW_PSEUDONYM_KEY", "benchmark-only-key")
    os.environ.setdefault("PYSPARK_PYTHON", str(REPO / ".venv" / "bin" / "python"))
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    shared = work / "shared"
    nights = [LAST_NIGHT - dt.timedelta(days=args.nights - 1 - i) for i in range(args.nights)]
    days = nights + [nights[-1] + dt.timedelta(days=1)]  # the day after the last night: its quality
    base = Settings.load(
        {
            "lake_root": str(shared),
            "spark_master": "local[2]",
            "scenario": args.scenario,
            "users": args.users,
            "items": args.items,
            "events_per_day": args.events_per_day,
            "window_days": args.window_days,
            "days": args.window_days + len(days),
            "run_date": days[-1],
            "epochs": args.epochs,
        },
        env={},
    )
    print(f"machine: {machine()}", flush=True)
    started = time.perf_counter()
    from demo import generate

    if not (shared / "raw" / "events").exists():
        generate.generate(base)
    print(f"generated {base.days} days in {time.perf_counter() - started:.0f} s", flush=True)

    from jobs import clean, features
    from storage.spark import spark_session

    spark = spark_session(base, "bench-warm-start")
    spark.sparkContext.setLogLevel("ERROR")
    feature_seconds = 0.0
    for day in days:
        t0 = time.perf_counter()
        of_day = base.replace(run_date=day)
        clean.run(spark, of_day)
        features.run(spark, of_day)
        feature_seconds += time.perf_counter() - t0
        print(f"  clean + features for {day}: {time.perf_counter() - t0:.0f} s", flush=True)
    spark.stop()

    rows: list[dict[str, Any]] = []
    for mode in MODES:  # each mode's registry starts empty: no production model before the first night
        shutil.rmtree(work / mode, ignore_errors=True)
    roots = {mode: mode_root(work, mode) for mode in MODES}
    for night in nights:
        row: dict[str, Any] = {"night": night.isoformat()}
        for mode in MODES:
            settings = base.replace(lake_root=str(roots[mode]), run_date=night, warm_start=mode == "warm")
            wall, cpu = time.perf_counter(), time.process_time()
            model_dir = deep_train.train_two_tower(settings)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            meta = registry.read_metadata(model_dir)
            training = meta["training"]
            next_day = base.replace(run_date=night + dt.timedelta(days=1))
            ndcg, users = next_day_ndcg(LoadedModel(model_dir), next_day)
            deep_ndcg, _ = next_day_ndcg(deep_part(model_dir, settings), next_day)
            registry.promote(settings, meta["name"], meta["version"], "benchmark: each night's model")
            warm = training["warm_start"]
            row[mode] = {
                "wall": wall,
                "cpu": cpu,
                "ndcg": ndcg,
                "deep_ndcg": deep_ndcg,
                "blend": training["blend"],
                "users": users,
                "epochs": training["epochs_run"],
                "val_recall": training["best_val_recall_at_k"],
                "warm": warm["warm"],
                "new_items": warm.get("items_new"),
                "items": training["num_items"],
            }
            print(
                f"  {night} {mode}: {wall:.1f} s wall, {cpu:.1f} s CPU, next-day nDCG@{base.eval_k} {ndcg:.4f} "
                f"(deep part {deep_ndcg:.4f}, blend {training['blend']}, {users} users), epochs "
                f"{training['epochs_run']}, {warm}",
                flush=True,
            )
        rows.append(row)
    text = table(rows, base, args, feature_seconds, time.perf_counter() - started)
    print()
    print(text)
    (work / "bench_warm_start.md").write_text(text + "\n")
    return text


def table(
    rows: list[dict[str, Any]], base: Any, args: argparse.Namespace, features_s: float, total_s: float
) -> str:
    k = base.eval_k
    out = [
        f"{args.scenario}, {args.users:,} users, {args.items:,} items, {args.events_per_day:,} events/day, "
        f"{args.window_days}-day window, epochs {args.epochs} (nightly settings otherwise); nights "
        f"{rows[0]['night']}..{rows[-1]['night']}; nDCG@{k} on the day after each night's validation day; "
        "model = the export (deep + wide blend), deep = its deep part alone",
        "",
        "| night | items | new items | train s cold | train s warm | CPU s cold | CPU s warm | warm / cold CPU "
        f"| nDCG@{k} model cold | warm | warm / cold | nDCG@{k} deep cold | warm | warm / cold | blend cold, warm "
        "| users |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    ratios: dict[str, list[float]] = {"cpu": [], "ndcg": [], "deep_ndcg": []}
    for row in rows:
        cold, warm = row["cold"], row["warm"]
        ratio = {key: warm[key] / cold[key] if cold[key] else float("nan") for key in ratios}
        if warm["warm"]:
            for key in ratios:
                ratios[key].append(ratio[key])
        new = warm["new_items"] if warm["warm"] else "cold (no production yet)"
        out.append(
            f"| {row['night']} | {warm['items']:,} | {new} | {cold['wall']:.1f} | {warm['wall']:.1f} "
            f"| {cold['cpu']:.1f} | {warm['cpu']:.1f} | {ratio['cpu']:.2f} "
            f"| {cold['ndcg']:.4f} | {warm['ndcg']:.4f} | **{ratio['ndcg']:.3f}** "
            f"| {cold['deep_ndcg']:.4f} | {warm['deep_ndcg']:.4f} | **{ratio['deep_ndcg']:.3f}** "
            f"| {cold['blend']}, {warm['blend']} | {cold['users']:,} |"
        )
    if ratios["ndcg"]:

        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        out += [
            "",
            f"Warm-started nights ({len(ratios['ndcg'])}), mean warm / cold: nDCG@{k} of the model "
            f"**{mean(ratios['ndcg']):.3f}**, of the deep part **{mean(ratios['deep_ndcg']):.3f}**, training CPU "
            f"{mean(ratios['cpu']):.2f}. Clean + features for all days (shared): {features_s:.0f} s; whole run "
            f"{total_s / 60:.1f} min.",
        ]
    out.append(f"machine at the end: {machine()}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nights", type=int, default=7)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--events-per-day", type=int, default=10000)
    parser.add_argument("--window-days", type=int, default=7)
    parser.add_argument("--scenario", default="ecommerce", choices=("ecommerce", "news"))
    parser.add_argument("--epochs", type=int, default=1, help="the nightly default: 1")
    parser.add_argument("--work", default="/tmp/recflow-bench-warm-start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
