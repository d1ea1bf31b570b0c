"""Feature tables, all partitioned by the run date ``dt``.

Index convention: ``user_idx`` and ``item_idx`` start at 1; 0 is padding / out of vocabulary. Histories are
ordered oldest first and hold at most ``history_length`` item indices.
For run date D: training examples come from the window's days before D, validation from day D itself,
user_histories (scoring input) from the window through D.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

IDS = pa.list_(pa.int32())

DAILY_INTERACTION = pa.schema(
    [  # one day's aggregate per (user, item); computed once per day, reused
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("strength", pa.float64(), nullable=False),  # sum of event-type strengths that day
        pa.field("events", pa.int64(), nullable=False),
        pa.field("last_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(
            "first_time", pa.timestamp("us", tz="UTC"), nullable=False
        ),  # orders the day's items in histories
    ]
)

VOCAB_USER = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("first_seen", pa.date32(), nullable=False),
    ]
)
VOCAB_ITEM = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("first_seen", pa.date32(), nullable=False),
    ]
)

ITEM_FEATURE = pa.schema(
    [
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("category_idx", pa.int32(), nullable=False),  # 0 = unknown
        pa.field("price_bucket", pa.int32(), nullable=False),  # 0 = no price
        pa.field("title_tokens", IDS, nullable=False),  # hashed title tokens in [1, title_hash_buckets]
        pa.field("age_days", pa.float32(), nullable=False),  # days since publish_time at the run date
        pa.field("available", pa.bool_(), nullable=False),
        pa.field("popularity", pa.float64(), nullable=False),  # decayed strength over the window through D
        pa.field("title", pa.string()),
    ]
)

USER_FEATURE = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age_bucket_idx", pa.int32(), nullable=False),  # 0 = unknown
        pa.field("region_idx", pa.int32(), nullable=False),  # 0 = unknown
        pa.field("segment", pa.string(), nullable=False),  # cold-start segment, e.g. "25-34|north"
    ]
)

INTERACTION = pa.schema(
    [  # the training window (days before D) aggregated per (user, item)
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("strength", pa.float64(), nullable=False),  # time-decayed to D
        pa.field("events", pa.int64(), nullable=False),
        pa.field("last_time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

TRAIN_EXAMPLE = pa.schema(
    [  # one positive (user, next item) with the history before it
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("history", IDS, nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

VALIDATION_EXAMPLE = pa.schema(
    [  # per user active on day D: state before D and what they took up on D
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("history", IDS, nullable=False),  # through D-1
        pa.field("seen", IDS, nullable=False),  # distinct items in the window before D (excluded at eval)
        pa.field("targets", IDS, nullable=False),  # distinct items on D not in seen
    ]
)

USER_HISTORY = pa.schema(
    [  # scoring input: state through D
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("history", IDS, nullable=False),
        pa.field("seen", IDS, nullable=False),  # distinct items in the window through D (excluded at scoring)
    ]
)


def pad_ids(lists: Iterable[Sequence[int] | np.ndarray | None], length: int) -> np.ndarray:
    """Dense int32 [n, length] from id lists: keep the last ``length`` ids, left-pad with 0 (newest last).

    The one encoding of histories and seen-sets that every model input and the scoring job use.
    """

    rows = list(lists)
    out = np.zeros((len(rows), length), dtype=np.int32)
    for i, ids in enumerate(rows):
        if ids is None:
            continue
        tail = list(ids)[-length:]
        if tail:
            out[i, length - len(tail) :] = tail
    return out


def user_inputs(
    user_idx: Sequence[int] | np.ndarray,
    histories: Sequence[Sequence[int] | np.ndarray | None],
    seen: Sequence[Sequence[int] | np.ndarray | None],
    history_length: int,
    seen_length: int | None = None,
    age_bucket_idx: np.ndarray | None = None,
    region_idx: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The user tower's inputs in the export contract (``scoring.contract.USER_INPUTS``), as training,
    evaluation and batch scoring all build them: ids padded by :func:`pad_ids` (``seen`` as wide as its longest
    row unless ``seen_length`` is given), unknown profiles as 0."""
    n = len(user_idx)
    if seen_length is None:
        seen_length = max(1, max((len(s) for s in seen if s is not None), default=1))
    zeros = np.zeros(n, np.int32)
    return {
        "user_idx": np.asarray(user_idx, np.int32),
        "history": pad_ids(histories, history_length),
        "seen": pad_ids(seen, seen_length),
        "age_bucket_idx": zeros if age_bucket_idx is None else np.asarray(age_bucket_idx, np.int32),
        "region_idx": zeros if region_idx is None else np.asarray(region_idx, np.int32),
    }
