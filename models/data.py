"""Parquet feature tables -> numpy -> ``tf.data``: the deep model's input pipeline.

Reads ``features/train_examples``, ``features/validation``, ``features/items`` and ``features/users`` for the run
date with ``storage.lake_io.read_partition`` (local paths and any URI pyarrow.fs understands), keeps them as dense
numpy arrays indexed by item/user index, and builds training batches per epoch (``next`` or ``set`` objective, see
models.features). :func:`load_profiles` is the one reader of user profiles for training, baselines and evaluation.
The same :class:`TrainingData` can be built from in-memory interactions (the MovieLens benchmark), without a lake.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models import features as F
from models import registry
from schemas import lake
from schemas.features import pad_ids
from schemas.features import user_inputs as feature_user_inputs
from schemas.settings import Settings
from storage import lake_io

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)


# ---- in-memory model inputs -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Catalogue:
    """Item content features as dense arrays indexed by item_idx (row 0 = padding)."""

    category_idx: np.ndarray  # int32 [N+1]
    price_bucket: np.ndarray  # int32 [N+1]
    title_tokens: np.ndarray  # int32 [N+1, T]
    age_days: np.ndarray  # float32 [N+1]
    available: np.ndarray  # bool [N+1]
    # str [N+1]: the item_id of each index ("" for none) when known (the lake's catalogue); a warm start maps the
    # production model's rows onto these by id (models.train)
    item_ids: np.ndarray | None = None

    @property
    def num_items(self) -> int:
        return len(self.category_idx) - 1

    def inputs(self, item_idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Item-tower inputs for ``item_idx`` (default: every row 0..N)."""
        idx = (
            np.arange(self.num_items + 1, dtype=np.int32)
            if item_idx is None
            else np.asarray(item_idx, np.int32)
        )
        return {
            F.ITEM_IDX: idx,
            F.CATEGORY_IDX: self.category_idx[idx],
            F.PRICE_BUCKET: self.price_bucket[idx],
            F.TITLE_TOKENS: self.title_tokens[idx],
            F.AGE_DAYS: self.age_days[idx],
        }

    @classmethod
    def ids_only(cls, num_items: int, title_tokens: int = 1) -> Catalogue:
        """A catalogue without content (MovieLens ids only): every content feature is 'unknown'."""
        n = num_items + 1
        return cls(
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros((n, title_tokens), np.int32),
            np.zeros(n, np.float32),
            np.ones(n, bool),
        )


@dataclasses.dataclass
class Profiles:
    """User profile features indexed by user_idx (row 0 = unknown user)."""

    age_bucket_idx: np.ndarray  # int32 [U+1]
    region_idx: np.ndarray  # int32 [U+1]

    @property
    def num_users(self) -> int:
        return len(self.age_bucket_idx) - 1

    def lookup(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(age bucket, region) per user index; users without a profile (or beyond the table) get 0, unknown."""
        idx = np.where((user_idx >= 0) & (user_idx < len(self.age_bucket_idx)), user_idx, 0)
        return self.age_bucket_idx[idx], self.region_idx[idx]

    @classmethod
    def empty(cls) -> Profiles:
        return cls(np.zeros(1, np.int32), np.zeros(1, np.int32))


@dataclasses.dataclass
class Interactions:
    """Training positives sorted by (user, time): the per-user sequences the examples are cut from."""

    user_idx: np.ndarray  # int32 [M]
    item_idx: np.ndarray  # int32 [M]
    weight: np.ndarray  # float32 [M]

    @classmethod
    def build(
        cls,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        order: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> Interactions:
        user_idx = np.asarray(user_idx, np.int32)
        item_idx = np.asarray(item_idx, np.int32)
        order = np.arange(len(user_idx)) if order is None else np.asarray(order)
        weight = np.ones(len(user_idx), np.float32) if weight is None else np.asarray(weight, np.float32)
        sort = np.lexsort((np.arange(len(user_idx)), order, user_idx))  # stable: ties keep input order
        return cls(user_idx[sort], item_idx[sort], weight[sort])

    def user_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, start offsets with a final end) of the contiguous per-user runs."""
        change = np.flatnonzero(np.diff(self.user_idx)) + 1
        starts = np.concatenate([[0], change, [len(self.user_idx)]]).astype(np.int64)
        return self.user_idx[starts[:-1]], starts


@dataclasses.dataclass
class EvalSet:
    """Users to evaluate: their state (history, seen, profile) and the items they went on to take (targets)."""

    user_idx: np.ndarray
    history: list[np.ndarray]
    seen: list[np.ndarray]
    targets: list[np.ndarray]


@dataclasses.dataclass
class TrainingData:
    interactions: Interactions
    catalogue: Catalogue
    profiles: Profiles
    validation: EvalSet | None = None
    # the data window (models.registry.data_window), part of the deep model's version
    window: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return max(self.catalogue.num_items, int(self.interactions.item_idx.max(initial=0)))


# ---- lake -> TrainingData -----------------------------------------------------------------------------------
def _list_column(table: pa.Table, name: str) -> list[np.ndarray]:
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(column))]


def load_catalogue(settings: Settings, num_items: int = 0) -> Catalogue:
    table = lake_io.read_partition(
        settings.lake_root,
        lake.ITEM_FEATURES,
        settings.ds,
        columns=[
            "item_idx",
            "item_id",
            "category_idx",
            "price_bucket",
            "title_tokens",
            "age_days",
            "available",
        ],
    )
    idx = table.column("item_idx").to_numpy().astype(np.int64)
    n = max(int(idx.max(initial=0)), num_items) + 1
    catalogue = Catalogue(
        np.zeros(n, np.int32),
        np.zeros(n, np.int32),
        np.zeros((n, settings.title_tokens), np.int32),
        np.zeros(n, np.float32),
        np.zeros(n, bool),
    )
    catalogue.category_idx[idx] = table.column("category_idx").to_numpy()
    catalogue.price_bucket[idx] = table.column("price_bucket").to_numpy()
    catalogue.title_tokens[idx] = pad_ids(_list_column(table, "title_tokens"), settings.title_tokens)
    catalogue.age_days[idx] = np.nan_to_num(table.column("age_days").to_numpy(zero_copy_only=False), nan=0.0)
    catalogue.available[idx] = table.column("available").to_numpy(zero_copy_only=False)
    item_ids = np.full(n, "", dtype=object)
    item_ids[idx] = table.column("item_id").to_pylist()
    catalogue.item_ids = item_ids.astype(str)
    return catalogue


def load_profiles(settings: Settings) -> Profiles:
    """The run date's user profiles (``features/users``): the one reader of them for every model stage."""
    try:
        table = lake_io.read_partition(
            settings.lake_root,
            lake.USER_FEATURES,
            settings.ds,
            columns=["user_idx", "age_bucket_idx", "region_idx"],
        )
    except FileNotFoundError:
        log.warning("no user features for %s: profile inputs are 'unknown'", settings.ds)
        return Profiles.empty()
    idx = table.column("user_idx").to_numpy().astype(np.int64)
    n = int(idx.max(initial=0)) + 1
    profiles = Profiles(np.zeros(n, np.int32), np.zeros(n, np.int32))
    profiles.age_bucket_idx[idx] = table.column("age_bucket_idx").to_numpy()
    profiles.region_idx[idx] = table.column("region_idx").to_numpy()
    return profiles


def load_validation(settings: Settings) -> EvalSet | None:
    try:
        table = lake_io.read_partition(settings.lake_root, lake.VALIDATION, settings.ds)
    except FileNotFoundError:
        log.warning("no validation examples for %s: training runs without early stopping", settings.ds)
        return None
    table = table.filter(pc.greater(pc.list_value_length(table.column("targets")), 0))
    if table.num_rows == 0:
        return None
    return EvalSet(
        table.column("user_idx").to_numpy().astype(np.int32),
        _list_column(table, "history"),
        _list_column(table, "seen"),
        _list_column(table, "targets"),
    )


def load_training_data(settings: Settings) -> TrainingData:
    """Everything the deep model trains on for ``settings.run_date``."""
    examples = lake_io.read_partition(
        settings.lake_root,
        lake.TRAIN_EXAMPLES,
        settings.ds,
        columns=["user_idx", "item_idx", "weight", "event_time"],
    )
    if examples.num_rows == 0:
        raise ValueError(f"no training examples for {settings.ds} under {settings.lake_root}")
    interactions = Interactions.build(
        examples.column("user_idx").to_numpy(),
        examples.column("item_idx").to_numpy(),
        order=pc.cast(examples.column("event_time"), pa.int64()).to_numpy(),
        weight=examples.column("weight").to_numpy(zero_copy_only=False),
    )
    catalogue = load_catalogue(settings, int(interactions.item_idx.max()))
    return TrainingData(
        interactions,
        catalogue,
        load_profiles(settings),
        load_validation(settings),
        registry.data_window(settings),
    )


# ---- examples ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExampleShape:
    history_length: int
    seen_length: int
    max_targets: int


def user_inputs(
    user_idx: np.ndarray,
    histories: Sequence[np.ndarray],
    seens: Sequence[np.ndarray],
    profiles: Profiles,
    shape: ExampleShape,
) -> dict[str, np.ndarray]:
    """User-tower inputs for lists of per-user item sequences, with the users' profiles and the examples' shape."""
    age, region = profiles.lookup(np.asarray(user_idx))
    return feature_user_inputs(
        user_idx,
        histories,
        seens,
        shape.history_length,
        shape.seen_length,
        age_bucket_idx=age,
        region_idx=region,
    )


def _next_examples(data: TrainingData, shape: ExampleShape) -> dict[str, np.ndarray]:
    """Every interaction after a user's first, with the ``history_length`` items before it (vectorised)."""
    inter = data.interactions
    users, starts = inter.user_offsets()
    length = max(shape.history_length, shape.seen_length)
    first = np.zeros(len(inter.item_idx), bool)
    first[starts[:-1]] = True
    user_start = np.repeat(starts[:-1], np.diff(starts))
    positions = np.flatnonzero(~first)
    padded = np.concatenate([np.zeros(length, np.int32), inter.item_idx])
    windows = np.lib.stride_tricks.sliding_window_view(padded, length)[positions]  # items [p-length, p)
    column_pos = positions[:, None] - length + np.arange(length)[None, :]
    context = np.where(column_pos >= user_start[positions][:, None], windows, 0).astype(np.int32)
    age, region = data.profiles.lookup(inter.user_idx[positions])
    return {
        F.USER_IDX: inter.user_idx[positions],
        F.HISTORY: context[:, length - shape.history_length :],
        F.SEEN: context[:, length - shape.seen_length :],
        F.AGE_BUCKET_IDX: age,
        F.REGION_IDX: region,
        F.TARGETS: inter.item_idx[positions][:, None],
        F.TARGET_WEIGHTS: inter.weight[positions][:, None],
    }


def _set_examples(
    data: TrainingData, shape: ExampleShape, holdout: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One row per user: a random ``holdout`` share of their items are targets, the rest (in time order) input."""
    inter = data.interactions
    users, starts = inter.user_offsets()
    histories, seens, targets, weights = [], [], [], []
    for u in range(len(users)):
        items = inter.item_idx[starts[u] : starts[u + 1]]
        w = inter.weight[starts[u] : starts[u + 1]]
        n = len(items)
        k = min(n, max(1, int(round(holdout * n))))
        held = np.zeros(n, bool)
        held[rng.choice(n, size=k, replace=False)] = True
        held_idx = np.flatnonzero(held)
        if len(held_idx) > shape.max_targets:
            held_idx = rng.choice(held_idx, size=shape.max_targets, replace=False)
        kept = items[~held]
        histories.append(kept)
        seens.append(kept)
        targets.append(items[held_idx])
        weights.append(w[held_idx])
    out = user_inputs(users, histories, seens, data.profiles, shape)
    out[F.TARGETS] = pad_ids(targets, shape.max_targets)
    padded_w = np.zeros((len(users), shape.max_targets), np.float32)
    for i, w in enumerate(weights):
        if len(w):
            padded_w[i, shape.max_targets - len(w) :] = w
    out[F.TARGET_WEIGHTS] = padded_w
    return out


def make_dataset(
    data: TrainingData,
    objective: str,
    shape: ExampleShape,
    batch_size: int,
    holdout: float,
    seed: int,
    epoch_of: Callable[[], int] | None = None,
) -> tuple[tf.data.Dataset, int]:
    """A ``tf.data.Dataset`` of dict batches; each pass (epoch) reshuffles and, for ``set``, redraws the holdout.

    ``epoch_of``: the epoch the pass starting now belongs to (training's epoch counter). The pass is then a
    function of (seed, epoch) alone, so a training resumed in epoch e sees epoch e's batches in the order the
    interrupted one did; without it passes are numbered as they start. Returns (dataset, batches per epoch).
    """
    import tensorflow as tf

    if objective not in F.OBJECTIVES:
        raise ValueError(f"objective must be one of {F.OBJECTIVES}, got {objective!r}")
    fixed = _next_examples(data, shape) if objective == "next" else None
    rows = len(fixed[F.TARGETS]) if fixed is not None else len(data.interactions.user_offsets()[0])
    if rows == 0:
        raise ValueError("no training examples: every user has a single interaction")
    epoch_counter = [0]

    def generate() -> Iterator[dict[str, np.ndarray]]:
        # epoch e is pass e + 1: pass 0 is the batch that builds the model before training (models.train)
        rng = np.random.default_rng([seed, epoch_counter[0] if epoch_of is None else epoch_of() + 1])
        epoch_counter[0] += 1
        arrays = fixed if fixed is not None else _set_examples(data, shape, holdout, rng)
        order = rng.permutation(rows)
        for start in range(0, rows, batch_size):
            take = order[start : start + batch_size]
            yield {name: value[take] for name, value in arrays.items()}

    targets = 1 if objective == "next" else shape.max_targets
    signature = {
        F.USER_IDX: tf.TensorSpec([None], tf.int32),
        F.HISTORY: tf.TensorSpec([None, shape.history_length], tf.int32),
        F.SEEN: tf.TensorSpec([None, shape.seen_length], tf.int32),
        F.AGE_BUCKET_IDX: tf.TensorSpec([None], tf.int32),
        F.REGION_IDX: tf.TensorSpec([None], tf.int32),
        F.TARGETS: tf.TensorSpec([None, targets], tf.int32),
        F.TARGET_WEIGHTS: tf.TensorSpec([None, targets], tf.float32),
    }
    steps = -(-rows // batch_size)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options), steps


# ---- in-memory sources ---------------------------------------------------------------------------------------
def from_interactions(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    order: np.ndarray | None = None,
    catalogue: Catalogue | None = None,
    profiles: Profiles | None = None,
    validation: EvalSet | None = None,
) -> TrainingData:
    """TrainingData from arrays (indices start at 1), e.g. MovieLens ratings ordered by timestamp."""
    interactions = Interactions.build(user_idx, item_idx, order)
    catalogue = catalogue or Catalogue.ids_only(int(interactions.item_idx.max()))
    return TrainingData(interactions, catalogue, profiles or Profiles.empty(), validation)


def user_sequences(interactions: Interactions) -> dict[int, np.ndarray]:
    users, starts = interactions.user_offsets()
    return {int(u): interactions.item_idx[starts[i] : starts[i + 1]] for i, u in enumerate(users)}
