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

EMBEDDINGS_VERSION = 1
# Embeddings are published only for a production model of at most this dimension (a two-tower or factor model);
# item-to-item models (and a deep model with its wide item-item part) have catalogue-length vectors: for those the
# score job stages no rows, only the reason (``_SKIPPED.json``), and publish records it.
EMBEDDINGS_MAX_DIMENSION = 512
VECTOR = pa.list_(pa.float32())  # every row of a partition holds ``dimension`` values
# user_embeddings/dt=YYYY-MM-DD/: one row per user with a "model" recommendation list that day
USER_EMBEDDING = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),  # pseudonymised, as in recommendations
        pa.field("vector", VECTOR, nullable=False),  # the exported model's encode_users
        pa.field("dimension", pa.int32(), nullable=False),
        # the available items the user interacted with in the window through D: excluded from the user's list
        pa.field("seen_item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"recflow.schema_version": str(EMBEDDINGS_VERSION)},
)
# item_embeddings/dt=YYYY-MM-DD/: one row per catalogue item of D (available or not)
ITEM_EMBEDDING = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("vector", VECTOR, nullable=False),  # the exported model's encode_items
        pa.field("dimension", pa.int32(), nullable=False),
        pa.field("available", pa.bool_(), nullable=False),  # only available items are recommended
        pa.field("category", pa.string()),  # what the optional category cap counts (null: one category)
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"recflow.schema_version": str(EMBEDDINGS_VERSION)},
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
