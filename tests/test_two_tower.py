"""The two-tower model on tiny synthetic data: it learns, every encoder trains, the export scores like the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from models import data as D  # noqa: E402
from models import features as F  # noqa: E402
from models.train import fit_two_tower, recall_at_k  # noqa: E402
from models.two_tower import FULL_SOFTMAX_MAX_ITEMS, TwoTowerParams, ease_matrix  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from scoring.contract import LoadedModel, save  # noqa: E402

pytestmark = pytest.mark.tf

GROUPS, GROUP_ITEMS, USERS, PER_USER = 4, 6, 48, 8
# small and fast; the tiny catalogues get the full softmax (the nightly default, sampled, is tested on its own)
TINY = {
    "full_softmax_max_items": FULL_SOFTMAX_MAX_ITEMS,
    "embedding_dim": 16,
    "history_length": 4,
    "seen_length": 8,
    "max_targets": 4,
    "batch_size": 64,
    "epochs": 1,
    "learning_rate": 0.02,
    "patience": 5,
}


def clustered_data(seed: int = 0, with_content: bool = True) -> D.TrainingData:
    """Users of group g only take items of group g: a model that learns puts group items on top."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, USERS + 1), PER_USER)
    group = users % GROUPS
    items = group * GROUP_ITEMS + rng.integers(0, GROUP_ITEMS, len(users)) + 1
    n = GROUPS * GROUP_ITEMS
    catalogue = D.Catalogue.ids_only(n, title_tokens=3)
    if with_content:
        catalogue.category_idx[1:] = np.repeat(np.arange(1, GROUPS + 1), GROUP_ITEMS)
        catalogue.price_bucket[1:] = rng.integers(1, 4, n)
        catalogue.title_tokens[1:, -1] = rng.integers(1, 20, n)
        catalogue.age_days[1:] = rng.uniform(0, 30, n)
    profiles = D.Profiles(
        np.r_[0, rng.integers(1, 4, USERS)].astype(np.int32),
        np.r_[0, rng.integers(1, 3, USERS)].astype(np.int32),
    )
    val_users = np.arange(1, 13, dtype=np.int32)
    seqs = [items[users == u] for u in val_users]
    targets = [
        np.setdiff1d(np.arange(1, GROUP_ITEMS + 1) + (u % GROUPS) * GROUP_ITEMS, s)[:2]
        for u, s in zip(val_users, seqs, strict=True)
    ]
    keep = [len(t) > 0 for t in targets]
    validation = D.EvalSet(
        val_users[keep],
        [s for s, k in zip(seqs, keep, strict=True) if k],
        [s for s, k in zip(seqs, keep, strict=True) if k],
        [t for t in targets if len(t)],
    )
    return D.from_interactions(
        users,
        items,
        order=np.arange(len(users)),
        catalogue=catalogue,
        profiles=profiles,
        validation=validation,
    )


def test_default_params_are_the_nightly_settings() -> None:
    assert TwoTowerParams() == TwoTowerParams.from_settings(Settings())
    assert TwoTowerParams().full_softmax_max_items == 0  # the nightly softmax is "sampled"


def test_a_few_epochs_reduce_the_loss_and_learn_the_groups() -> None:
    data = clustered_data()
    module, summary = fit_two_tower(
        data, params=TwoTowerParams(encoder="mean", wide=False, **{**TINY, "epochs": 4})
    )
    assert summary["loss"][-1] < summary["loss"][0] * 0.8, summary["loss"]
    # after training, the validation users' held-out group items rank in the top 10 of 24 far above chance
    assert summary["best_val_recall_at_k"] > 0.8, summary


def test_set_objective_and_sampled_softmax_train() -> None:
    data = clustered_data()
    params = TwoTowerParams(
        encoder="mean", objective="set", wide=False, **{**TINY, "epochs": 3, "full_softmax_max_items": 0}
    )
    module, summary = fit_two_tower(data, params=params)
    assert not summary["full_softmax"]
    assert np.all(np.isfinite(summary["loss"])) and summary["loss"][-1] < summary["loss"][0]


@pytest.mark.parametrize("encoder", F.ENCODERS)
def test_each_encoder_builds_and_trains_one_epoch(encoder: str) -> None:
    data = clustered_data()
    module, summary = fit_two_tower(data, params=TwoTowerParams(encoder=encoder, **TINY))
    assert summary["epochs_run"] == 1 and np.isfinite(summary["loss"][0])
    users = module.encode_users(*_user_args(data))
    assert users.shape[0] == 3 and np.all(np.isfinite(users.numpy()))


def _user_args(data: D.TrainingData) -> list[np.ndarray]:
    shape = D.ExampleShape(4, 8, 4)
    seqs = D.user_sequences(data.interactions)
    inputs = D.user_inputs(
        np.array([1, 2, 999], np.int32),
        [seqs[1], seqs[2], np.array([], np.int32)],
        [seqs[1], seqs[2], np.array([], np.int32)],
        data.profiles,
        shape,
    )
    return [inputs[name] for name in F.USER_INPUTS]


def test_export_and_reload_score_like_the_trained_model(tmp_path: Path) -> None:
    data = clustered_data()
    module, summary = fit_two_tower(data, params=TwoTowerParams(encoder="gru", **TINY))
    assert (summary["wide"], summary["wide_reason"]) == ("used", None), (
        "a 24-item catalogue gets the EASE part"
    )
    model_dir = save(module, str(tmp_path / "model"), {"name": "two_tower", "version": "Dtest"})
    loaded = LoadedModel(model_dir)
    user_args = dict(zip(F.USER_INPUTS, _user_args(data), strict=True))
    item_inputs = data.catalogue.inputs()
    item_inputs[F.ITEM_IDX] = item_inputs[F.ITEM_IDX].copy()
    item_inputs[F.ITEM_IDX][0] = 500  # an item the model never saw: content-only embedding, no failure
    reloaded_scores = loaded.encode_users(**user_args) @ loaded.encode_items(**item_inputs).T
    memory_scores = module.encode_users(**user_args).numpy() @ module.encode_items(**item_inputs).numpy().T
    np.testing.assert_allclose(reloaded_scores, memory_scores, rtol=1e-5, atol=1e-4)
    # the dot product is the training logit (deep part / temperature + scaled EASE part)
    logits = module.keras_model.score_catalogue({k: v[:2] for k, v in user_args.items()})
    np.testing.assert_allclose(memory_scores[:2, 1:], logits[:, 1:], rtol=1e-4, atol=1e-3)
    assert np.all(np.isfinite(reloaded_scores[:, 0]))


def test_recall_excludes_seen_items() -> None:
    data = clustered_data()
    module, _ = fit_two_tower(data, params=TwoTowerParams(encoder="mean", wide=False, **TINY))
    model = module.keras_model
    evalset = D.EvalSet(
        np.array([1], np.int32),
        [np.array([1], np.int32)],
        [np.arange(1, 25, dtype=np.int32)],
        [np.array([3], np.int32)],
    )
    inputs = D.user_inputs(
        evalset.user_idx, evalset.history, evalset.seen, data.profiles, D.ExampleShape(4, 24, 4)
    )
    # every item is seen, so the target (also seen) can never be recommended
    assert recall_at_k(model, inputs, evalset, 10) == 0.0


def test_ease_matrix_matches_the_closed_form() -> None:
    users = np.array([1, 1, 2, 2, 3])
    items = np.array([1, 2, 1, 2, 3])
    b = ease_matrix(users, items, 3, lam=1.0)
    x = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], float)
    p = np.linalg.inv(x.T @ x + np.eye(3))
    expected = np.eye(3) - p / np.diag(p)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(b[1:, 1:], expected, atol=1e-6)
    assert np.all(b[0] == 0) and np.all(b[:, 0] == 0)
