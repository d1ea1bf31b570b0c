"""Training entry points: resume after an interruption, the CPU path, train(settings) from a lake, the warm start
from the production model, the wide part's state."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("tensorflow")

import tensorflow as tf  # noqa: E402
from test_two_tower import TINY  # noqa: E402

from models import data as D  # noqa: E402
from models import evaluate, registry  # noqa: E402
from models import features as F  # noqa: E402
from models.train import (  # noqa: E402
    WARM_START_WEIGHTS,
    DenseGradientAdam,
    WarmStart,
    fit_two_tower,
    load_warm_start_weights,
    model_version,
    save_warm_start_weights,
    train_two_tower,
    training_strategy,
    warm_start_source,
)
from models.two_tower import TwoTowerParams  # noqa: E402
from schemas import features as S  # noqa: E402
from schemas import lake  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from scoring.contract import LoadedModel  # noqa: E402

pytestmark = pytest.mark.tf


def tiny_data(with_validation: bool = True, seed: int = 1) -> D.TrainingData:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, 31), 6)
    items = (users % 3) * 5 + rng.integers(0, 5, len(users)) + 1
    validation = None
    if with_validation:
        seqs = [items[users == u] for u in range(1, 7)]
        validation = D.EvalSet(
            np.arange(1, 7, dtype=np.int32),
            seqs,
            seqs,
            [np.array([(u % 3) * 5 + 1], np.int32) for u in range(1, 7)],
        )
    return D.from_interactions(users, items, validation=validation)


class Interrupt(keras.callbacks.Callback):
    """Simulates a killed trainer: raises at the end of an epoch, after the checkpoint callback has saved."""

    def __init__(self, at_epoch: int) -> None:
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.at_epoch:
            raise KeyboardInterrupt(f"killed after epoch {self.at_epoch}")


class EpochLog(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.begun: list[int] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.begun.append(epoch)


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    data = tiny_data()
    checkpoint = str(tmp_path / "checkpoint")
    first = EpochLog()
    with pytest.raises(KeyboardInterrupt):
        fit_two_tower(
            data,
            params=TwoTowerParams(encoder="mean", **{**TINY, "epochs": 3}),
            checkpoint_dir=checkpoint,
            callbacks=[Interrupt(at_epoch=2), first],
            run_eagerly=True,
        )
    assert first.begun == [0, 1]
    assert (tmp_path / "checkpoint" / "training_metadata.json").exists()
    assert json.loads((tmp_path / "checkpoint" / "training_metadata.json").read_text())["epoch"] == 2
    resumed = EpochLog()
    module, summary = fit_two_tower(
        data,
        params=TwoTowerParams(encoder="mean", **{**TINY, "epochs": 3}),
        checkpoint_dir=checkpoint,
        callbacks=[resumed],
        run_eagerly=True,
    )
    assert resumed.begun == [2], "the resumed run starts at the third epoch"
    assert summary["epochs_run"] == 1
    assert (
        summary["best_epoch"] is not None
    )  # best-so-far survived the interruption (state beside the checkpoint)
    assert not (tmp_path / "checkpoint").exists(), "a finished training removes its checkpoint"


class InterruptAtBatch(keras.callbacks.Callback):
    """Raises after batch ``batch`` of epoch ``epoch`` (0-based), as a kill between two checkpoints would."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt(f"killed after batch {batch} of epoch {self.epoch}")


def test_training_interrupted_mid_epoch_continues_with_the_batches_it_had_not_trained(tmp_path: Path) -> None:
    data = tiny_data()
    params = TwoTowerParams(encoder="mean", **{**TINY, "epochs": 2, "batch_size": 8})
    whole, full = fit_two_tower(
        data, params=params, checkpoint_dir=str(tmp_path / "full"), checkpoint_every=4
    )
    steps = full["steps_per_epoch"]
    assert steps == 19 and full["steps_run"] == 2 * steps  # 150 examples in batches of 8
    checkpoint = str(tmp_path / "checkpoint")
    with pytest.raises(KeyboardInterrupt):
        fit_two_tower(
            data,
            params=params,
            checkpoint_dir=checkpoint,
            checkpoint_every=4,
            callbacks=[InterruptAtBatch(1, 9)],
        )
    state = json.loads((tmp_path / "checkpoint" / "training_metadata.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 8)  # the last save before the interruption
    module, resumed = fit_two_tower(data, params=params, checkpoint_dir=checkpoint, checkpoint_every=4)
    assert resumed["resumed_from"] == {"epoch": 1, "batches_done": 8}
    assert resumed["steps_run"] == steps - 8 and resumed["epochs_run"] == 1
    # the same batches from the same state: the uninterrupted run's numbers
    assert resumed[F.VAL_RECALL] == pytest.approx(full[F.VAL_RECALL][1:], abs=1e-9)
    for ours, theirs in zip(module.keras_model.get_weights(), whole.keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "full").exists()


def test_a_checkpoint_of_other_training_data_is_not_continued(tmp_path: Path) -> None:
    """A rerun of the date after its features changed keeps the model version, not the stale weights."""
    params = TwoTowerParams(encoder="mean", **{**TINY, "epochs": 2, "batch_size": 8})
    checkpoint = str(tmp_path / "checkpoint")
    with pytest.raises(KeyboardInterrupt):
        fit_two_tower(
            tiny_data(),
            params=params,
            checkpoint_dir=checkpoint,
            checkpoint_every=4,
            callbacks=[InterruptAtBatch(1, 9)],
        )
    assert (tmp_path / "checkpoint" / "latest.weights.h5").exists()
    changed = tiny_data(seed=2)
    assert changed.num_items == tiny_data().num_items  # same shapes: the old weights would load without error
    _, summary = fit_two_tower(changed, params=params, checkpoint_dir=checkpoint, checkpoint_every=4)
    assert summary["resumed_from"] is None and summary["steps_run"] == 2 * summary["steps_per_epoch"]
    assert not (tmp_path / "checkpoint").exists()


def test_cpu_path_without_gpu() -> None:
    strategy, device = training_strategy()
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU; the CPU path is what runs without one")
    assert device.startswith("CPU")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert strategy.num_replicas_in_sync == 1


def _write(table: pa.Table, root: str, name: str, date: dt.date) -> None:
    path = Path(lake.partition(root, name, date))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-00000.parquet")


def _write_profiles(
    root: str, date: dt.date, items: int, per_category: int, users: int, title_offset: int
) -> None:
    """``features/items`` (``per_category`` items a category, title tokens i and i + title_offset) and
    ``features/users`` of a tiny lake."""
    item_rows = [
        {
            "item_idx": i,
            "item_id": f"i{i}",
            "category": f"c{(i - 1) // per_category}",
            "category_idx": (i - 1) // per_category + 1,
            "price_bucket": i % 3 + 1,
            "title_tokens": [i, i + title_offset],
            "age_days": float(i),
            "available": True,
            "popularity": 1.0,
            "title": f"item {i}",
        }
        for i in range(1, items + 1)
    ]
    _write(pa.Table.from_pylist(item_rows, schema=S.ITEM_FEATURE), root, lake.ITEM_FEATURES, date)
    user_rows = [
        {
            "user_idx": u,
            "user_id": f"u{u}",
            "age_bucket_idx": u % 4 + 1,
            "region_idx": u % 2 + 1,
            "segment": "x",
        }
        for u in range(1, users + 1)
    ]
    _write(pa.Table.from_pylist(user_rows, schema=S.USER_FEATURE), root, lake.USER_FEATURES, date)


def write_tiny_lake(root: str, settings: Settings) -> None:
    """Feature tables as the features job writes them (schemas.features), for 40 users and 12 items."""
    rng = np.random.default_rng(3)
    date, start = settings.run_date, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = []
    for user in range(1, 41):
        taken: list[int] = []
        for step in range(6):
            item = int((user % 3) * 4 + rng.integers(0, 4) + 1)
            rows.append(
                {
                    "user_idx": user,
                    "history": taken[-settings.history_length :],
                    "item_idx": item,
                    "weight": 1.0,
                    "event_time": start + dt.timedelta(hours=user * 10 + step),
                }
            )
            taken.append(item)
    _write(pa.Table.from_pylist(rows, schema=S.TRAIN_EXAMPLE), root, lake.TRAIN_EXAMPLES, date)
    validation = [
        {"user_idx": u, "history": [1, 2], "seen": [1, 2], "targets": [(u % 3) * 4 + 3]} for u in range(1, 11)
    ]
    _write(pa.Table.from_pylist(validation, schema=S.VALIDATION_EXAMPLE), root, lake.VALIDATION, date)
    _write_profiles(root, date, items=12, per_category=4, users=40, title_offset=20)


def test_train_two_tower_from_the_lake_exports_a_versioned_model(
    tmp_lake: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.load(
        {
            "lake_root": tmp_lake,
            "encoder": "gru",
            "embedding_dim": 8,
            "epochs": 2,
            "batch_size": 64,
            "history_length": 4,
        },
        env={},
    )
    write_tiny_lake(tmp_lake, settings)
    data = D.load_training_data(settings)
    assert data.catalogue.num_items == 12 and len(data.interactions.item_idx) == 240
    assert data.validation is not None and len(data.validation.user_idx) == 10
    assert data.profiles.region_idx[3] == 2
    with caplog.at_level(logging.INFO, logger="models.train"):
        model_dir = train_two_tower(settings, data)
    progress = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert progress and progress[-1].startswith("epoch 2: step 4/4 (100%)"), progress  # 240 examples / 64
    params = TwoTowerParams.from_settings(settings)
    assert model_dir == lake.model_dir(tmp_lake, F.MODEL_NAME, model_version(params, data.window))
    assert model_version(params, data.window) == model_version(
        TwoTowerParams.from_settings(settings), data.window
    )
    assert model_dir.rsplit("/", 1)[1].startswith("D")
    loaded = LoadedModel(model_dir)
    meta = loaded.metadata
    assert meta["name"] == "two_tower" and meta["kind"] == "two_tower" and meta["device"].startswith("CPU")
    assert meta["data_window"]["end"] == (settings.run_date - dt.timedelta(days=1)).isoformat()
    assert meta["created_at"] and meta["code_version"] and meta["train_seconds"] > 0  # the registry's keys
    assert meta["params"]["encoder"] == "gru" and "val_recall_at_10" in meta["metrics"]
    users = loaded.encode_users(
        user_idx=np.array([1, 50], np.int32),
        history=S.pad_ids([[1, 2], []], 4),
        seen=S.pad_ids([[1, 2], []], 8),
        age_bucket_idx=np.array([1, 0], np.int32),
        region_idx=np.array([1, 0], np.int32),
    )
    items = loaded.encode_items(**data.catalogue.inputs())
    assert users.shape[1] == items.shape[1] and np.all(np.isfinite(users @ items.T))
    assert (
        not list(Path(tmp_lake).glob("checkpoints/**/*.h5")) and not Path(model_dir, "_checkpoint").exists()
    )


def test_dense_gradient_adam_is_adam_on_the_summed_embedding_gradient() -> None:
    """Rows gathered several times in a batch: the update uses the summed gradient (the textbook Adam step, what a
    dense gradient gives), not the sum of squared slices."""
    table = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    sparse = tf.IndexedSlices(
        tf.constant([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [-4.0, 1.0, 0.0]]),
        tf.constant([1, 3, 1]),
        tf.constant([5, 3]),
    )
    ours, reference = keras.Variable(table), keras.Variable(table)
    fast, plain = DenseGradientAdam(0.1), keras.optimizers.Adam(0.1)
    for _ in range(3):
        fast.apply([sparse], [ours])
        plain.apply([tf.convert_to_tensor(sparse)], [reference])
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6, atol=1e-7)
    assert np.array_equal(ours.numpy()[[0, 2, 4]], table[[0, 2, 4]])  # rows never gathered stay put
    assert not np.allclose(ours.numpy()[1], table[1])


# ---- a nightly training killed mid-epoch ---------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
TRAIN = """
import json, sys
from models.train import train_two_tower
from schemas.settings import Settings
print(train_two_tower(Settings.load(json.loads(sys.argv[1]), env={}), checkpoint_every=int(sys.argv[2])))
"""
SAVE_EVERY = 5  # batches between checkpoints: a kill loses at most this many


def write_grouped_lake(root: str, settings: Settings, users: int = 150, group_items: int = 20) -> None:
    """Three groups of users, each taking items of its own group; validation: the first 60 users' next item."""
    rng = np.random.default_rng(5)
    date, start = settings.run_date, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows, validation = [], []
    for user in range(1, users + 1):
        group = [(user % 3) * group_items + i + 1 for i in range(group_items)]
        taken = [int(i) for i in rng.choice(group, 6)]
        for step, item in enumerate(taken):
            rows.append(
                {
                    "user_idx": user,
                    "history": taken[:step][-settings.history_length :],
                    "item_idx": item,
                    "weight": 1.0,
                    "event_time": start + dt.timedelta(hours=user * 10 + step),
                }
            )
        unseen = [i for i in group if i not in taken]
        if user <= 60 and unseen:
            validation.append({"user_idx": user, "history": taken[-4:], "seen": taken, "targets": unseen[:1]})
    _write(pa.Table.from_pylist(rows, schema=S.TRAIN_EXAMPLE), root, lake.TRAIN_EXAMPLES, date)
    _write(pa.Table.from_pylist(validation, schema=S.VALIDATION_EXAMPLE), root, lake.VALIDATION, date)
    _write_profiles(
        root, date, items=3 * group_items, per_category=group_items, users=users, title_offset=3 * group_items
    )


def _train_process(settings: Settings, log_to: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    with log_to.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", TRAIN, json.dumps(settings.to_dict()), str(SAVE_EVERY)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _finish(process: subprocess.Popen[bytes], log_file: Path, timeout: float = 300) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_file.read_text()
    assert process.returncode == 0, output[-3000:]
    return output.strip().splitlines()[-1]  # the model folder the script prints last


def _checkpoint_state(root: Path) -> dict | None:
    """The checkpoint's record of where training stands, or None before the first save (or between renames)."""
    for path in root.glob("checkpoints/two_tower/dt=*/*/training_metadata.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return None


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL in the second epoch, rerun of the same date: it continues from the last checkpoint (fewer steps
    than a full run) and ends with the uninterrupted run's validation metrics."""
    overrides = {
        "encoder": "mean",
        "embedding_dim": 8,
        "history_length": 4,
        "batch_size": 8,
        "eval_k": 5,
        "epochs": 3,  # early stopping (patience 2) cannot end a 3-epoch run early: every run trains 3 epochs
    }
    roots = {name: tmp_path / name for name in ("uninterrupted", "killed")}
    settings = {
        name: Settings.load({"lake_root": str(root), **overrides}, env={}) for name, root in roots.items()
    }
    for name in roots:
        write_grouped_lake(str(roots[name]), settings[name])
    steps = -(-750 // 8)  # 150 users x 5 examples (a user's first event has no history) in batches of 8

    full_dir = _finish(
        _train_process(settings["uninterrupted"], tmp_path / "full.log"), tmp_path / "full.log"
    )

    process = _train_process(settings["killed"], tmp_path / "killed.log")
    deadline = time.monotonic() + 240
    try:
        while True:
            state = _checkpoint_state(roots["killed"])
            if state and state["epoch"] >= 1 and state.get("batches_done", 0) > 0:
                break
            assert process.poll() is None, (
                "training ended before it was killed: " + (tmp_path / "killed.log").read_text()[-3000:]
            )
            assert time.monotonic() < deadline, "no mid-epoch checkpoint after the first epoch within 240 s"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = _checkpoint_state(roots["killed"])
    assert killed_at is not None, "the kill left no readable checkpoint"
    epoch, done = killed_at["epoch"], killed_at["batches_done"]
    assert 1 <= epoch < 3 and 0 < done < steps, killed_at  # mid-epoch, after at least one whole epoch

    resumed_dir = _finish(
        _train_process(settings["killed"], tmp_path / "resumed.log"), tmp_path / "resumed.log"
    )
    full, resumed = (json.loads(Path(d, "metadata.json").read_text()) for d in (full_dir, resumed_dir))
    assert Path(full_dir).name == Path(resumed_dir).name  # the same date and parameters: the same version
    first, second = full["training"], resumed["training"]
    assert first["steps_per_epoch"] == second["steps_per_epoch"] == steps
    assert first["resumed_from"] is None and first["steps_run"] == 3 * steps and first["epochs_run"] == 3
    assert second["resumed_from"] == {"epoch": epoch, "batches_done": done}
    # it went on from the checkpoint: only the batches the checkpoint did not hold were trained again
    assert second["steps_run"] == (3 - epoch) * steps - done < first["steps_run"]
    assert second["epochs_run"] == 3 - epoch
    # The resumed run trains the remaining batches in the same order from the same weights, optimizer and dropout
    # generator state, so on a CPU it reproduces the uninterrupted run (measured: equal to the last digit). The
    # tolerances, one of the 60 validation users for recall and 1e-4 of the loss, only leave room for float sums
    # taken in another order by another process; a resume that trains the epoch's first batches again instead
    # ends 7 users away on this lake.
    tolerance = 1 / 60
    assert abs(second["best_val_recall_at_k"] - first["best_val_recall_at_k"]) <= tolerance, (first, second)
    assert abs(second[F.VAL_RECALL][-1] - first[F.VAL_RECALL][-1]) <= tolerance, (first, second)
    assert second["best_epoch"] == first["best_epoch"]
    assert second["loss"][-1] == pytest.approx(first["loss"][-1], rel=1e-4)  # the last epoch, whole in both
    assert (
        first["best_val_recall_at_k"] > 0.25
    )  # far above chance (5 of ~54 unseen items): something was learnt
    assert not list(roots["killed"].glob("checkpoints/two_tower/dt=*/*")), (
        "a finished run leaves no checkpoint"
    )
    assert not list(roots["uninterrupted"].glob("checkpoints/two_tower/dt=*/*"))


# ---- warm start from the production model ---------------------------------------------------------------------------
ITEM_TABLES = (
    "item_tower/item_id/embeddings",
    "item_tower/item_bias/embeddings",
    "two_tower/user_tower/history_items/embeddings",
    "two_tower/user_tower/bag_items/embeddings",
)
WARM_PARAMS = TwoTowerParams(encoder="mean", **{**TINY, "epochs": 2, "batch_size": 8})


def _with_ids(data: D.TrainingData, ids: list[str]) -> D.TrainingData:
    data.catalogue.item_ids = np.array(["", *ids])
    return data


def _next_day() -> D.TrainingData:
    """The next night: the same users and 15 items plus three new ones (16-18) that some users took."""
    day = tiny_data(seed=4)
    users = np.r_[day.interactions.user_idx, np.arange(1, 10)]
    items = np.r_[day.interactions.item_idx, 16 + np.arange(9) % 3]
    grown = D.from_interactions(users, items, validation=day.validation)
    return _with_ids(grown, [f"i{i}" for i in range(1, 19)])


def _weights(module: object) -> dict[str, np.ndarray]:
    from models.train import _weight_key

    model = module.keras_model  # type: ignore[attr-defined]
    return {_weight_key(v.path): v.numpy() for v in model.trainable_variables}


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, WarmStart]:
    """A deep model trained on 15 items (ids i1..i15), saved and read back as the next night's warm start."""
    day = _with_ids(tiny_data(), [f"i{i}" for i in range(1, 16)])
    module, _ = fit_two_tower(day, params=WARM_PARAMS)
    folder = str(tmp_path_factory.mktemp("production"))
    save_warm_start_weights(module.keras_model, day, folder)
    return module, load_warm_start_weights(folder, "two_tower/Dday1", "2026-01-13")


def test_warm_start_keeps_known_rows_and_gives_new_items_fresh_rows(
    production: tuple[object, WarmStart],
) -> None:
    prod_module, warm = production
    day = _next_day()
    untrained = dataclasses.replace(WARM_PARAMS, epochs=0)  # the weights training starts from
    warm_module, summary = fit_two_tower(day, params=untrained, warm_start=warm)
    cold_module, cold = fit_two_tower(day, params=untrained)
    assert summary["epochs_run"] == 0 and summary["steps_run"] == 0
    assert summary["warm_start"] == {
        "warm": True,
        "from": "two_tower/Dday1",
        "run_date": "2026-01-13",
        "mapped_by": "item_id",
        "items_kept": 15,
        "items_new": 3,
        "items_dropped": 0,
        "items_moved": 0,
        "val_recall_before": pytest.approx(summary["warm_start"]["val_recall_before"]),
    }
    assert cold["warm_start"] == {"warm": False, "reason": "no warm-start weights given"}
    ours, theirs, fresh = _weights(warm_module), _weights(prod_module), _weights(cold_module)
    assert set(ours) == set(theirs)
    for name in ITEM_TABLES:
        assert theirs[name].shape[0] == 16 and ours[name].shape[0] == 19
        np.testing.assert_array_equal(ours[name][:16], theirs[name])  # padding and the 15 known items
        np.testing.assert_array_equal(ours[name][16:], fresh[name][16:])  # new items: a cold start's rows
    assert not np.allclose(ours[ITEM_TABLES[0]][1:16], fresh[ITEM_TABLES[0]][1:16])
    for name in set(ours) - set(ITEM_TABLES):  # towers' dense layers, label tables: production's
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # the deep item embedding of a known item is production's (the wide part, refit each night, is not carried)
    known = D.Catalogue.ids_only(18).inputs(np.array([3, 7, 17]))
    prod_vectors = prod_module.keras_model.item_vectors(known).numpy()  # type: ignore[attr-defined]
    warm_vectors = warm_module.keras_model.item_vectors(known).numpy()
    np.testing.assert_allclose(warm_vectors[:2], prod_vectors[:2], rtol=1e-6, atol=1e-6)
    assert not np.allclose(warm_vectors[2], prod_vectors[2])  # production sees item 17 as unknown content


def test_warm_start_maps_rows_by_item_id_when_indices_moved(production: tuple[object, WarmStart]) -> None:
    """Indices are stable while the vocabulary only grows; the map goes by id all the same: a moved item keeps
    its row, an item production never had gets a fresh one, and the counts say so."""
    prod_module, warm = production
    ids = [f"i{i}" for i in range(1, 19)]
    ids[0], ids[1], ids[14] = "i2", "i1", "i99"  # i1 and i2 swapped, i15 gone, i99 new at 15
    day = _with_ids(_next_day(), ids)
    untrained = dataclasses.replace(WARM_PARAMS, epochs=0)
    warm_module, summary = fit_two_tower(day, params=untrained, warm_start=warm)
    cold_module, _ = fit_two_tower(day, params=untrained)
    counts = {
        k: summary["warm_start"][k] for k in ("items_kept", "items_new", "items_dropped", "items_moved")
    }
    assert counts == {"items_kept": 14, "items_new": 4, "items_dropped": 1, "items_moved": 2}
    ours, theirs, fresh = _weights(warm_module), _weights(prod_module), _weights(cold_module)
    for name in ITEM_TABLES:
        np.testing.assert_array_equal(ours[name][1], theirs[name][2])
        np.testing.assert_array_equal(ours[name][2], theirs[name][1])
        np.testing.assert_array_equal(ours[name][3:15], theirs[name][3:15])
        np.testing.assert_array_equal(ours[name][15], fresh[name][15])


def test_warm_weights_that_do_not_fit_train_cold_with_the_reason(
    production: tuple[object, WarmStart],
) -> None:
    _, warm = production
    wider = dataclasses.replace(WARM_PARAMS, epochs=0, embedding_dim=8)
    _, summary = fit_two_tower(_next_day(), params=wider, warm_start=warm)
    assert summary["warm_start"]["warm"] is False
    assert summary["warm_start"]["reason"].startswith("weights of production two_tower/Dday1 do not fit:")
    assert "(16, 16)" in summary["warm_start"]["reason"]  # the first table whose width differs


def test_a_resumed_warm_run_continues_its_checkpoint(
    production: tuple[object, WarmStart], tmp_path: Path
) -> None:
    """Killed mid-epoch and run again with the same production model: it resumes from its checkpoint (not from
    production's weights again) and ends where the uninterrupted warm run ends. A checkpoint of a cold run is not
    continued by a warm one."""
    _, warm = production
    day = _next_day()
    whole, full = fit_two_tower(
        day, params=WARM_PARAMS, checkpoint_dir=str(tmp_path / "full"), checkpoint_every=4, warm_start=warm
    )
    steps = full["steps_per_epoch"]
    checkpoint = str(tmp_path / "checkpoint")
    with pytest.raises(KeyboardInterrupt):
        fit_two_tower(
            day,
            params=WARM_PARAMS,
            checkpoint_dir=checkpoint,
            checkpoint_every=4,
            callbacks=[InterruptAtBatch(1, 9)],
            warm_start=warm,
        )
    module, resumed = fit_two_tower(
        day, params=WARM_PARAMS, checkpoint_dir=checkpoint, checkpoint_every=4, warm_start=warm
    )
    assert resumed["resumed_from"] == {"epoch": 1, "batches_done": 8}
    assert resumed["steps_run"] == steps - 8 and resumed["warm_start"]["warm"]
    assert resumed[F.VAL_RECALL] == pytest.approx(full[F.VAL_RECALL][1:], abs=1e-9)
    for ours, theirs in zip(module.keras_model.get_weights(), whole.keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyboardInterrupt):  # a cold run killed; then the same date warm: it starts afresh
        fit_two_tower(
            day,
            params=WARM_PARAMS,
            checkpoint_dir=checkpoint,
            checkpoint_every=4,
            callbacks=[InterruptAtBatch(1, 9)],
        )
    _, restarted = fit_two_tower(
        day, params=WARM_PARAMS, checkpoint_dir=checkpoint, checkpoint_every=4, warm_start=warm
    )
    assert restarted["resumed_from"] is None and restarted["steps_run"] == 2 * steps


def _meta(folder: str) -> dict:
    return json.loads(Path(folder, "metadata.json").read_text())


def test_nightly_training_warm_starts_from_the_production_deep_model(tmp_lake: str) -> None:
    base = {"encoder": "mean", "embedding_dim": 8, "epochs": 1, "batch_size": 64, "history_length": 4}
    day1 = Settings.load({"lake_root": tmp_lake, "run_date": "2026-01-13", **base}, env={})
    day2 = day1.replace(run_date="2026-01-14")
    write_tiny_lake(tmp_lake, day1)
    write_tiny_lake(tmp_lake, day2)
    _write_profiles(
        tmp_lake, day2.run_date, items=14, per_category=4, users=40, title_offset=20
    )  # 2 new items
    first = train_two_tower(day1)
    assert _meta(first)["training"]["warm_start"] == {"warm": False, "reason": "no production model"}
    assert Path(first, WARM_START_WEIGHTS).is_file()
    version = Path(first).name
    registry.promote(day1, F.MODEL_NAME, version, "test")
    # the vocabulary only grows: day 2's catalogue starts with day 1's items at their indices
    ids1, ids2 = (D.load_training_data(s).catalogue.item_ids for s in (day1, day2))
    assert ids1 is not None and ids2 is not None and len(ids1) == 13 and len(ids2) == 15
    assert list(ids2[:13]) == list(ids1) and list(ids2[13:]) == ["i13", "i14"]

    second = train_two_tower(day2)
    warm = _meta(second)["training"]["warm_start"]
    assert warm["warm"] and warm["from"] == f"two_tower/{version}" and warm["run_date"] == "2026-01-13"
    assert (warm["items_kept"], warm["items_new"], warm["items_moved"]) == (12, 2, 0)

    # the setting (and its environment variable) forces a cold start
    assert Settings.load({"lake_root": tmp_lake}, env={"RECFLOW_WARM_START": "false"}).warm_start is False
    forced = train_two_tower(day2.replace(warm_start=False))
    assert forced == second  # warm or cold, the same parameters and window: the same version
    assert _meta(forced)["training"]["warm_start"] == {
        "warm": False,
        "reason": "warm start is off (warm_start=False)",
    }
    # another architecture trains cold and says why
    wider = day2.replace(embedding_dim=16)
    other = train_two_tower(wider)
    assert _meta(other)["training"]["warm_start"] == {
        "warm": False,
        "reason": f"architecture differs from production two_tower/{version}: embedding_dim: 8 -> 16",
    }
    # a production model of the run date itself (a rerun after its promotion) is no start for it
    registry.promote(day2, F.MODEL_NAME, Path(second).name, "test")
    source, reason = warm_start_source(day2, TwoTowerParams.from_settings(day2))
    assert source is None and reason == (
        f"production two_tower/{Path(second).name} was trained for 2026-01-14, not before 2026-01-14"
    )
    # nor is a baseline
    baseline = Path(lake.model_dir(tmp_lake, "ease", "2026-01-13-x"))
    baseline.mkdir(parents=True)
    (baseline / "metadata.json").write_text(
        json.dumps({"name": "ease", "version": "2026-01-13-x", "kind": "baseline"})
    )
    registry.promote(day1, "ease", "2026-01-13-x", "test")
    assert warm_start_source(day2, TwoTowerParams.from_settings(day2)) == (
        None,
        "production ease/2026-01-13-x is a baseline model, not the deep model",
    )


# ---- the wide part above its catalogue limit ---------------------------------------------------------------------
def test_wide_part_skipped_above_its_limit_is_reported_in_training_and_evaluation(
    tmp_lake: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.load(
        {"lake_root": tmp_lake, "encoder": "mean", "embedding_dim": 8, "epochs": 1, "history_length": 4},
        env={},
    )
    write_tiny_lake(tmp_lake, settings)
    _write_profiles(tmp_lake, settings.run_date, items=8200, per_category=100, users=40, title_offset=20)
    examples = pq.read_table(lake.partition(tmp_lake, lake.TRAIN_EXAMPLES, settings.run_date))
    window = pa.table(
        {
            "user_idx": examples.column("user_idx"),
            "item_idx": examples.column("item_idx"),
            "strength": pa.array(np.ones(examples.num_rows)),
            "events": pa.array(np.ones(examples.num_rows, np.int64)),
            "last_time": examples.column("event_time"),
        },
        schema=S.INTERACTION,
    )
    _write(window, tmp_lake, lake.INTERACTIONS, settings.run_date)
    with caplog.at_level(logging.WARNING, logger="models.train"):
        model_dir = train_two_tower(settings)
    reason = (
        "the catalogue has 8200 items, above wide_max_items=8192 "
        "(the dense item-item matrix grows with the square of the catalogue)"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"wide part skipped: {reason}; the model is the deep part alone" in warnings, warnings
    training = _meta(model_dir)["training"]
    assert (training["wide"], training["wide_reason"], training["blend"]) == ("skipped", reason, None)
    result = evaluate.evaluate(settings, [model_dir])
    entry = next(e for e in result["models"] if e["path"] == model_dir)
    assert (entry["wide"], entry["wide_reason"]) == ("skipped", reason)
    metrics = registry.read_metadata(model_dir)["metrics"]
    assert (metrics["wide"], metrics["wide_reason"]) == ("skipped", reason) and "all" in metrics


def test_wide_part_off_by_parameter_says_so() -> None:
    _, summary = fit_two_tower(tiny_data(), params=TwoTowerParams(encoder="mean", wide=False, **TINY))
    assert (summary["wide"], summary["wide_reason"]) == ("off", "wide=False in the parameters")
