"""The promotion gate: production changes only when a candidate is measurably better on the primary metric.

Rules (metric = ``settings.gate_metric`` on all validation users, margin = ``settings.gate_margin``):
- With a production model: the best candidate (highest mean) replaces it only if its lead is significant, i.e.
  the lower bound of the 95% paired bootstrap interval of the mean per-user difference (candidate minus
  production, on the same users, read from evaluate's per-user table) lies above the margin; else keep.
- Without one: promote the best candidate if it beats popularity by the margin; if nothing does, promote
  popularity itself (the rule-based fallback), so scoring always has a model.
- If production could not be evaluated this run (its folder is gone), it is treated as absent.
Every decision is returned with the numbers (and the interval under ``significance``) and logged in the
registry's history; a promotion also writes them into ``production.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models import metrics as M
from models import registry, tracking
from schemas.settings import Settings
from storage import lake_io

log = logging.getLogger(__name__)

FALLBACK = "popularity"
CONFIDENCE = 0.95
RESAMPLES = 2_000  # bounds vary by ~0.0005 (sd) between seeds on a 139-user night: under 2% of the width
SEED = 0  # fixed, so the same evaluation always gives the same decision
METHOD = "paired bootstrap, percentile interval of the mean per-user difference (candidate - production)"
PerUser = tuple[np.ndarray, np.ndarray]  # (user_idx, value), one value per user


def label(entry: Mapping[str, Any]) -> str:
    return f"{entry['name']}/{entry['version']}"


def is_per_user(metric: str) -> bool:
    """Whether ``metric`` is a mean over users (nDCG, recall, ...), not a catalogue-level number (coverage)."""
    return metric == "map" or metric.rsplit("_at_", 1)[0] in M.PER_USER_METRICS


def per_user_values(result: Mapping[str, Any], metric: str) -> dict[str, PerUser]:
    """Per model (``name/version``), the users and their values of ``metric`` from evaluate's per-user table."""
    path = result.get("per_user_path")
    if not path or not lake_io.exists(path):
        return {}
    fs, local = lake_io.filesystem(path)
    table = pq.read_table(local, filesystem=fs, partitioning=None, filters=[("metric", "=", metric)])
    labels = pc.binary_join_element_wise(table["model"], table["model_version"], "/").to_numpy(
        zero_copy_only=False
    )
    users, values = table["user_idx"].to_numpy(), table["value"].to_numpy()
    return {str(name): (users[labels == name], values[labels == name]) for name in np.unique(labels)}


def lead_test(candidate: PerUser, production: PerUser, margin: float) -> dict[str, Any]:
    """The candidate's lead over production on their common users, with its interval; ``significant`` when the
    interval's lower bound lies above ``margin``."""
    common, in_candidate, in_production = np.intersect1d(candidate[0], production[0], return_indices=True)
    test = M.paired_bootstrap(
        candidate[1][in_candidate], production[1][in_production], CONFIDENCE, RESAMPLES, SEED
    )
    return {
        "method": METHOD,
        "confidence": CONFIDENCE,
        "resamples": RESAMPLES,
        "seed": SEED,
        **test,
        "margin": margin,
        "significant": bool(len(common) and test["ci_low"] > margin),
    }


def describe(test: Mapping[str, Any]) -> str:
    """``+0.0050, 95% CI [-0.0110, +0.0210] over 139 users``."""
    return (
        f"{test['lead']:+.4f}, {test['confidence']:.0%} CI [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}] "
        f"over {test['users']} users"
    )


def _value(entry: Mapping[str, Any], metric: str) -> float:
    values = entry["metrics"]["all"]
    if metric not in values:
        raise KeyError(f"gate metric {metric!r} not among evaluated metrics {sorted(values)}")
    return float(values[metric])


def decide(settings: Settings, metrics: Mapping[str, Any], apply: bool = True) -> dict[str, Any]:
    """Choose promote or keep from ``models.evaluate.evaluate``'s result; write production.json if promoting."""
    metric, margin = settings.gate_metric, settings.gate_margin
    candidates = [m for m in metrics["models"] if not m["is_production"] and m["role"] != "production"]
    production = next((m for m in metrics["models"] if m["is_production"]), None)
    decision: dict[str, Any] = {
        "run_date": settings.ds,
        "metric": metric,
        "margin": margin,
        "candidates": {f"{m['name']}/{m['version']}": _value(m, metric) for m in candidates},
    }
    if not candidates:
        decision.update(action="keep", reason="no candidates were evaluated")
        return _finish(settings, decision, production, apply, metrics.get("tracking"))

    best = max(candidates, key=lambda m: _value(m, metric))
    best_value = _value(best, metric)
    decision["best"] = {"name": best["name"], "version": best["version"], "value": best_value}

    if production is not None:
        production_value = _value(production, metric)
        decision["production"] = {
            "name": production["name"],
            "version": production["version"],
            "value": production_value,
        }
        if not is_per_user(metric):
            raise ValueError(f"gate metric {metric!r} is not a mean over users: its lead cannot be tested")
        values = per_user_values(metrics, metric)
        missing = [label(m) for m in (best, production) if label(m) not in values]
        if missing:
            decision.update(
                action="keep",
                reason=f"no per-user {metric} values for {', '.join(missing)}: the lead of {best['name']} "
                f"over production {production['name']} cannot be tested",
            )
            return _finish(settings, decision, production, apply, metrics.get("tracking"))
        test = lead_test(values[label(best)], values[label(production)], margin)
        decision["significance"] = {
            "metric": metric,
            "candidate": label(best),
            "production": label(production),
        }
        decision["significance"].update(test)
        if test["significant"]:
            decision.update(
                action="promote",
                chosen=best,
                reason=f"{best['name']} {metric}={best_value:.4f} beats production {production['name']} "
                f"{production_value:.4f}: lead significant: {describe(test)}, lower bound above the margin "
                f"{margin}",
            )
        else:
            why = (
                "lead not significant"
                if test["ci_low"] <= 0 or not margin
                else "lead not significantly above the margin"
            )
            decision.update(
                action="keep",
                reason=f"best candidate {best['name']} {metric}={best_value:.4f} does not beat production "
                f"{production['name']} {production_value:.4f}: {why}: {describe(test)} (promotion needs the "
                f"interval's lower bound above the margin {margin})",
            )
        return _finish(settings, decision, production, apply, metrics.get("tracking"))

    popularity = [m for m in candidates if m["name"] == FALLBACK]
    if not popularity:
        decision.update(
            action="promote",
            chosen=best,
            reason=f"no production model and no popularity baseline: promoting the best, {best['name']} "
            f"{metric}={best_value:.4f}",
        )
        return _finish(settings, decision, production, apply, metrics.get("tracking"))
    popularity_value = _value(popularity[0], metric)
    decision["popularity"] = popularity_value
    if best["name"] != FALLBACK and best_value > popularity_value + margin:
        decision.update(
            action="promote",
            chosen=best,
            reason=f"no production model: {best['name']} {metric}={best_value:.4f} beats popularity "
            f"{popularity_value:.4f} by more than the margin {margin}",
        )
    else:
        decision.update(
            action="promote",
            chosen=popularity[0],
            reason=f"no production model and no candidate beats popularity ({metric}="
            f"{popularity_value:.4f}) by the margin {margin}: popularity is the fallback",
        )
    return _finish(settings, decision, production, apply, metrics.get("tracking"))


def _finish(
    settings: Settings,
    decision: dict[str, Any],
    production: Mapping[str, Any] | None,
    apply: bool,
    tracked: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    chosen = decision.pop("chosen", None)
    if decision["action"] == "promote" and chosen is not None:
        decision["promoted"] = {"name": chosen["name"], "version": chosen["version"], "path": chosen["path"]}
        if apply:
            # the `production` alias first, then production.json derived from it
            pointer = tracking.record_gate(settings, tracked, decision, chosen)
            registry.promote(
                settings,
                chosen["name"],
                chosen["version"],
                decision["reason"],
                metric=decision["metric"],
                value=decision["best"]["value"]
                if chosen["name"] == decision["best"]["name"]
                else decision.get("popularity"),
                **({"significance": decision["significance"]} if "significance" in decision else {}),
                **pointer,
            )
    else:
        current = registry.production(settings)
        decision["kept"] = None if current is None else {k: current[k] for k in ("name", "version", "path")}
        if apply:
            tracking.record_gate(settings, tracked, decision)
            registry.log_decision(settings, {"action": "keep", **decision})
    log.info("gate: %s: %s", decision["action"], decision["reason"])
    return decision
