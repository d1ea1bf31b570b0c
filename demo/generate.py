"""Synthetic raw logs, written the way applications write them (JSON lines per day, catalogue and user snapshots).

``python -m demo.generate --date D --days N --users U --items I --events-per-day E --scenario ecommerce|news``
writes, for each day D-N+1..D::

    raw/events/dt=YYYY-MM-DD/part-00000.jsonl[.gz]   one JSON object per event (schemas.raw.RAW_EVENT)
    raw/items/dt=YYYY-MM-DD/items.jsonl             the catalogue snapshot of that day (RAW_ITEM)
    raw/users/dt=YYYY-MM-DD/users.jsonl             user profiles with PII (RAW_USER)

The behaviour has structure a good model can find and popularity cannot:
- users have latent tastes (16 dims) built from a few favourite categories, their region and age group; items have
  factors clustered by category and sub-category, and a Zipf-like popularity;
- each session draws items from softmax(taste . factor + popularity [+ recency for news]); the next item in a session
  is often a close neighbour of the previous one (sequential signal);
- a funnel per viewed item: view -> click -> cart -> purchase (ecommerce) or view -> click -> share (news), with
  probabilities rising with affinity, so stronger events mean stronger preference;
- a daily rhythm of session start times (UTC), and tastes that drift from day to day;
- news: articles are published every day, title words come from per-topic vocabularies, and users prefer fresh ones;
- ecommerce: items go out of stock and come back (``available``).

Every day is a pure function of (seed, scenario, users, items, events_per_day, the date): the world does not depend on
``--date``/``--days``, so rerunning one day rewrites exactly the same bytes and leaves other days alone, and a
day-by-day backfill sees a consistent catalogue.

:func:`inject_corruptions` mixes every kind of bad row the cleaning job must quarantine among good lines
(``--corrupt-share``); it reports which line is which, so the cleaning tests can check each outcome.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging
import math
import time
import unicodedata
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from schemas import lake
from schemas.clean import QUARANTINE_REASONS
from schemas.raw import SCENARIO_EVENT_TYPES
from schemas.settings import Settings
from storage import lake_io

log = logging.getLogger(__name__)

FACTOR_DIM = 16
MAX_SESSION_STEPS = 12  # distinct item views per session, at most
NEWS_LIFETIME_DAYS = 7  # a news article stays in the catalogue this long; `items` = articles live at any time
_BLOCK = 64  # items per block of the two-step sampler
NEIGHBOURS = 10  # candidates for "the next item is related to the previous one"
# catalogues above this size draw session items by resampling SIR_CANDIDATES popularity draws (_draw_items)
EXACT_SAMPLING_MAX_ITEMS = 20_000
SIR_CANDIDATES = 64
SERVICE_LAUNCH = dt.date(2024, 1, 1)  # users sign up over the two years after this date
DAY_MS = 86_400_000
_SCENARIO_CODE = {"ecommerce": 1, "news": 2}
# random streams: one per purpose, so changing one part of the world does not reshuffle the others
_STREAM_CENTRES, _STREAM_USERS, _STREAM_DRIFT = 10, 11, 12
_STREAM_ITEMS, _STREAM_EVENTS, _STREAM_CORRUPT = 20, 30, 40

# fmt: off
# UTC hour-of-day weights of session starts: quiet nights, a lunch bump, an evening peak
HOURLY_WEIGHTS = np.array([0.5, 0.3, 0.2, 0.2, 0.3, 0.6, 1.2, 2.0, 2.6, 2.8, 2.9, 3.2,
                           3.6, 3.3, 3.0, 2.9, 3.0, 3.3, 3.9, 4.5, 4.8, 4.2, 3.0, 1.5])
# fmt: on


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """Knobs of the simulated users, per scenario (chosen so that taste, sequence and recency all carry signal)."""

    taste_weight: float  # multiplies taste . factor in the item logits
    zipf_exponent: float  # popularity bias = -exponent * log(popularity rank)
    mean_steps: float  # mean distinct item views per session
    neighbour_share: float  # chance the next item is a neighbour of the previous one
    recency_hours: float  # news: logit falls by 1 per this many hours of article age (0 = no recency)
    drift: float  # size of the day-to-day taste drift relative to the stable taste
    # funnel: P(stage k | stage k-1) = sigmoid(bias_k + slope * affinity)
    funnel_bias: tuple[float, ...]
    funnel_slope: float
    # mean gaps in seconds: between views, and before each later funnel stage
    view_gap_s: float
    stage_gap_s: tuple[float, ...]


# fmt: off
BEHAVIOUR = {
    "ecommerce": Behaviour(taste_weight=6.0, zipf_exponent=0.8, mean_steps=3.5, neighbour_share=0.45,
                           recency_hours=0.0, drift=0.45, funnel_bias=(-1.6, -1.9, -1.2), funnel_slope=3.0,
                           view_gap_s=25.0, stage_gap_s=(6.0, 20.0, 45.0)),
    "news": Behaviour(taste_weight=6.0, zipf_exponent=0.8, mean_steps=3.0, neighbour_share=0.4,
                      recency_hours=20.0, drift=0.45, funnel_bias=(-1.2, -3.0), funnel_slope=3.0,
                      view_gap_s=20.0, stage_gap_s=(5.0, 90.0)),
}
# fmt: on

# ---- vocabularies --------------------------------------------------------------------------------------------------
# fmt: off
# ecommerce: category -> (median price, sub-category nouns); a title is "<adjective> <brand> <noun>"
ECOMMERCE_CATEGORIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "electronics": (120.0, ("headphones", "speaker", "charger", "smartwatch", "tablet", "webcam")),
    "kitchen": (45.0, ("blender", "kettle", "toaster", "knife set", "frying pan", "coffee grinder")),
    "books": (14.0, ("novel", "cookbook", "biography", "atlas", "thriller", "poetry collection")),
    "fashion": (55.0, ("jacket", "sneakers", "scarf", "dress", "jeans", "backpack")),
    "sports": (40.0, ("yoga mat", "dumbbells", "tennis racket", "running shoes", "bike helmet", "water bottle")),
    "beauty": (22.0, ("moisturiser", "lipstick", "shampoo", "perfume", "face mask", "nail polish")),
    "toys": (25.0, ("puzzle", "building blocks", "plush bear", "board game", "toy car", "kite")),
    "garden": (30.0, ("garden hose", "shovel", "planter", "seed kit", "lawn chair", "pruning shears")),
    "home": (35.0, ("lamp", "cushion", "rug", "curtain", "candle", "picture frame")),
    "office": (18.0, ("notebook", "desk organiser", "fountain pen", "stapler", "monitor stand", "label printer")),
    "pets": (28.0, ("dog bed", "cat tree", "leash", "aquarium", "bird feeder", "chew toy")),
    "grocery": (9.0, ("olive oil", "green tea", "dark chocolate", "granola", "spice mix", "honey")),
    "music": (60.0, ("guitar strings", "ukulele", "keyboard stand", "drum pads", "vinyl record", "microphone")),
    "automotive": (35.0, ("car charger", "floor mats", "dash cam", "tyre gauge", "seat cover", "wax polish")),
    "baby": (50.0, ("stroller", "baby monitor", "bottle set", "onesie", "teether", "changing bag")),
    "health": (25.0, ("vitamins", "thermometer", "heating pad", "massage gun", "first aid kit", "pill box")),
}
ADJECTIVES = ("compact", "classic", "premium", "eco", "smart", "deluxe", "mini", "pro", "everyday", "vintage",
              "ultra", "soft", "portable", "essential", "bold", "natural")
BRANDS = ("Norda", "Velto", "Kiruna", "Pellam", "Ostrava", "Brisk", "Lumo", "Tandem", "Quill", "Arbor", "Sora",
          "Zephyr", "Halden", "Corvo", "Nimbus", "Maple & Co")

# news: topic -> sub-topics -> words; an article's title draws mostly from its sub-topic
NEWS_TOPICS: dict[str, tuple[tuple[str, ...], ...]] = {
    "politics": (("election", "ballot", "campaign", "poll", "candidate", "vote"),
                 ("parliament", "bill", "minister", "coalition", "debate", "reform"),
                 ("diplomacy", "summit", "treaty", "embassy", "sanctions", "envoy"),
                 ("court", "ruling", "judge", "appeal", "verdict", "constitution")),
    "sports": (("football", "striker", "goal", "league", "derby", "coach"),
               ("tennis", "serve", "final", "grand slam", "racket", "set point"),
               ("marathon", "runner", "record", "sprint", "olympic", "medal"),
               ("basketball", "playoffs", "rebound", "dunk", "guard", "season")),
    "business": (("market", "shares", "investors", "rally", "index", "earnings"),
                 ("startup", "funding", "founder", "venture", "valuation", "launch"),
                 ("inflation", "rates", "central bank", "prices", "wages", "bonds"),
                 ("merger", "takeover", "deal", "acquisition", "board", "shareholders")),
    "technology": (("smartphone", "chip", "battery", "device", "screen", "gadget"),
                   ("ai", "model", "chatbot", "algorithm", "data", "robots"),
                   ("security", "breach", "hackers", "password", "malware", "privacy"),
                   ("space", "rocket", "satellite", "orbit", "launchpad", "mission")),
    "science": (("climate", "emissions", "carbon", "warming", "glacier", "drought"),
                ("genome", "cells", "protein", "dna", "mutation", "species"),
                ("physics", "particle", "quantum", "telescope", "galaxy", "gravity"),
                ("fossil", "dinosaur", "excavation", "ancient", "skeleton", "museum")),
    "health": (("vaccine", "virus", "outbreak", "hospital", "doctors", "patients"),
               ("diet", "nutrition", "sugar", "vitamins", "vegetables", "fasting"),
               ("sleep", "stress", "anxiety", "therapy", "mindfulness", "burnout"),
               ("fitness", "exercise", "steps", "workout", "heart", "running")),
    "culture": (("film", "director", "premiere", "festival", "actor", "box office"),
                ("music", "album", "tour", "concert", "singer", "charts"),
                ("novel", "author", "prize", "poetry", "bestseller", "publisher"),
                ("art", "gallery", "painting", "exhibition", "sculpture", "auction")),
    "travel": (("flights", "airport", "airline", "delays", "fares", "tourists"),
               ("beach", "island", "resort", "coast", "cruise", "sunset"),
               ("mountains", "hiking", "trail", "alps", "cabin", "snowfall"),
               ("city break", "old town", "hotel", "food tour", "landmarks", "museums")),
    "food": (("recipe", "baking", "bread", "oven", "cake", "pastry"),
             ("restaurant", "chef", "menu", "tasting", "michelin", "bistro"),
             ("wine", "vineyard", "harvest", "grapes", "cellar", "sommelier"),
             ("vegan", "plant based", "tofu", "lentils", "salad", "bowl")),
    "weather": (("storm", "wind", "warning", "rain", "flooding", "thunder"),
                ("heatwave", "temperatures", "sunshine", "record high", "wildfires", "dry spell"),
                ("snow", "frost", "ice", "blizzard", "cold snap", "gritting"),
                ("forecast", "weekend", "showers", "clouds", "pressure", "outlook")),
    "local": (("council", "mayor", "budget", "housing", "permits", "residents"),
              ("school", "teachers", "pupils", "exams", "playground", "classrooms"),
              ("traffic", "roadworks", "bus", "tram", "cycling", "parking"),
              ("police", "fire brigade", "rescue", "crime", "investigation", "arrest")),
    "opinion": (("editorial", "column", "essay", "argument", "viewpoint", "letters"),
                ("economy", "policy", "taxes", "growth", "spending", "debt"),
                ("society", "generation", "families", "inequality", "community", "future"),
                ("media", "journalism", "trust", "social media", "headlines", "truth")),
}
NEWS_FILLER = ("new", "why", "how", "report", "this week", "says", "after", "first", "big", "could", "years",
               "plan", "today", "latest", "what next", "inside", "explained", "live")
NEWS_SOURCES = ("Daily Ledger", "Metro Wire", "The Courier", "Northern Post", "Global Dispatch", "Evening Herald",
                "Tech Beat", "Market Watchtower", "Pitchside", "Science Today", "City Bulletin", "The Observer Desk")

FIRST_NAMES = ("Anna", "Ben", "Chloé", "David", "Elif", "Finn", "Greta", "Hugo", "Ines", "Jonas", "Kaito", "Lena",
               "Mateo", "Nora", "Omar", "Priya", "Quentin", "Rosa", "Søren", "Tomás", "Uma", "Viktor", "Wanjiru",
               "Xavier", "Yara", "Zoë", "Łukasz", "Aiko", "Chidi", "José")
LAST_NAMES = ("Müller", "García", "Nowak", "Smith", "Kim", "Okafor", "Rossi", "Dubois", "Jensen", "Yilmaz",
              "Novák", "Silva", "Tanaka", "Olsen", "Kowalski", "Brown", "Schmidt", "Moreau", "Costa", "Haddad")
STREETS = ("Maple", "Station", "Church", "Mill", "Park", "High", "Harbour", "Linden", "Orchard", "King")
CITIES = ("Springfield", "Riverton", "Lakeside", "Northwich", "Eastbury", "Westhaven", "Hillcrest", "Portmore")
REGIONS = ("north", "south", "east", "west", "central", "coast", "highlands", "capital")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "RecflowShop/4.2.1 (Android 13; SM-A546B)",
    "RecflowShop/4.2.0 (iOS 17.4; iPhone15,2)",
)
AGE_GROUP_EDGES = (25, 35, 50, 65)
TASTE_SUB_WEIGHT = 0.7  # how much users care about the kind of item within a category
TASTE_NOISE = 0.6  # norm of each user's own random lean
# fmt: on


# ---- the world: users, items, tastes ------------------------------------------------------------------------------
def _rng(settings: Settings, stream: int, *key: int) -> np.random.Generator:
    if settings.seed < 0:
        raise ValueError(f"seed must be >= 0, got {settings.seed}")
    return np.random.default_rng([settings.seed, _SCENARIO_CODE[settings.scenario], stream, *key])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _epoch_ms(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


def _iso_ms(ms: np.ndarray) -> list[str]:
    """ISO-8601 UTC with milliseconds and 'Z', vectorised."""
    return [t + "Z" for t in np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms").tolist()]


def _iso_s(ms: np.ndarray) -> list[str]:
    return [t + "Z" for t in np.datetime_as_string(ms.astype("datetime64[ms]"), unit="s").tolist()]


def _j(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _zipf_bias(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Popularity logit of n items: -exponent * log(rank) for a random ranking."""
    ranks = rng.permutation(n) + 1
    return (-exponent * np.log(ranks)).astype(np.float32)


def _hourly_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Milliseconds into a day, following the daily rhythm."""
    hours = rng.choice(24, size=n, p=HOURLY_WEIGHTS / HOURLY_WEIGHTS.sum())
    return hours * 3_600_000 + rng.integers(0, 3_600_000, size=n)


@dataclasses.dataclass
class Items:
    """A set of items: the ecommerce catalogue, or the news articles live on one day."""

    ids: np.ndarray  # str, object
    category: np.ndarray  # int: index into the scenario's categories/topics
    factors: np.ndarray  # float32 (n, FACTOR_DIM)
    pop_bias: np.ndarray  # float32 popularity logit
    price: np.ndarray | None  # float64 rounded to cents (ecommerce)
    publish_ms: np.ndarray  # int64
    line_head: np.ndarray  # str: the JSON line up to '"available":'
    line_tail: np.ndarray  # str: the rest of the line after the availability value
    event_fragment: np.ndarray  # str: '"item_id":"..",' plus price, as events carry it

    @staticmethod
    def concat(parts: Sequence[Items]) -> Items:
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(Items):
            values = [getattr(p, f.name) for p in parts]
            fields[f.name] = None if values[0] is None else np.concatenate(values)
        return Items(**fields)

    def take(self, rows: np.ndarray) -> Items:
        """The items at ``rows``, every column alike."""
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(Items):
            column = getattr(self, f.name)
            fields[f.name] = None if column is None else column[rows]
        return Items(**fields)


@dataclasses.dataclass
class Users:
    ids: np.ndarray  # str
    taste: np.ndarray  # float32 (n, FACTOR_DIM), unit norm
    activity: np.ndarray  # float64 sampling weight of sessions
    signup_ms: np.ndarray  # int64
    lines: np.ndarray  # str: users.jsonl lines
    user_fragment: np.ndarray  # '"user_id":".."'
    tail_fragment: np.ndarray  # '"ip":"..","user_agent":".."}'


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace(" ", "")


class World:
    """Users, category centres and items: a pure function of the settings (never of the run date)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.behaviour = BEHAVIOUR[settings.scenario]
        self.event_types = SCENARIO_EVENT_TYPES[settings.scenario]
        news = settings.scenario == "news"
        self.category_names = tuple(NEWS_TOPICS) if news else tuple(ECOMMERCE_CATEGORIES)
        rng = _rng(settings, _STREAM_CENTRES)
        n_cat = len(self.category_names)
        self.category_centres = _unit(rng.standard_normal((n_cat, FACTOR_DIM))).astype(np.float32)
        self.sub_categories = 4 if news else 6
        self.sub_offsets = _unit(rng.standard_normal((n_cat, self.sub_categories, FACTOR_DIM))).astype(
            np.float32
        )
        # categories are not equally big or equally liked
        self.category_weights = 1.0 / np.arange(1, n_cat + 1) ** 0.6
        self.category_weights = rng.permutation(self.category_weights / self.category_weights.sum())
        self.region_centres = _unit(rng.standard_normal((len(REGIONS), FACTOR_DIM))).astype(np.float32)
        self.age_centres = _unit(rng.standard_normal((len(AGE_GROUP_EDGES) + 1, FACTOR_DIM))).astype(
            np.float32
        )
        self.users = self._make_users()
        self._catalogue = None if news else self._make_ecommerce_items()
        self._news_cohorts: dict[int, Items] = {}
        self._neighbours: dict[Any, np.ndarray] = {}

    # ---- users ------------------------------------------------------------------------------------------------
    def _make_users(self) -> Users:
        s = self.settings
        rng = _rng(s, _STREAM_USERS)
        n = s.users
        n_cat = len(self.category_names)
        fav = np.stack([rng.choice(n_cat, size=n, p=self.category_weights) for _ in range(2)], axis=1)
        fav_sub = rng.integers(0, self.sub_categories, size=(n, 2))
        region = rng.choice(len(REGIONS), size=n, p=np.array([3, 2, 2, 2, 2, 1, 1, 3]) / 16)
        age = np.clip(np.round(rng.normal(38, 13, size=n)), 16, 85).astype(int)
        age_group = np.searchsorted(AGE_GROUP_EDGES, age, side="right")
        # two favourite categories, a favourite kind of item in each, a regional and an age-group lean, own noise
        taste = (
            self.category_centres[fav[:, 0]]
            + 0.6 * self.category_centres[fav[:, 1]]
            + TASTE_SUB_WEIGHT
            * (self.sub_offsets[fav[:, 0], fav_sub[:, 0]] + 0.6 * self.sub_offsets[fav[:, 1], fav_sub[:, 1]])
            + 0.3 * self.region_centres[region]
            + 0.2 * self.age_centres[age_group]
            + TASTE_NOISE * rng.standard_normal((n, FACTOR_DIM)) / math.sqrt(FACTOR_DIM)
        )
        activity = rng.lognormal(0.0, 1.0, size=n)
        signup_ms = _epoch_ms(SERVICE_LAUNCH) + rng.integers(0, 700 * DAY_MS, size=n)
        first = rng.integers(0, len(FIRST_NAMES), size=n)
        last = rng.integers(0, len(LAST_NAMES), size=n)
        ips = rng.integers(0, 256, size=(n, 3))
        phones = rng.integers(200, 1000, size=n), rng.integers(0, 10_000, size=n)
        house = rng.integers(1, 300, size=n)
        street = rng.integers(0, len(STREETS), size=n)
        city = rng.integers(0, len(CITIES), size=n)
        agent = rng.integers(0, len(USER_AGENTS), size=n)
        domains = ("example.com", "example.org", "example.net")
        ids = np.array([f"u{i:07d}" for i in range(n)], dtype=object)
        signup_iso = _iso_s(signup_ms)
        lines, user_frag, tail_frag = [], [], []
        for i in range(n):
            name = f"{FIRST_NAMES[first[i]]} {LAST_NAMES[last[i]]}"
            ip = f"10.{ips[i, 0]}.{ips[i, 1]}.{ips[i, 2]}"
            row = {
                "user_id": ids[i],
                "email": f"{_ascii(FIRST_NAMES[first[i]])}.{_ascii(LAST_NAMES[last[i]])}{i}@{domains[i % 3]}",
                "phone": f"+1-{phones[0][i]}-555-{phones[1][i]:04d}",
                "name": name,
                "ip": ip,
                "address": f"{house[i]} {STREETS[street[i]]} Street, {CITIES[city[i]]}",
                "age": int(age[i]),
                "region": REGIONS[region[i]],
                "signup_time": signup_iso[i],
            }
            lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            user_frag.append(f'"user_id":{_j(ids[i])}')
            tail_frag.append(f'"ip":{_j(ip)},"user_agent":{_j(USER_AGENTS[agent[i]])}}}')
        return Users(
            ids=ids,
            taste=_unit(taste).astype(np.float32),
            activity=activity,
            signup_ms=signup_ms,
            lines=np.array(lines, dtype=object),
            user_fragment=np.array(user_frag, dtype=object),
            tail_fragment=np.array(tail_frag, dtype=object),
        )

    def user_taste(self, day: dt.date) -> np.ndarray:
        """Stable taste plus a drift that moves smoothly between weekly random anchors (absolute dates)."""
        ordinal = day.toordinal()
        week, frac = divmod(ordinal, 7)
        anchors = [
            _rng(self.settings, _STREAM_DRIFT, w).standard_normal((self.settings.users, FACTOR_DIM))
            for w in (week, week + 1)
        ]
        drift = (1 - frac / 7) * anchors[0] + (frac / 7) * anchors[1]
        drift = _unit(drift) * self.behaviour.drift
        return _unit(self.users.taste + drift).astype(np.float32)

    # ---- items ------------------------------------------------------------------------------------------------
    def _item_factors(self, rng: np.random.Generator, category: np.ndarray, sub: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(category), FACTOR_DIM)) / math.sqrt(FACTOR_DIM)
        return _unit(
            self.category_centres[category] + 0.55 * self.sub_offsets[category, sub] + 0.35 * noise
        ).astype(np.float32)

    def _make_ecommerce_items(self) -> Items:
        s = self.settings
        rng = _rng(s, _STREAM_ITEMS)
        n = s.items
        category = rng.choice(len(self.category_names), size=n, p=self.category_weights)
        sub = rng.integers(0, self.sub_categories, size=n)
        factors = self._item_factors(rng, category, sub)
        median = np.array([ECOMMERCE_CATEGORIES[c][0] for c in self.category_names])[category]
        price = np.round(median * rng.lognormal(0.0, 0.5, size=n), 2)
        price = np.maximum(price, 0.99)
        # listed some time before the service launch or during its first two years
        publish_ms = _epoch_ms(SERVICE_LAUNCH) - 365 * DAY_MS + rng.integers(0, 1000 * DAY_MS, size=n)
        adjective = rng.integers(0, len(ADJECTIVES), size=n)
        brand = rng.integers(0, len(BRANDS), size=n)
        # out-of-stock spells: some items are unavailable for a few days every few weeks
        self._outage_period = np.where(rng.random(n) < 0.4, rng.integers(9, 41, size=n), 0)
        self._outage_length = rng.integers(1, 5, size=n)
        self._outage_phase = rng.integers(0, 1000, size=n)
        ids = np.array([f"P{i:06d}" for i in range(n)], dtype=object)
        publish_iso = _iso_s(publish_ms)
        heads, frags = [], []
        for i in range(n):
            cat = self.category_names[category[i]]
            noun = ECOMMERCE_CATEGORIES[cat][1][sub[i]]
            title = f"{ADJECTIVES[adjective[i]].capitalize()} {BRANDS[brand[i]]} {noun}"
            heads.append(
                f'{{"item_id":{_j(ids[i])},"category":{_j(cat)},"price":{price[i]:.2f},'
                f'"title":{_j(title)},"publish_time":"{publish_iso[i]}","available":'
            )
            frags.append(f'"item_id":{_j(ids[i])},"price":{price[i]:.2f},')
        return self._items(rng, ids, category, factors, price, publish_ms, heads, ["}"] * n, frags)

    def _items(
        self,
        rng: np.random.Generator,
        ids: np.ndarray,
        category: np.ndarray,
        factors: np.ndarray,
        price: np.ndarray | None,
        publish_ms: np.ndarray,
        heads: list[str],
        tails: list[str],
        frags: list[str],
    ) -> Items:
        """Items from their columns and JSON line pieces; popularity drawn from the scenario's long tail."""
        return Items(
            ids=ids,
            category=category,
            factors=factors,
            pop_bias=_zipf_bias(rng, len(ids), self.behaviour.zipf_exponent),
            price=price,
            publish_ms=publish_ms,
            line_head=np.array(heads, dtype=object),
            line_tail=np.array(tails, dtype=object),
            event_fragment=np.array(frags, dtype=object),
        )

    def _news_cohort(self, ordinal: int) -> Items:
        """The articles published on one day (ordinal): a pure function of the seed and that day."""
        if ordinal in self._news_cohorts:
            return self._news_cohorts[ordinal]
        s = self.settings
        rng = _rng(s, _STREAM_ITEMS, ordinal)
        n = math.ceil(s.items / NEWS_LIFETIME_DAYS)
        day = dt.date.fromordinal(ordinal)
        category = rng.choice(len(self.category_names), size=n, p=self.category_weights)
        sub = rng.integers(0, self.sub_categories, size=n)
        factors = self._item_factors(rng, category, sub)
        publish_ms = _epoch_ms(day) + _hourly_ms(rng, n)
        order = np.argsort(publish_ms, kind="stable")  # ids follow publication order
        category, sub, factors, publish_ms = category[order], sub[order], factors[order], publish_ms[order]
        favourite_source = rng.integers(0, len(NEWS_SOURCES), size=len(self.category_names))
        source = np.where(
            rng.random(n) < 0.5, favourite_source[category], rng.integers(0, len(NEWS_SOURCES), size=n)
        )
        n_words = rng.integers(4, 8, size=n)
        pick = rng.random((n, 8))
        word_idx = rng.integers(0, 1000, size=(n, 8))
        ids = np.array([f"N{day:%Y%m%d}{i:05d}" for i in range(n)], dtype=object)
        publish_iso = _iso_s(publish_ms)
        heads, tails, frags = [], [], []
        for i in range(n):
            topic = self.category_names[category[i]]
            subtopics = NEWS_TOPICS[topic]
            words = []
            for k in range(n_words[i]):
                if pick[i, k] < 0.6 or k == 0:  # mostly the article's own sub-topic
                    pool = subtopics[sub[i]]
                elif pick[i, k] < 0.8:
                    pool = subtopics[word_idx[i, k] % len(subtopics)]
                else:
                    pool = NEWS_FILLER
                words.append(pool[word_idx[i, k] % len(pool)])
            title = " ".join(words)
            title = title[0].upper() + title[1:]
            heads.append(
                f'{{"item_id":{_j(ids[i])},"category":{_j(topic)},"price":null,"title":{_j(title)},'
                f'"publish_time":"{publish_iso[i]}","available":'
            )
            tails.append(f',"source":{_j(NEWS_SOURCES[source[i]])}}}')
            frags.append(f'"item_id":{_j(ids[i])},')
        cohort = self._items(rng, ids, category, factors, None, publish_ms, heads, tails, frags)
        self._news_cohorts[ordinal] = cohort
        return cohort

    def catalogue(self, day: dt.date) -> tuple[Items, np.ndarray]:
        """The items in the catalogue snapshot of ``day`` and which of them are available that day."""
        ordinal = day.toordinal()
        if self._catalogue is not None:
            items = self._catalogue
            listed = items.publish_ms < _epoch_ms(day) + DAY_MS
            in_outage = (self._outage_period > 0) & (
                (ordinal + self._outage_phase) % np.maximum(self._outage_period, 1) < self._outage_length
            )
            if not listed.all():
                keep = np.flatnonzero(listed)
                items = items.take(keep)
                in_outage = in_outage[keep]
            return items, ~in_outage
        items = Items.concat(
            [self._news_cohort(o) for o in range(ordinal - NEWS_LIFETIME_DAYS + 1, ordinal + 1)]
        )
        # a few articles are retracted (a stable property of the article)
        retracted = np.array([hash_unit(self.settings.seed, i) < 0.01 for i in items.ids])
        return items, ~retracted

    def neighbours(self, key: Any, items: Items) -> np.ndarray:
        """Up to NEIGHBOURS most similar items (by factor, same category) of every item: "next item" candidates.

        Shape (n, NEIGHBOURS); a category with fewer items repeats its neighbours, a lone item is its own.
        """
        if key not in self._neighbours:
            result = np.empty((len(items.ids), NEIGHBOURS), dtype=np.int64)
            for category in np.unique(items.category):
                members = np.flatnonzero(items.category == category)
                k = min(NEIGHBOURS, len(members) - 1)
                if k < 1:
                    result[members] = members[:, None]
                    continue
                sims = items.factors[members] @ items.factors[members].T
                np.fill_diagonal(sims, -np.inf)
                nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                result[members] = members[nearest[:, np.arange(NEIGHBOURS) % k]]
            self._neighbours[key] = result
        return self._neighbours[key]


def hash_unit(seed: int, text: str) -> float:
    """A stable pseudo-random number in [0, 1) for a string (independent of PYTHONHASHSEED)."""
    return (zlib.crc32(f"{seed}:{text}".encode()) & 0xFFFFFFFF) / 2**32


# ---- one day of events ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DayEvents:
    time_ms: np.ndarray  # int64
    user: np.ndarray  # index into World.users
    session: np.ndarray  # index into session_ids
    event_type: np.ndarray  # index into World.event_types
    item: np.ndarray  # index into the day's Items
    session_ids: np.ndarray  # str
    sessions: int


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_items(
    rng: np.random.Generator,
    taste: np.ndarray,
    start_ms: np.ndarray,
    items: Items,
    available: np.ndarray,
    behaviour: Behaviour,
    draws: int,
    chunk: int = 512,
) -> np.ndarray:
    """``draws`` independent items per session from softmax(taste . factor + popularity [+ recency]).

    Exact up to EXACT_SAMPLING_MAX_ITEMS items (:func:`_draw_items_exact`, time sessions x items); above, by
    sampling-importance-resampling (:func:`_draw_items_resampled`, time sessions x SIR_CANDIDATES), so that a
    catalogue of 10^5+ items does not make the generator the slowest stage of a run.
    """
    if len(items.ids) <= EXACT_SAMPLING_MAX_ITEMS:
        return _draw_items_exact(rng, taste, start_ms, items, available, behaviour, draws, chunk)
    return _draw_items_resampled(rng, taste, start_ms, items, available, behaviour, draws, chunk)


def _draw_items_resampled(
    rng: np.random.Generator,
    taste: np.ndarray,
    start_ms: np.ndarray,
    items: Items,
    available: np.ndarray,
    behaviour: Behaviour,
    draws: int,
    chunk: int,
) -> np.ndarray:
    """Sampling-importance-resampling: SIR_CANDIDATES candidates per draw from the popularity part alone (one
    inverse-CDF search each), then one of them with probability proportional to the rest of the target,
    exp(taste_weight * taste . factor [- age / recency_hours]), by the Gumbel-max trick. The draws follow the
    exact softmax more closely the more candidates there are; 64 keep the taste signal strong (the affinity
    part spans only [-taste_weight, taste_weight])."""
    pop = np.where(available, np.exp(items.pop_bias.astype(np.float64) - items.pop_bias.max()), 0.0)
    accept, alias = _alias_table(pop)
    publish_h = items.publish_ms / 3_600_000.0
    out = np.empty((len(taste), draws), dtype=np.int64)
    for lo in range(0, len(taste), chunk):
        hi = min(lo + chunk, len(taste))
        slot = rng.integers(0, len(pop), size=(hi - lo, draws, SIR_CANDIDATES))
        candidates = np.where(rng.random(slot.shape) < accept[slot], slot, alias[slot])
        logits = np.einsum("sd,scd->sc", taste[lo:hi], items.factors[candidates.reshape(hi - lo, -1)])
        logits = logits.reshape(candidates.shape) * behaviour.taste_weight
        if behaviour.recency_hours > 0:  # news: only published articles, fresher ones preferred
            age_h = start_ms[lo:hi, None, None] / 3_600_000.0 - publish_h[candidates]
            logits = np.where(age_h < 0, -np.inf, logits - age_h / behaviour.recency_hours)
        logits += rng.gumbel(size=logits.shape)
        pick = np.argmax(logits, axis=2)  # a row of only unpublished candidates keeps its first one
        out[lo:hi] = np.take_along_axis(candidates, pick[:, :, None], axis=2)[:, :, 0]
    return out


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table (Vose's construction): slot i is kept with probability accept[i], else alias[i]; a
    uniform slot then draws item i with probability weights[i] / weights.sum(), in O(1) per draw."""
    n = len(weights)
    scaled = weights * (n / weights.sum())
    accept, alias = np.ones(n), np.arange(n)
    small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    while small and large:
        lo, hi = small.pop(), large[-1]
        accept[lo], alias[lo] = scaled[lo], hi
        scaled[hi] -= 1.0 - scaled[lo]
        if scaled[hi] < 1.0:
            small.append(large.pop())
    return accept, alias


def _draw_items_exact(
    rng: np.random.Generator,
    taste: np.ndarray,
    start_ms: np.ndarray,
    items: Items,
    available: np.ndarray,
    behaviour: Behaviour,
    draws: int,
    chunk: int,
) -> np.ndarray:
    """Inverse-CDF sampling in two steps, because a cumulative sum over every row of the catalogue is the slow
    part: pick a block of _BLOCK items from the block sums, then the item inside that block."""
    n_items = len(items.ids)
    n_blocks = -(-n_items // _BLOCK)
    # unavailable items get weight 0 (and so do the padding columns of the last block)
    base = np.full(n_blocks * _BLOCK, -np.inf, dtype=np.float32)
    base[:n_items] = np.where(available, items.pop_bias, -np.inf)
    factors_t = np.zeros((FACTOR_DIM, n_blocks * _BLOCK), dtype=np.float32)
    factors_t[:, :n_items] = items.factors.T
    publish_h = np.zeros(n_blocks * _BLOCK)
    publish_h[:n_items] = items.publish_ms / 3_600_000.0
    out = np.empty((len(taste), draws), dtype=np.int64)
    for lo in range(0, len(taste), chunk):
        hi = min(lo + chunk, len(taste))
        rows = np.arange(hi - lo)
        # einsum, not BLAS: a 16-dim product gains nothing from BLAS threads, which only spin on a busy machine
        logits = np.einsum("sd,di->si", taste[lo:hi], factors_t, optimize=False)
        logits *= behaviour.taste_weight
        logits += base
        if behaviour.recency_hours > 0:  # news: only published articles, fresher ones preferred
            age_h = (start_ms[lo:hi, None] / 3_600_000.0 - publish_h[None, :]).astype(np.float32)
            age_h[age_h < 0] = np.inf
            age_h /= behaviour.recency_hours
            logits -= age_h
        # logits are bounded above (taste_weight + 0), so exp needs no max-shift
        weights = np.exp(logits, out=logits).reshape(hi - lo, n_blocks, _BLOCK)
        block_cdf = np.cumsum(weights.sum(axis=2, dtype=np.float64), axis=1)
        targets = rng.random((hi - lo, draws)) * block_cdf[:, -1:]
        # block: first with cumulative weight > target (flat search; row r shifted to [r, r + 1])
        flat = (block_cdf / block_cdf[:, -1:] + rows[:, None]).ravel()
        block = np.searchsorted(flat, (targets / block_cdf[:, -1:] + rows[:, None]).ravel(), side="right")
        block = np.minimum(block.reshape(hi - lo, draws) - rows[:, None] * n_blocks, n_blocks - 1)
        before = np.where(block > 0, block_cdf[rows[:, None], np.maximum(block - 1, 0)], 0.0)
        inside = weights[rows[:, None], block]  # (rows, draws, _BLOCK)
        position = (np.cumsum(inside, axis=2, dtype=np.float64) <= (targets - before)[:, :, None]).sum(axis=2)
        position = np.minimum(position, _BLOCK - 1)
        # rounding can land on a zero-weight slot at a block's end: take the block's last positive one instead
        stray = np.take_along_axis(inside, position[:, :, None], axis=2)[:, :, 0] <= 0
        if stray.any():
            positive = inside[stray] > 0
            position[stray] = _BLOCK - 1 - np.argmax(positive[:, ::-1], axis=1)
        out[lo:hi] = np.minimum(block * _BLOCK + position, n_items - 1)
    return out


def simulate_day(world: World, day: dt.date) -> tuple[DayEvents, Items, np.ndarray]:
    """The events of one day (vectorised over sessions), the day's catalogue and its availability."""
    s, b = world.settings, world.behaviour
    rng = _rng(s, _STREAM_EVENTS, day.toordinal())
    items, available = world.catalogue(day)
    day_ms = _epoch_ms(day)
    n_stages = len(world.event_types)
    users = world.users
    weights = users.activity * (users.signup_ms < day_ms)
    if weights.sum() == 0 or not available.any():
        raise ValueError(
            f"{day}: no users signed up or no item available; choose a date after {SERVICE_LAUNCH}"
        )
    # enough sessions to reach events_per_day; surplus sessions are dropped at the end
    per_session = b.mean_steps * (1.6 if n_stages == 4 else 1.5)
    n_sessions = int(s.events_per_day / per_session * 1.3) + 20
    session_user = rng.choice(len(users.ids), size=n_sessions, p=weights / weights.sum())
    start_ms = day_ms + _hourly_ms(rng, n_sessions)
    steps = np.minimum(rng.geometric(1.0 / b.mean_steps, size=n_sessions), MAX_SESSION_STEPS)
    taste = world.user_taste(day)[session_user]
    fresh = _draw_items(rng, taste, start_ms, items, available, b, MAX_SESSION_STEPS)

    # sequence: the next item is often a neighbour of the previous one
    key = "catalogue" if s.scenario == "ecommerce" else day.toordinal()
    neighbours = world.neighbours(key, items)
    chosen = np.empty_like(fresh)
    chosen[:, 0] = fresh[:, 0]
    for t in range(1, MAX_SESSION_STEPS):
        candidate = neighbours[chosen[:, t - 1], rng.integers(0, neighbours.shape[1], size=n_sessions)]
        usable = available[candidate] & (items.publish_ms[candidate] <= start_ms)
        take = usable & (rng.random(n_sessions) < b.neighbour_share)
        chosen[:, t] = np.where(take, candidate, fresh[:, t])
    valid = np.arange(MAX_SESSION_STEPS)[None, :] < steps[:, None]

    # funnel: each later stage needs the previous one, more likely for items the user likes
    affinity = np.einsum("sd,std->st", taste, items.factors[chosen])
    reached = [valid]
    for bias in b.funnel_bias:
        p = _sigmoid(bias + b.funnel_slope * affinity)
        reached.append(reached[-1] & (rng.random(valid.shape) < p))
    # ecommerce purchases happen at checkout, after the last view; other stages follow their view directly
    checkout = s.scenario == "ecommerce"
    in_step_stages = n_stages - 1 if checkout else n_stages
    gaps = [rng.exponential(b.view_gap_s * 1000, size=valid.shape)]
    gaps[0][:, 0] = 0.0
    gaps += [rng.exponential(g * 1000, size=valid.shape) + 500.0 for g in b.stage_gap_s]
    step_time = np.zeros(valid.shape)
    for k in range(1, in_step_stages):
        step_time += reached[k] * gaps[k]
    previous_step_time = np.concatenate([np.zeros((n_sessions, 1)), step_time[:, :-1]], axis=1)
    view_offset = np.cumsum(gaps[0] + previous_step_time, axis=1)
    offsets = [view_offset]
    for k in range(1, in_step_stages):
        offsets.append(offsets[-1] + gaps[k])
    last = steps - 1
    session_end = view_offset[np.arange(n_sessions), last] + step_time[np.arange(n_sessions), last]
    if checkout:
        pay_gap = rng.exponential(b.stage_gap_s[-1] * 1000, size=n_sessions) + 5_000.0
        offsets.append(
            session_end[:, None] + pay_gap[:, None] + 250.0 * np.arange(MAX_SESSION_STEPS)[None, :]
        )
        session_end = session_end + pay_gap + 250.0 * MAX_SESSION_STEPS
    # sessions stay inside their day: late ones start earlier
    start_ms = np.maximum(
        day_ms, np.minimum(start_ms, day_ms + DAY_MS - 1_000 - session_end.astype(np.int64))
    )

    # keep whole sessions until the day's event budget is used
    per_session_events = sum(r.sum(axis=1) for r in reached)
    kept = np.cumsum(per_session_events) <= s.events_per_day
    if per_session_events.sum() < 0.98 * s.events_per_day:  # the session estimate fell short: say so
        log.warning("%s: only %d of %d events generated", day, per_session_events.sum(), s.events_per_day)
    parts = []
    for k, (mask, offset) in enumerate(zip(reached, offsets, strict=True)):
        sess, step = np.nonzero(mask & kept[:, None])
        parts.append(
            (
                start_ms[sess] + offset[sess, step].astype(np.int64),
                sess,
                step,
                np.full(len(sess), k, dtype=np.int64),
            )
        )
    time_ms, sess, step, etype = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((etype, step, sess, time_ms))
    time_ms, sess, step, etype = time_ms[order], sess[order], step[order], etype[order]
    session_codes = rng.integers(0, 2**40, size=n_sessions)
    session_ids = np.array(
        [f"s{day:%y%m%d}{c:010x}{i:05x}" for i, c in enumerate(session_codes.tolist())], dtype=object
    )
    events = DayEvents(
        time_ms=time_ms,
        user=session_user[sess],
        session=sess,
        event_type=etype,
        item=chosen[sess, step],
        session_ids=session_ids,
        sessions=int(kept.sum()),
    )
    return events, items, available


def event_lines(world: World, day: dt.date, events: DayEvents, items: Items) -> list[str]:
    """JSON lines in RAW_EVENT field order; fragments are pre-escaped, so this is string assembly only."""
    rng = _rng(world.settings, _STREAM_EVENTS, day.toordinal(), 1)
    n = len(events.time_ms)
    codes = rng.integers(0, 2**44, size=n).tolist()
    # unique per day by construction (the position), unique across days by the date prefix
    event_ids = [f"e{day:%y%m%d}{c:011x}{i:06x}" for i, c in enumerate(codes)]
    types = np.array(world.event_types, dtype=object)[events.event_type].tolist()
    return [
        f'{{"event_id":"{e}","event_time":"{t}",{u},"session_id":"{s}","event_type":"{k}",{i}{tail}'
        for e, t, u, s, k, i, tail in zip(
            event_ids,
            _iso_ms(events.time_ms),
            world.users.user_fragment[events.user].tolist(),
            events.session_ids[events.session].tolist(),
            types,
            items.event_fragment[events.item].tolist(),
            world.users.tail_fragment[events.user].tolist(),
            strict=True,
        )
    ]


# ---- corruptions ---------------------------------------------------------------------------------------------------
# One kind per quarantine reason of the cleaning job (schemas.clean.QUARANTINE_REASONS), plus "extra_column":
# an unknown extra field that must be tolerated (the row is good) and reported as schema drift.
CORRUPTION_KINDS = (*QUARANTINE_REASONS, "extra_column")
TOLERATED_KINDS = ("extra_column",)
UNKNOWN_EVENT_TYPES = ("wishlist", "like", "rate", "hover")
REQUIRED_DROPPABLE = ("event_id", "event_time", "event_type", "item_id")  # user_id: that is null_user's case


class Corrupted(NamedTuple):
    lines: list[bytes]  # good and bad lines mixed, in file order
    labels: list[str | None]  # per line: None for an original good line, else its corruption kind
    counts: dict[str, int]  # injected lines per kind


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def _shift_time(text: str, delta_ms: int) -> str:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00")) + dt.timedelta(milliseconds=delta_ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def inject_corruptions(
    lines: Sequence[str | bytes],
    rng: np.random.Generator,
    share: float,
    *,
    max_field_chars: int = 2_000,
    bot_events_per_minute: int = 30,
    max_price: float = 100_000.0,
) -> Corrupted:
    """Mix every kind of bad row (CORRUPTION_KINDS) among good event lines.

    About ``share * len(lines)`` bad lines are added (at least one per kind when share > 0), each derived from a
    random good line with exactly one defect and, except for duplicates, a fresh event id. Good lines keep their
    bytes and relative order; a duplicate always comes after its original. Bot users emit bursts of
    ``bot_events_per_minute + 10`` events inside one calendar minute under a user id of their own.
    """
    good = [ln.encode() if isinstance(ln, str) else ln for ln in lines]
    counts = dict.fromkeys(CORRUPTION_KINDS, 0)
    if share <= 0 or not good:
        return Corrupted(good, [None] * len(good), counts)
    if not 0 < share <= 1:
        raise ValueError(f"corrupt share must be in [0, 1], got {share}")
    per_kind = max(1, round(share * len(good) / len(CORRUPTION_KINDS)))
    bad: list[tuple[float, bytes, str]] = []  # (position key, line, kind)

    def fresh_id() -> str:
        return f"x{int(rng.integers(0, 2**60)):015x}"

    def add(kind: str, line: bytes | str, position: float | None = None) -> None:
        key = float(rng.uniform(0, len(good))) if position is None else position
        bad.append((key, line.encode() if isinstance(line, str) else line, kind))
        counts[kind] += 1

    def source() -> tuple[int, dict[str, Any]]:
        i = int(rng.integers(0, len(good)))
        row = json.loads(good[i])  # only the sampled rows are parsed: files can hold millions
        row["event_id"] = fresh_id()
        return i, row

    for kind in CORRUPTION_KINDS:
        n = per_kind
        if kind == "bot_user":
            burst = bot_events_per_minute + 10
            for b in range(max(1, math.ceil(n / burst))):
                i, base = source()
                minute = base["event_time"][:17]  # YYYY-MM-DDTHH:MM:
                bot_user = f"u-bot-{int(rng.integers(0, 2**32)):08x}{b}"
                millis = np.sort(rng.integers(0, 60_000, size=burst))
                for ms in millis.tolist():
                    _, row = source()
                    row.update(
                        user_id=bot_user,
                        session_id=f"s-bot-{bot_user}",
                        event_type="view",
                        event_time=f"{minute}{ms // 1000:02d}.{ms % 1000:03d}Z",
                        user_agent="python-requests/2.32.3",
                    )
                    add(kind, _dumps(row))
            continue
        for _ in range(n):
            i, row = source()
            if kind == "malformed_json":
                text = _dumps(row)
                add(kind, text[: int(rng.integers(len(text) // 3, len(text) - 1))])
            elif kind == "missing_field":
                del row[REQUIRED_DROPPABLE[int(rng.integers(0, len(REQUIRED_DROPPABLE)))]]
                add(kind, _dumps(row))
            elif kind == "wrong_type":
                row["price"] = ("twelve", "12,99 EUR", "n/a")[int(rng.integers(0, 3))]
                add(kind, _dumps(row))
            elif kind == "unknown_event_type":
                row["event_type"] = UNKNOWN_EVENT_TYPES[int(rng.integers(0, len(UNKNOWN_EVENT_TYPES)))]
                add(kind, _dumps(row))
            elif kind == "timestamp_out_of_day":
                sign = 1 if rng.random() < 0.5 else -1
                row["event_time"] = _shift_time(
                    row["event_time"], sign * int(rng.integers(DAY_MS, 3 * DAY_MS))
                )
                add(kind, _dumps(row))
            elif kind == "duplicate_event_id":  # a retried write: the same bytes again, later in the file
                add(kind, good[i], position=float(rng.uniform(i + 0.5, len(good) + 0.5)))
            elif kind == "unknown_item":
                row["item_id"] = f"UNKNOWN-{int(rng.integers(0, 2**32)):08x}"
                add(kind, _dumps(row))
            elif kind == "null_user":
                row["user_id"] = None
                add(kind, _dumps(row))
            elif kind == "oversized_field":
                row["user_agent"] = "Mozilla/5.0 " + "A" * (max_field_chars + int(rng.integers(1, 5_000)))
                add(kind, _dumps(row))
            elif kind == "invalid_utf8":
                encoded = _dumps({**row, "user_agent": "Mozilla/5.0 @@BAD@@"}).encode()
                add(kind, encoded.replace(b"@@BAD@@", b"\xc3\x28\xff"))
            elif kind == "invalid_price":
                row["price"] = (
                    -round(float(rng.uniform(0.01, 500)), 2)
                    if rng.random() < 0.5
                    else round(max_price * float(rng.uniform(2, 100)), 2)
                )
                add(kind, _dumps(row))
            elif kind == "extra_column":
                row["experiment"] = f"exp-{int(rng.integers(0, 100))}"
                add(kind, _dumps(row))
            else:  # pragma: no cover - a kind without a recipe is a programming error
                raise AssertionError(kind)
    keyed = [(float(i), g, None) for i, g in enumerate(good)] + bad
    keyed.sort(key=lambda x: x[0])  # stable: good line i precedes bad lines keyed exactly i
    return Corrupted([x[1] for x in keyed], [x[2] for x in keyed], counts)


# ---- writing -------------------------------------------------------------------------------------------------------
def _jsonl(lines: Sequence[str] | Sequence[bytes]) -> bytes:
    if lines and isinstance(lines[0], bytes):
        return b"\n".join(lines) + b"\n"  # type: ignore[arg-type]
    return ("\n".join(lines) + "\n").encode() if lines else b""  # type: ignore[arg-type]


def generate(settings: Settings) -> dict[str, Any]:
    """Writes raw events, items and users for days run_date-days+1 .. run_date; returns what it wrote."""
    started = time.perf_counter()
    if not 0 <= settings.corrupt_share <= 1:
        raise ValueError(f"corrupt_share must be in [0, 1], got {settings.corrupt_share}")
    root = settings.lake_root
    world = World(settings)
    dates = [settings.run_date - dt.timedelta(days=i) for i in range(settings.days - 1, -1, -1)]
    summary: dict[str, Any] = {
        "scenario": settings.scenario,
        "seed": settings.seed,
        "dates": [d.isoformat() for d in dates],
        "events": 0,
        "sessions": 0,
        "events_per_day": {},
        "items_per_day": {},
        "users": 0,
        "corruptions": dict.fromkeys(CORRUPTION_KINDS, 0),
        "lake_root": root,
    }
    for number, day in enumerate(dates, 1):
        t0 = time.perf_counter()
        events, items, available = simulate_day(world, day)
        lines: Sequence[str] | Sequence[bytes] = event_lines(world, day, events, items)
        if settings.corrupt_share > 0:
            corrupted = inject_corruptions(
                lines,
                _rng(settings, _STREAM_CORRUPT, day.toordinal()),
                settings.corrupt_share,
                max_field_chars=settings.max_field_chars,
                bot_events_per_minute=settings.bot_events_per_minute,
                max_price=settings.max_price,
            )
            lines = corrupted.lines
            for kind, n in corrupted.counts.items():
                summary["corruptions"][kind] += n
        data = _jsonl(lines)
        if settings.compress:
            events_file = {"part-00000.jsonl.gz": gzip.compress(data, compresslevel=5, mtime=0)}
        else:
            events_file = {"part-00000.jsonl": data}
        lake_io.replace_folder(lake.raw_events(root, day), events_file)
        flags = np.where(available, "true", "false").astype(object)
        item_lines = (items.line_head + flags + items.line_tail).tolist()
        lake_io.replace_folder(lake.raw_items(root, day), {"items.jsonl": _jsonl(item_lines)})
        signed_up = world.users.signup_ms < _epoch_ms(day) + DAY_MS
        user_lines = world.users.lines[signed_up].tolist()
        lake_io.replace_folder(lake.raw_users(root, day), {"users.jsonl": _jsonl(user_lines)})
        summary["events"] += len(events.time_ms)
        summary["sessions"] += events.sessions
        summary["events_per_day"][day.isoformat()] = len(events.time_ms)
        summary["items_per_day"][day.isoformat()] = len(items.ids)
        summary["users"] = int(signed_up.sum())
        log.info(
            "day %d/%d %s %s: %d events in %d sessions, %d items (%d available), %d users, %.1f s",
            number,
            len(dates),
            settings.scenario,
            day,
            len(events.time_ms),
            events.sessions,
            len(items.ids),
            int(available.sum()),
            int(signed_up.sum()),
            time.perf_counter() - t0,
        )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_cli(
        argv, description="Write synthetic raw logs (events, items, users) into the lake."
    )
    summary = generate(settings)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
