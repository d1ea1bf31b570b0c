"""MovieLens ratings as released, densely remapped, and the stratified 75/25 split of the published table.

Readers: every MovieLens ratings file as GroupLens releases it, found by its content (not its name):

- ``u.data`` (ml-100k) and the fixed split's ``train.tsv``/``test.tsv``: ``user \\t item \\t rating \\t time``;
- ``ratings.dat`` (ml-1m, ml-10m): ``user::item::rating::time``;
- ``ratings.csv`` (ml-20m, ml-25m, ml-latest): header ``userId,movieId,rating,timestamp``.

Ratings may be whole or half stars. Raw ids may be sparse and of any size: :func:`densify` maps them onto
1..n in ascending raw-id order (index 0 stays padding, as everywhere in recflow), through ``np.unique``'s inverse,
so nothing is ever allocated per raw id. Already dense 1-based ids (ml-100k) map onto themselves.

:func:`stratified_split` is the split behind Microsoft Recommenders' published MovieLens table, written from the
description of its ``python_stratified_split(df, ratio=0.75, min_rating=1, filter_by="item", seed=42)``:

1. with ``min_rating > 1``, groups (items, or users with ``filter_by="user"``) with fewer rows are dropped;
2. every remaining row, in file order, gets one uniform draw from numpy's legacy Mersenne Twister seeded with
   ``seed`` (``RandomState(seed).random_sample(rows)``);
3. rows are ordered by group, then by their draw; in a group of ``n`` rows the first ``round(ratio * n)`` go to
   train and the rest to test, ``round`` halving to even (Python's and numpy's rounding).

Step 3's rounding is the rule of the version of that function the published split was made with; the current
version keeps a row when ``rank / n <= ratio`` instead, i.e. ``floor(ratio * n)`` rows: ``rounding="floor"``. On
ml-100k ``u.data`` the default reproduces ``ml-100k-split`` row for row (75,066 / 24,934); "floor" gives 74,331
/ 25,669. Both sides come back in the order of step 3, as the published files are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

COLUMNS = ("user", "item", "rating", "timestamp")
RATING_FILES = ("u.data", "ratings.dat", "ratings.csv")  # looked for, in this order, when given a folder
CSV_HEADER = ("userid", "movieid", "rating", "timestamp")


@dataclasses.dataclass(frozen=True)
class Ratings:
    """Ratings with dense ids: ``frame`` has int64 ``user`` and ``item`` in 1..n, float64 ``rating`` and int64
    ``timestamp``, rows in file order; ``user_ids[u - 1]`` / ``item_ids[i - 1]`` are the raw ids."""

    frame: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def ratings_file(path: str | Path) -> Path:
    """``path`` itself, or the first of :data:`RATING_FILES` inside it when it is a folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in RATING_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no MovieLens ratings file ({', '.join(RATING_FILES)}) in {path}")


def _layout(first_line: str) -> Literal["dat", "csv", "tsv"]:
    if "::" in first_line:
        return "dat"
    if "," in first_line:
        return "csv"
    if "\t" in first_line:
        return "tsv"
    raise ValueError(f"not a MovieLens ratings line: {first_line[:80]!r}")


def read_ratings(path: str | Path) -> pd.DataFrame:
    """One MovieLens ratings file (or a folder holding one) as raw ids: columns user, item (int64), rating
    (float64), timestamp (int64), in file order."""
    file = ratings_file(path)
    with file.open(encoding="latin-1") as fh:
        first = fh.readline().strip()
    layout = _layout(first)
    names = list(COLUMNS)
    dtypes = {"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"}
    if layout == "dat":
        # "::" read as two ':' separators (the C parser; a two-character separator needs the slow python one)
        frame = pd.read_csv(file, sep=":", header=None, usecols=[0, 2, 4, 6], names=names, dtype=dtypes)
    elif layout == "csv":
        header = tuple(field.strip().strip('"').lower() for field in first.split(","))
        has_header = not header[0].lstrip("-").isdigit()
        if has_header and header[:4] != CSV_HEADER:
            raise ValueError(f"{file}: expected the header {','.join(CSV_HEADER)}, got {first!r}")
        frame = pd.read_csv(
            file, sep=",", header=0 if has_header else None, names=names, usecols=[0, 1, 2, 3]
        ).astype(dtypes)
    else:
        frame = pd.read_csv(file, sep="\t", header=None, names=names, usecols=[0, 1, 2, 3], dtype=dtypes)
    return frame[names].reset_index(drop=True)


def densify(frame: pd.DataFrame) -> Ratings:
    """Raw ids -> 1..n (ascending raw id), keeping the rows and their order."""
    user_ids, user = np.unique(frame["user"].to_numpy(np.int64), return_inverse=True)
    item_ids, item = np.unique(frame["item"].to_numpy(np.int64), return_inverse=True)
    dense = pd.DataFrame(
        {
            "user": user.astype(np.int64).ravel() + 1,
            "item": item.astype(np.int64).ravel() + 1,
            "rating": frame["rating"].to_numpy(np.float64),
            "timestamp": frame["timestamp"].to_numpy(np.int64),
        }
    )
    return Ratings(dense, user_ids, item_ids)


def load(path: str | Path) -> Ratings:
    """:func:`read_ratings` then :func:`densify`."""
    return densify(read_ratings(path))


def stratified_split(
    frame: pd.DataFrame,
    ratio: float = 0.75,
    min_rating: int = 1,
    filter_by: Literal["item", "user"] = "item",
    seed: int = 42,
    rounding: Literal["round", "floor"] = "round",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): in every group (item, or user) the share ``ratio`` of its rows, chosen at random; see the
    module's docstring for the exact procedure. ``frame`` needs ``user`` and ``item`` columns, rows in file
    order; the sides keep every column and the original index."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    if min_rating < 1:
        raise ValueError(f"min_rating must be at least 1, got {min_rating}")
    if filter_by not in ("item", "user"):
        raise ValueError(f"filter_by must be 'item' or 'user', got {filter_by!r}")
    keys = frame[filter_by].to_numpy()
    if min_rating > 1:
        _, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
        frame = frame[sizes[inverse.ravel()] >= min_rating]
        keys = frame[filter_by].to_numpy()
    draws = np.random.RandomState(seed).random_sample(len(frame))
    order = np.lexsort((draws, keys))  # by group, then by draw (stable: equal draws keep file order)
    grouped = keys[order]
    n = len(grouped)
    starts = np.flatnonzero(np.concatenate([[True], grouped[1:] != grouped[:-1]])) if n else np.zeros(0, int)
    sizes = np.diff(np.append(starts, n))
    position = np.arange(n) - np.repeat(starts, sizes)
    kept = np.floor(ratio * sizes) if rounding == "floor" else np.round(ratio * sizes)
    to_train = position < np.repeat(kept, sizes)
    ordered = frame.iloc[order]
    return ordered[to_train], ordered[~to_train]
