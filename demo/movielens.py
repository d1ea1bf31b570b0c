"""MovieLens 100k as raw input: ratings become events in the same raw layout the generator writes.

``python -m demo.movielens --movielens-dir DIR --lake-root R`` reads ``u.data`` (user \\t item \\t rating \\t unix
time), ``u.item`` (titles, release dates, genre flags), ``u.genre`` and ``u.user`` from DIR (the ml-100k folder or a
folder holding it) and writes, for every day that has ratings (UTC)::

    raw/events/dt=YYYY-MM-DD/part-00000.jsonl   rating >= 4 -> "purchase", otherwise "view"
    raw/items/dt=YYYY-MM-DD/items.jsonl         category = first genre, publish_time = release date
    raw/users/dt=YYYY-MM-DD/users.jsonl         age and region (first digit of the zip code); no PII exists

Without the files it says so and does nothing (the licence forbids shipping MovieLens, so it is never in the repo).
:func:`read_ratings` is the plain reader the benchmark code uses (ml-100k-split/train.tsv has the same format).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from schemas import lake
from schemas.settings import Settings
from storage import lake_io

log = logging.getLogger(__name__)

RATING_COLUMNS = ("user", "item", "rating", "timestamp")
PURCHASE_MIN_RATING = 4  # explicit ratings become implicit events: a liked movie counts like a purchase
REQUIRED_FILES = ("u.data", "u.item", "u.genre", "u.user")


def read_ratings(path: str | Path) -> pd.DataFrame:
    """Ratings in u.data format (a file, or a folder holding ``u.data``): columns user, item, rating, timestamp."""
    path = Path(path)
    if path.is_dir():
        path = path / "u.data"
    frame = pd.read_csv(path, sep="\t", header=None, names=list(RATING_COLUMNS), dtype="int64")
    return frame


def find_movielens(path: str | Path) -> Path | None:
    """The folder holding the ml-100k files: ``path`` itself or ``path/ml-100k``; None when absent."""
    for candidate in (Path(path), Path(path) / "ml-100k"):
        if all((candidate / name).is_file() for name in REQUIRED_FILES):
            return candidate
    return None


def read_items(folder: Path) -> pd.DataFrame:
    """u.item: item, title, category (first listed genre other than 'unknown'), publish_time (release date)."""
    genres = pd.read_csv(
        folder / "u.genre", sep="|", header=None, names=["genre", "index"], encoding="latin-1"
    )
    genres = genres.dropna().sort_values("index")["genre"].tolist()
    columns = ["item", "title", "release", "video_release", "url", *genres]
    raw = pd.read_csv(folder / "u.item", sep="|", header=None, names=columns, encoding="latin-1")
    flags = raw[genres].to_numpy().astype(bool)
    named = [g for g in genres if g != "unknown"]

    def first_genre(row_flags: Any) -> str:
        listed = [g for g, on in zip(genres, row_flags, strict=True) if on]
        preferred = [g for g in listed if g in named]
        return (preferred or listed or ["unknown"])[0]

    release = pd.to_datetime(raw["release"], format="%d-%b-%Y", errors="coerce")
    return pd.DataFrame(
        {
            "item": raw["item"].astype("int64"),
            "title": raw["title"].astype(str),
            "category": [first_genre(f) for f in flags],
            "publish_time": [None if pd.isna(t) else t.strftime("%Y-%m-%dT00:00:00Z") for t in release],
        }
    )


def read_users(folder: Path) -> pd.DataFrame:
    """u.user: user, age, region (US zip codes: first digit, 'zip-N'; others 'other')."""
    raw = pd.read_csv(
        folder / "u.user",
        sep="|",
        header=None,
        names=["user", "age", "gender", "occupation", "zip"],
        dtype={"zip": str},
    )
    region = [f"zip-{z[0]}" if z[:1].isdigit() else "other" for z in raw["zip"].fillna("")]
    return pd.DataFrame(
        {"user": raw["user"].astype("int64"), "age": raw["age"].astype("int64"), "region": region}
    )


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def as_events(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings with their event time, UTC day and event type (a liked movie counts as a purchase), in time order."""
    times = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    return ratings.assign(
        event_time=times.dt.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        day=times.dt.strftime("%Y-%m-%d"),
        event_type=["purchase" if r >= PURCHASE_MIN_RATING else "view" for r in ratings["rating"]],
    ).sort_values(["timestamp", "user", "item"], kind="stable")


def item_jsonl(items: pd.DataFrame) -> bytes:
    """The catalogue as raw item lines."""
    return "".join(
        _line(
            {
                "item_id": str(r.item),
                "category": r.category,
                "price": None,
                "title": r.title,
                "publish_time": r.publish_time,
                "available": True,
            }
        )
        + "\n"
        for r in items.itertuples()
    ).encode()


def user_jsonl(users: pd.DataFrame) -> bytes:
    """The users as raw profile lines (MovieLens has no PII fields: they are null)."""
    return "".join(
        _line(
            {
                "user_id": str(r.user),
                "email": None,
                "phone": None,
                "name": None,
                "ip": None,
                "address": None,
                "age": int(r.age),
                "region": r.region,
                "signup_time": None,
            }
        )
        + "\n"
        for r in users.itertuples()
    ).encode()


def event_lines(group: pd.DataFrame, day: str) -> list[str]:
    """One day's ratings as raw event lines."""
    return [
        _line(
            {
                "event_id": f"ml-{u}-{i}",
                "event_time": t,
                "user_id": str(u),
                "session_id": f"ml-{u}-{day}",
                "event_type": e,
                "item_id": str(i),
            }
        )
        for u, i, t, e in zip(
            group["user"], group["item"], group["event_time"], group["event_type"], strict=True
        )
    ]


def convert(settings: Settings) -> dict[str, Any]:
    """Writes MovieLens as raw events/items/users partitions under the lake root; returns what it wrote.

    Returns ``{"skipped": reason}`` without writing anything when the files are not at ``settings.movielens_dir``.
    """
    started = time.perf_counter()
    folder = find_movielens(settings.movielens_dir)
    if folder is None:
        reason = (
            f"MovieLens files ({', '.join(REQUIRED_FILES)}) not found in {settings.movielens_dir} "
            f"or its ml-100k/ folder; set --movielens-dir; nothing written"
        )
        log.warning(reason)
        return {"skipped": reason}
    root = settings.lake_root
    ratings = as_events(read_ratings(folder / "u.data"))
    items = read_items(folder)
    users = read_users(folder)
    item_lines, user_lines = item_jsonl(items), user_jsonl(users)
    days = sorted(ratings["day"].unique())
    for day, group in ratings.groupby("day", sort=True):
        lines = event_lines(group, str(day))
        events_file = {"part-00000.jsonl": ("\n".join(lines) + "\n").encode()}
        lake_io.replace_folder(lake.raw_events(root, day), events_file)
        lake_io.replace_folder(lake.raw_items(root, day), {"items.jsonl": item_lines})
        lake_io.replace_folder(lake.raw_users(root, day), {"users.jsonl": user_lines})
    summary = {
        "source": str(folder),
        "lake_root": root,
        "events": len(ratings),
        "purchases": int((ratings["event_type"] == "purchase").sum()),
        "items": len(items),
        "users": len(users),
        "days": len(days),
        "first_date": days[0],
        "last_date": days[-1],
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info(
        "MovieLens: %d events over %d days (%s .. %s) written under %s; run the pipeline with --date %s",
        summary["events"],
        len(days),
        days[0],
        days[-1],
        root,
        dt.date.fromisoformat(days[-1]),
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_cli(argv, description="Convert MovieLens 100k files into the raw lake layout.")
    summary = convert(settings)
    if "skipped" in summary:
        print(f"skipping MovieLens: {summary['skipped']}")
        return
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
