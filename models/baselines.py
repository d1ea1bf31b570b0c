"""Baselines, each exported through the scoring contract (``scoring.contract.ScoringModule``, score = dot product).

| name                 | user embedding                         | item embedding                              |
|----------------------|----------------------------------------|---------------------------------------------|
| popularity           | [1]                                    | [number of users who took the item]         |
| segment_popularity   | one-hot of the (age bucket, region)    | per-segment popularity (smoothed to global) |
| ease                 | multi-hot of ``seen``                  | column of EASE's B (Steck 2019)             |
| als                  | Spark MLlib implicit ALS user factor   | item factor                                 |

Item cosine is no dot-product model: it is exported as a sparse neighbour matrix (``scoring.neighbours``,
``neighbours.npz``, metadata ``"export": "item_item_sparse"``) with at most ``neighbours`` entries per item, and
scored as a sparse product of the user's history with it. Nothing of it is dense in the catalogue size.

EASE inverts a dense [items x items] Gram matrix: it is fitted only when its estimated peak memory
(:func:`ease_peak_bytes`) is within ``Settings.dense_item_budget_mb``; otherwise :func:`fit` raises
:class:`SkippedModel` and the nightly step registers a *skipped* record with the reason (metadata ``status``
``"skipped"``, ``skip_reason``), which evaluation reports in the metrics table instead of leaving EASE out
silently.

Index 0 is padding everywhere: row/column 0 of every table is zero, and indices outside a model's vocabulary are
mapped to 0, so unknown users and items score 0 instead of failing.

In-memory fit functions (``fit_*``) take a scipy CSR interaction matrix of shape [n_users + 1, n_items + 1]
(see :func:`interaction_matrix`) and serve both the nightly pipeline (:func:`train_baselines`) and the MovieLens
benchmark harness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import tensorflow as tf

from models import registry
from models.data import load_profiles
from schemas import lake
from schemas.settings import Settings
from scoring import neighbours as neighbour_export
from scoring.contract import ScoringModule, in_vocab, multi_hot
from scoring.neighbours import NeighbourModel, row_blocks
from storage import lake_io

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "popularity": {},
    "segment_popularity": {"prior": 10.0},
    "item_cosine": {"neighbours": 100},
    "ease": {"lam": 400.0},  # best on ml-100k (sweep 50..1000); retune per scenario
    "als": {"rank": 64, "reg": 0.05, "alpha": 10.0, "iterations": 15, "blocks": 2, "seed": 42},
}
NIGHTLY_BASELINES = (
    "popularity",
    "segment_popularity",
    "item_cosine",
    "ease",
)  # + "als" when a session is given
# EASE's peak while fitting, in float32 copies of [items + 1]^2: the Gram matrix (factorised in place), the
# symmetrised inverse and its triangles, the weights, the memo and the returned copy, the exported table
# (measured: 8.3 GiB at 20k items, 5.6 copies)
EASE_DENSE_COPIES = 6
DEFAULT_BLOCK_MB = 256  # memory of one block of the sparse item cosine (Settings.item_block_mb)
# bytes per entry of a block of the sparse Gram product while its top k are selected
GRAM_BYTES_PER_ENTRY = 48


class SkippedModel(Exception):
    """A model that is not fitted tonight; the message is the reason (it goes to the log and the metrics)."""


# ---- data ---------------------------------------------------------------------------------------------
def interaction_matrix(
    user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int, values: np.ndarray | None = None
) -> sp.csr_matrix:
    """CSR [n_users + 1, n_items + 1] (row/column 0 = padding); binary unless ``values`` are given."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    data = (
        np.ones(len(user_idx), dtype=np.float32) if values is None else np.asarray(values, dtype=np.float32)
    )
    matrix = sp.csr_matrix((data, (user_idx, item_idx)), shape=(n_users + 1, n_items + 1), dtype=np.float32)
    matrix.sum_duplicates()
    if values is None:
        matrix.data[:] = 1.0
    return matrix


def item_counts(interactions: sp.spmatrix) -> np.ndarray:
    """Users per item (binary), indexed by item index."""
    return np.asarray((interactions > 0).sum(axis=0), dtype=np.float64).ravel()


# ---- TF helpers -----------------------------------------------------------------------------------------
def _table(values: np.ndarray) -> tf.Variable:
    return tf.Variable(np.asarray(values, dtype=np.float32), trainable=False)


# ---- scoring modules ------------------------------------------------------------------------------------
class PopularityModule(ScoringModule):
    def __init__(self, popularity: np.ndarray) -> None:
        super().__init__()
        popularity = np.asarray(popularity, dtype=np.float32).copy()
        popularity[0] = 0.0
        self.n_items = len(popularity)
        self.popularity = _table(popularity[:, None])

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):
        return tf.ones([tf.shape(user_idx)[0], 1], tf.float32)

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):
        return tf.gather(self.popularity, in_vocab(item_idx, self.n_items))


class SegmentPopularityModule(ScoringModule):
    """Cold-start fallback: popularity within the user's (age bucket, region) segment."""

    def __init__(self, table: np.ndarray, n_ages: int, n_regions: int) -> None:
        super().__init__()
        self.n_items, self.n_segments = table.shape
        self.n_ages, self.n_regions = n_ages, n_regions
        self.segment_popularity = _table(table)

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):
        segment = in_vocab(age_bucket_idx, self.n_ages) * self.n_regions + in_vocab(
            region_idx, self.n_regions
        )
        return tf.one_hot(segment, self.n_segments, dtype=tf.float32)

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):
        return tf.gather(self.segment_popularity, in_vocab(item_idx, self.n_items))


class ItemToItemModule(ScoringModule):
    """score(u, i) = sum over seen items j of W[j, i]; item i's embedding is column i of W."""

    def __init__(self, weights: np.ndarray) -> None:
        super().__init__()
        weights = np.asarray(weights, dtype=np.float32)
        weights[0, :] = 0.0
        weights[:, 0] = 0.0
        self.n_items = weights.shape[0]
        self.item_rows = _table(weights.T)

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):
        return multi_hot(seen, self.n_items)

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):
        return tf.gather(self.item_rows, in_vocab(item_idx, self.n_items))


class FactorModule(ScoringModule):
    """Matrix factorisation: gather the user's and the item's factor (zero for unknown ids)."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        super().__init__()
        user_factors = np.asarray(user_factors, dtype=np.float32).copy()
        item_factors = np.asarray(item_factors, dtype=np.float32).copy()
        user_factors[0] = 0.0
        item_factors[0] = 0.0
        self.n_users, self.n_items = len(user_factors), len(item_factors)
        self.user_factors, self.item_factors = _table(user_factors), _table(item_factors)

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):
        return tf.gather(self.user_factors, in_vocab(user_idx, self.n_users))

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):
        return tf.gather(self.item_factors, in_vocab(item_idx, self.n_items))


# ---- fitting (in memory) --------------------------------------------------------------------------------
def fit_popularity(interactions: sp.spmatrix) -> PopularityModule:
    return PopularityModule(item_counts(interactions))


def segment_table(
    interactions: sp.spmatrix, user_segment: np.ndarray, n_segments: int, prior: float = 10.0
) -> np.ndarray:
    """[n_items + 1, n_segments]: each segment's item shares, shrunk towards global shares by ``prior`` users."""
    binary = (interactions > 0).astype(np.float32).tocsr()
    membership = sp.csr_matrix(
        (np.ones(binary.shape[0], np.float32), (np.asarray(user_segment), np.arange(binary.shape[0]))),
        shape=(n_segments, binary.shape[0]),
    )
    counts = np.asarray((membership @ binary).todense(), dtype=np.float64)  # [segments, items]
    users_per_segment = np.asarray(membership.sum(axis=1), dtype=np.float64)  # [segments, 1]
    global_share = counts.sum(axis=0, keepdims=True) / max(binary.shape[0], 1)
    shares = (counts + prior * global_share) / (users_per_segment + prior)
    shares[:, 0] = 0.0
    return shares.T


def fit_segment_popularity(
    interactions: sp.spmatrix, user_age: np.ndarray, user_region: np.ndarray, prior: float = 10.0
) -> SegmentPopularityModule:
    """``user_age``/``user_region``: per user index (0 = unknown), length n_users + 1."""
    n_ages, n_regions = int(np.max(user_age, initial=0)) + 1, int(np.max(user_region, initial=0)) + 1
    segment = np.asarray(user_age, np.int64) * n_regions + np.asarray(user_region, np.int64)
    return SegmentPopularityModule(
        segment_table(interactions, segment, n_ages * n_regions, prior), n_ages, n_regions
    )


def cosine_similarity(
    interactions: sp.spmatrix, neighbours: int = 100, block_mb: float = DEFAULT_BLOCK_MB
) -> sp.csr_matrix:
    """Item-item cosine as a sparse CSR [n_items + 1]^2, diagonal 0, column i holding item i's ``neighbours``
    most similar items (equal similarities: the lower item index first; ``neighbours`` 0 or at least the
    catalogue keeps every non-zero). Row/column 0 (padding) and items nobody took are empty.

    The Gram matrix X^T X is formed one block of items at a time as a sparse product (the block's rows of X^T
    times X), each block's rows pruned to their top ``neighbours`` with one sort, so memory is that of the result
    (at most ``n_items * neighbours`` entries) plus one block. A block is as many consecutive items as keep its
    product within ``block_mb`` (bounded before it is formed: item c's row has at most the summed history
    lengths of c's users), so a catalogue of any size fits, and time is that of the sparse product (the sum over
    users of their history length squared), never n_items^2. The values are those of the dense computation
    gram / norm_j / norm_i in float32, bit for bit.
    """
    binary = (interactions > 0).astype(np.float32).tocsr()  # [users, items]
    n_items = binary.shape[1]
    norms = np.sqrt(np.asarray(binary.sum(axis=0), np.float32).ravel()).astype(np.float32)
    norms[norms == 0] = 1.0
    by_item = binary.T.tocsr()  # [items, users]
    degree = np.diff(binary.indptr).astype(np.float64)  # items per user
    bound = np.minimum(by_item @ degree, n_items)  # entries of each item's Gram row, at most
    prune = 0 < neighbours < n_items
    data: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    lengths = np.zeros(n_items, np.int64)
    budget = max(1, int(block_mb * (1 << 20)) // GRAM_BYTES_PER_ENTRY)
    for start, stop in row_blocks(bound, budget):
        gram = (by_item[start:stop] @ binary).tocsr()  # row c - start: column c of X^T X (symmetric)
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(gram.indptr))
        cols = gram.indices.astype(np.int64)
        keep = cols != rows  # diagonal 0
        rows, cols = rows[keep], cols[keep]
        values = gram.data[keep] / norms[cols] / norms[rows]  # dense: gram / norms[:, None] / norms[None, :]
        if prune:
            order = np.lexsort((cols, -values, rows))
            rank = np.arange(len(order)) - np.searchsorted(rows[order], rows[order], side="left")
            order = order[rank < neighbours]
            order = order[np.lexsort((cols[order], rows[order]))]
            rows, cols, values = rows[order], cols[order], values[order]
        lengths[start:stop] = np.bincount(rows - start, minlength=stop - start)
        data.append(values.astype(np.float32, copy=False))
        indices.append(cols.astype(np.int32))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    # column c of the result = item c's neighbours: the rows built above are the columns of a CSC matrix
    similarity = sp.csc_matrix(
        (
            np.concatenate(data) if data else np.zeros(0, np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int32),
            indptr,
        ),
        shape=(n_items, n_items),
    )
    return similarity.tocsr()


def fit_item_cosine(
    interactions: sp.spmatrix, neighbours: int = 100, block_mb: float = DEFAULT_BLOCK_MB
) -> NeighbourModel:
    """score(u, i) = sum over u's seen items j among i's ``neighbours`` nearest of cosine(j, i).

    Candidate-side neighbourhoods (each candidate keeps its k nearest) rather than history-side ones (each
    history item keeps its k nearest, which bounds a user's candidates by history length x k): on ml-100k the
    history-side form lost 0.04 nDCG@10 (0.4317 -> 0.3897 at k = 100). The scorer bounds its memory by blocks
    of users instead (``scoring.neighbours``)."""
    return NeighbourModel(cosine_similarity(interactions, neighbours, block_mb), item_counts(interactions))


def ease_peak_bytes(n_items: int) -> int:
    """EASE's estimated peak memory when fitted on ``n_items`` items (:data:`EASE_DENSE_COPIES` float32 copies
    of the [n_items + 1]^2 matrix)."""
    return EASE_DENSE_COPIES * 4 * (int(n_items) + 1) ** 2


def ease_budget_reason(n_items: int, budget_mb: float | None) -> str | None:
    """Why EASE cannot be fitted on ``n_items`` items within ``budget_mb`` MiB, or None when it can (or when
    there is no budget)."""
    if budget_mb is None:
        return None
    need = ease_peak_bytes(n_items)
    if need <= budget_mb * (1 << 20):
        return None
    return (
        f"EASE needs about {need / (1 << 20):,.0f} MiB for {n_items:,} items (a dense items x items inverse), "
        f"above dense_item_budget_mb={budget_mb:g}"
    )


def ease_weights(interactions: sp.spmatrix, lam: float = 400.0, budget_mb: float | None = None) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diagMat(1/diag(P)), P = (X^T X + lam I)^-1, diag(B) = 0.

    Dense in the catalogue: with ``budget_mb`` given, raises :class:`SkippedModel` before allocating anything
    when :func:`ease_peak_bytes` exceeds it. Sparse alternatives for large catalogues, not implemented here:
    pruned EASE (keep each column's top k of B, which still needs the dense inverse once), and SANSA (Spiegel et
    al., RecSys 2023: a sparse approximate inverse from a sparse LDL^T factorisation of X^T X + lam I, memory
    O(nnz) of the factors).

    X^T X + lam I is symmetric positive definite, so P comes from a Cholesky factorisation (LAPACK potrf/potri) in
    float32: at 5k items about 2x faster than a float64 LU inverse, with weights within ~1e-6 relative of it.
    One training run fits EASE twice on the same pairs (the deep model's wide part and the baseline): the result
    is kept for the last Gram matrix seen, so the second fit costs the Gram and a hash, not a factorisation.
    """
    reason = ease_budget_reason(interactions.shape[1] - 1, budget_mb)
    if reason:
        raise SkippedModel(reason)
    binary = (interactions > 0).astype(np.float32).tocsc()
    gram = np.asarray((binary.T @ binary).todense(), dtype=np.float32)  # integer counts: exact below 2**24
    key = (hashlib.blake2b(gram.tobytes(), digest_size=16).hexdigest(), gram.shape, float(lam))
    if _EASE_MEMO.get("key") != key:
        gram[np.diag_indices_from(gram)] += np.float32(lam)
        factor, _ = scipy.linalg.cho_factor(gram, lower=False, overwrite_a=True, check_finite=False)
        precision, info = scipy.linalg.lapack.spotri(factor, lower=0, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky inverse failed (LAPACK info {info})")
        precision = np.triu(precision) + np.triu(precision, 1).T  # potri fills the upper triangle only
        weights = -precision / np.diag(precision)[None, :]
        np.fill_diagonal(weights, 0.0)
        _EASE_MEMO.clear()
        _EASE_MEMO.update(key=key, weights=weights.astype(np.float32, copy=False))
    return _EASE_MEMO["weights"].copy()


_EASE_MEMO: dict[str, Any] = {}


def fit_ease(
    interactions: sp.spmatrix, lam: float = 400.0, budget_mb: float | None = None
) -> ItemToItemModule:
    return ItemToItemModule(ease_weights(interactions, lam, budget_mb))


def fit_als(
    spark: Any,
    interactions: sp.spmatrix,
    rank: int = 64,
    reg: float = 0.05,
    alpha: float = 10.0,
    iterations: int = 15,
    blocks: int = 2,
    seed: int = 42,
) -> FactorModule:
    """Spark MLlib implicit ALS on the matrix's non-zeros; its user and item factors as a scoring module.

    ``blocks``: user and item blocks; MLlib's default of 10 makes hundreds of tiny tasks on a small machine.
    """
    from pyspark.ml.recommendation import ALS

    context = spark.sparkContext
    if context.getCheckpointDir() is None:
        # without a checkpoint dir ALS never truncates its lineage; 15 iterations can overflow the JVM stack
        context.setCheckpointDir(tempfile.mkdtemp(prefix="recflow-als-checkpoints-"))
    als = ALS(
        rank=rank,
        regParam=reg,
        alpha=alpha,
        maxIter=iterations,
        seed=seed,
        implicitPrefs=True,
        userCol="user_idx",
        itemCol="item_idx",
        ratingCol="rating",
        coldStartStrategy="drop",
        nonnegative=False,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        checkpointInterval=5,
    )
    fitted = als.fit(_ratings_frame(spark, interactions, blocks))
    return FactorModule(
        _factors_by_index(fitted.userFactors, interactions.shape[0], rank),
        _factors_by_index(fitted.itemFactors, interactions.shape[1], rank),
    )


def _ratings_frame(spark: Any, interactions: sp.spmatrix, partitions: int) -> Any:
    """The matrix's non-zeros as a Spark DataFrame (user_idx, item_idx, rating)."""
    import pandas as pd

    coo = interactions.tocoo()
    ratings = pd.DataFrame(
        {
            "user_idx": coo.row.astype(np.int32),
            "item_idx": coo.col.astype(np.int32),
            "rating": coo.data.astype(np.float64),
        }
    )
    return spark.createDataFrame(ratings).repartition(partitions)


def _factors_by_index(factors: Any, rows: int, rank: int) -> np.ndarray:
    """An ALS factor DataFrame (id, features) as a dense array indexed by id; ids ALS never saw stay zero."""
    out = np.zeros((rows, rank), np.float32)
    for row in factors.collect():
        out[row["id"]] = row["features"]
    return out


def fit(
    name: str,
    interactions: sp.spmatrix,
    params: dict[str, Any],
    spark: Any = None,
    user_age: np.ndarray | None = None,
    user_region: np.ndarray | None = None,
    dense_budget_mb: float | None = None,
    block_mb: float = DEFAULT_BLOCK_MB,
) -> ScoringModule | NeighbourModel:
    """Fit one baseline by name (the harness and the nightly job share this dispatch).

    ``dense_budget_mb``: the memory a model dense in the catalogue (EASE) may take; above it :class:`SkippedModel`
    is raised (None: no limit). ``block_mb``: the block memory of the sparse item cosine."""
    if name == "popularity":
        return fit_popularity(interactions)
    if name == "segment_popularity":
        zeros = np.zeros(interactions.shape[0], np.int64)
        return fit_segment_popularity(
            interactions,
            zeros if user_age is None else user_age,
            zeros if user_region is None else user_region,
            **params,
        )
    if name == "item_cosine":
        return fit_item_cosine(interactions, block_mb=block_mb, **params)
    if name == "ease":
        return fit_ease(interactions, budget_mb=dense_budget_mb, **params)
    if name == "als":
        if spark is None:
            raise ValueError("ALS needs a SparkSession (storage.spark.spark_session)")
        return fit_als(spark, interactions, **params)
    raise ValueError(f"unknown baseline {name!r}")


# ---- nightly --------------------------------------------------------------------------------------------
def load_training_data(settings: Settings) -> dict[str, Any]:
    """The window's interactions for run date D as a CSR matrix, plus per-user profile indices."""
    root, ds = settings.lake_root, settings.ds
    interactions = lake_io.read_partition(
        root, lake.INTERACTIONS, ds, columns=["user_idx", "item_idx", "strength"]
    )
    items = lake_io.read_partition(root, lake.ITEM_FEATURES, ds, columns=["item_idx"])
    profiles = load_profiles(settings)
    user_idx = interactions.column("user_idx").to_numpy()
    item_idx = interactions.column("item_idx").to_numpy()
    n_items = int(max(np.max(items.column("item_idx").to_numpy(), initial=0), np.max(item_idx, initial=0)))
    n_users = int(max(profiles.num_users, np.max(user_idx, initial=0)))
    age, region = profiles.lookup(np.arange(n_users + 1))
    return {
        "interactions": interaction_matrix(user_idx, item_idx, n_users, n_items),
        "strength": interaction_matrix(
            user_idx, item_idx, n_users, n_items, interactions.column("strength").to_numpy()
        ),
        "user_age": age,
        "user_region": region,
        "n_users": n_users,
        "n_items": n_items,
        "rows": interactions.num_rows,
    }


def train_baselines(
    settings: Settings,
    spark: Any = None,
    names: tuple[str, ...] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Fit the baselines on the window before ``settings.run_date`` and register each; returns model dirs.

    The baselines read the window aggregate ``features/interactions``, not the deep model's examples. ALS runs
    only when a SparkSession is given (``storage.spark.spark_session``).
    """
    names = names or (NIGHTLY_BASELINES + (("als",) if spark is not None else ()))
    training = load_training_data(settings)
    log.info(
        "baselines on %d interactions, %d users, %d items",
        training["rows"],
        training["n_users"],
        training["n_items"],
    )
    dirs = []
    for name in names:
        model_params = {**DEFAULT_PARAMS[name], **(params or {}).get(name, {})}
        started = time.perf_counter()
        # ALS uses decayed strength as its implicit confidence; the others use binary interactions
        matrix = training["strength"] if name == "als" else training["interactions"]
        sizes = {
            "n_users": training["n_users"],
            "n_items": training["n_items"],
            "interactions": training["rows"],
        }
        try:
            module = fit(
                name,
                matrix,
                model_params,
                spark=spark,
                user_age=training["user_age"],
                user_region=training["user_region"],
                dense_budget_mb=settings.dense_item_budget_mb,
                block_mb=settings.item_block_mb,
            )
        except SkippedModel as skipped:
            folder = register_skipped(settings, name, model_params, str(skipped), **sizes)
            log.warning("baseline %s skipped: %s (record: %s)", name, skipped, folder)
            dirs.append(folder)
            continue
        seconds = time.perf_counter() - started
        extra = {"kind": "baseline", "train_seconds": round(seconds, 3), **sizes}
        if isinstance(module, NeighbourModel):
            version = registry.new_version(settings, name, model_params)
            folder = neighbour_export.save(
                module,
                registry.model_dir(settings, name, version),
                registry.metadata(settings, name, version, params=model_params, **extra),
            )
        else:
            folder = registry.register(settings, module, name, model_params, **extra)
        log.info("baseline %s trained in %.1f s -> %s", name, seconds, folder)
        dirs.append(folder)
    return dirs


def register_skipped(settings: Settings, name: str, params: dict[str, Any], reason: str, **extra: Any) -> str:
    """A model folder holding only ``metadata.json`` with ``status: "skipped"`` and ``skip_reason``: the record
    that evaluation reports (``models.evaluate``) so that a model left out is visible, with why."""
    version = registry.new_version(settings, name, params)
    folder = registry.model_dir(settings, name, version)
    meta = registry.metadata(
        settings, name, version, "baseline", params, status=SKIPPED, skip_reason=reason, **extra
    )
    lake_io.write_text_atomic(
        f"{folder}/metadata.json", json.dumps(meta, indent=2, sort_keys=True, default=str)
    )
    return folder


SKIPPED = "skipped"

__all__ = [
    "DEFAULT_PARAMS",
    "SkippedModel",
    "cosine_similarity",
    "ease_peak_bytes",
    "fit",
    "fit_als",
    "fit_ease",
    "fit_item_cosine",
    "fit_popularity",
    "fit_segment_popularity",
    "interaction_matrix",
    "register_skipped",
    "train_baselines",
]
