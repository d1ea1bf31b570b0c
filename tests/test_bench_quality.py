"""The quality benchmark's data path: MovieLens readers, dense ids, the stratified split, the segment table, and
the Mult-VAE model's export. Every file here is invented in tmp_path except where a test reads the shared data
(skipped without it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks import bench_quality, movielens_split

# (user, item, rating, time): invented rows, users and items in no particular order
ROWS = [(7, 30, 4, 881250949), (3, 10, 5, 881250950), (7, 10, 1, 881250951), (12, 20, 3, 881250952)]


def write_formats(folder: Path, rows: Sequence[tuple[int, int, float, int]]) -> dict[str, Path]:
    """The same ratings as u.data, ratings.dat and ratings.csv (each in its own folder, named as released)."""
    paths = {}
    for name, line in (
        ("u.data", "{}\t{}\t{}\t{}"),
        ("ratings.dat", "{}::{}::{}::{}"),
        ("ratings.csv", "{},{},{},{}"),
    ):
        (folder / name.split(".")[1]).mkdir(parents=True)
        path = folder / name.split(".")[1] / name
        header = "userId,movieId,rating,timestamp\n" if name.endswith(".csv") else ""
        path.write_text(header + "".join(line.format(*row) + "\n" for row in rows))
        paths[name] = path
    return paths


def test_the_three_formats_read_into_the_same_dense_frame(tmp_path: Path) -> None:
    paths = write_formats(tmp_path, ROWS)
    loaded = {name: movielens_split.load(path) for name, path in paths.items()}
    frames = [r.frame for r in loaded.values()]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])
    frame = frames[0]
    assert list(frame.columns) == ["user", "item", "rating", "timestamp"]
    assert frame.dtypes.map(str).tolist() == ["int64", "int64", "float64", "int64"]
    # dense ids in ascending raw-id order, rows in file order
    assert frame["user"].tolist() == [2, 1, 2, 3] and frame["item"].tolist() == [3, 1, 1, 2]
    assert frame["rating"].tolist() == [4.0, 5.0, 1.0, 3.0]
    assert loaded["u.data"].user_ids.tolist() == [3, 7, 12] and loaded["u.data"].item_ids.tolist() == [
        10,
        20,
        30,
    ]
    # a folder resolves to the ratings file inside it
    pd.testing.assert_frame_equal(movielens_split.load(paths["ratings.dat"].parent).frame, frame)


def test_half_star_ratings_and_huge_sparse_ids(tmp_path: Path) -> None:
    big = 10**9
    rows = [(big, 5 * big, 3.5, 1), (2, 5 * big, 0.5, 2), (big + 1, 7, 4.0, 3), (2, 2**40, 5.0, 4)]
    paths = write_formats(tmp_path, rows)
    for name in ("ratings.dat", "ratings.csv"):
        ratings = movielens_split.load(paths[name])
        assert ratings.frame["rating"].tolist() == [3.5, 0.5, 4.0, 5.0], name
        assert ratings.n_users == 3 and ratings.n_items == 3
        assert ratings.frame["user"].tolist() == [2, 1, 3, 1]
        assert ratings.frame["item"].tolist() == [2, 2, 1, 3]
        assert ratings.user_ids.tolist() == [2, big, big + 1]
        assert ratings.item_ids.tolist() == [7, 5 * big, 2**40]


def test_bad_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("user,movie,stars,when\n1,2,3,4\n")
    with pytest.raises(ValueError, match="header"):
        movielens_split.read_ratings(tmp_path / "ratings.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MovieLens ratings file"):
        movielens_split.ratings_file(tmp_path / "empty")


def random_ratings(users: int = 60, items: int = 40, seed: int = 3) -> pd.DataFrame:
    """Invented ratings: every user rates between 1 and 25 distinct items (at most all of them)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, users + 1):
        for item in rng.choice(
            np.arange(1, items + 1), size=int(rng.integers(1, min(26, items + 1))), replace=False
        ):
            rows.append((user, int(item), float(rng.integers(1, 6)), int(rng.integers(0, 10**9))))
    return pd.DataFrame(rows, columns=list(movielens_split.COLUMNS))


@pytest.mark.parametrize("by", ["user", "item"])
def test_the_split_keeps_the_ratio_per_group(by: str) -> None:
    frame = random_ratings()
    train, test = movielens_split.stratified_split(frame, ratio=0.75, filter_by=by, seed=42)  # type: ignore[arg-type]
    # a partition of the rows
    assert len(train) + len(test) == len(frame)
    assert set(train.index).isdisjoint(test.index) and set(train.index) | set(test.index) == set(frame.index)
    sizes = frame.groupby(by).size()
    kept = train.groupby(by).size().reindex(sizes.index, fill_value=0)
    # round(0.75 n) of each group's rows, halves to even: within rounding of the ratio
    assert (kept == np.round(0.75 * sizes)).all()
    assert ((kept - 0.75 * sizes).abs() <= 0.5).all()
    # from 3 rows on (round(0.75 * 2) = 2 keeps both rows of a pair) a group is on both sides
    held = test.groupby(by).size().reindex(sizes.index, fill_value=0)
    assert ((kept > 0) & (held > 0))[sizes >= 3].all()
    # deterministic for the seed, different for another
    again_train, again_test = movielens_split.stratified_split(frame, ratio=0.75, filter_by=by, seed=42)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(again_train, train)
    pd.testing.assert_frame_equal(again_test, test)
    other, _ = movielens_split.stratified_split(frame, ratio=0.75, filter_by=by, seed=43)  # type: ignore[arg-type]
    assert set(other.index) != set(train.index)


def test_split_options() -> None:
    frame = random_ratings()
    sizes = frame.groupby("item").size()
    floor_train, _ = movielens_split.stratified_split(frame, rounding="floor")
    assert (
        floor_train.groupby("item").size().reindex(sizes.index, fill_value=0) == np.floor(0.75 * sizes)
    ).all()
    filtered_train, filtered_test = movielens_split.stratified_split(frame, min_rating=10)
    assert set(pd.concat([filtered_train, filtered_test])["item"]) == set(sizes.index[sizes >= 10])
    with pytest.raises(ValueError):
        movielens_split.stratified_split(frame, ratio=1.0)


def test_the_split_of_u_data_reproduces_the_fixed_split(movielens_dir: Path) -> None:
    u_data = movielens_dir / "ml-100k" / "u.data"
    if not u_data.exists():
        pytest.skip(f"ml-100k/u.data not found under {movielens_dir} (set RECFLOW_SHARED_DATA)")
    train, test = movielens_split.stratified_split(movielens_split.read_ratings(u_data))
    fixed_train = movielens_split.read_ratings(movielens_dir / "ml-100k-split" / "train.tsv")
    fixed_test = movielens_split.read_ratings(movielens_dir / "ml-100k-split" / "test.tsv")
    assert (len(train), len(test)) == (75_066, 24_934)
    # row for row, in the published files' order
    np.testing.assert_array_equal(train.to_numpy(), fixed_train.to_numpy())
    np.testing.assert_array_equal(test.to_numpy(), fixed_test.to_numpy())
    # the benchmark's --data path builds the same arrays as the fixed files
    ours, published = (
        bench_quality.split_ratings(u_data),
        bench_quality.load_split(movielens_dir / "ml-100k-split"),
    )
    for side in ("train", "test"):
        np.testing.assert_array_equal(ours[side], published[side])
    assert (ours["n_users"], ours["n_items"]) == (published["n_users"], published["n_items"]) == (943, 1682)


def tiny_split() -> dict[str, Any]:
    """Users 1-3 with 1, 2 and 4 train items (two cold users, one warm), each with test items."""
    train = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (3, 4)]
    test = [(1, 5), (2, 3), (3, 5), (3, 6)]
    as_array = lambda pairs: np.array([(u, i, t) for t, (u, i) in enumerate(pairs)], np.int64)  # noqa: E731
    return {"train": as_array(train), "test": as_array(test), "n_users": 3, "n_items": 6, "name": "tiny"}


def test_cold_and_warm_users_are_reported_separately() -> None:
    inputs = bench_quality.contract_inputs(tiny_split())
    assert inputs["train_items"].tolist() == [1, 2, 4]
    masks = bench_quality.segment_masks(inputs)
    assert masks["cold"].tolist() == [True, True, False] and masks["warm"].tolist() == [False, False, True]
    segment = {"map": 0.1, "ndcg_at_10": 0.2, "precision_at_10": 0.3, "recall_at_10": 0.4}
    segments: dict[str, dict[str, float]] = {
        "all": {**segment, "users": 3.0},
        "cold": {**segment, "users": 2.0},
        "warm": {**segment, "users": 1.0},
    }
    values: dict[str, Any] = {**segment, "segments": segments}
    empty: dict[str, Any] = {**segment, "segments": {**segments, "cold": {"users": 0.0}}}
    table = bench_quality.format_table([("model_a", values, 1.5, 1.0), ("model_b", empty, None, None)])
    lines = table.splitlines()
    assert lines[2].split() == ["model_a", "3", "0.1000", "0.2000", "0.3000", "0.4000", "1.5", "1.0"]
    assert lines[3].split()[-5:] == ["2", "0.1000", "0.2000", "0.3000", "0.4000"] and "cold" in lines[3]
    assert "warm" in lines[4] and lines[4].split()[1] == "1"
    assert "cold" in lines[6] and lines[6].split()[-5:] == ["0", "-", "-", "-", "-"]


def test_the_validation_fold_reads_only_the_train_side() -> None:
    split = {**tiny_split(), "test": np.zeros((0, 3), np.int64)}
    fold = bench_quality.validation_split(split, share=0.25)
    assert len(fold["train"]) + len(fold["test"]) == len(split["train"])
    assert fold["test"][:, 0].tolist() == [3]  # only the 4-item user has a round(0.25 * n) > 0 share


@pytest.mark.tf
def test_bench_runs_on_a_ratings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = random_ratings(users=30, items=20)
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False, header=["userId", "movieId", "rating", "timestamp"])
    args = ["--data", str(path), "--no-deep", "--models", "popularity,multvae", "--multvae-params"]
    assert bench_quality.main([*args, '{"epochs": 2, "hidden": [8], "latent": 4}']) == 0
    out = capsys.readouterr().out
    assert "ratings.csv" in out and "BiVAE (published)" not in out
    assert "popularity" in out and "multvae" in out and "cold (< 3 train items)" in out


@pytest.mark.tf
def test_multvae_export_is_the_decoders_dot_product(tmp_path: Path) -> None:
    import tensorflow as tf

    from models import baselines, multvae
    from schemas.features import pad_ids
    from scoring import contract

    frame = random_ratings(users=40, items=30)
    matrix = baselines.interaction_matrix(frame["user"], frame["item"], 40, 30)
    params = multvae.MultVAEParams(
        hidden=(16,), latent=6, epochs=3, batch_size=16, layer_norm=True, members=1
    )
    module, summary = multvae.fit(matrix, params)
    assert summary["epochs_run"] == 3 and np.isfinite(summary["final_nll"])
    seen = pad_ids([frame.loc[frame["user"] == u, "item"].tolist() for u in (1, 2)], 30)
    users = module.user_embeddings(tf.constant(seen)).numpy()
    assert users.shape == (2, 7) and np.allclose(users[:, -1], 1.0)
    items = module._items(tf.range(31), None, None, None, None).numpy()
    assert items.shape == (31, 7) and not items[0].any()  # padding / unknown items: the zero vector
    # the export's dot product is the network's logit (no dropout, z = mu), padding column left out
    network = multvae.MultVAENetwork(30, params)
    export = multvae.MultVAEScoring(network)
    part = matrix[[1, 2], 1:].tocoo()
    batch = (tf.constant(part.row, tf.int64), tf.constant(part.col, tf.int64), tf.constant(2, tf.int64))
    logits, _, _, _, _ = network.forward(batch, training=False)
    through_contract = export.user_embeddings(tf.constant(seen)).numpy() @ export.item_table.numpy()[1:].T
    np.testing.assert_allclose(through_contract, logits.numpy(), rtol=1e-4, atol=1e-4)
    # an exported SavedModel gives the same embeddings
    contract.save(module, str(tmp_path / "model"), {"name": "multvae"})
    loaded = contract.LoadedModel(str(tmp_path / "model"))
    zeros = np.zeros(2, np.int32)
    exported = loaded.encode_users(
        user_idx=zeros, history=seen, seen=seen, age_bucket_idx=zeros, region_idx=zeros
    )
    np.testing.assert_allclose(exported, users, rtol=1e-5, atol=1e-6)


@pytest.mark.tf
def test_multvae_members_add_their_logits() -> None:
    import tensorflow as tf

    from models import baselines, multvae
    from schemas.features import pad_ids

    frame = random_ratings(users=20, items=12)
    matrix = baselines.interaction_matrix(frame["user"], frame["item"], 20, 12)
    params = multvae.MultVAEParams(hidden=(8, 8), latent=4, epochs=2, residual=True, members=2)
    params = dataclasses.replace(params, composite_prior=True, gamma=0.01, encoder_passes=1, ema=0.9)
    module, _ = multvae.fit(matrix, params)
    assert isinstance(module, multvae.MultVAEEnsemble) and len(module.members) == 2
    seen = tf.constant(pad_ids([[1, 2, 3], [4]], 5))
    users = module.user_embeddings(seen).numpy()
    items = module._items(tf.range(13), None, None, None, None).numpy()
    assert users.shape == (2, 10) and items.shape == (13, 10)
    each = [m.user_embeddings(seen).numpy() @ m.item_table.numpy().T for m in module.members]
    np.testing.assert_allclose(users @ items.T, each[0] + each[1], rtol=1e-5, atol=1e-5)
