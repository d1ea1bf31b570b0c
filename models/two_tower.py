"""The two-tower retrieval model (TFRS style, written out: the tfrs package is not used).

- :class:`ItemTower`: item-id embedding + content (category, price bucket, hashed title tokens, age), so an item
  the model never saw still gets an embedding from its content.
- :class:`UserTower`: a sequence encoder over the recent history (``gru``, ``lstm``, ``cnn``, ``attention``,
  ``mean``) + a bag over the user's known items + profile features (age bucket, region).
- :class:`TwoTowerModel` receives both towers and computes its loss in ``compute_loss``: a softmax over the whole
  catalogue (small catalogues) or over the in-batch candidates with log-Q correction (large ones). Positives
  compete only against negatives (other targets and the user's known items are not pushed down).
- Optional wide part (wide-and-deep, for catalogues up to ``wide_max_items``; above it the training warns and its
  summary says ``wide: skipped`` with the reason): EASE's closed-form item-item model, fitted by the same training
  run. Final score = ``blend * z(deep) + (1 - blend) * z(wide)``, each part scaled by
  its per-user standard deviation over the catalogue; ``blend`` is chosen on the validation set after training.
  (Training the deep part jointly on top of EASE was measured worse on MovieLens: EASE scores its own training
  pairs in-sample, so the joint model leans on it; the calibrated blend does not.)
- :class:`TwoTowerScoring`: the export (``scoring.contract.ScoringModule``); the score stays a dot product because the
  wide part is appended: ``[blend * u / sd_deep(u), (1 - blend) * x_u B / sd_wide(u)] . [v, onehot(item)]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models import features as F
from schemas.settings import Settings
from scoring.contract import ScoringModule, in_vocab, multi_hot_matmul

# Parameters that are also settings take their defaults from the settings' defaults (what the nightly run uses),
# so TwoTowerParams() and TwoTowerParams.from_settings(Settings()) cannot drift apart.
_NIGHTLY = Settings()
SETTINGS_FIELDS = (
    "encoder",
    "embedding_dim",
    "history_length",
    "epochs",
    "batch_size",
    "learning_rate",
    "eval_k",
    "seed",
)
FULL_SOFTMAX_MAX_ITEMS = 50_000  # settings' "full" softmax: every catalogue item a negative, up to this size
# The parameters that decide the weights' shapes or what they mean. A warm start (models.train) needs them equal to
# the production model's; the others (epochs, batch size, learning rate, dropout, l2, the loss's negatives, the
# wide part, which each night refits) may change between nights.
ARCHITECTURE_FIELDS = (
    "encoder",
    "objective",
    "embedding_dim",
    "hidden_dim",
    "history_length",  # the attention encoder's position table
    "normalize",
    "item_bias",
    "temperature",
)


def full_softmax_limit(softmax: str) -> int:
    """``full_softmax_max_items`` for a settings ``softmax`` kind ("sampled": 0, always the in-batch softmax)."""
    return 0 if softmax == "sampled" else FULL_SOFTMAX_MAX_ITEMS


@dataclasses.dataclass(frozen=True)
class TwoTowerParams:
    encoder: str = _NIGHTLY.encoder
    objective: str = "next"
    embedding_dim: int = _NIGHTLY.embedding_dim
    hidden_dim: int = 0  # 0: the user tower's head is linear
    history_length: int = _NIGHTLY.history_length
    seen_length: int = 50
    max_targets: int = 64  # set objective: at most this many held-out targets per user and epoch
    holdout: float = 0.25  # set objective: share of a user's items held out as targets each epoch
    temperature: float = 0.1
    normalize: bool = True  # cosine similarity / temperature (stable scale for the softmax)
    item_bias: bool = True  # a per-item bias (popularity) beside the normalised embedding
    dropout: float = 0.1
    l2: float = 0.0
    epochs: int = _NIGHTLY.epochs
    batch_size: int = _NIGHTLY.batch_size
    learning_rate: float = _NIGHTLY.learning_rate
    # above this many items, in-batch sampled softmax with log-Q correction
    full_softmax_max_items: int = full_softmax_limit(_NIGHTLY.softmax)
    mask_seen: bool = True  # the user's known items are not negatives (they are excluded when recommending)
    wide: bool = True  # add the EASE-initialised item-item part (catalogues up to wide_max_items)
    wide_max_items: int = 8_192
    ease_lambda: float = 400.0
    # deep share of the blended score; < 0: chosen on the validation set (0.5 without one)
    blend: float = -1.0
    patience: int = 2
    eval_k: int = _NIGHTLY.eval_k
    seed: int = _NIGHTLY.seed

    def __post_init__(self) -> None:
        if self.encoder not in F.ENCODERS:
            raise ValueError(f"encoder must be one of {F.ENCODERS}, got {self.encoder!r}")
        if self.objective not in F.OBJECTIVES:
            raise ValueError(f"objective must be one of {F.OBJECTIVES}, got {self.objective!r}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TwoTowerParams:
        values: dict[str, Any] = {name: getattr(settings, name) for name in SETTINGS_FIELDS}
        values["full_softmax_max_items"] = full_softmax_limit(settings.softmax)
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *extra: object) -> str:
        text = json.dumps([self.to_dict(), *extra], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def architecture_differences(self, other: dict[str, Any]) -> list[str]:
        """``field: theirs -> ours`` for each of :data:`ARCHITECTURE_FIELDS` where ``other`` (another model's
        params, as its metadata holds them) differs from these; empty when a model of ``other`` can warm-start
        one of these."""
        out = []
        for name in ARCHITECTURE_FIELDS:
            ours, theirs = getattr(self, name), other.get(name, "(absent)")
            if theirs != ours:
                out.append(f"{name}: {theirs!r} -> {ours!r}")
        return out

    def wide_state(self, num_items: int) -> tuple[str, str | None]:
        """("used", None), ("off", reason) or ("skipped", reason): whether a catalogue of ``num_items`` items gets
        the wide part, and why not."""
        if not self.wide:
            return "off", "wide=False in the parameters"
        if num_items > self.wide_max_items:
            return "skipped", (
                f"the catalogue has {num_items} items, above wide_max_items={self.wide_max_items} "
                "(the dense item-item matrix grows with the square of the catalogue)"
            )
        return "used", None


# ---- shared pieces ---------------------------------------------------------------------------------------------
def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    mask = tf.cast(mask, values.dtype)[..., None]
    return tf.reduce_sum(values * mask, axis=-2) / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)


class ItemTower(keras.layers.Layer):
    """Item embedding = id embedding (known items) + projection of the content features."""

    def __init__(
        self,
        num_items: int,
        num_categories: int,
        num_price_buckets: int,
        title_buckets: int,
        dim: int,
        l2: float = 0.0,
        bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sizes = (num_items + 1, num_categories + 1, num_price_buckets + 1, title_buckets + 1)
        # the bias rides as an extra last column: [embedding (d), bias (1)]; content gives new items a bias too
        self.id_bias = (
            keras.layers.Embedding(self.sizes[0], 1, embeddings_initializer="zeros", name="item_bias")
            if bias
            else None
        )
        self.content_bias = keras.layers.Dense(1, name="content_bias") if bias else None
        reg = keras.regularizers.L2(l2) if l2 else None
        self.item_embedding = keras.layers.Embedding(
            self.sizes[0], dim, embeddings_regularizer=reg, name="item_id"
        )
        self.category_embedding = keras.layers.Embedding(self.sizes[1], dim, name="category")
        self.price_embedding = keras.layers.Embedding(self.sizes[2], dim, name="price_bucket")
        self.title_embedding = keras.layers.Embedding(self.sizes[3], dim, name="title_tokens")
        self.content = keras.layers.Dense(dim, name="content")

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        item = in_vocab(inputs[F.ITEM_IDX], self.sizes[0])
        tokens = in_vocab(inputs[F.TITLE_TOKENS], self.sizes[3])
        known = tf.cast(item > 0, self.compute_dtype)[:, None]
        age = tf.math.log1p(tf.maximum(tf.cast(inputs[F.AGE_DAYS], self.compute_dtype), 0.0))[:, None]
        content = tf.concat(
            [
                self.category_embedding(in_vocab(inputs[F.CATEGORY_IDX], self.sizes[1])),
                self.price_embedding(in_vocab(inputs[F.PRICE_BUCKET], self.sizes[2])),
                _masked_mean(self.title_embedding(tokens), tokens > 0),
                age,
            ],
            axis=-1,
        )
        embedding = self.item_embedding(item) * known + self.content(content)
        if self.id_bias is None or self.content_bias is None:
            return embedding
        return tf.concat([embedding, self.id_bias(item) * known + self.content_bias(content)], axis=-1)


class SequenceEncoder(keras.layers.Layer):
    """[B, L, d] item embeddings of a left-padded history (newest last) + mask -> [B, d]."""

    def __init__(self, kind: str, dim: int, length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        if kind == "gru":
            self.rnn = keras.layers.GRU(dim)
        elif kind == "lstm":
            self.rnn = keras.layers.LSTM(dim)
        elif kind == "cnn":
            self.convs = [
                keras.layers.Conv1D(dim, 3, padding="causal", activation="relu", dilation_rate=r)
                for r in (1, 2)
            ]
        elif kind == "attention":
            self.positions = keras.layers.Embedding(length, dim, name="positions")
            self.attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=max(dim // 2, 1))
            self.norm1 = keras.layers.LayerNormalization()
            self.norm2 = keras.layers.LayerNormalization()
            self.ffn = keras.Sequential(
                [keras.layers.Dense(2 * dim, activation="gelu"), keras.layers.Dense(dim)]
            )
        elif kind != "mean":
            raise ValueError(f"encoder must be one of {F.ENCODERS}, got {kind!r}")

    def call(self, embedded: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        if self.kind in ("gru", "lstm"):
            return self.rnn(embedded, mask=mask, training=training)
        if self.kind == "cnn":
            hidden = embedded
            for conv in self.convs:
                hidden = conv(hidden)
            return _masked_mean(hidden, mask)
        if self.kind == "attention":
            length = tf.shape(embedded)[1]
            # positions counted from the newest item, so the same offset means the same recency at any length
            recency = tf.maximum(self.positions.input_dim - length, 0) + tf.range(length)
            hidden = embedded + self.positions(recency)[None]
            causal = tf.linalg.band_part(tf.ones((length, length), tf.bool), -1, 0)[None]
            attend = causal & mask[:, None, :]
            hidden = self.norm1(
                hidden + self.attention(hidden, hidden, attention_mask=attend, training=training)
            )
            hidden = self.norm2(hidden + self.ffn(hidden))
            return hidden[:, -1]  # the newest position has attended to the whole (causal) history
        return _masked_mean(embedded, mask)


class UserTower(keras.layers.Layer):
    """User embedding from the recent sequence, the bag of known items and the profile."""

    def __init__(
        self,
        num_items: int,
        num_age_buckets: int,
        num_regions: int,
        encoder: str,
        dim: int,
        history_length: int,
        hidden_dim: int = 0,
        dropout: float = 0.0,
        l2: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sizes = (num_items + 1, num_age_buckets + 1, num_regions + 1)
        reg = keras.regularizers.L2(l2) if l2 else None
        self.history_embedding = keras.layers.Embedding(
            self.sizes[0], dim, embeddings_regularizer=reg, name="history_items"
        )
        self.bag_embedding = keras.layers.Embedding(
            self.sizes[0], dim, embeddings_regularizer=reg, name="bag_items"
        )
        self.encoder = SequenceEncoder(encoder, dim, history_length, name=f"encoder_{encoder}")
        self.age_embedding = keras.layers.Embedding(self.sizes[1], max(dim // 4, 4), name="age_bucket")
        self.region_embedding = keras.layers.Embedding(self.sizes[2], max(dim // 4, 4), name="region")
        self.dropout = keras.layers.Dropout(dropout)
        self.hidden = keras.layers.Dense(hidden_dim, activation="gelu") if hidden_dim else None
        self.head = keras.layers.Dense(dim, name="head")

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        history = in_vocab(inputs[F.HISTORY], self.sizes[0])
        seen = in_vocab(inputs[F.SEEN], self.sizes[0])
        sequence = self.encoder(self.history_embedding(history), history > 0, training=training)
        bag = _masked_mean(self.bag_embedding(seen), seen > 0)
        joined = tf.concat(
            [
                sequence,
                bag,
                self.age_embedding(in_vocab(inputs[F.AGE_BUCKET_IDX], self.sizes[1])),
                self.region_embedding(in_vocab(inputs[F.REGION_IDX], self.sizes[2])),
            ],
            axis=-1,
        )
        joined = self.dropout(joined, training=training)
        if self.hidden is not None:
            joined = self.hidden(joined)
        return self.head(joined)


# ---- the wide part -----------------------------------------------------------------------------------------------
def ease_matrix(user_idx: np.ndarray, item_idx: np.ndarray, num_items: int, lam: float) -> np.ndarray:
    """EASE (:func:`models.baselines.ease_weights`) on binary (user, item) pairs, as float32
    [num_items+1, num_items+1] indexed by item_idx (row/column 0 = padding, all zero)."""
    import scipy.sparse as sp

    from models.baselines import ease_weights

    users = np.unique(user_idx, return_inverse=True)[1]
    x = sp.csr_matrix(
        (np.ones(len(users), np.float32), (users, np.asarray(item_idx))),
        shape=(int(users.max(initial=-1)) + 1, num_items + 1),
    )
    b = ease_weights(x, lam)
    b[0, :] = 0.0
    b[:, 0] = 0.0
    return b


def _set_entries(values: tf.Tensor, columns: tf.Tensor, value: float) -> tf.Tensor:
    """``values`` [B, N] with ``value`` at each (row, columns[row, j]); a scatter, far cheaper than a dense mask."""
    rows = tf.broadcast_to(tf.range(tf.shape(columns)[0])[:, None], tf.shape(columns))
    indices = tf.reshape(tf.stack([rows, columns], axis=-1), [-1, 2])
    return tf.tensor_scatter_nd_update(
        values, indices, tf.fill([tf.shape(indices)[0]], tf.cast(value, values.dtype))
    )


def user_vector(tower_output: tf.Tensor, params: TwoTowerParams) -> tf.Tensor:
    """Tower output -> the user side of the logit: (normalised) embedding / temperature, then 1 for the item bias."""
    u = tf.cast(tower_output, tf.float32)
    if params.normalize:
        u = tf.math.l2_normalize(u, axis=-1)
    u = u / params.temperature
    return tf.concat([u, tf.ones_like(u[:, :1])], axis=-1) if params.item_bias else u


def item_vector(tower_output: tf.Tensor, params: TwoTowerParams) -> tf.Tensor:
    """Tower output -> the item side of the logit: (normalised) embedding, then its bias."""
    v = tf.cast(tower_output, tf.float32)
    embedding, bias = (v[:, :-1], v[:, -1:]) if params.item_bias else (v, None)
    if params.normalize:
        embedding = tf.math.l2_normalize(embedding, axis=-1)
    return embedding if bias is None else tf.concat([embedding, bias], axis=-1)


# ---- the model ----------------------------------------------------------------------------------------------------
class TwoTowerModel(keras.Model):
    """Receives its towers; ``call`` gives user embeddings, ``compute_loss`` scores them against the catalogue."""

    def __init__(
        self,
        user_tower: UserTower,
        item_tower: ItemTower,
        catalogue: dict[str, np.ndarray],
        params: TwoTowerParams,
        item_log_q: np.ndarray | None = None,
        wide: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.params = params
        self.num_items = len(catalogue[F.ITEM_IDX]) - 1
        self.catalogue = {name: tf.constant(value) for name, value in catalogue.items()}
        self.full_softmax = self.num_items <= params.full_softmax_max_items
        log_q = (
            np.zeros(self.num_items + 1, np.float32) if item_log_q is None else item_log_q.astype(np.float32)
        )
        self.item_log_q = tf.constant(log_q)
        self.wide = None
        if wide is not None:
            self.wide = self.add_weight(
                shape=wide.shape,
                initializer=keras.initializers.Constant(wide),
                trainable=False,
                name="wide_item_item",
                dtype="float32",
            )
        self.blend = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(params.blend if params.blend >= 0 else 0.5),
            trainable=False,
            name="blend",
            dtype="float32",
        )

    def item_tables(self) -> list[keras.Variable]:
        """The weights with one row per item index (item id embedding and bias, the user tower's history and bag
        tables): a warm start moves their rows by item, the other weights as they are."""
        layers = (
            self.item_tower.item_embedding,
            self.item_tower.id_bias,
            self.user_tower.history_embedding,
            self.user_tower.bag_embedding,
        )
        return [layer.embeddings for layer in layers if layer is not None]

    # -- embeddings in float32 and on the logit scale (temperature folded into the user side) --
    def user_vectors(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return user_vector(self.user_tower(inputs, training=training), self.params)

    def item_vectors(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return item_vector(self.item_tower(inputs, training=training), self.params)

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.user_vectors(inputs, training=training)

    def catalogue_logits(
        self, inputs: dict[str, tf.Tensor], user: tf.Tensor, training: bool = False
    ) -> tf.Tensor:
        """Deep logits of every catalogue item [B, N+1] (column 0, padding, is -inf)."""
        logits = tf.matmul(user, self.item_vectors(self.catalogue, training=training), transpose_b=True)
        return tf.concat([tf.fill([tf.shape(logits)[0], 1], -np.inf), logits[:, 1:]], axis=1)

    def wide_scores(self, seen: tf.Tensor) -> tf.Tensor:
        """x_u B: the linear part's score of every catalogue item [B, N+1]."""
        return multi_hot_matmul(seen, self.wide)

    def compute_loss(
        self,
        x: dict[str, tf.Tensor] | None = None,
        y: tf.Tensor | None = None,
        y_pred: tf.Tensor | None = None,
        sample_weight: tf.Tensor | None = None,
        training: bool = True,
    ) -> tf.Tensor:
        if x is None:
            raise ValueError("the loss needs the batch: its targets are inputs, not labels")
        targets = tf.cast(x[F.TARGETS], tf.int32)
        weights = tf.cast(x[F.TARGET_WEIGHTS], tf.float32) * tf.cast(targets > 0, tf.float32)
        user = tf.cast(y_pred, tf.float32)
        if self.full_softmax:
            logits = self.catalogue_logits(x, user, training=training)
            positives = tf.gather(logits, targets, batch_dims=1)  # [B, T]
            excluded = [targets, tf.cast(x[F.SEEN], tf.int32)] if self.params.mask_seen else [targets]
            negatives = _set_entries(
                logits, in_vocab(tf.concat(excluded, axis=1), self.num_items + 1), -np.inf
            )
        else:
            # in-batch candidates: every target of the batch, corrected by its sampling log-probability
            candidates = tf.reshape(targets, [-1])
            item_inputs = {name: tf.gather(value, candidates) for name, value in self.catalogue.items()}
            logits = tf.matmul(user, self.item_vectors(item_inputs, training=training), transpose_b=True)
            logits = logits - tf.gather(self.item_log_q, candidates)[None, :]
            batch, width = tf.shape(targets)[0], tf.shape(targets)[1]
            own = tf.reshape(tf.range(batch * width), [batch, width])
            positives = tf.gather(logits, own, batch_dims=1)
            same = tf.reduce_any(candidates[None, :, None] == targets[:, None, :], axis=-1)
            negatives = tf.where(same | (candidates[None, :] == 0), -np.inf, logits)
        negative_lse = tf.reduce_logsumexp(negatives, axis=-1, keepdims=True)  # [B, 1]
        # each positive against the negatives only: -log(e^p / (e^p + sum e^n))
        per_target = tf.math.softplus(negative_lse - positives)
        per_target = tf.where(weights > 0, per_target, 0.0)
        loss = tf.reduce_sum(per_target * weights) / tf.maximum(tf.reduce_sum(weights), 1e-6)
        if self.losses:
            loss = loss + tf.add_n([tf.cast(extra, tf.float32) for extra in self.losses])
        return loss / tf.distribute.get_strategy().num_replicas_in_sync

    # -- evaluation helpers (numpy in, numpy out) --
    def score_catalogue(
        self, user_inputs: dict[str, np.ndarray], batch_size: int = 1024, part: str = "final"
    ) -> np.ndarray:
        """[U, N+1] scores of every catalogue item: ``part`` = "deep", "wide" or "final" (what the export gives)."""
        out = []
        items = self.item_vectors(self.catalogue)
        for start in range(0, len(user_inputs[F.USER_IDX]), batch_size):
            chunk = {k: tf.constant(v[start : start + batch_size]) for k, v in user_inputs.items()}
            user = self.user_vectors(chunk)
            if self.wide is None or part == "deep":
                scores = tf.matmul(user, items, transpose_b=True)
            elif part == "wide":
                scores = self.wide_scores(chunk[F.SEEN])
            else:
                scores = tf.matmul(
                    blended_user(user, self.wide_scores(chunk[F.SEEN]), items, self.blend),
                    wide_items(items, tf.range(self.num_items + 1)),
                    transpose_b=True,
                )
            scores = scores.numpy()
            scores[:, 0] = -np.inf
            out.append(scores)
        return np.concatenate(out) if out else np.zeros((0, self.num_items + 1), np.float32)


def _per_user_std(scores: tf.Tensor) -> tf.Tensor:
    return tf.maximum(tf.math.reduce_std(scores[:, 1:], axis=1, keepdims=True), 1e-6)


def blended_user(
    user: tf.Tensor, wide_user_scores: tf.Tensor, catalogue_items: tf.Tensor, blend: tf.Tensor
) -> tf.Tensor:
    """[blend * u / sd(deep scores), (1 - blend) * x_u B / sd(wide scores)]: per-user calibrated parts."""
    deep_sd = _per_user_std(tf.matmul(user, catalogue_items, transpose_b=True))
    return tf.concat(
        [blend * user / deep_sd, (1.0 - blend) * wide_user_scores / _per_user_std(wide_user_scores)], axis=1
    )


def wide_items(items: tf.Tensor, item_idx: tf.Tensor, vocab_size: int | None = None) -> tf.Tensor:
    """[v, onehot(item)]; items the wide part never saw (0 or beyond its vocabulary) get a zero one-hot."""
    vocab_size = vocab_size or int(items.shape[0])
    item_idx = tf.cast(item_idx, tf.int32)
    known = tf.where((item_idx > 0) & (item_idx < vocab_size), item_idx, -1)
    return tf.concat([items, tf.one_hot(known, vocab_size, dtype=tf.float32)], axis=1)


# ---- export -------------------------------------------------------------------------------------------------------
class TwoTowerScoring(ScoringModule):
    """The exported two-tower model; score(user, item) = encode_users . encode_items = the training logit."""

    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.user_tower = model.user_tower
        self.item_tower = model.item_tower
        self.params = model.params
        self.vocab_size = model.num_items + 1
        self.wide = model.wide
        self.blend = model.blend
        # the training catalogue's item vectors: the deep part's per-user scale is measured against them
        self.catalogue_items = (
            tf.Variable(model.item_vectors(model.catalogue), trainable=False)
            if model.wide is not None
            else None
        )

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):
        inputs = dict(zip(F.USER_INPUTS, (user_idx, history, seen, age_bucket_idx, region_idx), strict=True))
        u = user_vector(self.user_tower(inputs, training=False), self.params)
        if self.wide is None:
            return u
        wide_scores = multi_hot_matmul(seen, self.wide)
        return blended_user(u, wide_scores, self.catalogue_items, self.blend)

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):
        inputs = dict(
            zip(F.ITEM_INPUTS, (item_idx, category_idx, price_bucket, title_tokens, age_days), strict=True)
        )
        v = item_vector(self.item_tower(inputs, training=False), self.params)
        if self.wide is None:
            return v
        return wide_items(v, item_idx, self.vocab_size)
