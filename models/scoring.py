"""The export contract every model (deep or baseline) meets, so scoring and evaluation treat them alike.

A model is a ``tf.Module`` with two ``tf.function`` signatures; the score of (user, item) is the dot product of
their embeddings. Exported as a SavedModel under ``<model_dir>/saved_model`` with ``metadata.json`` beside it.

- ``encode_users(user_idx, history, seen, age_bucket_idx, region_idx) -> embedding [B, d]``
  ``history``: int32 [B, history_length] and ``seen``: int32 [B, seen_length], both from
  :func:`schemas.features.pad_ids` (0 = padding). Models use what they need and ignore the rest.
- ``encode_items(item_idx, category_idx, price_bucket, title_tokens, age_days) -> embedding [N, d]``
  ``title_tokens``: int32 [N, title_tokens]. Items unknown to the model get a zero (or content-only) vector.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorflow as tf

USER_SIGNATURE = (
    tf.TensorSpec([None], tf.int32, name="user_idx"),
    tf.TensorSpec([None, None], tf.int32, name="history"),
    tf.TensorSpec([None, None], tf.int32, name="seen"),
    tf.TensorSpec([None], tf.int32, name="age_bucket_idx"),
    tf.TensorSpec([None], tf.int32, name="region_idx"),
)
ITEM_SIGNATURE = (
    tf.TensorSpec([None], tf.int32, name="item_idx"),
    tf.TensorSpec([None], tf.int32, name="category_idx"),
    tf.TensorSpec([None], tf.int32, name="price_bucket"),
    tf.TensorSpec([None, None], tf.int32, name="title_tokens"),
    tf.TensorSpec([None], tf.float32, name="age_days"),
)
USER_INPUTS = tuple(spec.name for spec in USER_SIGNATURE)
ITEM_INPUTS = tuple(spec.name for spec in ITEM_SIGNATURE)
SAVED_MODEL = "saved_model"
METADATA = "metadata.json"


class ScoringModule(tf.Module):
    """Base for exported models: subclasses implement ``_users`` and ``_items`` with TF ops."""

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @tf.function(input_signature=USER_SIGNATURE)
    def encode_users(self, user_idx, history, seen, age_bucket_idx, region_idx):  # type: ignore[no-untyped-def]
        return tf.cast(self._users(user_idx, history, seen, age_bucket_idx, region_idx), tf.float32)

    @tf.function(input_signature=ITEM_SIGNATURE)
    def encode_items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):  # type: ignore[no-untyped-def]
        return tf.cast(self._items(item_idx, category_idx, price_bucket, title_tokens, age_days), tf.float32)


def save(module: ScoringModule, model_dir: str, metadata: dict[str, Any]) -> str:
    """Writes the SavedModel and metadata.json into ``model_dir`` (a local path or a URI TF can write)."""
    tf.saved_model.save(module, f"{model_dir}/{SAVED_MODEL}", signatures={
        "encode_users": module.encode_users, "encode_items": module.encode_items})
    with tf.io.gfile.GFile(f"{model_dir}/{METADATA}", "w") as fh:
        json.dump(metadata, fh, indent=2, sort_keys=True, default=str)
    return model_dir


class LoadedModel:
    """An exported model, loaded once (per process or executor) and applied to numpy batches."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self._module = tf.saved_model.load(f"{model_dir}/{SAVED_MODEL}")
        with tf.io.gfile.GFile(f"{model_dir}/{METADATA}") as fh:
            self.metadata: dict[str, Any] = json.load(fh)

    def encode_users(self, **inputs: np.ndarray) -> np.ndarray:
        args = [tf.convert_to_tensor(inputs[name], dtype=spec.dtype) for name, spec in zip(USER_INPUTS, USER_SIGNATURE, strict=True)]
        return self._module.encode_users(*args).numpy()

    def encode_items(self, **inputs: np.ndarray) -> np.ndarray:
        args = [tf.convert_to_tensor(inputs[name], dtype=spec.dtype) for name, spec in zip(ITEM_INPUTS, ITEM_SIGNATURE, strict=True)]
        return self._module.encode_items(*args).numpy()
