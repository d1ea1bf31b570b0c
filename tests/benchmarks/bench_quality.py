"""MovieLens 100k quality benchmark: every recflow model on the fixed split of Microsoft Recommenders' table.

Protocol (``../shared/data/README.md``): every rating is a positive; train on train.tsv; for every user recommend
the top 10 excluding their train items; average over users in test.tsv; MAP/nDCG/P/R exactly as defined there
(``models.metrics``). Top 10 comes from each model's scoring contract (``models.evaluate.topk_for``), the same path
the nightly evaluation uses.

    python tests/benchmarks/bench_quality.py [--models popularity,ease,...] [--ease-sweep] [--no-deep]
    RECFLOW_SHARED_DATA=/path/to/shared/data python tests/benchmarks/bench_quality.py
    python tests/benchmarks/bench_quality.py --lake /path/to/lake --date 2026-01-14   # generated data, next day

Without the data (it may not be redistributed) it prints why and exits 0. Run under pytest with
``pytest -m bench tests/benchmarks/bench_quality.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PUBLISHED = {  # MAP, nDCG@10, Precision@10, Recall@10 (../shared/data/README.md)
    "BiVAE (published)": (0.146126, 0.475077, 0.411771, 0.219145),
    "BPR (published)": (0.132478, 0.441997, 0.388229, 0.212522),
    "LightGCN (published)": (0.088526, 0.419846, 0.379626, 0.144336),
    "SAR (published)": (0.110591, 0.382461, 0.330753, 0.176385),
    "NCF (published)": (0.107720, 0.396118, 0.347296, 0.180775),
}
COLUMNS = ("map", "ndcg_at_10", "precision_at_10", "recall_at_10")
BASELINES = ("popularity", "item_cosine", "ease", "als")
EASE_LAMBDAS = (50, 100, 200, 300, 350, 400, 500, 700, 1000)
K = 10


def shared_data_dir() -> Path:
    return Path(os.environ.get("RECFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_split(folder: Path) -> dict[str, Any]:
    """train/test as index arrays (MovieLens ids are already 1-based and dense: used as indices)."""
    def read(name: str) -> np.ndarray:
        return np.loadtxt(folder / name, dtype=np.int64, delimiter="\t")

    train, test = read("train.tsv"), read("test.tsv")
    n_users = int(max(train[:, 0].max(), test[:, 0].max()))
    n_items = int(max(train[:, 1].max(), test[:, 1].max()))
    return {"train": train, "test": test, "n_users": n_users, "n_items": n_items}


def contract_inputs(split: dict[str, Any], history_length: int = 20, title_tokens: int = 8) -> dict[str, Any]:
    """The scoring contract's inputs for every test user, plus their relevant sets."""
    from models.evaluate import item_inputs, user_inputs

    train, test = split["train"], split["test"]
    order = np.lexsort((train[:, 3], train[:, 0]))  # per user, oldest first
    by_user: dict[int, list[int]] = {}
    for user, item in train[order][:, :2]:
        by_user.setdefault(int(user), []).append(int(item))
    relevant: dict[int, list[int]] = {}
    for user, item in test[:, :2]:
        relevant.setdefault(int(user), []).append(int(item))
    users = np.array(sorted(relevant), np.int64)
    sequences = [by_user.get(int(u), []) for u in users]
    return {"users": user_inputs(users, sequences, sequences, history_length),
            "items": item_inputs(np.arange(1, split["n_items"] + 1), title_tokens),
            "relevant": [relevant[int(u)] for u in users]}


def score(module: Any, inputs: dict[str, Any], k: int = K) -> dict[str, float]:
    from models.evaluate import topk_for
    from models.metrics import ranking_metrics

    top, _ = topk_for(module, inputs["users"], inputs["items"], k)
    return ranking_metrics(top, inputs["relevant"])


def spark_session() -> Any:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master("local[2]").appName("recflow-bench-quality")
            .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", "127.0.0.1").getOrCreate())


def run_baseline(name: str, split: dict[str, Any], inputs: dict[str, Any], params: dict[str, Any],
                 spark: Any = None) -> tuple[dict[str, float], float]:
    from models import baselines

    matrix = baselines.interaction_matrix(split["train"][:, 0], split["train"][:, 1], split["n_users"], split["n_items"])
    started = time.perf_counter()
    module = baselines.fit(name, matrix, params, spark=spark)
    seconds = time.perf_counter() - started
    return score(module, inputs), seconds


def run_deep(split: dict[str, Any], inputs: dict[str, Any], overrides: dict[str, Any]) -> tuple[dict[str, float], float]:
    """The deep helper's in-memory entry point (models.train.fit_two_tower on models.data.from_interactions)."""
    from models import data as deep_data
    from models import train as deep_train
    from models.two_tower import TwoTowerParams

    train = split["train"]
    preset = getattr(deep_train, "MOVIELENS_PARAMS", None) or getattr(sys.modules["models.two_tower"],
                                                                      "MOVIELENS_PARAMS", None) or {}
    params = TwoTowerParams(**{**dict(preset), **overrides})
    data = deep_data.from_interactions(train[:, 0], train[:, 1], order=train[:, 3])
    started = time.perf_counter()
    module, _summary = deep_train.fit_two_tower(data, params=params)
    seconds = time.perf_counter() - started
    return score(module, inputs), seconds


def run_lake(lake_root: str, run_date: str, with_als: bool, with_deep: bool, overrides: dict[str, Any]) -> int:
    """The same models on a generated lake's next-day split (features made by jobs.features for ``run_date``)."""
    from models import baselines, evaluate
    from schemas.settings import Settings

    settings = Settings.load({"lake_root": lake_root, "run_date": run_date, **overrides})
    spark = spark_session() if with_als else None
    dirs, seconds = [], {}
    if with_deep:
        try:
            from models import train as deep_train

            started = time.perf_counter()
            dirs.append(deep_train.train_two_tower(settings))
            seconds["two_tower"] = time.perf_counter() - started
        except Exception as err:
            print(f"two_tower: FAILED {err!r}")
            traceback.print_exc()
    names = baselines.NIGHTLY_BASELINES + (("als",) if with_als else ())
    dirs += baselines.train_baselines(settings, spark=spark, names=names)
    if spark is not None:
        spark.stop()
    result = evaluate.evaluate(settings, dirs)
    k = settings.eval_k
    for segment in evaluate.SEGMENTS:
        print(f"\n{settings.scenario} {run_date}, {segment} users (next-day split, top {k}, window items excluded)")
        print(f"{'model':<22}{'MAP':>9}{'nDCG@'+str(k):>9}{'P@'+str(k):>9}{'R@'+str(k):>9}{'HR@'+str(k):>9}"
              f"{'cov':>8}{'novelty':>9}{'users':>7}{'train s':>9}")
        for entry in result["models"]:
            v = entry["metrics"][segment]
            train_s = entry.get("train_seconds") or seconds.get(entry["name"])
            print(f"{entry['name']:<22}{v['map']:>9.4f}{v[f'ndcg_at_{k}']:>9.4f}{v[f'precision_at_{k}']:>9.4f}"
                  f"{v[f'recall_at_{k}']:>9.4f}{v[f'hit_rate_at_{k}']:>9.4f}{v[f'coverage_at_{k}']:>8.3f}"
                  f"{v[f'novelty_at_{k}']:>9.2f}{int(v['users']):>7}"
                  + (f"{train_s:>9.1f}" if train_s is not None else ""))
    print(f"\nreport: {result['report']}")
    return 0


def format_table(rows: list[tuple[str, dict[str, float] | tuple[float, ...], float | None]]) -> str:
    header = f"{'model':<26}{'MAP':>9}{'nDCG@10':>9}{'P@10':>9}{'R@10':>9}{'train s':>9}"
    lines = [header, "-" * len(header)]
    for name, values, seconds in rows:
        numbers = values if isinstance(values, tuple) else tuple(values[c] for c in COLUMNS)
        lines.append(f"{name:<26}" + "".join(f"{v:>9.4f}" for v in numbers)
                     + (f"{seconds:>9.1f}" if seconds is not None else f"{'':>9}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(BASELINES), help="baselines to run (comma-separated)")
    parser.add_argument("--ease-sweep", action="store_true", help="also print EASE for each lambda in a sweep")
    parser.add_argument("--ease-lambda", type=float, default=400.0)
    parser.add_argument("--no-deep", action="store_true", help="skip the deep model")
    parser.add_argument("--deep-params", default="{}", help="JSON overrides of TwoTowerParams")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--lake", help="instead of MovieLens: evaluate on this generated lake's next-day split")
    parser.add_argument("--date", default="2026-01-14", help="run date of --lake")
    parser.add_argument("--settings", default="{}", help="JSON settings overrides for --lake (e.g. window_days)")
    args = parser.parse_args(argv)
    if args.lake:
        return run_lake(args.lake, args.date, "als" in args.models.split(","), not args.no_deep,
                        json.loads(args.settings))

    folder = shared_data_dir() / "ml-100k-split"
    if not (folder / "train.tsv").exists():
        print(f"SKIP: MovieLens split not found at {folder} (set RECFLOW_SHARED_DATA); its licence forbids shipping it")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    split = load_split(folder)
    inputs = contract_inputs(split)
    print(f"ml-100k split: {len(split['train'])} train / {len(split['test'])} test ratings, "
          f"{len(inputs['relevant'])} test users, {split['n_items']} items; top {K}, train items excluded")

    from models.baselines import DEFAULT_PARAMS

    rows: list[tuple[str, Any, float | None]] = [(name, values, None) for name, values in PUBLISHED.items()]
    results: dict[str, Any] = {}
    spark = None
    for name in [m for m in args.models.split(",") if m]:
        params = {**DEFAULT_PARAMS[name], **({"lam": args.ease_lambda} if name == "ease" else {})}
        try:
            if name == "als" and spark is None:
                spark = spark_session()
            values, seconds = run_baseline(name, split, inputs, params, spark)
        except Exception as err:  # one broken model must not hide the others' numbers
            print(f"{name}: FAILED {err!r}")
            traceback.print_exc()
            continue
        label = f"{name} (recflow)" + (f" lam={params['lam']:g}" if name == "ease" else "")
        rows.append((label, values, seconds))
        results[label] = {**values, "train_seconds": seconds, "params": params}
        print(f"  {label}: {({c: round(values[c], 4) for c in COLUMNS})} in {seconds:.1f} s", flush=True)
    if args.ease_sweep:
        for lam in EASE_LAMBDAS:
            values, seconds = run_baseline("ease", split, inputs, {"lam": float(lam)})
            label = f"ease lam={lam}"
            rows.append((label, values, seconds))
            results[label] = {**values, "train_seconds": seconds}
    if not args.no_deep:
        try:
            values, seconds = run_deep(split, inputs, json.loads(args.deep_params))
            rows.append(("two_tower (recflow)", values, seconds))
            results["two_tower (recflow)"] = {**values, "train_seconds": seconds}
        except ImportError as err:
            print(f"deep model not available yet: {err}")
        except Exception as err:
            print(f"two_tower: FAILED {err!r}")
            traceback.print_exc()
    if spark is not None:
        try:
            spark.stop()
        except Exception as err:  # a crashed JVM must not hide the table
            print(f"spark.stop failed: {err!r}")
    print()
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def test_bench_quality() -> None:
    """``pytest -m bench``: the full table (skips without the data)."""
    import pytest

    if not (shared_data_dir() / "ml-100k-split" / "train.tsv").exists():
        pytest.skip("MovieLens split not found (set RECFLOW_SHARED_DATA)")
    assert main([]) == 0


try:  # mark for pytest without making pytest a runtime dependency of the script
    import pytest as _pytest

    test_bench_quality = _pytest.mark.bench(_pytest.mark.movielens(test_bench_quality))
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    raise SystemExit(main())
