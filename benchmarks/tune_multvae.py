"""Tuning Mult-VAE on validation folds of the train side only (never the test side), against a tuned EASE.

Each fold holds out ``--share`` of every item's train ratings (``bench_quality.validation_split`` with
``by="item"``: the way the test side was cut from the whole data), with its own seed; the rest trains. Every
configuration (``--configs``: a JSON list of ``MultVAEParams`` overrides, or ``@file.json``) trains on each fold
(and with each of ``--seeds``) and is scored through the scoring contract with the published protocol (top 10,
train items excluded). EASE is swept over ``--ease-lambdas`` on the same folds; its best lambda by mean nDCG@10
is the bar. ``--epochs-to-score`` also scores the model after those epochs; ``--shifts`` also scores the final
model with its item biases lowered by ``shift * log(1 + item count)`` (a post-hoc popularity correction that
keeps the dot product).

    python -m benchmarks.tune_multvae [--data PATH] [--folds 7,8,9] [--share 0.1] [--configs JSON]
        [--seeds 42,43] [--epochs-to-score 20,30] [--shifts=-0.2,-0.1] [--ease-lambdas 500,700,1000]
        [--json results.jsonl]

Prints, per configuration and stage, the mean over folds and seeds of MAP, nDCG@10, P@10, R@10, its nDCG@10
lead over the tuned EASE (the smallest over folds and seeds, and the mean) and the training CPU seconds (steadier
than wall seconds on a shared machine; they include the scoring of ``--epochs-to-score``). Validation folds are
smaller than the test side's relevant sets, and a gap to EASE on them understates the gap on the test side (on
ml-100k, Mult-VAE's defaults trail EASE by about 0.005 nDCG@10 on folds 7, 8, 9 and by 0.020 on test), so a
configuration should lead on every fold before it is tried there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_quality

COLUMNS = bench_quality.COLUMNS
DEFAULT_FOLDS = (7, 8, 9)
DEFAULT_SHARE = 0.1
DEFAULT_LAMBDAS = (300.0, 500.0, 700.0, 1000.0, 1500.0)


def folds(data: str | None, seeds: list[int], share: float) -> list[dict[str, Any]]:
    """Validation folds (train side only) of the fixed ml-100k split, or of ``data`` split as published."""
    split = bench_quality.split_ratings(data) if data else bench_quality.load_split(bench_quality.split_dir())
    out = []
    for seed in seeds:
        fold = bench_quality.validation_split(split, share, seed=seed, by="item")
        fold["fold_seed"] = seed
        fold["inputs"] = bench_quality.contract_inputs(fold)
        out.append(fold)
    return out


def matrix_of(fold: dict[str, Any]) -> Any:
    from models import baselines

    train = fold["train"]
    return baselines.interaction_matrix(
        train[:, bench_quality.USER], train[:, bench_quality.ITEM], fold["n_users"], fold["n_items"]
    )


def metrics_of(values: dict[str, Any]) -> np.ndarray:
    return np.array([values[c] for c in COLUMNS])


def run_ease(fold: dict[str, Any], lam: float) -> tuple[np.ndarray, float]:
    from models import baselines

    matrix = matrix_of(fold)
    started = time.process_time()
    module = baselines.fit("ease", matrix, {"lam": lam})
    seconds = time.process_time() - started
    return metrics_of(bench_quality.score(module, fold["inputs"])), seconds


def popularity_shifted(module: Any, counts: np.ndarray, shift: float) -> Any:
    """``module`` with every member's item bias lowered by ``shift * log(1 + item count)``: a post-hoc
    popularity correction that keeps the dot product (it only moves the bias dimension of the item table)."""
    members = getattr(module, "members", [module])
    table = module.item_table.numpy()
    column = 0
    penalty = shift * np.log1p(np.concatenate([[0.0], counts])).astype(np.float32)
    for member in members:
        column += int(member.item_table.shape[1])
        table[:, column - 1] -= penalty
    module.item_table.assign(table)
    return module


def run_multvae(
    fold: dict[str, Any], overrides: dict[str, Any], epochs_to_score: list[int], shifts: list[float]
) -> tuple[dict[str, np.ndarray], float]:
    """Metrics by stage: after each epoch of ``epochs_to_score`` ("epoch N"), after the last ("final") and with
    each popularity shift of the final model ("final, shift S"); and the training CPU seconds (steadier than wall
    seconds on a shared machine; the scoring between epochs is not counted)."""
    from models import multvae

    params = multvae.MultVAEParams.from_mapping(overrides)
    scored: dict[str, np.ndarray] = {}

    def callback(epoch: int, export: Any) -> None:
        scored[f"epoch {epoch}"] = metrics_of(bench_quality.score(export(), fold["inputs"]))

    matrix = matrix_of(fold)
    wanted = [e for e in epochs_to_score if e < params.epochs]
    module, summary = multvae.fit(matrix, params, on_epochs=wanted, callback=callback)
    scored["final"] = metrics_of(bench_quality.score(module, fold["inputs"]))
    counts = np.asarray((matrix[:, 1:] > 0).sum(axis=0), np.float64).ravel()
    applied = 0.0
    for shift in shifts:
        module = popularity_shifted(module, counts, shift - applied)
        applied = shift
        scored[f"final, shift {shift:g}"] = metrics_of(bench_quality.score(module, fold["inputs"]))
    return scored, float(summary["cpu_seconds"])


def line(label: str, values: np.ndarray, lead: np.ndarray | None, seconds: float | None) -> str:
    text = f"{label:<58}" + "".join(f"{v:>8.4f}" for v in values)
    if lead is not None:
        text += f"  {lead.min():>+8.4f}{lead.mean():>+8.4f}"
    else:
        text += f"  {'':>8}{'':>8}"
    if seconds is not None:
        text += f"{seconds:>8.1f}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", help="a MovieLens ratings file (default: the fixed ml-100k split)")
    parser.add_argument("--folds", default=",".join(str(s) for s in DEFAULT_FOLDS), help="fold seeds")
    parser.add_argument("--share", type=float, default=DEFAULT_SHARE, help="share of each item held out")
    parser.add_argument("--configs", default="[{}]", help="JSON list of MultVAEParams overrides (or @file)")
    parser.add_argument(
        "--seeds", default="", help="model seeds to repeat every config with (comma-separated)"
    )
    parser.add_argument("--epochs-to-score", default="", help="also score after these epochs")
    parser.add_argument(
        "--shifts", default="", help="also score the final model with these popularity shifts"
    )
    parser.add_argument("--ease-lambdas", default=",".join(f"{lam:g}" for lam in DEFAULT_LAMBDAS))
    parser.add_argument("--json", help="append every result as a JSON line to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.data and not (bench_quality.split_dir() / "train.tsv").exists():
        print(f"SKIP: MovieLens split not found at {bench_quality.split_dir()}")
        return 0
    configs = json.loads(Path(args.configs[1:]).read_text() if args.configs.startswith("@") else args.configs)
    fold_seeds = [int(s) for s in args.folds.split(",") if s]
    model_seeds = [int(s) for s in args.seeds.split(",") if s]
    epochs_to_score = [int(s) for s in args.epochs_to_score.split(",") if s]
    shifts = [float(s) for s in args.shifts.split(",") if s]
    data = folds(args.data, fold_seeds, args.share)
    print(
        f"{len(data)} validation folds ({args.share:g} of each item's train ratings held out, seeds "
        f"{fold_seeds}): {len(data[0]['train'])} train / {len(data[0]['test'])} held out; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    header = f"{'config':<58}" + "".join(f"{c[:8]:>8}" for c in ("MAP", "nDCG@10", "P@10", "R@10"))
    header += f"  {'min lead':>8}{'mean ld':>8}{'CPU s':>8}"
    print("leads: nDCG@10 over the tuned EASE, per fold (min over folds, mean)")
    print(header, flush=True)

    ease: dict[float, list[np.ndarray]] = {}
    for lam in [float(x) for x in args.ease_lambdas.split(",") if x]:
        results = [run_ease(fold, lam) for fold in data]
        ease[lam] = [r[0] for r in results]
        print(
            line(
                f"ease lam={lam:g}", np.mean(ease[lam], axis=0), None, float(np.mean([r[1] for r in results]))
            )
        )
    best = max(ease, key=lambda lam: float(np.mean([m[1] for m in ease[lam]])))
    bar = ease[best]
    print(line(f"ease best lam={best:g} (the bar)", np.mean(bar, axis=0), None, None), flush=True)

    for config in configs:
        seeds = model_seeds or [int(config.get("seed", 42))]
        per_stage: dict[str, list[np.ndarray]] = {}
        leads: dict[str, list[float]] = {}
        seconds: list[float] = []
        for k, fold in enumerate(data):
            for seed in seeds:
                scored, took = run_multvae(fold, {**config, "seed": seed}, epochs_to_score, shifts)
                seconds.append(took)
                for stage, values in scored.items():
                    per_stage.setdefault(stage, []).append(values)
                    leads.setdefault(stage, []).append(float(values[1] - bar[k][1]))
        label = json.dumps(config, separators=(",", ":"))
        print(label)
        for stage in per_stage:
            tag = f"  {stage}"
            mean = np.mean(per_stage[stage], axis=0)
            print(line(tag, mean, np.array(leads[stage]), float(np.mean(seconds))), flush=True)
            if args.json:
                record = {
                    "config": config,
                    "stage": stage,
                    "seeds": seeds,
                    "folds": fold_seeds,
                    "mean": dict(zip(COLUMNS, mean.tolist(), strict=True)),
                    "ndcg_leads": leads[stage],
                    "ease": {"lam": best, **dict(zip(COLUMNS, np.mean(bar, axis=0).tolist(), strict=True))},
                    "cpu_seconds": float(np.mean(seconds)),
                    "load": os.getloadavg()[0],
                }
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
