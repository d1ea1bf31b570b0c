"""The promotion gate: production changes only when a candidate is measurably better on the primary metric.

Rules (metric = ``settings.gate_metric`` on all validation users, margin = ``settings.gate_margin``):
- With a production model: promote the best candidate only if ``candidate > production + margin``; else keep.
- Without one: promote the best candidate if it beats popularity by the margin; if nothing does, promote
  popularity itself (the rule-based fallback), so scoring always has a model.
- If production could not be evaluated this run (its folder is gone), it is treated as absent.
Every decision is returned with the numbers and logged in the registry's history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from models import registry
from schemas.settings import Settings

log = logging.getLogger(__name__)

FALLBACK = "popularity"


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
        return _finish(settings, decision, production, apply)

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
        if best_value > production_value + margin:
            decision.update(
                action="promote",
                chosen=best,
                reason=f"{best['name']} {metric}={best_value:.4f} beats production {production['name']} "
                f"{production_value:.4f} by more than the margin {margin}",
            )
        else:
            decision.update(
                action="keep",
                reason=f"best candidate {best['name']} {metric}={best_value:.4f} does not beat production "
                f"{production['name']} {production_value:.4f} by more than the margin {margin}",
            )
        return _finish(settings, decision, production, apply)

    popularity = [m for m in candidates if m["name"] == FALLBACK]
    if not popularity:
        decision.update(
            action="promote",
            chosen=best,
            reason=f"no production model and no popularity baseline: promoting the best, {best['name']} "
            f"{metric}={best_value:.4f}",
        )
        return _finish(settings, decision, production, apply)
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
    return _finish(settings, decision, production, apply)


def _finish(
    settings: Settings, decision: dict[str, Any], production: Mapping[str, Any] | None, apply: bool
) -> dict[str, Any]:
    chosen = decision.pop("chosen", None)
    if decision["action"] == "promote" and chosen is not None:
        decision["promoted"] = {"name": chosen["name"], "version": chosen["version"], "path": chosen["path"]}
        if apply:
            registry.promote(
                settings,
                chosen["name"],
                chosen["version"],
                decision["reason"],
                metric=decision["metric"],
                value=decision["best"]["value"]
                if chosen["name"] == decision["best"]["name"]
                else decision.get("popularity"),
            )
    else:
        current = registry.production(settings)
        decision["kept"] = None if current is None else {k: current[k] for k in ("name", "version", "path")}
        if apply:
            registry.log_decision(settings, {"action": "keep", **decision})
    log.info("gate: %s: %s", decision["action"], decision["reason"])
    return decision
