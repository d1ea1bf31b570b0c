"""The synthetic log generator: determinism, layout and schema, behavioural structure, corruptions."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pytest

from demo import generate as gen
from schemas import lake
from schemas.clean import QUARANTINE_REASONS
from schemas.raw import (
    EVENT_TYPES,
    RAW_EVENT,
    RAW_ITEM,
    RAW_USER,
    REQUIRED_EVENT_FIELDS,
    SCENARIO_EVENT_TYPES,
)
from schemas.settings import Settings

RUN_DATE = dt.date(2026, 1, 14)


def small(root: str, scenario: str = "ecommerce", **overrides: object) -> Settings:
    values = {
        "lake_root": root,
        "scenario": scenario,
        "run_date": RUN_DATE,
        "days": 2,
        "users": 200,
        "items": 100,
        "events_per_day": 2_000,
        "seed": 7,
        **overrides,
    }
    return Settings.load(values, env={})


def files_of(root: str) -> dict[str, bytes]:
    base = Path(root)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def read_events(root: str, day: dt.date | str) -> pd.DataFrame:
    path = Path(lake.raw_events(root, day)) / "part-00000.jsonl"
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module", params=["ecommerce", "news"])
def generated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, dict]:
    root = str(tmp_path_factory.mktemp(f"lake-{request.param}"))
    settings = small(root, request.param, days=3, users=400, items=150, events_per_day=4_000)
    return settings, gen.generate(settings)


# ---- determinism and layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["ecommerce", "news"])
def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path, scenario: str) -> None:
    first, second, other = (str(tmp_path / name) for name in ("a", "b", "c"))
    gen.generate(small(first, scenario))
    gen.generate(small(second, scenario))
    gen.generate(small(other, scenario, seed=8))
    assert files_of(first) == files_of(second)
    assert len(files_of(first)) == 6  # events, items, users for 2 days
    events = f"raw/events/dt={RUN_DATE}/part-00000.jsonl"
    assert files_of(first)[events] != files_of(other)[events]


def test_a_day_does_not_depend_on_the_requested_range_and_rerun_replaces_only_it(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    gen.generate(small(root, days=3))
    before = files_of(root)
    summary = gen.generate(small(root, days=1, compress=True))  # rerun only the last day, gzipped this time
    after = files_of(root)
    assert summary["dates"] == [RUN_DATE.isoformat()]
    day = f"dt={RUN_DATE}"
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert changed == {f"raw/events/{day}/part-00000.jsonl", f"raw/events/{day}/part-00000.jsonl.gz"}
    assert (
        gzip.decompress(after[f"raw/events/{day}/part-00000.jsonl.gz"])
        == before[f"raw/events/{day}/part-00000.jsonl"]
    )
    assert not [p for p in Path(root).rglob(".*")]  # no temporary folders left behind


def test_summary_counts_match_written_lines(generated: tuple[Settings, dict]) -> None:
    settings, summary = generated
    assert summary["dates"] == [(RUN_DATE - dt.timedelta(days=i)).isoformat() for i in (2, 1, 0)]
    for day, count in summary["events_per_day"].items():
        lines = (Path(lake.raw_events(settings.lake_root, day)) / "part-00000.jsonl").read_text().splitlines()
        assert len(lines) == count
        # whole sessions are kept until the budget is used, so a day is a little under events_per_day
        assert 0.9 * settings.events_per_day <= count <= settings.events_per_day
    assert summary["events"] == sum(summary["events_per_day"].values())


# ---- schema ---------------------------------------------------------------------------------------------------------
def test_rows_follow_the_raw_schemas(generated: tuple[Settings, dict]) -> None:
    settings, summary = generated
    for day in summary["dates"]:
        events_file = Path(lake.raw_events(settings.lake_root, day)) / "part-00000.jsonl"
        # the declared schema parses every line, with nothing left over
        table = pa_json.read_json(
            events_file,
            parse_options=pa_json.ParseOptions(explicit_schema=RAW_EVENT, unexpected_field_behavior="error"),
        )
        assert table.num_rows == summary["events_per_day"][day]
        for name in REQUIRED_EVENT_FIELDS:
            assert table.column(name).null_count == 0, name
        assert len(set(table.column("event_id").to_pylist())) == table.num_rows
        types = set(table.column("event_type").to_pylist())
        assert types == set(SCENARIO_EVENT_TYPES[settings.scenario])
        times = pd.to_datetime(
            pd.Series(table.column("event_time").to_pylist()), format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True
        )
        assert (times.dt.strftime("%Y-%m-%d") == day).all()
        assert all(t.endswith("Z") for t in table.column("event_time").to_pylist())
        prices = table.column("price")
        if settings.scenario == "ecommerce":
            assert prices.null_count == 0 and pc.min(prices).as_py() > 0
        else:
            assert prices.null_count == table.num_rows
        for name, schema in (("items", RAW_ITEM), ("users", RAW_USER)):
            path = Path(lake.partition(settings.lake_root, f"raw/{name}", day)) / f"{name}.jsonl"
            parsed = pa_json.read_json(
                path,
                parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"),
            )
            assert parsed.num_rows > 0
        items = read_lines(Path(lake.raw_items(settings.lake_root, day)) / "items.jsonl")
        users = read_lines(Path(lake.raw_users(settings.lake_root, day)) / "users.jsonl")
        known_items = {i["item_id"] for i in items if i["available"]}
        assert set(table.column("item_id").to_pylist()) <= known_items  # events only touch available items
        assert set(table.column("user_id").to_pylist()) <= {u["user_id"] for u in users}
        assert all(u["email"] and u["phone"] and u["name"] and u["ip"] and u["address"] for u in users)
        if settings.scenario == "news":
            assert all(i["source"] for i in items) and all(len(i["title"].split()) >= 4 for i in items)


def test_events_carry_the_users_ip_and_user_agent(generated: tuple[Settings, dict]) -> None:
    settings, summary = generated
    users = {
        u["user_id"]: u
        for u in read_lines(Path(lake.raw_users(settings.lake_root, RUN_DATE)) / "users.jsonl")
    }
    events = read_events(settings.lake_root, RUN_DATE)
    assert (events["ip"] == events["user_id"].map(lambda u: users[u]["ip"])).all()
    assert events["user_agent"].str.len().gt(10).all()


# ---- behavioural structure ------------------------------------------------------------------------------------------
def test_funnel_order_within_sessions(generated: tuple[Settings, dict]) -> None:
    settings, summary = generated
    stages = SCENARIO_EVENT_TYPES[settings.scenario]
    events = read_events(settings.lake_root, RUN_DATE)
    events["t"] = pd.to_datetime(events["event_time"], utc=True)
    first = events.pivot_table(
        index=["session_id", "item_id"], columns="event_type", values="t", aggfunc="min"
    )
    for earlier, later in zip(stages, stages[1:], strict=False):
        reached = first[later].notna()
        assert reached.any(), later
        assert first.loc[reached, earlier].notna().all(), f"{later} without {earlier}"
        assert (first.loc[reached, earlier] <= first.loc[reached, later]).all(), f"{later} before {earlier}"
    # each stage is rarer than the one before it
    counts = events["event_type"].value_counts()
    assert all(counts[a] > counts[b] for a, b in zip(stages, stages[1:], strict=False))
    # a session belongs to one user and its events are close in time
    per_session = events.groupby("session_id").agg(
        users=("user_id", "nunique"), span=("t", lambda t: t.max() - t.min())
    )
    assert (per_session["users"] == 1).all()
    assert per_session["span"].quantile(0.9) < pd.Timedelta(minutes=30)


def test_popularity_is_skewed_but_not_degenerate(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    gen.generate(small(root, users=500, items=200, days=2, events_per_day=5_000))
    counts = pd.concat([read_events(root, RUN_DATE - dt.timedelta(days=i)) for i in (0, 1)])[
        "item_id"
    ].value_counts()
    top_share = counts.iloc[:20].sum() / counts.sum()  # top 10% of 200 items
    assert 0.3 < top_share < 0.85, top_share
    assert len(counts) > 150  # the long tail is still visited


def test_daily_rhythm(generated: tuple[Settings, dict]) -> None:
    settings, _ = generated
    hours = pd.to_datetime(read_events(settings.lake_root, RUN_DATE)["event_time"], utc=True).dt.hour
    evening, night = hours.between(18, 21).sum(), hours.between(1, 4).sum()
    assert evening > 4 * night


def test_sessions_follow_related_items(generated: tuple[Settings, dict]) -> None:
    """Sequential signal: consecutive views in a session share a category far more often than chance."""
    settings, _ = generated
    items = pd.DataFrame(read_lines(Path(lake.raw_items(settings.lake_root, RUN_DATE)) / "items.jsonl"))
    category = items.set_index("item_id")["category"]
    views = read_events(settings.lake_root, RUN_DATE).query("event_type == 'view'").sort_values("event_time")
    views["category"] = views["item_id"].map(category)
    views["next_category"] = views.groupby("session_id")["category"].shift(-1)
    pairs = views.dropna(subset=["next_category"])
    same_in_session = (pairs["category"] == pairs["next_category"]).mean()
    shares = views["category"].value_counts(normalize=True)
    chance = float((shares**2).sum())
    assert same_in_session > chance + 0.25, (same_in_session, chance)


def test_news_articles_appear_daily_and_fresh_ones_are_read(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    settings = small(root, "news", days=3, users=400, items=140, events_per_day=3_000)
    gen.generate(settings)
    snapshots = {
        d: {i["item_id"]: i for i in read_lines(Path(lake.raw_items(root, d)) / "items.jsonl")}
        for d in (RUN_DATE - dt.timedelta(days=1), RUN_DATE)
    }
    yesterday, today = snapshots.values()
    new = set(today) - set(yesterday)
    assert len(new) == settings.items // gen.NEWS_LIFETIME_DAYS  # one day's cohort of articles
    assert all(today[i]["publish_time"].startswith(RUN_DATE.isoformat()) for i in new)
    events = read_events(root, RUN_DATE)
    published = pd.to_datetime(
        events["item_id"].map({k: v["publish_time"] for k, v in today.items()}), utc=True
    )
    age = pd.to_datetime(events["event_time"], utc=True) - published
    assert (age >= pd.Timedelta(0)).all()  # nobody reads an article before it is published
    assert age.median() < pd.Timedelta(days=1.5)  # users prefer fresh articles (the catalogue spans 7 days)
    assert age.quantile(0.95) > pd.Timedelta(days=2)  # ... but older ones are still read


def test_tastes_are_personal_and_drift(tmp_path: Path) -> None:
    """Users' categories repeat across days (a model can learn them), and less so as days pass (drift)."""
    root = str(tmp_path / "lake")
    settings = small(root, users=300, items=200, days=1, events_per_day=6_000)
    world = gen.World(settings)
    day0 = RUN_DATE
    taste = {d: world.user_taste(day0 + dt.timedelta(days=d)) for d in (0, 1, 14)}
    cos1 = (taste[0] * taste[1]).sum(axis=1).mean()
    cos14 = (taste[0] * taste[14]).sum(axis=1).mean()
    assert 0.8 < cos1 < 1.0 and cos14 < cos1
    gen.generate(settings)
    items = pd.DataFrame(read_lines(Path(lake.raw_items(root, RUN_DATE)) / "items.jsonl")).set_index(
        "item_id"
    )
    events = read_events(root, RUN_DATE)
    events["category"] = events["item_id"].map(items["category"])
    by_user = events.groupby("user_id")["category"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    overall_top = events["category"].value_counts(normalize=True).iloc[0]
    heavy = events["user_id"].value_counts().loc[lambda c: c >= 20].index
    assert by_user.loc[heavy].mean() > overall_top + 0.15


def test_cli_main_writes_the_partitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "lake"
    gen.main(
        [
            "--date",
            "2026-02-01",
            "--days",
            "1",
            "--users",
            "50",
            "--items",
            "30",
            "--events-per-day",
            "300",
            "--scenario",
            "news",
            "--seed",
            "3",
            "--lake-root",
            str(root),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["dates"] == ["2026-02-01"] and summary["scenario"] == "news"
    assert (root / "raw/events/dt=2026-02-01/part-00000.jsonl").is_file()
    assert (root / "raw/items/dt=2026-02-01/items.jsonl").is_file()
    assert (root / "raw/users/dt=2026-02-01/users.jsonl").is_file()


# ---- corruptions ----------------------------------------------------------------------------------------------------
def defect_of(line: bytes, seen_ids: set[str], known_items: set[str], settings: Settings) -> str | None:
    """An independent check of what is wrong with a line (the first defect found), None for a good line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return "malformed_json"
    if any(name not in row for name in REQUIRED_EVENT_FIELDS):
        return "missing_field"
    if row["user_id"] is None:
        return "null_user"
    if "price" in row and row["price"] is not None and not isinstance(row["price"], int | float):
        return "wrong_type"
    if row["event_type"] not in EVENT_TYPES:
        return "unknown_event_type"
    if not row["event_time"].startswith(RUN_DATE.isoformat()):
        return "timestamp_out_of_day"
    if row["event_id"] in seen_ids:
        return "duplicate_event_id"
    seen_ids.add(row["event_id"])
    if row["item_id"] not in known_items:
        return "unknown_item"
    if any(isinstance(v, str) and len(v) > settings.max_field_chars for v in row.values()):
        return "oversized_field"
    if row.get("price") is not None and not 0 <= row["price"] <= settings.max_price:
        return "invalid_price"
    if set(row) - set(RAW_EVENT.names):
        return "extra_column"
    return None


@pytest.mark.parametrize("scenario", ["ecommerce", "news"])
def test_inject_corruptions_produces_every_kind_labelled_correctly(tmp_path: Path, scenario: str) -> None:
    settings = small(str(tmp_path / "lake"), scenario, days=1)
    gen.generate(settings)
    good = (
        (Path(lake.raw_events(settings.lake_root, RUN_DATE)) / "part-00000.jsonl").read_bytes().splitlines()
    )
    limits = {
        "max_field_chars": settings.max_field_chars,
        "bot_events_per_minute": settings.bot_events_per_minute,
        "max_price": settings.max_price,
    }
    result = gen.inject_corruptions(good, np.random.default_rng(1), 0.1, **limits)
    again = gen.inject_corruptions(good, np.random.default_rng(1), 0.1, **limits)
    assert result == again  # deterministic for a seed
    # every quarantine reason of the cleaning job has a corruption kind, and every kind is produced
    assert set(QUARANTINE_REASONS) <= set(gen.CORRUPTION_KINDS)
    assert all(result.counts[kind] >= 1 for kind in gen.CORRUPTION_KINDS), result.counts
    bad = [(line, label) for line, label in zip(result.lines, result.labels, strict=True) if label]
    assert len(bad) == sum(result.counts.values())
    assert 0.08 * len(good) <= len(bad) <= 0.2 * len(good)
    # the good lines are untouched and keep their order
    assert [line for line, label in zip(result.lines, result.labels, strict=True) if label is None] == good
    items = read_lines(Path(lake.raw_items(settings.lake_root, RUN_DATE)) / "items.jsonl")
    known = {i["item_id"] for i in items}
    seen: set[str] = set()
    for line, label in zip(result.lines, result.labels, strict=True):
        found = defect_of(line, seen, known, settings)
        if label == "bot_user":
            assert found is None  # a bot's rows are well formed: only their rate gives them away
        else:
            assert found == label, (label, found, line[:200])
    # bots exceed the per-minute threshold inside one calendar minute; real users never do
    rows = [
        json.loads(line)
        for line, label in zip(result.lines, result.labels, strict=True)
        if label in (None, "bot_user")
    ]
    frame = pd.DataFrame(rows)
    per_minute = frame.groupby(["user_id", frame["event_time"].str[:16]]).size()
    bots = {
        json.loads(line)["user_id"]
        for line, label in zip(result.lines, result.labels, strict=True)
        if label == "bot_user"
    }
    assert (
        per_minute[per_minute.index.get_level_values(0).isin(bots)] > settings.bot_events_per_minute
    ).all()
    assert (
        per_minute[~per_minute.index.get_level_values(0).isin(bots)].max() <= settings.bot_events_per_minute
    )


def test_generate_with_corrupt_share_reports_the_injected_counts(tmp_path: Path) -> None:
    clean_root, dirty_root = str(tmp_path / "clean"), str(tmp_path / "dirty")
    clean = gen.generate(small(clean_root, days=1))
    dirty = gen.generate(small(dirty_root, days=1, corrupt_share=0.05))
    assert sum(clean["corruptions"].values()) == 0
    assert all(n >= 1 for n in dirty["corruptions"].values()), dirty["corruptions"]
    lines = (Path(lake.raw_events(dirty_root, RUN_DATE)) / "part-00000.jsonl").read_bytes().splitlines()
    assert len(lines) == clean["events"] + sum(dirty["corruptions"].values())
    clean_lines = set(
        (Path(lake.raw_events(clean_root, RUN_DATE)) / "part-00000.jsonl").read_bytes().splitlines()
    )
    assert clean_lines <= set(lines)


def test_zero_share_returns_the_lines_unchanged() -> None:
    lines = [b'{"event_id":"a"}', b'{"event_id":"b"}']
    result = gen.inject_corruptions(lines, np.random.default_rng(0), 0.0)
    assert result.lines == lines and result.labels == [None, None] and not any(result.counts.values())


@pytest.mark.parametrize("scenario", ["ecommerce", "news"])
def test_large_catalogues_resample_close_to_the_exact_softmax(tmp_path: Path, scenario: str) -> None:
    """Above EXACT_SAMPLING_MAX_ITEMS items sessions draw by resampling popularity candidates: the drawn items
    must carry the users' taste (about as strongly as exact draws) and their popularity, not popularity alone."""
    settings = small(
        str(tmp_path / "lake"), scenario, users=3_000, items=gen.EXACT_SAMPLING_MAX_ITEMS + 5_000
    )
    world = gen.World(settings)
    day = RUN_DATE
    items, available = world.catalogue(day)
    taste = world.user_taste(day)[:1_500]
    start_ms = np.full(len(taste), gen._epoch_ms(day) + gen.DAY_MS // 2)

    def drawn(sampler: object, seed: int) -> tuple[float, float]:
        picked = sampler(  # type: ignore[operator]
            np.random.default_rng(seed), taste, start_ms, items, available, world.behaviour, 12, 512
        )
        affinity = np.einsum("sd,std->st", taste, items.factors[picked]).mean()
        assert available[picked].all()
        return float(affinity), float(items.pop_bias[picked].mean())

    exact_affinity, exact_pop = drawn(gen._draw_items_exact, 1)
    resampled_affinity, resampled_pop = drawn(gen._draw_items_resampled, 2)
    accept, alias = gen._alias_table(np.where(available, np.exp(items.pop_bias - items.pop_bias.max()), 0.0))
    slots = np.random.default_rng(3).integers(0, len(accept), size=(len(taste), 12))
    popular = np.where(np.random.default_rng(4).random(slots.shape) < accept[slots], slots, alias[slots])
    popular_affinity = float(np.einsum("sd,std->st", taste, items.factors[popular]).mean())
    assert resampled_affinity > popular_affinity + 0.5 * (exact_affinity - popular_affinity)
    assert abs(resampled_affinity - exact_affinity) < 0.25 * abs(exact_affinity - popular_affinity) + 0.02
    assert abs(resampled_pop - exact_pop) < 0.5


def test_the_alias_table_draws_in_proportion_to_the_weights() -> None:
    weights = np.random.default_rng(0).pareto(1.2, size=500)
    weights[::7] = 0.0
    accept, alias = gen._alias_table(weights)
    rng = np.random.default_rng(1)
    slots = rng.integers(0, len(weights), size=2_000_000)
    drawn = np.where(rng.random(len(slots)) < accept[slots], slots, alias[slots])
    share = np.bincount(drawn, minlength=len(weights)) / len(drawn)
    assert share[::7].sum() == 0
    np.testing.assert_allclose(share, weights / weights.sum(), atol=5e-4)
