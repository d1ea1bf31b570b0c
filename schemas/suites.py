"""Great Expectations suites, one per validated table, as module-level objects.

``jobs/validate.py`` reads a table partition, adds the helper columns named here (joins and window results that a
single-column expectation cannot see), computes the ``$PARAMETER`` values from settings and earlier partitions, and
runs the suite with pandas or Spark; the suites are the same for both engines.

Groups (``SUITE_GROUPS``) name what a pipeline stage validates: ``features`` checks five feature tables.
Null values are ignored by column-map expectations, so every id column also carries a not-null expectation.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe

from schemas.clean import CLEAN_EVENT
from schemas.outputs import STRATEGIES
from schemas.raw import REQUIRED_EVENT_FIELDS

# Id values that are as bad as a null: placeholders applications write when they have no id.
PLACEHOLDER_IDS = ("", "null", "NULL", "None", "none", "undefined", "unknown", "nan", "NaN", "0", "-1")


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


# ---- helper columns added by jobs/validate.py -----------------------------------------------------------
# raw events
RAW_PARSED = "parsed"  # the line is a JSON object
RAW_TIME_VALID = "event_time_valid"  # event_time parses as an ISO-8601 timestamp
# clean events
ITEM_KNOWN = "item_in_catalogue"  # item_id is in the day's item catalogue
# train examples, user histories: extremes of the id lists (0 is padding)
HISTORY_MIN, HISTORY_MAX = "history_min_idx", "history_max_idx"
SEEN_MIN, SEEN_MAX = "seen_min_idx", "seen_max_idx"
# model metrics: one row, the best non-baseline model, metrics at eval_k as fixed column names
RECALL, NDCG = "recall_at_k", "ndcg_at_k"
RECALL_LIFT, NDCG_LIFT = "recall_lift_over_popularity", "ndcg_lift_over_popularity"
# recommendations
USER_ROWS = "user_rows"  # rows of this user
ROWS_SHORT = "rows_short"  # min(top_n, available unseen items) - user_rows: 0 unless the table is short
SCORE_RISE = "score_rise"  # score - score at the previous rank (null at rank 1); > 0 means misordered
ITEM_AVAILABLE = "item_available"  # the item is in the catalogue and available on D (False when unknown)
ITEM_SEEN = "item_seen"  # the user interacted with the item in the window through D
IS_COLD_START = "is_cold_start"  # 1 when the row came from the cold-start strategy, else 0
# user and item embeddings
VECTOR_LENGTH = "vector_length"  # values in the row's vector
VECTOR_FINITE = "vector_finite"  # every value of the vector is finite (no NaN, no infinity)
IN_RECOMMENDATIONS = "in_recommendations"  # the user has "model" rows in the staged recommendations
AVAILABLE_AS_CATALOGUE = "available_as_catalogue"  # the row's available flag is the catalogue's


# ---- raw events: the parsed JSON lines of raw/events/dt=D --------------------------------------------------
# Cleaning quarantines bad lines, so most checks allow a share of bad rows; a larger share means the
# producer broke (format change, renamed field, new event vocabulary), which cleaning would turn into silent loss.
RAW_EVENTS = gx.ExpectationSuite(
    name="raw_events",
    expectations=[
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column=RAW_PARSED, value_set=[True], mostly=_param("min_good_share")),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=_param("min_good_share"))
            for name in REQUIRED_EVENT_FIELDS
        ],
        gxe.ExpectColumnValuesToBeInSet(
            column="event_type", value_set=_param("event_types"), mostly=_param("min_good_share")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=RAW_TIME_VALID, value_set=[True], mostly=_param("min_good_share")
        ),
        gxe.ExpectColumnValuesToNotBeInSet(
            column="user_id", value_set=list(PLACEHOLDER_IDS), mostly=_param("min_good_share")
        ),
    ],
)

# ---- clean events: clean/events/dt=D ----------------------------------------------------------------------
CLEAN_EVENTS = gx.ExpectationSuite(
    name="clean_events",
    expectations=[
        # volume: within a band around the median of the previous days' counts (jobs/validate.py computes it)
        gxe.ExpectTableRowCountToBeBetween(min_value=_param("min_rows"), max_value=_param("max_rows")),
        *[gxe.ExpectColumnValuesToNotBeNull(column=f.name) for f in CLEAN_EVENT if not f.nullable],
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectColumnValuesToNotBeInSet(column="user_id", value_set=list(PLACEHOLDER_IDS)),
        gxe.ExpectColumnValuesToNotBeInSet(column="item_id", value_set=list(PLACEHOLDER_IDS)),
        gxe.ExpectColumnValuesToBeInSet(column=ITEM_KNOWN, value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=_param("event_types")),
        # the run's day, [D 00:00, D+1 00:00) UTC
        gxe.ExpectColumnValuesToBeBetween(
            column="event_time", min_value=_param("day_start"), max_value=_param("day_end"), strict_max=True
        ),
        gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, max_value=_param("max_price")),
    ],
)


# ---- features: five tables of features/*/dt=D ---------------------------------------------------------------
def _vocabulary_suite(name: str, id_column: str, idx_column: str) -> gx.ExpectationSuite:
    """Indices are 1..rows (unique, >= 1, max <= rows) and the vocabulary never shrinks vs the previous dt."""
    return gx.ExpectationSuite(
        name=name,
        expectations=[
            gxe.ExpectTableRowCountToBeBetween(min_value=_param("previous_rows")),
            gxe.ExpectColumnValuesToNotBeNull(column=id_column),
            gxe.ExpectColumnValuesToNotBeNull(column=idx_column),
            gxe.ExpectColumnValuesToBeUnique(column=id_column),
            gxe.ExpectColumnValuesToBeUnique(column=idx_column),
            gxe.ExpectColumnMinToBeBetween(column=idx_column, min_value=1),
            gxe.ExpectColumnMaxToBeBetween(
                column=idx_column, min_value=_param("previous_max_idx"), max_value=_param("rows")
            ),
        ],
    )


VOCAB_ITEMS = _vocabulary_suite("features_vocab_items", "item_id", "item_idx")
VOCAB_USERS = _vocabulary_suite("features_vocab_users", "user_id", "user_idx")


def _one_row_per_index(idx_column: str, id_column: str, max_idx_param: str) -> list[Any]:
    """At least one row, one row per index, every row named, every index within the vocabulary."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column=idx_column),
        gxe.ExpectColumnValuesToNotBeNull(column=id_column),
        gxe.ExpectColumnValuesToBeBetween(column=idx_column, min_value=1, max_value=_param(max_idx_param)),
    ]


ITEM_FEATURES = gx.ExpectationSuite(
    name="features_items",
    expectations=[
        *_one_row_per_index("item_idx", "item_id", "max_item_idx"),
        gxe.ExpectColumnValuesToBeBetween(
            column="price_bucket", min_value=0, max_value=_param("price_buckets")
        ),
        gxe.ExpectColumnValuesToBeBetween(column="category_idx", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="popularity", min_value=0),
        gxe.ExpectColumnValuesToNotBeNull(column="available"),
    ],
)

TRAIN_EXAMPLES = gx.ExpectationSuite(
    name="features_train_examples",
    expectations=[
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="user_idx", min_value=1, max_value=_param("max_user_idx")),
        gxe.ExpectColumnValuesToBeBetween(column="item_idx", min_value=1, max_value=_param("max_item_idx")),
        gxe.ExpectColumnValuesToBeBetween(column=HISTORY_MIN, min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column=HISTORY_MAX, min_value=0, max_value=_param("max_item_idx")),
        gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0, strict_min=True),
        # training examples come from the window's days before D
        gxe.ExpectColumnValuesToBeBetween(
            column="event_time",
            min_value=_param("window_start"),
            max_value=_param("day_start"),
            strict_max=True,
        ),
    ],
)

USER_HISTORIES = gx.ExpectationSuite(
    name="features_user_histories",
    expectations=[
        *_one_row_per_index("user_idx", "user_id", "max_user_idx"),
        gxe.ExpectColumnValuesToBeBetween(column=HISTORY_MIN, min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column=HISTORY_MAX, min_value=0, max_value=_param("max_item_idx")),
        gxe.ExpectColumnValuesToBeBetween(column=SEEN_MIN, min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column=SEEN_MAX, min_value=1, max_value=_param("max_item_idx")),
    ],
)

# ---- model metrics: metrics/dt=D reduced to the best candidate/production model ---------------------------
MODEL_METRICS = gx.ExpectationSuite(
    name="model_metrics",
    expectations=[
        gxe.ExpectTableRowCountToEqual(value=1),  # a candidate or production model was evaluated
        gxe.ExpectColumnValuesToBeBetween(column=RECALL, min_value=_param("min_recall"), max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column=NDCG, min_value=_param("min_ndcg"), max_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column=RECALL_LIFT),  # popularity was evaluated too
        gxe.ExpectColumnValuesToBeBetween(column=RECALL_LIFT, min_value=_param("min_lift")),
        gxe.ExpectColumnValuesToBeBetween(column=NDCG_LIFT, min_value=_param("min_lift")),
    ],
)

# ---- recommendations: the staging copy of recommendations/dt=D, before publish -----------------------------
RECOMMENDATIONS = gx.ExpectationSuite(
    name="recommendations",
    expectations=[
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=name)
            for name in ("user_id", "rank", "item_id", "score", "model_version", "strategy", "generated_at")
        ],
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),  # no item twice for a user
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "rank"]),
        # every user with history is in the table (expected_users = users with history + the table's cold users)
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="user_id", min_value=_param("expected_users")),
        # top_n rows per user, fewer only when the available unseen catalogue is smaller (rows_short = 0);
        # with a per-category cap the table may be short by design (max_rows_short = top_n then)
        gxe.ExpectColumnValuesToBeBetween(column=USER_ROWS, min_value=1, max_value=_param("top_n")),
        gxe.ExpectColumnValuesToBeBetween(column=ROWS_SHORT, min_value=0, max_value=_param("max_rows_short")),
        gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=_param("top_n")),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=USER_ROWS, column_B="rank", or_equal=True),
        gxe.ExpectColumnValuesToBeBetween(column=SCORE_RISE, max_value=_param("score_tolerance")),
        gxe.ExpectColumnValuesToBeInSet(column=ITEM_KNOWN, value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column=ITEM_AVAILABLE, value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column=ITEM_SEEN, value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="strategy", value_set=list(STRATEGIES)),
        gxe.ExpectColumnMeanToBeBetween(
            column=IS_COLD_START, min_value=0, max_value=_param("max_cold_start_share")
        ),
    ],
)


# ---- embeddings: the staging copies of user_embeddings/dt=D and item_embeddings/dt=D, before publish ------------
def _embedding_expectations(key: str) -> list[Any]:
    """One row per id; every vector ``dimension`` long and finite; one dimension, the other table's too; the
    model version of the staged recommendations."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=name)
            for name in (key, "vector", "dimension", "model_version", "generated_at")
        ],
        gxe.ExpectColumnValuesToBeUnique(column=key),
        gxe.ExpectColumnValuesToNotBeInSet(column=key, value_set=list(PLACEHOLDER_IDS)),
        gxe.ExpectColumnValuesToBeBetween(
            column="dimension", min_value=_param("paired_dimension"), max_value=_param("paired_dimension")
        ),
        gxe.ExpectColumnValuesToBeBetween(column="dimension", min_value=1, max_value=_param("max_dimension")),
        gxe.ExpectColumnPairValuesToBeEqual(column_A=VECTOR_LENGTH, column_B="dimension"),
        gxe.ExpectColumnValuesToBeInSet(column=VECTOR_FINITE, value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="model_version", value_set=_param("model_versions")),
    ]


USER_EMBEDDINGS = gx.ExpectationSuite(
    name="user_embeddings",
    expectations=[
        *_embedding_expectations("user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="seen_item_ids"),
        # exactly the users with a "model" list: each is one of them, and there are as many as they
        gxe.ExpectColumnValuesToBeInSet(column=IN_RECOMMENDATIONS, value_set=[True]),
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="user_id", min_value=_param("model_users"), max_value=_param("model_users")
        ),
    ],
)

ITEM_EMBEDDINGS = gx.ExpectationSuite(
    name="item_embeddings",
    expectations=[
        *_embedding_expectations("item_id"),
        # exactly D's catalogue, available as it is there
        gxe.ExpectColumnValuesToBeInSet(column=ITEM_KNOWN, value_set=[True]),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=_param("catalogue_items"), max_value=_param("catalogue_items")
        ),
        gxe.ExpectColumnValuesToBeInSet(column=AVAILABLE_AS_CATALOGUE, value_set=[True]),
    ],
)

# ---- the names jobs/validate.py accepts: a group validates one table per suite ------------------------------
SUITES: dict[str, gx.ExpectationSuite] = {
    s.name: s
    for s in (
        RAW_EVENTS,
        CLEAN_EVENTS,
        VOCAB_ITEMS,
        VOCAB_USERS,
        ITEM_FEATURES,
        TRAIN_EXAMPLES,
        USER_HISTORIES,
        MODEL_METRICS,
        RECOMMENDATIONS,
        USER_EMBEDDINGS,
        ITEM_EMBEDDINGS,
    )
}
SUITE_GROUPS: dict[str, tuple[str, ...]] = {
    "raw": ("raw_events",),
    "clean": ("clean_events",),
    "features": (
        "features_vocab_items",
        "features_vocab_users",
        "features_items",
        "features_train_examples",
        "features_user_histories",
    ),
    "metrics": ("model_metrics",),
    "recommendations": ("recommendations",),
    # the embeddings' staging copies; a table the score job did not stage (_SKIPPED.json) is reported, not failed
    "embeddings": ("user_embeddings", "item_embeddings"),
}
