"""Training entry points: resume after an interruption, the CPU path, train(settings) from a lake."""

from __future__ import annotations

import datetime as dt
import json
import logging
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
from models import features as F  # noqa: E402
from models.train import DenseGradientAdam, fit_two_tower, model_version, train_two_tower, training_strategy  # noqa: E402
from models.two_tower import TwoTowerParams  # noqa: E402
from schemas import features as S  # noqa: E402
from schemas import lake  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from scoring.contract import LoadedModel  # noqa: E402

pytestmark = pytest.mark.tf


def tiny_data(with_validation: bool = True) -> D.TrainingData:
    rng = np.random.default_rng(1)
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
    items = [
        {
            "item_idx": i,
            "item_id": f"i{i}",
            "category": f"c{(i - 1) // 4}",
            "category_idx": (i - 1) // 4 + 1,
            "price_bucket": i % 3 + 1,
            "title_tokens": [i, i + 20],
            "age_days": float(i),
            "available": True,
            "popularity": 1.0,
            "title": f"item {i}",
        }
        for i in range(1, 13)
    ]
    _write(pa.Table.from_pylist(items, schema=S.ITEM_FEATURE), root, lake.ITEM_FEATURES, date)
    users = [
        {
            "user_idx": u,
            "user_id": f"u{u}",
            "age_bucket_idx": u % 4 + 1,
            "region_idx": u % 2 + 1,
            "segment": "x",
        }
        for u in range(1, 41)
    ]
    _write(pa.Table.from_pylist(users, schema=S.USER_FEATURE), root, lake.USER_FEATURES, date)


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
    assert not Path(model_dir, "_checkpoint").exists()


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
