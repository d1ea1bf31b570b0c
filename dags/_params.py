"""The trigger form of ``recflow_nightly``: one typed, documented, validated Param per knob.

Thin configuration only. Each key that names a ``Settings`` field is applied through ``Settings.from_params``;
the others (``schemas.settings.STEERING_PARAMS``: ``generate_demo_data``) steer the DAG itself. JSON-schema
validation runs when a run is created (UI form, REST API, ``airflow dags test -c``,
``dag.test(run_conf=...)``), so a bad value is refused before any task starts. Airflow 3 checks only the
params a DAG declares (an unknown key of the run's conf becomes an extra, unchecked param; there is no option
to refuse it), so unknown keys and the cross-field checks are refused in the first task, ``resolve_settings``
(no retries), again before any work.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Asset, Param

from schemas import lake
from schemas.settings import SCENARIOS, SOFTMAX_KINDS, Settings

# The form's defaults are this deployment's settings: code defaults, then RECFLOW_* environment variables.
_DEFAULTS = Settings.load()

# Encoders the deep model offers (models.features.ENCODERS; tests/test_dags.py checks the two agree).
ENCODERS = ("gru", "lstm", "cnn", "attention", "mean")
MODELS = ("two_tower",)  # deep model families; baselines are always trained alongside


def _lake_uri(root: str) -> str:
    return root if "://" in root else "file://" + str(Path(root).resolve())


# The published tables as Airflow Assets (publish's outlets; consumers schedule on them). The URI is where the
# table lives under the lake root this deployment is configured with (RECFLOW_LAKE_ROOT or the default).
_LAKE_URI = _lake_uri(Settings.load().lake_root)
RECOMMENDATIONS_ASSET = Asset(
    name="recflow_recommendations", group="recflow", uri=f"{_LAKE_URI}/{lake.RECOMMENDATIONS}"
)
SIMILAR_ITEMS_ASSET = Asset(
    name="recflow_similar_items", group="recflow", uri=f"{_LAKE_URI}/{lake.SIMILAR_ITEMS}"
)
USER_EMBEDDINGS_ASSET = Asset(
    name="recflow_user_embeddings", group="recflow", uri=f"{_LAKE_URI}/{lake.USER_EMBEDDINGS}"
)
ITEM_EMBEDDINGS_ASSET = Asset(
    name="recflow_item_embeddings", group="recflow", uri=f"{_LAKE_URI}/{lake.ITEM_EMBEDDINGS}"
)
PUBLISHED_ASSETS = (RECOMMENDATIONS_ASSET, SIMILAR_ITEMS_ASSET, USER_EMBEDDINGS_ASSET, ITEM_EMBEDDINGS_ASSET)


def _bounded(field: str, kind: str, minimum: float, maximum: float, title: str, description: str) -> Param:
    """An integer or number knob with bounds, defaulting to this deployment's setting."""
    return Param(
        getattr(_DEFAULTS, field),
        type=kind,
        minimum=minimum,
        maximum=maximum,
        title=title,
        description=description,
    )


def _choice(field: str, values: list[str], title: str, description: str) -> Param:
    """One of ``values``, defaulting to this deployment's setting."""
    return Param(getattr(_DEFAULTS, field), type="string", enum=values, title=title, description=description)


def _switch(title: str, description: str) -> Param:
    """A steering switch, off unless a run turns it on."""
    return Param(False, type="boolean", title=title, description=description)


def nightly_params() -> dict[str, Param]:
    return {
        # ---- what to run ------------------------------------------------------------------------------
        "run_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Run date",
            description="Day D to process (YYYY-MM-DD). Empty: the day before the run's data-interval end "
            "(for a scheduled run, the day that just finished).",
        ),
        "scenario": _choice(
            "scenario",
            list(SCENARIOS),
            "Scenario",
            "Which kind of catalogue the logs come from: ecommerce products or news articles.",
        ),
        "generate_demo_data": _switch(
            "Generate demo data",
            "First write synthetic raw logs for D and the training window (demo and tests only).",
        ),
        # ---- demo data size (used only when generate_demo_data is on) -------------------------------
        "users": _bounded(
            "users", "integer", 10, 10_000_000, "Demo users", "Synthetic users (generate_demo_data only)."
        ),
        "items": _bounded(
            "items",
            "integer",
            10,
            5_000_000,
            "Demo items",
            "Synthetic catalogue size (generate_demo_data only).",
        ),
        "events_per_day": _bounded(
            "events_per_day",
            "integer",
            100,
            100_000_000,
            "Demo events per day",
            "Synthetic raw events per day (generate_demo_data only).",
        ),
        "days": _bounded(
            "days",
            "integer",
            1,
            365,
            "Demo days",
            "Days of synthetic logs ending at D, at least the training window plus D "
            "(generate_demo_data only).",
        ),
        # ---- features --------------------------------------------------------------------------------
        "window_days": _bounded(
            "window_days",
            "integer",
            1,
            90,
            "Training window (days)",
            "Days of clean events before D used for training; D itself is the validation day.",
        ),
        # ---- model -----------------------------------------------------------------------------------
        "skip_training": _switch(
            "Skip training",
            "Score with the current production model without training or evaluating a new one.",
        ),
        "warm_start": Param(
            _DEFAULTS.warm_start,
            type="boolean",
            title="Warm start",
            description="Start the deep model from the production deep model's weights when its architecture "
            "matches (new items get fresh rows). Off: train from scratch.",
        ),
        "model": _choice(
            "model",
            list(MODELS),
            "Deep model",
            "The deep candidate model (popularity, item-CF, ALS and EASE baselines are always "
            "trained and evaluated next to it).",
        ),
        "encoder": _choice(
            "encoder",
            list(ENCODERS),
            "Sequence encoder",
            "User-tower encoder over the recent interaction sequence.",
        ),
        "softmax": _choice(
            "softmax",
            list(SOFTMAX_KINDS),
            "Softmax",
            "sampled: in-batch negatives (faster); full: every catalogue item is a negative.",
        ),
        "epochs": _bounded(
            "epochs", "integer", 1, 200, "Epochs", "Maximum training epochs (early stopping may end sooner)."
        ),
        # ---- gate and validation thresholds ------------------------------------------------------
        "gate_margin": _bounded(
            "gate_margin",
            "number",
            0.0,
            1.0,
            "Promotion margin",
            "A candidate replaces production only if it beats it on the gate metric by this much.",
        ),
        "min_recall_at_k": _bounded(
            "min_recall_at_k",
            "number",
            0.0,
            1.0,
            "Min Recall@K",
            "Metrics validation fails if the best model's Recall@K is below this.",
        ),
        "min_ndcg_at_k": _bounded(
            "min_ndcg_at_k",
            "number",
            0.0,
            1.0,
            "Min nDCG@K",
            "Metrics validation fails if the best model's nDCG@K is below this.",
        ),
        "min_lift_over_popularity": _bounded(
            "min_lift_over_popularity",
            "number",
            -1.0,
            1.0,
            "Min lift over popularity",
            "Best model's Recall/nDCG minus popularity's must be at least this (-1 disables).",
        ),
        "volume_band": _bounded(
            "volume_band",
            "number",
            0.0,
            10.0,
            "Volume band",
            "The day's clean row count must lie within median*(1 -/+ band) of recent days.",
        ),
        "raw_max_bad_share": _bounded(
            "raw_max_bad_share",
            "number",
            0.0,
            1.0,
            "Max bad raw share",
            "Raw validation fails if more than this share of raw lines is unusable.",
        ),
        "max_cold_start_share": _bounded(
            "max_cold_start_share",
            "number",
            0.0,
            1.0,
            "Max cold-start share",
            "Validation fails if more than this share of recommendation rows are cold-start.",
        ),
        # ---- output ---------------------------------------------------------------------------------
        "top_n": _bounded(
            "top_n", "integer", 1, 1000, "Top N", "Recommendations per user in the published table."
        ),
        "category_cap": _bounded(
            "category_cap",
            "integer",
            0,
            1000,
            "Per-category cap",
            "At most this many items of one category per user (0: no cap).",
        ),
    }
