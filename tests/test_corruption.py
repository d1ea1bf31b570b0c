"""The cleaning job against a hand-written raw day holding every kind of bad line we know of.

Every raw line must end up in exactly one place: ``clean/events``, or ``quarantine/events`` with the reason it is
expected to get (found there by its ``raw_line``), and the manifest's counts must add up per reason.

Decisions this test pins down (see also ``jobs/clean.py``):

* a JSON-lines line is exactly one JSON object, surrounding whitespace allowed: two objects, trailing characters,
  a bare array/string/number/null, a BOM, comments, single quotes, unquoted ``NaN``, a raw control character
  inside a string (JSON requires ``\\u`` escapes) are all ``malformed_json``;
* an empty or whitespace-only line is a raw line like any other: counted in ``raw_events`` and quarantined as
  ``malformed_json`` (detail ``empty line``), never skipped;
* a number in an id field is accepted as its text (``12345`` -> ``"12345"``), an object or array is
  ``wrong_type``; a placeholder id (``"null"``, ``"undefined"``, ``"None"``, or a boolean, which read as text
  cannot be told from ``"true"``) counts as absent (``null_user``, ``missing_field``), and a boolean event type
  is an ``unknown_event_type``;
* the field-length limit holds for the whole line: every value, declared or not (an unknown key's value measured
  as its JSON text), every key, and the line's length as a whole (``clean.max_line_bytes``);
* ``price`` as a numeric string is accepted; ``"NaN"``/``"Infinity"`` as strings are ``invalid_price``;
* an ``event_time`` without an offset is read as UTC.
"""

from __future__ import annotations

import collections
import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from schemas import lake
from schemas.clean import QUARANTINE_REASONS
from schemas.settings import Settings

pytestmark = pytest.mark.spark

D = "2026-01-14"
MAX_CHARS = 200
ITEMS = [
    {"item_id": f"i{n}", "category": "c", "price": 10.0 * n, "title": f"item {n}", "available": True}
    for n in (1, 2, 3)
]
USERS = [{"user_id": "u1", "age": 30, "region": "north"}, {"user_id": "u2", "age": 40, "region": "south"}]


_minutes = itertools.count()


def ev(event_id: Any, **changes: Any) -> dict[str, Any]:
    """A good event, each in a minute of its own (no user looks like a bot by accident); ``changes`` set fields
    (``None`` values stay, as JSON null)."""
    minute = next(_minutes)
    row: dict[str, Any] = {
        "event_id": event_id,
        "event_time": f"{D}T{minute // 60:02d}:{minute % 60:02d}:00.000Z",
        "user_id": "u1",
        "session_id": "s-u1",
        "event_type": "view",
        "item_id": "i1",
        "price": 10.0,
        "ip": "198.51.100.23",
        "user_agent": "Mozilla/5.0 (TestAgent)",
    }
    row.update(changes)
    return row


def without(event_id: str, *names: str) -> dict[str, Any]:
    return {k: v for k, v in ev(event_id).items() if k not in names}


def js(row: dict[str, Any], **dumps: Any) -> bytes:
    return json.dumps(row, **dumps).encode()


def with_field(event_id: str, name: str, raw_value: bytes) -> bytes:
    """A good event whose ``name`` holds ``raw_value`` as written (a JSON token or something that is not one)."""
    text = js(ev(event_id, **{name: "@@VALUE@@"}))
    return text.replace(b'"@@VALUE@@"', raw_value)


GOOD_A, GOOD_B = js(ev("good-a")), js(ev("good-b", user_id="u2", event_type="purchase", item_id="i2"))

# (kind, expected reason, raw line): one entry per kind of bad line
BAD: list[tuple[str, str, bytes]] = [
    # not one JSON object
    ("truncated object", "malformed_json", js(ev("m1"))[:40]),
    ("two objects", "malformed_json", js(ev("m2a")) + js(ev("m2b"))),
    ("two objects with a space", "malformed_json", js(ev("m3a")) + b" " + js(ev("m3b"))),
    ("object, comma, object", "malformed_json", js(ev("m4a")) + b"," + js(ev("m4b"))),
    ("trailing garbage", "malformed_json", js(ev("m5")) + b" garbage"),
    ("trailing close bracket", "malformed_json", js(ev("m6")) + b"]"),
    ("trailing close brace", "malformed_json", js(ev("m7")) + b"}"),
    ("trailing comment", "malformed_json", js(ev("m8")) + b" // note"),
    ("trailing NUL byte", "malformed_json", js(ev("m9")) + b"\x00"),
    ("leading garbage", "malformed_json", b"x" + js(ev("m10"))),
    ("byte order mark", "malformed_json", "\ufeff".encode() + js(ev("m11"))),
    ("bare array", "malformed_json", b"[" + js(ev("m12")) + b"]"),
    ("bare string", "malformed_json", b'"just a string"'),
    ("bare number", "malformed_json", b"42"),
    ("bare null", "malformed_json", b"null"),
    ("bare true", "malformed_json", b"true"),
    ("empty line", "malformed_json", b""),
    ("whitespace-only line", "malformed_json", b"   \t "),
    ("trailing comma inside", "malformed_json", js(ev("m13"))[:-1] + b", }"),
    ("single quotes", "malformed_json", js(ev("m14")).replace(b'"', b"'")),
    ("unquoted key", "malformed_json", js(ev("m15")).replace(b'"event_id"', b"event_id")),
    ("unquoted NaN price", "malformed_json", with_field("m16", "price", b"NaN")),
    ("unquoted Infinity price", "malformed_json", with_field("m17", "price", b"Infinity")),
    ("leading zero number", "malformed_json", with_field("m18", "price", b"012")),
    ("NUL inside a string", "malformed_json", with_field("m19", "user_agent", b'"Mozilla\x00/5.0"')),
    ("0x01 inside a string", "malformed_json", with_field("m20", "user_agent", b'"Mozilla\x01/5.0"')),
    ("raw tab inside a string", "malformed_json", with_field("m21", "session_id", b'"s-\tu1"')),
    ("control char in user_id", "malformed_json", with_field("m22", "user_id", b'"u\x1f1"')),
    # bytes
    (
        "invalid UTF-8 bytes",
        "invalid_utf8",
        with_field("v1", "user_agent", b'"Mozilla\xff\xfe"'),
    ),
    ("truncated UTF-8 sequence", "invalid_utf8", with_field("v2", "user_agent", b'"caf\xc3"')),
    ("invalid UTF-8 in a broken line", "invalid_utf8", b'{"event_id": "v3", "user_id": "\xc0\xaf'),
    # length
    ("oversized declared field", "oversized_field", js(ev("o1", session_id="x" * (MAX_CHARS + 300)))),
    ("oversized PII field", "oversized_field", js(ev("o2", user_agent="A" * (MAX_CHARS + 1)))),
    ("oversized unknown key (1 MB)", "oversized_field", js(ev("o3", blob="x" * 1_000_000))),
    ("unknown key just over the limit", "oversized_field", js(ev("o4", note="y" * (MAX_CHARS + 1)))),
    ("oversized unknown key name", "oversized_field", js({**ev("o5"), "k" * (MAX_CHARS + 50): 1})),
    (
        "oversized nested unknown value",
        "oversized_field",
        js(ev("o6", ctx={"a": "z" * (MAX_CHARS // 2 + 10), "b": "z" * (MAX_CHARS // 2 + 10)})),
    ),
    (
        "many small unknown keys (line too long)",
        "oversized_field",
        js({**ev("o7"), **{f"k{n:04d}": "v" for n in range(2_000)}}),
    ),
    # user
    ("user_id absent", "null_user", js(without("n1", "user_id"))),
    ("user_id null", "null_user", js(ev("n2", user_id=None))),
    ("user_id blank", "null_user", js(ev("n3", user_id="  "))),
    ("user_id placeholder 'undefined'", "null_user", js(ev("n4", user_id="undefined"))),
    ("user_id placeholder 'null'", "null_user", js(ev("n5", user_id="null"))),
    ("empty object", "null_user", b"{}"),
    # other required fields
    ("event_id absent", "missing_field", js(without("f1", "event_id"))),
    ("event_time absent", "missing_field", js(without("f2", "event_time"))),
    ("event_type absent", "missing_field", js(without("f3", "event_type"))),
    ("item_id absent", "missing_field", js(without("f4", "item_id"))),
    ("event_id blank", "missing_field", js(ev(""))),
    ("item_id null", "missing_field", js(ev("f5", item_id=None))),
    ("item_id placeholder 'None'", "missing_field", js(ev("f6", item_id="None"))),
    ("event_id placeholder 'null'", "missing_field", js(ev("null"))),
    # types
    ("price a word", "wrong_type", js(ev("t1", price="cheap"))),
    ("price a bool", "wrong_type", js(ev("t2", price=True))),
    ("price an object", "wrong_type", js(ev("t3", price={"amount": 1}))),
    ("user_id an object", "wrong_type", js(ev("t4", user_id={"id": "u1"}))),
    ("item_id an array", "wrong_type", js(ev("t5", item_id=["i1"]))),
    ("event_id an object", "wrong_type", js(ev({"id": 1}))),
    ("event_type a bool", "unknown_event_type", js(ev("t6", event_type=True))),
    ("user_id a bool", "null_user", js(ev("t7", user_id=False))),
    ("item_id a bool", "missing_field", js(ev("t13", item_id=True))),
    ("session_id an array", "wrong_type", js(ev("t8", session_id=["s"]))),
    ("event_time a word", "wrong_type", js(ev("t9", event_time="yesterday"))),
    ("event_time a number", "wrong_type", js(ev("t10", event_time=1768384800))),
    ("event_time a date only", "wrong_type", js(ev("t11", event_time=D))),
    ("event_time impossible clock", "wrong_type", js(ev("t12", event_time=f"{D}T25:61:00Z"))),
    # values
    ("unknown event type", "unknown_event_type", js(ev("e1", event_type="hover"))),
    ("event type in capitals", "unknown_event_type", js(ev("e2", event_type="VIEW"))),
    ("event type a number", "unknown_event_type", js(ev("e3", event_type=1))),
    ("negative price", "invalid_price", js(ev("p1", price=-3))),
    ("huge price", "invalid_price", js(ev("p2", price=1e9))),
    ("price overflowing a double", "invalid_price", with_field("p3", "price", b"1e400")),
    ("price 'NaN' as a string", "invalid_price", js(ev("p4", price="NaN"))),
    ("price 'Infinity' as a string", "invalid_price", js(ev("p5", price="Infinity"))),
    # time
    ("time on the day before", "timestamp_out_of_day", js(ev("d1", event_time="2026-01-13T23:59:59Z"))),
    ("time on the day after", "timestamp_out_of_day", js(ev("d2", event_time="2026-01-15T00:00:00Z"))),
    ("time far in the future", "timestamp_out_of_day", js(ev("d3", event_time="2999-01-14T10:00:00Z"))),
    (
        "offset moves it to the next day",
        "timestamp_out_of_day",
        js(ev("d4", event_time=f"{D}T23:30:00-02:00")),
    ),
    # rows that only look bad next to others
    ("exact copy of a good line", "duplicate_event_id", GOOD_A),
    ("same event id, later time", "duplicate_event_id", js(ev("good-b", event_time=f"{D}T11:00:00Z"))),
    ("unknown item", "unknown_item", js(ev("k1", item_id="i999"))),
    *[
        ("bot burst", "bot_user", js(ev(f"bot{n}", user_id="bot-user", event_time=f"{D}T13:00:{n:02d}Z")))
        for n in range(6)
    ],
]

# (kind, event_id it must have in clean/events, raw line): tolerated oddities
TOLERATED: list[tuple[str, str, bytes]] = [
    ("plain good line", "good-a", GOOD_A),
    ("another good line", "good-b", GOOD_B),
    ("extra column", "ok1", js(ev("ok1", campaign="winter"))),
    ("nested extra column", "ok2", js(ev("ok2", ctx={"a": {"b": [1, 2]}}))),
    ("numeric event_id", "12345", js({**ev("x"), "event_id": 12345})),
    ("price as a numeric string", "ok3", js(ev("ok3", price="12.5"))),
    ("price absent", "ok4", js(without("ok4", "price"))),
    ("price null", "ok5", js(ev("ok5", price=None))),
    ("price zero", "ok6", js(ev("ok6", price=0))),
    ("session_id absent", "ok7", js(without("ok7", "session_id"))),
    ("keys in another order", "ok8", js(dict(reversed(list(ev("ok8").items()))))),
    ("compact separators", "ok9", js(ev("ok9"), separators=(",", ":"))),
    ("surrounding whitespace", "ok10", b"  \t" + js(ev("ok10")) + b"  "),
    ("non-ASCII text", "ok11", js(ev("ok11", user_agent="Möbius 日本語 🚀"), ensure_ascii=False)),
    ("escaped control character", "ok12", js(ev("ok12", user_agent="tab\there\u0001"))),
    ("braces inside a string", "ok13", js(ev("ok13", user_agent="a}b{c}"))),
    ("offset, same UTC day", "ok14", js(ev("ok14", event_time=f"{D}T08:30:00+01:00"))),
    ("no offset: UTC", "ok15", js(ev("ok15", event_time=f"{D}T10:00:00"))),
    ("field exactly at the limit", "ok16", js(ev("ok16", session_id="s" * MAX_CHARS))),
    ("unknown key at the limit", "ok17", js(ev("ok17", note="n" * MAX_CHARS))),
]


def settings_for(root: str) -> Settings:
    return Settings.load(
        {
            "lake_root": root,
            "run_date": D,
            "window_days": 1,
            "bot_events_per_minute": 5,
            "max_field_chars": MAX_CHARS,
        }
    )


def write_day(root: str) -> list[bytes]:
    """The raw day: tolerated and bad lines interleaved, the first half plain, the rest gzip; returns the lines."""
    lines = [raw for _, _, raw in TOLERATED]
    for n, (_, _, raw) in enumerate(BAD):
        lines.insert(min(len(lines), 2 + 2 * n), raw)  # after both good lines: the copies come later
    assert not any(b"\n" in raw or b"\r" in raw for raw in lines)  # one raw line each, as Spark splits them
    folder = Path(lake.raw_events(root, D))
    folder.mkdir(parents=True)
    half = len(lines) // 2
    (folder / "part-0.jsonl").write_bytes(b"\n".join(lines[:half]) + b"\n")
    (folder / "part-1.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines[half:]) + b"\n"))
    for path, rows in ((lake.raw_items(root, D), ITEMS), (lake.raw_users(root, D), USERS)):
        Path(path).mkdir(parents=True)
        (Path(path) / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lines


def read(root: str, name: str) -> list[dict[str, Any]]:
    return pads.dataset(lake.partition(root, name, D), format="parquet").to_table().to_pylist()


def as_stored(raw: bytes) -> str:
    """The quarantine's ``raw_line`` of a raw line: verbatim, invalid UTF-8 with U+FFFD replacements."""
    return raw.decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def corrupted(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from jobs import clean

    root = str(tmp_path_factory.mktemp("corruption") / "lake")
    lines = write_day(root)
    manifest = clean.run(spark, settings_for(root))[D]
    return {
        "lines": lines,
        "manifest": manifest,
        "clean": read(root, lake.CLEAN_EVENTS),
        "quarantine": read(root, lake.QUARANTINE_EVENTS),
    }


def test_every_bad_line_is_quarantined_with_its_reason(corrupted: dict[str, Any]) -> None:
    assert len({kind for kind, _, _ in BAD}) >= 40
    assert {reason for _, reason, _ in BAD} == set(QUARANTINE_REASONS)  # every reason is exercised
    reasons_by_line: dict[str, list[str]] = collections.defaultdict(list)
    for row in corrupted["quarantine"]:
        reasons_by_line[row["raw_line"]].append(row["reason"])
    wrong = []
    for kind, reason, raw in BAD:
        found = reasons_by_line.get(as_stored(raw), [])
        if reason not in found:
            wrong.append((kind, reason, found, raw[:120]))
        else:
            found.remove(reason)
    assert wrong == []
    assert {line: left for line, left in reasons_by_line.items() if left} == {}  # nothing else quarantined
    assert all(row["detail"] for row in corrupted["quarantine"])


def test_good_and_tolerated_lines_are_clean(corrupted: dict[str, Any]) -> None:
    expected = sorted(event_id for _, event_id, _ in TOLERATED)
    assert sorted(row["event_id"] for row in corrupted["clean"]) == expected
    drift = corrupted["manifest"]["schema_drift"]["extra_keys"]
    assert drift["campaign"] == 1 and drift["ctx"] >= 1  # tolerated, and reported


def test_counts_reconcile_per_reason(corrupted: dict[str, Any]) -> None:
    counts = corrupted["manifest"]["counts"]
    assert corrupted["manifest"]["reconciliation"]["ok"] is True
    assert counts["raw_events"] == len(corrupted["lines"]) == len(BAD) + len(TOLERATED)
    expected = collections.Counter(reason for _, reason, _ in BAD)
    assert counts["quarantined_by_reason"] == {reason: expected[reason] for reason in QUARANTINE_REASONS}
    assert counts["clean_events"] == len(TOLERATED)
    assert counts["raw_events"] == (
        counts["clean_events"] + sum(counts["quarantined_by_reason"].values()) + counts["duplicates_dropped"]
    )


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("two objects", "after the first JSON value"),
        ("trailing garbage", "after the first JSON value"),
        ("NUL inside a string", "control character"),
        ("0x01 inside a string", "control character"),
        ("oversized unknown key (1 MB)", "blob"),
        ("many small unknown keys (line too long)", "bytes"),
        ("user_id a bool", "placeholder"),
    ],
)
def test_details_name_the_fault(corrupted: dict[str, Any], kind: str, words: str) -> None:
    raw = next(raw for name, _, raw in BAD if name == kind)
    details = [row["detail"] for row in corrupted["quarantine"] if row["raw_line"] == as_stored(raw)]
    assert len(details) == 1 and words in details[0], details
