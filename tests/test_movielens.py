"""The MovieLens reader: ratings as a DataFrame, and the conversion into the raw lake layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.json as pa_json
import pytest

from demo import movielens
from schemas import lake
from schemas.raw import RAW_EVENT, RAW_ITEM, RAW_USER
from schemas.settings import Settings


def write_tiny_movielens(folder: Path) -> None:
    """Three users, three movies, in the ml-100k file formats (invented rows, not MovieLens data)."""
    folder.mkdir(parents=True)
    # two ratings on 1997-09-22 (UTC), two on the next day
    (folder / "u.data").write_text(
        "1\t10\t5\t874965758\n2\t10\t3\t874965800\n2\t20\t4\t875052200\n3\t30\t1\t875052300\n"
    )
    (folder / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\nDrama|3\n\n")
    (folder / "u.item").write_text(
        "10|Alpha (1995)|01-Jan-1995||http://x|0|0|1|1\n"
        "20|Beta (1996)|||http://x|1|0|0|0\n"
        "30|Gamma (1994)|05-Mar-1994||http://x|0|1|0|0\n",
        encoding="latin-1",
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|30|M|writer|T8H1N\n")


def test_read_ratings_from_file_or_folder(tmp_path: Path) -> None:
    write_tiny_movielens(tmp_path / "ml-100k")
    frame = movielens.read_ratings(tmp_path / "ml-100k")
    assert list(frame.columns) == ["user", "item", "rating", "timestamp"]
    assert frame.dtypes.map(str).tolist() == ["int64"] * 4
    assert frame.iloc[0].tolist() == [1, 10, 5, 874965758]
    assert movielens.read_ratings(tmp_path / "ml-100k" / "u.data").equals(frame)


def test_convert_writes_the_raw_layout(tmp_path: Path, tmp_lake: str) -> None:
    write_tiny_movielens(tmp_path / "data" / "ml-100k")
    # the shared-data folder (holding ml-100k/) is accepted as well as ml-100k itself
    settings = Settings.load({"lake_root": tmp_lake, "movielens_dir": str(tmp_path / "data")}, env={})
    summary = movielens.convert(settings)
    assert summary["events"] == 4 and summary["days"] == 2
    assert (summary["first_date"], summary["last_date"]) == ("1997-09-22", "1997-09-23")
    day1 = [
        json.loads(x) for x in (Path(lake.raw_events(tmp_lake, "1997-09-22")) / "part-00000.jsonl").open()
    ]
    assert [(e["user_id"], e["item_id"], e["event_type"]) for e in day1] == [
        ("1", "10", "purchase"),
        ("2", "10", "view"),
    ]
    assert day1[0]["event_time"] == "1997-09-22T22:02:38.000Z"
    items = {
        i["item_id"]: i
        for i in map(json.loads, (Path(lake.raw_items(tmp_lake, "1997-09-22")) / "items.jsonl").open())
    }
    assert items["10"]["category"] == "Comedy"  # first listed genre
    assert items["20"]["category"] == "unknown" and items["20"]["publish_time"] is None
    assert items["30"]["publish_time"] == "1994-03-05T00:00:00Z" and items["30"]["title"] == "Gamma (1994)"
    users = {
        u["user_id"]: u
        for u in map(json.loads, (Path(lake.raw_users(tmp_lake, "1997-09-23")) / "users.jsonl").open())
    }
    assert users["1"]["region"] == "zip-8" and users["3"]["region"] == "other" and users["2"]["age"] == 53


def test_missing_files_are_skipped_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake_root = tmp_path / "lake"
    movielens.main(["--movielens-dir", str(tmp_path / "nowhere"), "--lake-root", str(lake_root)])
    out = capsys.readouterr().out
    assert "skipping MovieLens" in out and "nowhere" in out and "--movielens-dir" in out
    assert not lake_root.exists()


@pytest.mark.movielens
def test_reads_the_benchmark_split(movielens_dir: Path) -> None:
    train = movielens.read_ratings(movielens_dir / "ml-100k-split" / "train.tsv")
    test = movielens.read_ratings(movielens_dir / "ml-100k-split" / "test.tsv")
    assert (len(train), len(test)) == (75_066, 24_934)
    assert train["user"].nunique() == 943 and test["user"].nunique() == 943
    assert train["rating"].between(1, 5).all()


@pytest.mark.movielens
@pytest.mark.slow
def test_converts_movielens_100k(movielens_dir: Path, tmp_lake: str) -> None:
    settings = Settings.load({"lake_root": tmp_lake, "movielens_dir": str(movielens_dir)}, env={})
    summary = movielens.convert(settings)
    ratings = movielens.read_ratings(movielens_dir / "ml-100k")
    assert summary["events"] == len(ratings) == 100_000
    assert summary["purchases"] == int((ratings["rating"] >= 4).sum())
    assert (summary["items"], summary["users"]) == (1682, 943)
    event_dirs = sorted(Path(tmp_lake, lake.RAW_EVENTS).glob("dt=*"))
    assert len(event_dirs) == summary["days"]
    options = pa_json.ParseOptions(explicit_schema=RAW_EVENT, unexpected_field_behavior="error")
    total = sum(pa_json.read_json(d / "part-00000.jsonl", parse_options=options).num_rows for d in event_dirs)
    assert total == 100_000
    last = summary["last_date"]
    for name, schema in (("items", RAW_ITEM), ("users", RAW_USER)):
        path = Path(lake.partition(tmp_lake, f"raw/{name}", last)) / f"{name}.jsonl"
        pa_json.read_json(
            path,
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"),
        )
    items = pd.read_json(Path(lake.raw_items(tmp_lake, last)) / "items.jsonl", lines=True)
    assert items["category"].isin(["Drama", "Comedy", "Action"]).mean() > 0.5
