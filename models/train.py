"""Training entry point: ``train(settings)`` trains the deep model (and the baselines) for the run date.

``fit_two_tower(data, settings)`` trains from an in-memory :class:`models.data.TrainingData` (the lake loader and
the MovieLens benchmark both build one). Fixed seeds; early stopping on validation Recall@K with seen items
excluded; a checkpoint every ``checkpoint_every`` batches and at each epoch end (:class:`ResumableBackup`: a
training killed at any point and run again for the same date continues from its last checkpoint, inside the
epoch, and a finished one leaves none); GPU with mixed precision when TensorFlow sees one (MirroredStrategy for
several), the CPU otherwise.

Warm start (``train_two_tower``): the night starts from the production deep model's weights
(:data:`WARM_START_WEIGHTS`, saved beside every export) when :func:`warm_start_source` allows it (setting
``warm_start``, a deep model trained for an earlier date, the same architecture); :func:`apply_warm_start` maps
the item rows by item id, new items keep fresh rows. Otherwise it trains cold; the training summary's
``warm_start`` says which, from which version, or why not. The source is part of the checkpoint's fingerprint,
so a killed warm run resumes from its checkpoint and a checkpoint of another start is not continued.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models import baselines, metrics, registry
from models import data as D
from models import features as F
from models.two_tower import (
    FULL_SOFTMAX_MAX_ITEMS,
    ItemTower,
    TwoTowerModel,
    TwoTowerParams,
    TwoTowerScoring,
    UserTower,
    ease_matrix,
)
from schemas import lake
from schemas.settings import Settings
from scoring.allocator import retain_freed_memory

log = logging.getLogger(__name__)
BEST_WEIGHTS = "best.weights.h5"
BEST_STATE = "best_state.json"
# beside the SavedModel in a deep model's folder: its trainable weights by name and its item ids, what the next
# night's warm start reads (the SavedModel's variables are not laid out for it)
WARM_START_WEIGHTS = "warm_start_weights.npz"
# A kill loses at most this many batches. Each save writes every weight with its optimizer state (the wide
# item-item matrix too), so much more often would cost more than it saves on large nights.
CHECKPOINT_EVERY_BATCHES = 200


# ---- device -------------------------------------------------------------------------------------------------------
def training_strategy() -> tuple[tf.distribute.Strategy, str]:
    """(strategy, description): GPUs with mixed precision when present, else the default CPU strategy."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
        device = f"{len(gpus)} GPU(s), mixed_float16" + (", MirroredStrategy" if len(gpus) > 1 else "")
    else:
        keras.mixed_precision.set_global_policy("float32")
        strategy = tf.distribute.get_strategy()
        device = "CPU, float32"
    log.info("training on %s", device)
    return strategy, device


# ---- optimiser ----------------------------------------------------------------------------------------------------
class DenseGradientAdam(keras.optimizers.Adam):
    """Adam on embedding gradients (``tf.IndexedSlices``) summed into dense tensors first.

    That is the textbook update for the summed gradient (what a dense embedding gradient would give). Keras 3's
    Adam, handed the slices themselves, squares each slice before summing duplicate rows (a different second
    moment for items that occur several times in a batch) and converts them inside several ops; densifying once
    cut the optimiser's CPU time per step from ~90 to ~30 ms on the demo lake (tests/test_train.py checks that
    the update equals Keras' Adam on the densified gradient)."""

    def apply(self, grads: list[tf.Tensor], trainable_variables: list[tf.Variable] | None = None) -> None:
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        super().apply(dense, trainable_variables)


# ---- evaluation during training ---------------------------------------------------------------------------------
def eval_inputs(evalset: D.EvalSet, data: D.TrainingData, params: TwoTowerParams) -> dict[str, np.ndarray]:
    shape = D.ExampleShape(params.history_length, params.seen_length, params.max_targets)
    return D.user_inputs(evalset.user_idx, evalset.history, evalset.seen, data.profiles, shape)


def recall_at_k(
    model: TwoTowerModel,
    inputs: dict[str, np.ndarray],
    evalset: D.EvalSet,
    k: int,
    part: str = "final",
    scores: np.ndarray | None = None,
) -> float:
    """Mean over users of |top-k ∩ targets| / |targets|, the user's seen items excluded from the top-k.

    ``scores``: [U, N+1] by item index (column 0 is padding), as ``model.score_catalogue`` gives; not modified."""
    scores = model.score_catalogue(inputs, part=part) if scores is None else scores.copy()
    return masked_recall(scores, evalset, k)


def masked_recall(scores: np.ndarray, evalset: D.EvalSet, k: int, first_item: int = 0) -> float:
    """:func:`recall_at_k` on a score matrix whose column c is item ``first_item + c``; masks ``scores`` in place.

    Vectorised (one scatter for the seen items, one argpartition, one membership test), so the blend grid of
    :func:`choose_blend` costs a few array passes per point, not a Python loop over users."""
    lengths = np.fromiter((len(s) for s in evalset.seen), np.int64, len(evalset.seen))
    if lengths.sum():
        cols = np.concatenate(evalset.seen).astype(np.int64)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        keep = (cols > 0) & (cols >= first_item) & (cols < first_item + scores.shape[1])
        scores[rows[keep], cols[keep] - first_item] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    # fewer than k unseen items: no filler. Items shift by one so that "none" (0) never matches a target
    top_items = np.where(np.isfinite(np.take_along_axis(scores, top, axis=1)), top + first_item + 1, 0)
    users = [row for row, targets in enumerate(evalset.targets) if len(targets)]
    if not users:
        return 0.0
    targets = [np.asarray(evalset.targets[row], np.int64) + 1 for row in users]
    hits = metrics.hits_matrix(top_items[users], targets).sum(axis=1)
    return float(np.mean(hits / np.fromiter((len(t) for t in targets), np.float64, len(targets))))


def _write_json_atomic(path: str, value: dict[str, Any]) -> None:
    """Written beside and renamed into place: a kill leaves the old file or the new one, never half of one."""
    temp = f"{path}.tmp"
    with tf.io.gfile.GFile(temp, "w") as fh:
        json.dump(value, fh)
    tf.io.gfile.rename(temp, path, overwrite=True)


def _save_weights_atomic(model: keras.Model, path: str) -> None:
    temp = path.replace(".weights.h5", ".saving.weights.h5")  # Keras wants the .weights.h5 suffix
    model.save_weights(temp, overwrite=True)
    tf.io.gfile.rename(temp, path, overwrite=True)


class RecallEarlyStopping(keras.callbacks.Callback):
    """Validation Recall@K each epoch (into the logs), best weights kept on disk, stop after ``patience`` epochs
    without improvement, best weights restored at the end. Its state lives beside the checkpoint, so a resumed
    training remembers the best epoch so far; an epoch evaluated again after a kill (between this state's save
    and the checkpoint's) is counted once."""

    def __init__(
        self, inputs: dict[str, np.ndarray], evalset: D.EvalSet, k: int, patience: int, state_dir: str | None
    ) -> None:
        super().__init__()
        self.inputs, self.evalset, self.k, self.patience, self.state_dir = (
            inputs,
            evalset,
            k,
            patience,
            state_dir,
        )
        self.best, self.best_epoch, self.wait, self.best_weights = -1.0, -1, 0, None
        self.evaluated: dict[str, Any] | None = None  # the last epoch evaluated and the state before it

    def _path(self, name: str) -> str | None:
        return f"{self.state_dir}/{name}" if self.state_dir else None

    def _state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def _restore(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]

    def on_train_begin(self, logs: dict | None = None) -> None:
        state_path = self._path(BEST_STATE)
        if state_path and tf.io.gfile.exists(state_path):
            with tf.io.gfile.GFile(state_path) as fh:
                state = json.load(fh)
            self._restore(state)
            self.evaluated = {"epoch": state.get("epoch"), "before": state.get("before")}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.evaluated and self.evaluated["epoch"] == epoch and self.evaluated["before"]:
            # evaluated once already, but the kill came before the checkpoint marked the epoch done
            self._restore(self.evaluated["before"])
        before = self._state()
        value = recall_at_k(self.model, self.inputs, self.evalset, self.k, part="deep")
        if logs is not None:
            logs[F.VAL_RECALL] = value
        log.info("epoch %d: validation recall@%d = %.4f", epoch + 1, self.k, value)
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_weights = self.model.get_weights()
            if self.state_dir:
                tf.io.gfile.makedirs(self.state_dir)
                _save_weights_atomic(self.model, self._path(BEST_WEIGHTS) or "")
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True
        self.evaluated = {"epoch": epoch, "before": before}
        if self.state_dir:
            _write_json_atomic(self._path(BEST_STATE) or "", {**self._state(), **self.evaluated})

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        elif self.state_dir and tf.io.gfile.exists(self._path(BEST_WEIGHTS)):
            self.model.load_weights(self._path(BEST_WEIGHTS))


class EpochClock(keras.callbacks.Callback):
    """The epoch under way, for the dataset (``make_dataset``'s ``epoch_of``): a pass is a function of its epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore (restore at the start, checkpoint removed at the end), resuming inside an epoch.

    Keras' own batch-level saving restarts an interrupted epoch from its first batch (training those batches
    twice on top of weights that already hold them) and, after a restore, records later saves as epoch 0. Here
    each save, every ``every`` batches and at each epoch end, records the epoch and the batches done in it; a
    resumed run passes over the batches the checkpoint already holds (the dataset repeats the epoch's batches in
    the same order: ``make_dataset``'s ``epoch_of``) without training on them, so it continues where it
    stopped. The record also holds the random generators' state (dropout; Keras' weights file leaves it out),
    so the resumed run draws what the uninterrupted one would have. Weights and record are written under
    temporary names and renamed, so a kill during a save leaves the previous checkpoint readable."""

    def __init__(self, backup_dir: str, every: int, fingerprint: str = "") -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 batch, got {every}")
        super().__init__(backup_dir, save_freq=every, delete_checkpoint=True)
        self.every, self.fingerprint = every, fingerprint
        self.epoch, self.since_save, self.steps_run, self.skip = 0, 0, 0, 0
        self.resumed_from: dict[str, int] | None = None
        self._train_function: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # weights, optimizer state and the epoch to start at
        if tf.io.gfile.exists(self._training_metadata_path):
            with tf.io.gfile.GFile(self._training_metadata_path) as fh:
                state = json.load(fh)
            self.resumed_from = {
                "epoch": int(state["epoch"]),
                "batches_done": int(state.get("batches_done", 0)),
            }
            self.skip = self.resumed_from["batches_done"]
            generators, saved = self._random_state(), state.get("random_state") or []
            if len(saved) == len(generators):
                for variable, value in zip(generators, saved, strict=True):
                    variable.assign(np.asarray(value, dtype=variable.dtype))
            log.info("resuming from the checkpoint in %s: %s", self.backup_dir, self.resumed_from)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.since_save = epoch, 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch < self.skip and self._train_function is None:
            self._train_function = self.model.train_function
            self.model.train_function = _no_step
        elif batch >= self.skip:
            self._trained_again()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch < self.skip:
            return
        self.steps_run += 1
        self.since_save += 1
        if self.since_save >= self.every:
            self._commit(self.epoch, batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._trained_again()
        self.skip = 0
        self._commit(epoch + 1, 0)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._trained_again()
        super().on_train_end(logs)

    def _trained_again(self) -> None:
        if self._train_function is not None:
            self.model.train_function, self._train_function = self._train_function, None

    def _random_state(self) -> list[Any]:
        return [v for v in self.model.variables if v.name == "seed_generator_state"]

    def _commit(self, epoch: int, batches_done: int) -> None:
        """Weights first, then the record naming them: a record never points past the weights on disk."""
        tf.io.gfile.makedirs(self.backup_dir)
        _save_weights_atomic(self.model, self._weights_path)
        record = {
            "epoch": epoch,
            "batches_done": batches_done,
            "fingerprint": self.fingerprint,
            "random_state": [np.asarray(v.numpy()).tolist() for v in self._random_state()],
        }
        _write_json_atomic(self._training_metadata_path, record)
        self.since_save = 0


def training_fingerprint(data: D.TrainingData, params: TwoTowerParams, warm_from: str | None = None) -> str:
    """What a checkpoint was trained on: the parameters, the training arrays and the model it was warm-started
    from. A rerun of a date on changed features keeps its model version, but must not continue weights learnt from
    the old ones; a rerun warm-started from the same production model continues its checkpoint."""
    digest = hashlib.sha1(json.dumps(params.to_dict(), sort_keys=True, default=str).encode())
    if warm_from:
        digest.update(f"warm start from {warm_from}".encode())
    inter, items, users = data.interactions, data.catalogue, data.profiles
    arrays = [inter.user_idx, inter.item_idx, inter.weight, items.category_idx, items.price_bucket]
    arrays += [items.title_tokens, users.age_bucket_idx, users.region_idx]  # they size embedding tables too
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def discard_stale_checkpoint(checkpoint_dir: str, fingerprint: str) -> None:
    """Remove a checkpoint left by a training of other data or parameters (before any callback reads it)."""
    record = f"{checkpoint_dir}/training_metadata.json"
    if not tf.io.gfile.exists(record):
        return
    with tf.io.gfile.GFile(record) as fh:
        found = json.load(fh).get("fingerprint")
    if found != fingerprint:
        log.warning(
            "checkpoint %s is of other training data (%s, not %s): starting afresh",
            checkpoint_dir,
            found,
            fingerprint,
        )
        tf.io.gfile.rmtree(checkpoint_dir)


def _no_step(iterator: Any) -> dict[str, Any]:
    """Stands in for Keras' train function on a batch the restored weights already learnt from: takes the batch
    (TensorFlow's train function reads its batch from the iterator itself) and trains on nothing."""
    if not isinstance(iterator, list):  # other backends hand over the batch already read
        next(iterator)
    return {}


class TrainingProgress(keras.callbacks.Callback):
    """Logs progress about every ``every`` share of an epoch's steps (step, loss, elapsed, ETA of the epoch) through
    this module's logger: ``fit`` runs with verbose=0, so a long training in a task log is not silent."""

    def __init__(self, steps: int | None, every: float = 0.1) -> None:
        super().__init__()
        self.steps, self.every = steps, every
        self.interval, self.epoch, self.started = 1, 0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.steps = self.steps or self.params.get("steps")
        self.interval = max(1, round((self.steps or 0) * self.every)) if self.steps else 100
        self.epoch, self.started = epoch, time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = batch + 1
        if step % self.interval and step != self.steps:
            return
        elapsed = time.perf_counter() - self.started
        loss = float((logs or {}).get("loss", float("nan")))
        if self.steps:
            eta = elapsed / step * (self.steps - step)
            log.info(
                "epoch %d: step %d/%d (%.0f%%), loss %.4f, %.0f s elapsed, ETA %.0f s",
                self.epoch + 1,
                step,
                self.steps,
                100 * step / self.steps,
                loss,
                elapsed,
                eta,
            )
        else:
            log.info("epoch %d: step %d, loss %.4f, %.0f s elapsed", self.epoch + 1, step, loss, elapsed)


def choose_blend(model: TwoTowerModel, inputs: dict[str, np.ndarray], evalset: D.EvalSet, k: int) -> float:
    """The deep share of the deep+wide score with the best validation Recall@K (grid of 0.1 steps).

    Each part is scored once and standardised per user as ``blended_user`` does, so a grid point costs an addition,
    not a catalogue-wide product with the one-hot-extended vectors."""
    parts = []
    for part in ("deep", "wide"):
        scores = model.score_catalogue(inputs, part=part)[:, 1:]
        parts.append(scores / np.maximum(scores.std(axis=1, keepdims=True), 1e-6))
    grid = [round(0.1 * i, 1) for i in range(11)]
    recalls = [
        masked_recall(share * parts[0] + (1 - share) * parts[1], evalset, k, first_item=1) for share in grid
    ]
    best = grid[int(np.argmax(recalls))]
    model.blend.assign(best)
    log.info(
        "blend (deep share) chosen on validation: %.1f (recall@%d by share: %s)",
        best,
        k,
        dict(zip(grid, [round(r, 4) for r in recalls], strict=True)),
    )
    return best


# ---- warm start ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class WarmStart:
    """A deep model's trainable weights (in ``model.trainable_variables`` order, with their paths) and the item id of
    each of its item rows (None for a model trained without ids, e.g. in memory)."""

    source: str  # "<name>/<version>"
    run_date: str  # the run date it was trained for
    names: list[str]
    weights: list[np.ndarray]
    item_ids: np.ndarray | None = None


class WarmStartMismatch(ValueError):
    """The production weights do not fit the model being built (the reason is the message)."""


def _weight_key(path: str) -> str:
    """A weight's path without Keras' per-process layer counters (``dense_3`` -> ``dense``): the same weight of two
    models built in one process, or in two processes, gets the same key."""
    return re.sub(r"_\d+(?=/|$)", "", path)


def model_item_ids(model: TwoTowerModel, data: D.TrainingData) -> np.ndarray | None:
    """The item id of each of the model's item rows ("" for padding and items without one), or None without ids."""
    ids = data.catalogue.item_ids
    if ids is None:
        return None
    out = np.full(model.num_items + 1, "", dtype=ids.dtype if len(ids) else "<U1")
    n = min(len(ids), len(out))
    out[:n] = ids[:n]
    return out


def save_warm_start_weights(model: TwoTowerModel, data: D.TrainingData, folder: str) -> str:
    """Writes :data:`WARM_START_WEIGHTS` into ``folder`` (a model folder; local path or URI), atomically."""
    variables = model.trainable_variables
    arrays: dict[str, np.ndarray] = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    arrays["names"] = np.array([v.path for v in variables])
    ids = model_item_ids(model, data)
    if ids is not None:
        arrays["item_ids"] = ids
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path = f"{folder}/{WARM_START_WEIGHTS}"
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(f"{path}.tmp", "wb") as fh:
        fh.write(buffer.getvalue())
    tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)
    return path


def load_warm_start_weights(folder: str, source: str, run_date: str) -> WarmStart:
    with tf.io.gfile.GFile(f"{folder}/{WARM_START_WEIGHTS}", "rb") as fh:
        stored = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        names = [str(n) for n in stored["names"]]
        weights = [stored[f"w{i}"] for i in range(len(names))]
        ids = stored["item_ids"] if "item_ids" in stored.files else None
    return WarmStart(source, run_date, names, weights, ids)


def warm_start_source(settings: Settings, params: TwoTowerParams) -> tuple[WarmStart | None, str]:
    """(the production deep model's weights, "from <name>/<version>") when the run may start from them, else
    (None, why it trains cold): warm start off, no production model, production not a deep model, trained for
    this run date or a later one (a rerun of a promoted night, or a backfill out of date order, would start from
    its own or later days), another architecture (:data:`models.two_tower.ARCHITECTURE_FIELDS`), or no weights
    saved (a model exported before warm start existed)."""
    if not settings.warm_start:
        return None, "warm start is off (warm_start=False)"
    pointer = registry.production(settings)
    if not pointer or not pointer.get("path"):
        return None, "no production model"
    label = f"{pointer.get('name')}/{pointer.get('version')}"
    try:
        meta = registry.read_metadata(pointer["path"])
    except (FileNotFoundError, ValueError) as err:
        return None, f"production {label} cannot be read: {err}"
    if meta.get("kind") != F.MODEL_KIND:
        return None, f"production {label} is a {meta.get('kind')} model, not the deep model"
    trained_for = str((meta.get("data_window") or {}).get("validation", ""))
    if not trained_for or trained_for >= settings.ds:
        return None, (
            f"production {label} was trained for {trained_for or 'an unknown date'}, not before {settings.ds}"
        )
    differences = params.architecture_differences(meta.get("params") or {})
    if differences:
        return None, f"architecture differs from production {label}: " + "; ".join(differences)
    if not tf.io.gfile.exists(f"{pointer['path']}/{WARM_START_WEIGHTS}"):
        return None, f"production {label} has no {WARM_START_WEIGHTS} (exported before warm start)"
    return load_warm_start_weights(pointer["path"], label, trained_for), f"from production {label}"


def item_row_map(
    old_ids: np.ndarray | None, new_ids: np.ndarray | None, old_rows: int, new_rows: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(rows of the old item tables, the rows of the new ones they go to, counts). By item id when both sides
    have ids; by index otherwise, which relies on the features job's vocabularies only growing (an item keeps its
    index from night to night: ``jobs.features.extend_index``). Row 0, padding, goes to row 0."""
    if old_ids is not None and new_ids is not None:
        where = {item: i for i, item in enumerate(old_ids[:old_rows]) if item and i > 0}
        pairs = [(where[item], j) for j, item in enumerate(new_ids[:new_rows]) if j > 0 and item in where]
        old = np.array([0] + [p[0] for p in pairs], np.int64)
        new = np.array([0] + [p[1] for p in pairs], np.int64)
        known = len(where)
        by = "item_id"
    else:
        old = new = np.arange(min(old_rows, new_rows), dtype=np.int64)
        known = old_rows - 1
        by = "index"
    kept = len(new) - 1
    # dropped: production's items the run's catalogue lacks; moved: kept items whose index changed (while the
    # vocabularies only grow, both are 0)
    counts = {
        "mapped_by": by,
        "items_kept": kept,
        "items_new": new_rows - 1 - kept,
        "items_dropped": known - kept,
        "items_moved": int(np.sum(old != new)),
    }
    return old, new, counts


def apply_warm_start(model: TwoTowerModel, data: D.TrainingData, warm: WarmStart) -> dict[str, Any]:
    """Sets ``model``'s trainable weights from ``warm``: item tables row by row for the items both know (the new
    items keep their fresh initial rows), label and hash tables (categories, price buckets, title tokens, age
    buckets, regions: their indices only grow too) on their common rows, every other weight whole. All or nothing:
    raises :class:`WarmStartMismatch` before assigning anything when a weight does not fit."""
    variables = model.trainable_variables
    if len(variables) != len(warm.weights):
        raise WarmStartMismatch(
            f"{len(warm.weights)} weights in {warm.source}, {len(variables)} in this model"
        )
    item_tables = {id(v) for v in model.item_tables()}
    table_rows = [w.shape[0] for v, w in zip(variables, warm.weights, strict=True) if id(v) in item_tables]
    old_rows, new_rows, counts = item_row_map(
        warm.item_ids, model_item_ids(model, data), table_rows[0] if table_rows else 0, model.num_items + 1
    )
    values = []
    for variable, name, old in zip(variables, warm.names, warm.weights, strict=True):
        shape = tuple(variable.shape)
        if _weight_key(variable.path) != _weight_key(name):
            raise WarmStartMismatch(f"weight {variable.path} of this model meets {name} of {warm.source}")
        if old.ndim != len(shape) or old.shape[1:] != shape[1:]:
            raise WarmStartMismatch(f"{variable.path}: shape {old.shape} in {warm.source}, {shape} here")
        if id(variable) in item_tables:
            value = np.array(variable.numpy())
            value[new_rows] = old[old_rows]
        elif old.shape == shape:
            value = old
        else:  # a label or hash table that grew (or shrank): the common rows
            value = np.array(variable.numpy())
            common = min(old.shape[0], shape[0])
            value[:common] = old[:common]
        values.append(value)
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return counts


# ---- training ------------------------------------------------------------------------------------------------------
def build_model(data: D.TrainingData, params: TwoTowerParams) -> TwoTowerModel:
    num_items = data.num_items
    catalogue = data.catalogue
    if catalogue.num_items < num_items:  # interactions with items the catalogue lacks: unknown content
        grown = D.Catalogue.ids_only(num_items, catalogue.title_tokens.shape[1])
        for field in ("category_idx", "price_bucket", "title_tokens", "age_days", "available"):
            getattr(grown, field)[: catalogue.num_items + 1] = getattr(catalogue, field)
        catalogue = grown
    dim = params.embedding_dim
    item_tower = ItemTower(
        num_items,
        int(catalogue.category_idx.max(initial=0)),
        int(catalogue.price_bucket.max(initial=0)),
        int(catalogue.title_tokens.max(initial=0)),
        dim,
        l2=params.l2,
        bias=params.item_bias,
        name="item_tower",
    )
    user_tower = UserTower(
        num_items,
        int(data.profiles.age_bucket_idx.max(initial=0)),
        int(data.profiles.region_idx.max(initial=0)),
        params.encoder,
        dim,
        params.history_length,
        hidden_dim=params.hidden_dim,
        dropout=params.dropout,
        l2=params.l2,
        name="user_tower",
    )
    counts = np.bincount(data.interactions.item_idx, minlength=num_items + 1).astype(np.float64)
    log_q = np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))
    wide = None
    state, reason = params.wide_state(num_items)
    if state == "used":
        wide = ease_matrix(
            data.interactions.user_idx, data.interactions.item_idx, num_items, params.ease_lambda
        )
    elif state == "skipped":
        log.warning("wide part skipped: %s; the model is the deep part alone", reason)
    return TwoTowerModel(
        user_tower, item_tower, catalogue.inputs(), params, item_log_q=log_q, wide=wide, name="two_tower"
    )


def fit_two_tower(
    data: D.TrainingData,
    settings: Settings | None = None,
    params: TwoTowerParams | None = None,
    checkpoint_dir: str | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
    run_eagerly: bool = False,
    progress: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY_BATCHES,
    warm_start: WarmStart | None = None,
    cold_reason: str = "no warm-start weights given",
) -> tuple[TwoTowerScoring, dict[str, Any]]:
    """Trains the two-tower model on in-memory data; returns the export module and a training summary.
    ``checkpoint_dir``: where the training state is saved every ``checkpoint_every`` batches and at each epoch
    end; a call finding one there continues from it. ``progress``: log every ~10% of an epoch's steps
    (:class:`TrainingProgress`; the pipeline turns it on). ``warm_start``: weights to start from
    (:func:`apply_warm_start`; a checkpoint of the same warm start, found in ``checkpoint_dir``, wins over them:
    a resumed run continues, it does not start again from the weights); without them, or when they do not fit,
    the weights start fresh and the summary's ``warm_start`` says why (``cold_reason``)."""
    params = params or TwoTowerParams.from_settings(settings or Settings.load())
    retain_freed_memory()
    keras.utils.set_random_seed(params.seed)
    strategy, device = training_strategy()
    started = time.perf_counter()
    shape = D.ExampleShape(params.history_length, params.seen_length, params.max_targets)
    clock = EpochClock()
    dataset, steps = D.make_dataset(
        data,
        params.objective,
        shape,
        params.batch_size,
        params.holdout,
        params.seed,
        epoch_of=lambda: clock.epoch,
    )
    model = compiled_model(data, params, strategy, dataset, run_eagerly)
    warm = start_weights(model, data, warm_start, cold_reason)
    # order matters: the epoch's evaluation is saved before the checkpoint that marks the epoch done, and the
    # best weights are restored before the checkpoint folder is removed
    all_callbacks: list[keras.callbacks.Callback] = [clock]
    early = validation_early_stopping(data, params, checkpoint_dir)
    if early is not None:
        all_callbacks.append(early)
        if warm["warm"]:  # what production's weights give on this night's validation users, before training
            warm["val_recall_before"] = recall_at_k(model, early.inputs, early.evalset, early.k, part="deep")
    if progress:
        all_callbacks.append(TrainingProgress(steps))
    backup = None
    if checkpoint_dir:
        fingerprint = training_fingerprint(data, params, warm["from"] if warm["warm"] else None)
        discard_stale_checkpoint(checkpoint_dir, fingerprint)
        backup = ResumableBackup(checkpoint_dir, checkpoint_every, fingerprint)
        all_callbacks.append(backup)
    all_callbacks += callbacks or []
    history = model.fit(
        dataset, epochs=params.epochs, steps_per_epoch=None, callbacks=all_callbacks, verbose=verbose
    )
    blend = float(model.blend.numpy())
    if model.wide is not None and early is not None and params.blend < 0:
        blend = choose_blend(model, early.inputs, early.evalset, params.eval_k)
    seconds = time.perf_counter() - started
    if checkpoint_dir and tf.io.gfile.exists(checkpoint_dir):
        tf.io.gfile.rmtree(checkpoint_dir)  # finished: the checkpoint has served its purpose
    summary = training_summary(model, data, history, early, blend, device, seconds, steps)
    summary["resumed_from"] = backup.resumed_from if backup else None
    summary["warm_start"] = warm
    summary["steps_run"] = backup.steps_run if backup else len(history.epoch) * steps
    log.info(
        "two-tower trained in %.1f s on %s: %s",
        seconds,
        device,
        {k: summary[k] for k in ("epochs_run", "best_epoch")},
    )
    module = TwoTowerScoring(model)
    module.keras_model = model  # kept for in-process evaluation; not part of the export signatures
    return module, summary


def start_weights(
    model: TwoTowerModel, data: D.TrainingData, warm_start: WarmStart | None, cold_reason: str
) -> dict[str, Any]:
    """Applies ``warm_start`` to the freshly built ``model`` when it fits; returns the summary's ``warm_start``:
    ``{"warm": True, "from": source, "run_date", item counts}`` or ``{"warm": False, "reason": why}``."""
    if warm_start is None:
        log.info("cold start: %s", cold_reason)
        return {"warm": False, "reason": cold_reason}
    try:
        counts = apply_warm_start(model, data, warm_start)
    except WarmStartMismatch as err:
        reason = f"weights of production {warm_start.source} do not fit: {err}"
        log.warning("cold start: %s", reason)
        return {"warm": False, "reason": reason}
    log.info(
        "warm start from %s (trained for %s): %s%s",
        warm_start.source,
        warm_start.run_date,
        counts,
        "; the vocabulary extends production's"
        if counts["items_moved"] == 0 and counts["items_dropped"] == 0
        else "",
    )
    return {"warm": True, "from": warm_start.source, "run_date": warm_start.run_date, **counts}


def compiled_model(
    data: D.TrainingData,
    params: TwoTowerParams,
    strategy: tf.distribute.Strategy,
    dataset: tf.data.Dataset,
    run_eagerly: bool,
) -> TwoTowerModel:
    """The model built and compiled under ``strategy``, every weight created from one batch of ``dataset``."""
    with strategy.scope():
        model = build_model(data, params)
        model.compile(
            optimizer=DenseGradientAdam(params.learning_rate), jit_compile=False, run_eagerly=run_eagerly
        )
        # build every weight now (BackupAndRestore builds the optimizer from them before the first step)
        model(next(iter(dataset.take(1))))
        model.item_vectors(model.catalogue)
    return model


def validation_early_stopping(
    data: D.TrainingData, params: TwoTowerParams, checkpoint_dir: str | None
) -> RecallEarlyStopping | None:
    """Early stopping on the validation users' Recall@K, or None without validation users."""
    if data.validation is None or not len(data.validation.user_idx):
        return None
    return RecallEarlyStopping(
        eval_inputs(data.validation, data, params),
        data.validation,
        params.eval_k,
        params.patience,
        checkpoint_dir,
    )


def training_summary(
    model: TwoTowerModel,
    data: D.TrainingData,
    history: keras.callbacks.History,
    early: RecallEarlyStopping | None,
    blend: float,
    device: str,
    seconds: float,
    steps: int,
) -> dict[str, Any]:
    """What a training did, for the model's metadata and the benchmark's report."""
    wide, wide_reason = model.params.wide_state(model.num_items)
    return {
        "device": device,
        "training_seconds": round(seconds, 2),
        "epochs_run": len(history.epoch),
        "steps_per_epoch": steps,
        "loss": [float(v) for v in history.history.get("loss", [])],
        F.VAL_RECALL: [float(v) for v in history.history.get(F.VAL_RECALL, [])],
        "best_epoch": (early.best_epoch + 1) if early and early.best_epoch >= 0 else None,
        "best_val_recall_at_k": early.best if early else None,
        "full_softmax": bool(model.full_softmax),
        # "used", "off" or "skipped" (a catalogue above wide_max_items), with the reason when not used
        "wide": wide,
        "wide_reason": wide_reason,
        "blend": blend if model.wide is not None else None,
        "num_items": model.num_items,
        "num_train_interactions": int(len(data.interactions.item_idx)),
    }


# ---- model selection on a fold of the training data ---------------------------------------------------------------
# The deep model's configuration for MovieLens 100k (benchmarks/bench_quality.py); epochs and the deep/wide
# blend are not fixed here: select_and_fit chooses them on a validation fold of the training data.
# seen_length 256 (not 800, which covers every train.tsv user's items) measured: 13.4 s instead of 20.3 s CPU for
# the final training, MAP 0.1533 instead of 0.1537, still above EASE on all four metrics.
MOVIELENS_PARAMS = TwoTowerParams(
    objective="set",
    encoder="mean",
    embedding_dim=128,
    history_length=50,
    seen_length=256,
    max_targets=256,
    holdout=0.25,
    temperature=0.1,
    epochs=25,
    batch_size=64,
    learning_rate=0.01,
    wide=True,
    ease_lambda=400.0,
    patience=3,
    full_softmax_max_items=FULL_SOFTMAX_MAX_ITEMS,  # 1,682 items: every one a negative
)
VALIDATION_SHARE = 0.1


def validation_fold(data: D.TrainingData, share: float, seed: int) -> D.TrainingData:
    """``data`` minus a random ``share`` of its interactions, which become the validation targets of their users
    (history and seen = the user's remaining interactions). Only training data is used: never the test set."""
    inter = data.interactions
    held = np.random.default_rng(seed).random(len(inter.item_idx)) < share
    kept = D.Interactions(
        inter.user_idx[~held], inter.item_idx[~held], inter.weight[~held]
    )  # order preserved
    sequences = D.user_sequences(kept)
    empty = np.zeros(0, np.int32)
    users, starts = D.Interactions(
        inter.user_idx[held], inter.item_idx[held], inter.weight[held]
    ).user_offsets()
    known = [sequences.get(int(u), empty) for u in users]
    targets = [inter.item_idx[held][starts[i] : starts[i + 1]] for i in range(len(users))]
    return D.TrainingData(
        kept,
        data.catalogue,
        data.profiles,
        D.EvalSet(users.astype(np.int32), known, known, targets),
        data.window,
    )


def select_and_fit(
    data: D.TrainingData, params: TwoTowerParams, validation_share: float = VALIDATION_SHARE
) -> tuple[TwoTowerScoring, dict[str, Any]]:
    """Two phases: (1) train on ``data`` minus a validation fold, early stopping and the deep/wide blend chosen on
    that fold; (2) train on all of ``data`` with the selected epochs and blend (no validation left to stop on).

    Returns the final module and a summary: ``selection`` (phase 1), ``final`` (phase 2), and the wall and CPU
    seconds of each phase (CPU = all threads of this process)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    _, selection = fit_two_tower(validation_fold(data, validation_share, params.seed), params=params)
    selection_wall, selection_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    log.info(
        "selection on a %.0f%% validation fold in %.1f s: best epoch %s, blend %s, val recall %s",
        100 * validation_share,
        selection_wall,
        selection["best_epoch"],
        selection["blend"],
        selection["best_val_recall_at_k"],
    )
    chosen = dataclasses.replace(
        params,
        epochs=selection["best_epoch"] or params.epochs,
        blend=selection["blend"] if selection["blend"] is not None else -1.0,
    )
    final_data = dataclasses.replace(data, validation=None)
    started, cpu_started = time.perf_counter(), time.process_time()
    module, final = fit_two_tower(final_data, params=chosen)
    final_wall, final_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    summary = {
        "selection": selection,
        "final": final,
        "params": chosen.to_dict(),
        "selection_seconds": selection_wall,
        "selection_cpu_seconds": selection_cpu,
        "final_seconds": final_wall,
        "final_cpu_seconds": final_cpu,
    }
    return module, summary


# ---- pipeline entry point -------------------------------------------------------------------------------------------
def model_version(params: TwoTowerParams, window: dict[str, str]) -> str:
    """Deterministic for the same parameters and data window, so a rerun of a date reuses its version."""
    return F.VERSION_PREFIX + params.digest(window)


def checkpoint_dir(settings: Settings, version: str) -> str:
    """``checkpoints/two_tower/dt=D/<version>``: private to one date's training of one model version, outside
    ``models/`` so the registry only ever sees finished models."""
    return lake.checkpoint_dir(settings.lake_root, F.MODEL_NAME, version, settings.ds)


def train_two_tower(
    settings: Settings, data: D.TrainingData | None = None, checkpoint_every: int = CHECKPOINT_EVERY_BATCHES
) -> str:
    """Trains the deep model for the run date and registers it; returns its model folder. A training of the same
    date and version that was killed continues from its checkpoint."""
    data = data or D.load_training_data(settings)
    params = TwoTowerParams.from_settings(settings)
    version = model_version(params, data.window)
    model_dir = registry.model_dir(settings, F.MODEL_NAME, version)
    backup_dir = checkpoint_dir(settings, version)
    warm, why = warm_start_source(settings, params)
    module, summary = fit_two_tower(
        data,
        params=params,
        checkpoint_dir=backup_dir,
        progress=True,
        checkpoint_every=checkpoint_every,
        warm_start=warm,
        cold_reason=why,
    )
    date_dir = backup_dir.rsplit("/", 1)[0]
    if tf.io.gfile.isdir(date_dir) and not tf.io.gfile.listdir(date_dir):
        tf.io.gfile.rmtree(date_dir)  # nothing else of this date is unfinished
    # the weights first: the metadata, written last by the registry, marks a complete model folder
    save_warm_start_weights(module.keras_model, data, model_dir)
    registry.register(
        settings,
        module,
        F.MODEL_NAME,
        params.to_dict(),
        F.MODEL_KIND,
        version=version,
        metrics={f"val_recall_at_{params.eval_k}": summary["best_val_recall_at_k"]},
        train_seconds=summary["training_seconds"],
        device=summary["device"],
        training=summary,
    )
    log.info("saved %s %s to %s", F.MODEL_NAME, version, model_dir)
    return model_dir


def train(settings: Settings) -> list[str]:
    """The DAG's training step: the deep model and every baseline; returns their model folders."""
    return [train_two_tower(settings), *baselines.train_baselines(settings)]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_cli(argv, description="Train the deep model and the baselines for a run date.")
    for model_dir in train(settings):
        print(model_dir)


if __name__ == "__main__":
    main()
