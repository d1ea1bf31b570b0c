"""Raw inputs as the applications write them: JSON lines, one file set per day.

These are the *declared* schemas the cleaning job parses with. Anything that does not fit goes to quarantine.
"""

from __future__ import annotations

import pyarrow as pa

# Event types in order of implicit-feedback strength (weakest first). ecommerce uses view/click/cart/purchase;
# news uses view/click/share.
EVENT_TYPES = ("view", "click", "share", "cart", "purchase")
EVENT_STRENGTH = {"view": 1.0, "click": 2.0, "share": 3.0, "cart": 4.0, "purchase": 8.0}
SCENARIO_EVENT_TYPES = {
    "ecommerce": ("view", "click", "cart", "purchase"),
    "news": ("view", "click", "share"),
}

# raw/events/dt=YYYY-MM-DD/*.jsonl[.gz]; event_time is ISO-8601 with offset, e.g. 2026-01-14T08:15:02.123Z
RAW_EVENT = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("price", pa.float64()),  # ecommerce: price paid/seen; news: absent
        pa.field("ip", pa.string()),  # PII: never passed on
        pa.field("user_agent", pa.string()),
    ]
)
REQUIRED_EVENT_FIELDS = ("event_id", "event_time", "user_id", "event_type", "item_id")

# raw/items/dt=YYYY-MM-DD/items.jsonl: the catalogue snapshot of that day
RAW_ITEM = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("title", pa.string()),
        pa.field("publish_time", pa.string()),
        pa.field("available", pa.bool_()),
        pa.field("source", pa.string()),  # news: the publisher
    ]
)

# raw/users/dt=YYYY-MM-DD/users.jsonl: profiles, with PII the pipeline must drop
RAW_USER = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("email", pa.string()),
        pa.field("phone", pa.string()),
        pa.field("name", pa.string()),
        pa.field("ip", pa.string()),
        pa.field("address", pa.string()),
        pa.field("age", pa.int32()),
        pa.field("region", pa.string()),
        pa.field("signup_time", pa.string()),
    ]
)
PII_FIELDS = ("email", "phone", "name", "ip", "address")
