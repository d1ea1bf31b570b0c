"""Clean tables: typed, deduplicated, pseudonymised (``user_id`` is a keyed hash), free of PII."""

from __future__ import annotations

import pyarrow as pa

CLEAN_EVENT = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),  # pseudonym
        pa.field("session_id", pa.string()),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("price", pa.float64()),
    ]
)

CLEAN_ITEM = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("title", pa.string()),
        pa.field("publish_time", pa.timestamp("us", tz="UTC")),
        pa.field("available", pa.bool_(), nullable=False),
        pa.field("source", pa.string()),
    ]
)

CLEAN_USER = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),  # pseudonym
        pa.field("age_bucket", pa.string()),
        pa.field("region", pa.string()),
    ]
)

# quarantine/events/dt=...: every unusable raw row, with the original line and why
QUARANTINE_EVENT = pa.schema(
    [
        pa.field("raw_line", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("source_file", pa.string()),
    ]
)
QUARANTINE_REASONS = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "unknown_event_type",
    "timestamp_out_of_day",
    "duplicate_event_id",
    "unknown_item",
    "bot_user",
    "null_user",
    "oversized_field",
    "invalid_utf8",
    "invalid_price",
)
