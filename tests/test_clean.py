"""The cleaning job on tiny raw partitions: quarantine reasons, reconciliation, idempotency, bad input, backfill."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from jobs.pseudonymise import PseudonymKeyMissing, pseudonym, resolve_key
from schemas import lake
from schemas.clean import QUARANTINE_REASONS
from schemas.settings import Settings
from storage import manifest as manifests

pytestmark = pytest.mark.spark

D = "2026-01-14"
KEY = b"test-only-pseudonym-key"  # what tests/conftest.py puts in RECFLOW_PSEUDONYM_KEY
ITEMS = [
    {
        "item_id": "i1",
        "category": "shoes",
        "price": 10.0,
        "title": "red shoe",
        "publish_time": "2025-12-01T00:00:00Z",
        "available": True,
    },
    {
        "item_id": "i2",
        "category": "hats",
        "price": 20.5,
        "title": "blue hat",
        "publish_time": "2025-12-02T00:00:00Z",
        "available": True,
    },
    {"item_id": "i3", "category": "hats", "price": 7.0, "title": "old hat", "available": None},
]
USERS = [
    {
        "user_id": "u1",
        "email": "ann@example.com",
        "phone": "+44 7700 900123",
        "name": "Ann Example",
        "ip": "203.0.113.7",
        "address": "1 High Street, Exampleton",
        "age": 31,
        "region": "north",
        "signup_time": "2025-01-01T00:00:00Z",
    },
    {
        "user_id": "u2",
        "email": "bob@example.com",
        "phone": "+44 7700 900456",
        "name": "Bob Example",
        "ip": "203.0.113.8",
        "address": "2 Low Road, Sampleville",
        "age": 67,
        "region": "south",
    },
]


def event(
    event_id: str,
    user: str | None = "u1",
    time: str = "T10:00:00.000Z",
    kind: str = "view",
    item: str = "i1",
    price: Any = 10.0,
    **extra: Any,
) -> dict[str, Any]:
    row = {
        "event_id": event_id,
        "event_time": D + time if time.startswith("T") else time,
        "user_id": user,
        "session_id": f"s-{user}",
        "event_type": kind,
        "item_id": item,
        "price": price,
        "ip": "198.51.100.23",
        "user_agent": "Mozilla/5.0 (TestAgent)",
    }
    row.update(extra)
    return row


def line(row: dict[str, Any]) -> bytes:
    return json.dumps(row).encode()


def write_raw(
    root: str,
    ds: str,
    lines: list[bytes],
    items: list[dict[str, Any]] | None = None,
    users: list[dict[str, Any]] | None = None,
    gz_lines: list[bytes] | None = None,
) -> Path:
    folder = Path(lake.raw_events(root, ds))
    folder.mkdir(parents=True, exist_ok=True)
    if lines:
        (folder / "part-0.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    if gz_lines:
        (folder / "part-1.jsonl.gz").write_bytes(gzip.compress(b"\n".join(gz_lines) + b"\n"))
    for path, rows in (
        (lake.raw_items(root, ds), ITEMS if items is None else items),
        (lake.raw_users(root, ds), USERS if users is None else users),
    ):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def settings_for(root: str, **overrides: Any) -> Settings:
    return Settings.load(
        {
            "lake_root": root,
            "run_date": D,
            "window_days": 1,
            "bot_events_per_minute": 5,
            "max_field_chars": 200,
            **overrides,
        }
    )


def read(root: str, name: str, ds: str = D) -> list[dict[str, Any]]:
    table = pads.dataset(lake.partition(root, name, ds), format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


GOOD = [
    event("g1", "u1", "T10:00:00.000Z", "view", "i1", 10.0),
    event("g2", "u2", "T11:00:00.500Z", "purchase", "i2", 20.5),
    event("g3", "u1", "T12:00:00Z", "click", "i3", None, campaign="winter"),  # extra key: drift, still clean
    event("g4", "u2", "2026-01-14T08:30:00+01:00", "cart", "i1", 10.0),  # offset: 07:30 UTC, same day
    event("g5", "u1", "T09:00:00Z", "view", "i2", 20.5),  # kept: the first of its duplicates
]
BAD: list[tuple[str, bytes]] = [
    ("malformed_json", b'{"event_id": "b1", "user_id": "u1", '),
    ("malformed_json", b""),
    ("missing_field", line({k: v for k, v in event("b2").items() if k != "item_id"})),
    ("wrong_type", line(event("b3", price="cheap"))),
    ("wrong_type", line(event("b3b", time="yesterday"))),
    ("unknown_event_type", line(event("b4", kind="hover"))),
    ("timestamp_out_of_day", line(event("b5", time="2026-01-13T23:59:59Z"))),
    ("duplicate_event_id", line(event("g5", "u1", "T09:05:00Z", "view", "i2", 20.5))),
    ("unknown_item", line(event("b6", item="i999"))),
    ("null_user", line(event("b7", user=None))),
    ("oversized_field", line(event("b8", session_id="x" * 500))),
    (
        "invalid_utf8",
        b'{"event_id": "b9", "event_time": "2026-01-14T10:00:00Z", "user_id": "u1", '
        b'"event_type": "view", "item_id": "i\xff\xfe"}',
    ),
    ("invalid_price", line(event("b10", price=-3))),
    ("invalid_price", line(event("b11", price=1e9))),
    *[("bot_user", line(event(f"bot{i}", "bot-user", f"T13:00:{i:02d}Z"))) for i in range(6)],
]


def staged_lines(root: str) -> list[Path]:
    """What runs left of their staged parsed lines (nothing, when each run cleans up after itself)."""
    folder = Path(lake.table(root, f"{lake.STAGING}/clean_lines"))
    return sorted(folder.iterdir()) if folder.exists() else []


def staged_outputs(root: str) -> list[Path]:
    """What runs left of their staged output tables (nothing, when each run cleans up after itself)."""
    folder = Path(lake.table(root, f"{lake.STAGING}/clean_outputs"))
    return sorted(folder.iterdir()) if folder.is_dir() else []


def tree_bytes(path: str) -> dict[str, bytes]:
    """Every file under a folder, by relative path: to tell a partition that changed from one that did not."""
    base = Path(path)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


TABLES = (lake.CLEAN_EVENTS, lake.QUARANTINE_EVENTS, lake.CLEAN_ITEMS, lake.CLEAN_USERS)


@pytest.fixture(scope="module")
def dirty_run(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One raw day with every corruption kind spread among good rows (half plain, half gzip), cleaned once."""
    from jobs import clean

    root = str(tmp_path_factory.mktemp("dirty") / "lake")
    good = [line(r) for r in GOOD]
    mixed = [raw for _, raw in BAD]
    for i, row in enumerate(good):
        mixed.insert(3 * i, row)
    write_raw(root, D, mixed[: len(mixed) // 2], gz_lines=mixed[len(mixed) // 2 :])
    written = clean.run(spark, settings_for(root))
    return {"root": root, "manifest": written[D], "tables": {name: read(root, name) for name in TABLES}}


def test_every_corruption_lands_in_quarantine_with_its_reason(dirty_run: dict[str, Any]) -> None:
    quarantined = dirty_run["tables"][lake.QUARANTINE_EVENTS]
    expected = sorted((reason, raw.decode("utf-8", errors="replace")) for reason, raw in BAD)
    assert sorted((r["reason"], r["raw_line"]) for r in quarantined) == expected
    assert all(r["detail"] for r in quarantined)
    assert {Path(r["source_file"]).name for r in quarantined} == {"part-0.jsonl", "part-1.jsonl.gz"}


def test_good_rows_come_through_unchanged_and_pseudonymised(dirty_run: dict[str, Any]) -> None:
    expected_clean = [
        {
            "event_id": r["event_id"],
            "event_time": dt.datetime.fromisoformat(r["event_time"]).astimezone(dt.UTC),
            "user_id": pseudonym(r["user_id"], KEY),
            "session_id": r["session_id"],
            "event_type": r["event_type"],
            "item_id": r["item_id"],
            "price": r["price"],
        }
        for r in GOOD
    ]
    clean_rows = dirty_run["tables"][lake.CLEAN_EVENTS]
    assert sorted(clean_rows, key=lambda r: r["event_id"]) == sorted(
        expected_clean, key=lambda r: r["event_id"]
    )
    items = {r["item_id"]: r for r in dirty_run["tables"][lake.CLEAN_ITEMS]}
    assert set(items) == {"i1", "i2", "i3"} and items["i3"]["available"] is False
    assert items["i1"]["publish_time"] == dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    users = sorted(dirty_run["tables"][lake.CLEAN_USERS], key=lambda r: r["region"])
    assert users == [
        {"user_id": pseudonym("u1", KEY), "age_bucket": "25-34", "region": "north"},
        {"user_id": pseudonym("u2", KEY), "age_bucket": "65+", "region": "south"},
    ]


def test_counts_reconcile_in_manifest_and_runs_table(dirty_run: dict[str, Any]) -> None:
    written = dirty_run["manifest"]
    counts = written["counts"]
    assert counts["raw_events"] == len(GOOD) + len(BAD)
    assert counts["clean_events"] == len(GOOD)
    assert counts["duplicates_dropped"] == 0
    by_reason = {reason: sum(1 for r, _ in BAD if r == reason) for reason in QUARANTINE_REASONS}
    assert counts["quarantined_by_reason"] == by_reason
    assert (
        counts["raw_events"]
        == counts["clean_events"] + sum(by_reason.values()) + counts["duplicates_dropped"]
    )
    assert (counts["raw_items"], counts["clean_items"], counts["raw_users"], counts["clean_users"]) == (
        3,
        3,
        2,
        2,
    )
    assert written["schema_drift"]["extra_keys"] == {"campaign": 1}
    assert manifests.read_manifest(dirty_run["root"], "clean", D) == json.loads(
        json.dumps(written, default=str)
    )
    runs = manifests.read_runs(dirty_run["root"]).to_pylist()
    assert [(r["stage"], str(r["dt"]), r["run_id"]) for r in runs] == [("clean", D, written["run_id"])]
    assert json.loads(runs[0]["counts_json"]) == counts


def test_rerun_gives_identical_tables_and_replaces_the_day(spark: Any, dirty_run: dict[str, Any]) -> None:
    from jobs import clean

    root = dirty_run["root"]
    second = clean.run(spark, settings_for(root))[D]
    assert {name: read(root, name) for name in TABLES} == dirty_run["tables"]
    assert second["counts"] == dirty_run["manifest"]["counts"]
    assert second["run_id"] != dirty_run["manifest"]["run_id"]
    assert staged_lines(root) == []  # each run removes its staged parsed lines
    assert staged_outputs(root) == []  # and its staged tables
    assert [r["run_id"] for r in manifests.read_runs(root).to_pylist()] == [second["run_id"]]

    # the producer re-delivers the day without its bad rows: the old quarantine rows must go, not linger
    folder = Path(lake.raw_events(root, D))
    for path in folder.iterdir():
        path.unlink()
    (folder / "fixed.jsonl").write_bytes(b"\n".join(line(r) for r in GOOD[:2]) + b"\n")
    clean.run(spark, settings_for(root))
    assert read(root, lake.QUARANTINE_EVENTS) == []
    assert sorted(r["event_id"] for r in read(root, lake.CLEAN_EVENTS)) == ["g1", "g2"]


def test_truncated_gzip_fails_naming_the_file_and_writes_nothing(spark: Any, tmp_lake: str) -> None:
    from jobs import clean

    folder = write_raw(tmp_lake, D, [line(GOOD[0])])
    payload = gzip.compress(b"\n".join(line(event(f"z{i}")) for i in range(5000)))
    (folder / "broken.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(clean.CorruptInputFile, match=r"broken\.jsonl\.gz.*truncated or corrupt"):
        clean.run(spark, settings_for(tmp_lake))
    assert not Path(lake.partition(tmp_lake, lake.CLEAN_EVENTS, D)).exists()
    assert not Path(lake.run_manifest(tmp_lake, "clean", D)).exists()
    assert staged_lines(tmp_lake) == []


def test_empty_partition_gives_an_empty_valid_run(spark: Any, tmp_lake: str) -> None:
    from jobs import clean

    folder = write_raw(tmp_lake, D, [])
    (folder / "empty.jsonl").write_bytes(b"")
    written = clean.run(spark, settings_for(tmp_lake))[D]
    assert written["counts"]["raw_events"] == 0 and written["counts"]["clean_events"] == 0
    assert written["counts"]["quarantined_events"] == 0
    assert "empty but valid run" in " ".join(written["notes"])
    events = pads.dataset(lake.partition(tmp_lake, lake.CLEAN_EVENTS, D), format="parquet").to_table()
    assert events.num_rows == 0 and "event_time" in events.schema.names
    assert read(tmp_lake, lake.QUARANTINE_EVENTS) == []


def test_missing_partition_names_the_path(spark: Any, tmp_lake: str) -> None:
    from jobs import clean

    with pytest.raises(clean.MissingPartition, match=r"raw/events/dt=2026-01-14"):
        clean.run(spark, settings_for(tmp_lake))
    write_raw(tmp_lake, D, [line(GOOD[0])])
    for path in Path(lake.raw_items(tmp_lake, D)).iterdir():
        path.unlink()
    Path(lake.raw_items(tmp_lake, D)).rmdir()
    with pytest.raises(clean.MissingPartition, match=r"raw/items/dt=2026-01-14"):
        clean.run(spark, settings_for(tmp_lake))


def test_main_exits_2_at_once_naming_the_missing_raw_day(
    spark: Any, tmp_lake: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing input is not transient: the job's exit status says so (2), with the path, and writes nothing."""
    from jobs import clean

    monkeypatch.setenv(
        "RECFLOW_SHUFFLE_PARTITIONS", "1"
    )  # main's session is the tests' one: keep its settings
    with pytest.raises(SystemExit) as exited:
        clean.main(settings_for(tmp_lake).to_cli())
    assert exited.value.code == 2
    assert "raw/events/dt=2026-01-14 does not exist" in str(exited.value)
    assert "raw/events/dt=2026-01-14 does not exist" in capsys.readouterr().err
    assert not Path(lake.table(tmp_lake, lake.CLEAN_EVENTS)).exists()


@pytest.mark.parametrize("blocked", [lake.CLEAN_EVENTS, f"{lake.STAGING}/clean_outputs"])
def test_a_failed_write_changes_no_published_table(
    spark: Any, tmp_lake: str, blocked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage's tables for a date change together or not at all. The failure: a regular file where a folder must
    be (one table's folder, or the staging area), which fails a write even for root, who ignores permissions."""
    from jobs import clean

    write_raw(tmp_lake, D, [line(r) for r in GOOD] + [raw for _, raw in BAD[:5]])
    clean.run(spark, settings_for(tmp_lake))
    before = {name: tree_bytes(lake.partition(tmp_lake, name, D)) for name in TABLES}
    manifest = Path(lake.run_manifest(tmp_lake, "clean", D)).read_bytes()
    # the producer re-delivers the day, different in every table: a successful rerun would change them all
    redelivered = [
        line(event("new1", "u1", item="i2", price=20.5)),
        *[raw for _, raw in BAD[5:7] + BAD[8:10]],
    ]
    write_raw(tmp_lake, D, redelivered, items=ITEMS[1:], users=USERS[:1])
    in_the_way = Path(lake.table(tmp_lake, blocked))
    if in_the_way.exists():
        shutil.rmtree(in_the_way)
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("a file where a folder must be")

    monkeypatch.setenv(
        "RECFLOW_SHUFFLE_PARTITIONS", "1"
    )  # main's session is the tests' one: keep its settings
    with pytest.raises(Exception, match="clean"):
        clean.main(settings_for(tmp_lake).to_cli())  # not a SystemExit: the process exits 1
    assert {name: tree_bytes(lake.partition(tmp_lake, name, D)) for name in TABLES if name != blocked} == {
        name: files for name, files in before.items() if name != blocked
    }
    assert Path(lake.run_manifest(tmp_lake, "clean", D)).read_bytes() == manifest
    assert staged_lines(tmp_lake) == [] and staged_outputs(tmp_lake) == []

    in_the_way.unlink()  # the obstacle removed, a rerun replaces every table
    clean.run(spark, settings_for(tmp_lake))
    assert [r["event_id"] for r in read(tmp_lake, lake.CLEAN_EVENTS)] == ["new1"]
    assert sorted(r["item_id"] for r in read(tmp_lake, lake.CLEAN_ITEMS)) == ["i2", "i3"]
    assert staged_outputs(tmp_lake) == []


def test_replace_partitions_moves_back_what_it_moved_when_a_later_move_fails(
    spark: Any, tmp_path: Path
) -> None:
    """The second of two moves fails (its replaced folder cannot be put aside: a file is in the way) after the
    first went through: the first is undone, so both destinations are as before and the staged copies are back."""
    from storage.spark import replace_partitions

    def folder(path: Path, text: str) -> str:
        path.mkdir(parents=True)
        (path / "part-0.parquet").write_text(text)
        return str(path)

    new_a, new_b = folder(tmp_path / "staged/a/dt=1", "new a"), folder(tmp_path / "staged/b/dt=1", "new b")
    old_b = folder(tmp_path / "lake/b/dt=1", "old b")
    (tmp_path / "staged/aside").write_text("a file where a folder must be")
    moves = [(new_a, str(tmp_path / "lake/a/dt=1")), (new_b, old_b)]
    with pytest.raises(OSError):
        replace_partitions(spark, moves, aside=str(tmp_path / "staged/aside"))
    assert not (tmp_path / "lake/a/dt=1").exists()
    assert (Path(old_b) / "part-0.parquet").read_text() == "old b"
    assert (Path(new_a) / "part-0.parquet").read_text() == "new a"
    assert (Path(new_b) / "part-0.parquet").read_text() == "new b"

    (tmp_path / "staged/aside").unlink()
    replace_partitions(spark, moves, aside=str(tmp_path / "staged/aside"))
    assert (tmp_path / "lake/a/dt=1/part-0.parquet").read_text() == "new a"
    assert (Path(old_b) / "part-0.parquet").read_text() == "new b"
    assert not Path(new_a).exists() and not Path(new_b).exists()
    assert (tmp_path / "staged/aside/1/part-0.parquet").read_text() == "old b"  # for the caller to delete


def test_first_run_backfills_window_days_without_a_manifest(spark: Any, tmp_lake: str) -> None:
    from jobs import clean

    d1, d2 = "2026-01-13", "2026-01-12"
    write_raw(tmp_lake, D, [line(GOOD[0])])
    write_raw(tmp_lake, d1, [line(event("old1", time=f"{d1}T10:00:00Z"))])
    settings = settings_for(tmp_lake, window_days=3)  # window: 01-11 (no raw), 01-12 (no raw), 01-13
    write_raw(tmp_lake, d2, [line(event("old2", time=f"{d2}T10:00:00Z"))])
    manifests.write_manifest(tmp_lake, "clean", d2, {"stage": "clean", "dt": d2})  # already cleaned earlier

    written = clean.run(spark, settings)
    assert sorted(written) == [d1, D]
    assert written[D]["window"] == {
        "backfilled": [d1],
        "skipped_no_raw": ["2026-01-11"],
        "already_clean": [d2],
    }
    assert [r["event_id"] for r in read(tmp_lake, lake.CLEAN_EVENTS, d1)] == ["old1"]
    assert not Path(lake.partition(tmp_lake, lake.CLEAN_EVENTS, d2)).exists()
    assert sorted(clean.run(spark, settings)) == [D]  # d1 now has its manifest; D is always recomputed


def test_key_comes_from_the_environment_and_its_absence_stops_the_run(
    spark: Any, tmp_lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import clean

    settings = settings_for(tmp_lake, pseudonym_key_env="RECFLOW_TEST_OTHER_KEY")
    assert resolve_key(settings, env={"RECFLOW_TEST_OTHER_KEY": "k2"}) == b"k2"
    write_raw(tmp_lake, D, [line(GOOD[0])])
    monkeypatch.delenv("RECFLOW_TEST_OTHER_KEY", raising=False)
    with pytest.raises(PseudonymKeyMissing, match="RECFLOW_TEST_OTHER_KEY"):
        clean.run(spark, settings)
    monkeypatch.setenv("RECFLOW_TEST_OTHER_KEY", "another-key")
    clean.run(spark, settings)
    assert read(tmp_lake, lake.CLEAN_EVENTS)[0]["user_id"] == pseudonym("u1", b"another-key")
    assert pseudonym("u1", b"another-key") != pseudonym("u1", KEY)


def test_reconcile_names_the_numbers() -> None:
    manifests.reconcile("ok", 5, {"clean": 3, "quarantined": 2})
    with pytest.raises(manifests.ReconciliationError, match=r"10 rows in but clean 7 \+ quarantined 2 = 9"):
        manifests.reconcile("clean 2026-01-14 events", 10, {"clean": 7, "quarantined": 2})


def test_generated_corruptions_are_quarantined_with_their_reasons(spark: Any, tmp_lake: str) -> None:
    """The generator's own bad rows (one recipe per reason, gzip file) reconcile kind by kind."""
    from demo import generate
    from jobs import clean

    settings = Settings.load(
        {
            "lake_root": tmp_lake,
            "run_date": D,
            "days": 1,
            "window_days": 1,
            "users": 150,
            "items": 80,
            "events_per_day": 1_500,
            "seed": 5,
            "corrupt_share": 0.05,
            "compress": True,
        }
    )
    summary = generate.generate(settings)
    counts = clean.run(spark, settings)[D]
    injected = summary["corruptions"]
    assert all(injected[reason] > 0 for reason in QUARANTINE_REASONS)
    assert counts["counts"]["quarantined_by_reason"] == {
        reason: injected[reason] for reason in QUARANTINE_REASONS
    }
    assert counts["counts"]["clean_events"] == summary["events"] + injected["extra_column"]
    assert counts["schema_drift"]["extra_keys"] == {"experiment": injected["extra_column"]}


def test_lines_read_again_are_checked_against_their_hash(spark: Any) -> None:
    from pyspark.sql import functions as F

    from jobs import clean

    raw = spark.createDataFrame(
        [(D, "f.jsonl", '{"a": 1}'), (D, "f.jsonl", '{"b": 2}')],
        "dt string, source_file string, value string",
    ).coalesce(1)
    ids = clean.row_ids(raw).select("_row", F.xxhash64("value").alias("_line_hash")).collect()
    row, line_hash = ids[1]["_row"], ids[1]["_line_hash"]
    wanted = spark.createDataFrame([(row, line_hash)], "_row long, _line_hash long")
    assert [(r["_row"], r["_line"]) for r in clean.recover_lines(raw, wanted).collect()] == [
        (row, '{"b": 2}')
    ]

    changed = spark.createDataFrame([(row, line_hash + 1)], "_row long, _line_hash long")
    with pytest.raises(Exception, match=r"raw file changed during the clean run: f\.jsonl"):
        clean.recover_lines(raw, changed).collect()

    quarantined = spark.createDataFrame(
        [(D, "bot_user", "d", "f.jsonl", None, row + 1, 0)],
        "dt string, reason string, detail string, source_file string, "
        "value string, _row long, _line_hash long",
    )
    with pytest.raises(Exception, match=r"a line of f\.jsonl is gone"):
        clean.quarantine_events(quarantined, clean.recover_lines(raw, wanted)).collect()
