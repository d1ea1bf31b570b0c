"""Published contracts and run bookkeeping tables. A breaking change is a new version, documented in docs/tables.md and CHANGELOG.md."""

from __future__ import annotations

import pyarrow as pa

RECOMMENDATIONS_VERSION = 1
STRATEGIES = ("model", "cold_start")

# recommendations/dt=YYYY-MM-DD/: one row per (user, rank)
RECOMMENDATION = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1 = best
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"recflow.schema_version": str(RECOMMENDATIONS_VERSION)},
)

SIMILAR_ITEMS_VERSION = 1
# similar_items/dt=YYYY-MM-DD/: one row per (item, rank)
SIMILAR_ITEM = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("similar_item_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"recflow.schema_version": str(SIMILAR_ITEMS_VERSION)},
)

# metrics/dt=...: one row per (model, segment, metric)
METRIC = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # candidate | baseline | production
        pa.field("segment", pa.string(), nullable=False),  # all | cold | warm
        pa.field("metric", pa.string(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("users", pa.int64(), nullable=False),
    ]
)

# metrics_per_user/dt=...: one row per (model, user, metric) for all validation users with a relevant item, the
# values behind METRIC's "all" means; the gate tests a candidate's lead over production on them
USER_METRIC = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # candidate | baseline | production
        pa.field("user_idx", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

# runs/table: one row per (stage, dt) from the run manifests
RUN = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("counts_json", pa.string(), nullable=False),
    ]
)
