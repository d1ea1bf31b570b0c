"""The trigger form of ``recflow_nightly``: one typed, documented, validated Param per knob.

Thin configuration only. Each key that names a ``Settings`` field is applied through ``Settings.from_params``;
the others (``generate_demo_data``) steer the DAG itself. JSON-schema validation runs when a run is created
(UI form, REST API, ``airflow dags test -c``, ``dag.test(run_conf=...)``), so a bad value is refused before any task
starts; cross-field checks run in the first task, ``resolve_settings``, again before any work.
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
        "scenario": Param(
            _DEFAULTS.scenario,
            type="string",
            enum=list(SCENARIOS),
            title="Scenario",
            description="Which kind of catalogue the logs come from: ecommerce products or news articles.",
        ),
        "generate_demo_data": Param(
            False,
            type="boolean",
            title="Generate demo data",
            description="First write synthetic raw logs for D and the training window (demo and tests only).",
        ),
        # ---- demo data size (used only when generate_demo_data is on) -------------------------------
        "users": Param(
            _DEFAULTS.users,
            type="integer",
            minimum=10,
            maximum=10_000_000,
            title="Demo users",
            description="Synthetic users (generate_demo_data only).",
        ),
        "items": Param(
            _DEFAULTS.items,
            type="integer",
            minimum=10,
            maximum=5_000_000,
            title="Demo items",
            description="Synthetic catalogue size (generate_demo_data only).",
        ),
        "events_per_day": Param(
            _DEFAULTS.events_per_day,
            type="integer",
            minimum=100,
            maximum=100_000_000,
            title="Demo events per day",
            description="Synthetic raw events per day (generate_demo_data only).",
        ),
        # ---- features --------------------------------------------------------------------------------
        "window_days": Param(
            _DEFAULTS.window_days,
            type="integer",
            minimum=1,
            maximum=90,
            title="Training window (days)",
            description="Days of clean events before D used for training; D itself is the validation day.",
        ),
        # ---- model -----------------------------------------------------------------------------------
        "skip_training": Param(
            False,
            type="boolean",
            title="Skip training",
            description="Score with the current production model without training or evaluating a new one.",
        ),
        "model": Param(
            _DEFAULTS.model,
            type="string",
            enum=list(MODELS),
            title="Deep model",
            description="The deep candidate model (popularity, item-CF, ALS and EASE baselines are always "
            "trained and evaluated next to it).",
        ),
        "encoder": Param(
            _DEFAULTS.encoder,
            type="string",
            enum=list(ENCODERS),
            title="Sequence encoder",
            description="User-tower encoder over the recent interaction sequence.",
        ),
        "softmax": Param(
            _DEFAULTS.softmax,
            type="string",
            enum=list(SOFTMAX_KINDS),
            title="Softmax",
            description="sampled: in-batch negatives (faster); full: every catalogue item is a negative.",
        ),
        "epochs": Param(
            _DEFAULTS.epochs,
            type="integer",
            minimum=1,
            maximum=200,
            title="Epochs",
            description="Maximum training epochs (early stopping may end sooner).",
        ),
        # ---- gate and validation thresholds ------------------------------------------------------
        "gate_margin": Param(
            _DEFAULTS.gate_margin,
            type="number",
            minimum=0.0,
            maximum=1.0,
            title="Promotion margin",
            description="A candidate replaces production only if it beats it on the gate metric by this much.",
        ),
        "min_recall_at_k": Param(
            _DEFAULTS.min_recall_at_k,
            type="number",
            minimum=0.0,
            maximum=1.0,
            title="Min Recall@K",
            description="Metrics validation fails if the best model's Recall@K is below this.",
        ),
        "min_ndcg_at_k": Param(
            _DEFAULTS.min_ndcg_at_k,
            type="number",
            minimum=0.0,
            maximum=1.0,
            title="Min nDCG@K",
            description="Metrics validation fails if the best model's nDCG@K is below this.",
        ),
        "min_lift_over_popularity": Param(
            _DEFAULTS.min_lift_over_popularity,
            type="number",
            minimum=-1.0,
            maximum=1.0,
            title="Min lift over popularity",
            description="Best model's Recall/nDCG minus popularity's must be at least this (-1 disables).",
        ),
        "volume_band": Param(
            _DEFAULTS.volume_band,
            type="number",
            minimum=0.0,
            maximum=10.0,
            title="Volume band",
            description="The day's clean row count must lie within median*(1 -/+ band) of recent days.",
        ),
        "raw_max_bad_share": Param(
            _DEFAULTS.raw_max_bad_share,
            type="number",
            minimum=0.0,
            maximum=1.0,
            title="Max bad raw share",
            description="Raw validation fails if more than this share of raw lines is unusable.",
        ),
        "max_cold_start_share": Param(
            _DEFAULTS.max_cold_start_share,
            type="number",
            minimum=0.0,
            maximum=1.0,
            title="Max cold-start share",
            description="Validation fails if more than this share of recommendation rows are cold-start.",
        ),
        # ---- output ---------------------------------------------------------------------------------
        "top_n": Param(
            _DEFAULTS.top_n,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Top N",
            description="Recommendations per user in the published table.",
        ),
        "category_cap": Param(
            _DEFAULTS.category_cap,
            type="integer",
            minimum=0,
            maximum=1000,
            title="Per-category cap",
            description="At most this many items of one category per user (0: no cap).",
        ),
    }
