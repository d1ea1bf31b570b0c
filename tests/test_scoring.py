"""The catalogue product used by evaluation: exact on every shape the scoring contract's models produce."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from scoring.dot_scores import CatalogueProduct, indicator_tail  # noqa: E402

pytestmark = pytest.mark.tf


def _dense(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return users.astype(np.float64) @ items.astype(np.float64).T


def test_dense_users_and_items_give_the_plain_product() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.standard_normal((7, 16), np.float32), rng.standard_normal((40, 16), np.float32)
    product = CatalogueProduct(items)
    assert product.tail_cols is None
    np.testing.assert_allclose(product(users), _dense(users, items), rtol=1e-5, atol=1e-5)


def test_multi_hot_users_take_the_sparse_path_and_match() -> None:
    rng = np.random.default_rng(1)
    items = rng.standard_normal(
        (300, 300), np.float32
    )  # an item-to-item model: item j's vector is a column of B
    users = np.zeros((5, 300), np.float32)
    for row in range(5):
        users[row, rng.choice(300, size=4, replace=False)] = 1.0
    assert np.count_nonzero(users) < CatalogueProduct.SPARSE_BELOW * users.size
    np.testing.assert_allclose(CatalogueProduct(items)(users), _dense(users, items), rtol=1e-5, atol=1e-5)


def test_an_indicator_tail_is_gathered_and_matches() -> None:
    rng = np.random.default_rng(2)
    n, d = 50, 8
    head = rng.standard_normal((n, d), np.float32)
    one_hot = np.eye(n, dtype=np.float32) * 2.5
    one_hot[7] = 0.0  # an item the wide part never saw: zero one-hot
    items = np.hstack([head, one_hot])
    users = rng.standard_normal((6, d + n), np.float32)
    width, cols, coef = indicator_tail(items)
    assert width == d and cols is not None and coef is not None and coef[7] == 0.0
    np.testing.assert_allclose(CatalogueProduct(items)(users), _dense(users, items), rtol=1e-5, atol=1e-5)


def test_a_tail_with_two_non_zeros_in_a_row_is_not_an_indicator() -> None:
    tail = np.zeros((40, 80), np.float32)
    tail[np.arange(40), np.arange(40)] = 1.0
    tail[3, 60] = 1.0  # every column still has one non-zero, but row 3 has two
    items = np.hstack([np.ones((40, 4), np.float32), tail])
    assert indicator_tail(items)[1] is None
    users = np.random.default_rng(3).standard_normal((3, 84), np.float32)
    np.testing.assert_allclose(CatalogueProduct(items)(users), _dense(users, items), rtol=1e-5, atol=1e-5)


def test_multi_hot_matmul_sums_each_rows_distinct_items() -> None:
    import tensorflow as tf

    from scoring.contract import multi_hot, multi_hot_matmul

    matrix = np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)
    # padding (0), a duplicate, an id outside the vocabulary (9), and an all-padding last row
    ids = tf.constant([[3, 1, 3, 0], [5, 9, 2, 0], [0, 0, 0, 0]], tf.int32)
    got = multi_hot_matmul(ids, tf.constant(matrix)).numpy()
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got[0], matrix[1] + matrix[3], rtol=1e-6)
    np.testing.assert_allclose(got[1], matrix[2] + matrix[5], rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)
    np.testing.assert_allclose(got, multi_hot(ids, 6).numpy() @ matrix, rtol=1e-5, atol=1e-6)


def test_freed_memory_is_retained_on_glibc() -> None:
    import platform

    from scoring.allocator import retain_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only")
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # once per process; later calls report the same


def test_local_airflow_processes_start_with_the_allocator_settings() -> None:
    from scoring.allocator import MMAP_THRESHOLD, allocator_env
    from tools.local_airflow import airflow_env

    env = airflow_env()
    assert allocator_env().items() <= env.items()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD)
