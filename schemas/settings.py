"""The one settings object: defaults for the embedded local run, then environment, CLI flags and DAG params.

Precedence (later wins): field defaults < ``RECFLOW_<FIELD>`` environment variables < explicit overrides
(CLI flags via :func:`Settings.from_cli`, Airflow params via :func:`Settings.from_params`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("ecommerce", "news")
SOFTMAX_KINDS = ("sampled", "full")
ENV_PREFIX = "RECFLOW_"
# DAG params that steer the DAG itself and are no setting: Settings.from_params accepts and ignores them
STEERING_PARAMS = ("generate_demo_data",)


def unknown_names(given: Iterable[str], valid: Iterable[str], kind: str = "param") -> str | None:
    """The message refusing the names of ``given`` that are not in ``valid`` (with the closest valid name for
    each, and every valid one), or None when all are valid."""
    known = sorted(set(valid))
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return None
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        named.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown {kind}{plural} {', '.join(named)}; valid {kind}s: {', '.join(known)}"


@dataclasses.dataclass(frozen=True)
class Settings:
    # where and what
    lake_root: str = str(REPO_ROOT / "lake")
    spark_master: str = "local[*]"
    scenario: str = "ecommerce"
    run_date: dt.date = dt.date(2026, 1, 14)
    # generator (demo data)
    seed: int = 42
    users: int = 20_000
    items: int = 5_000
    days: int = 14
    events_per_day: int = 70_000
    compress: bool = False  # gzip the generated raw event files (part-00000.jsonl.gz)
    corrupt_share: float = 0.0  # share of bad rows the generator mixes into raw events (0 = clean)
    # MovieLens input for demo.movielens: the ml-100k folder or a folder holding it (never committed)
    movielens_dir: str = str(REPO_ROOT.parent / "shared" / "data")
    # cleaning
    bot_events_per_minute: int = 30
    max_field_chars: int = 2_000
    max_price: float = 100_000.0
    # keyed hash for user ids: the key comes from this env var or the Airflow connection, never from code
    pseudonym_key_env: str = "RECFLOW_PSEUDONYM_KEY"
    pseudonym_conn_id: str = "recflow_pseudonym_key"
    # features
    window_days: int = 14
    history_length: int = 20
    decay_half_life_days: float = 7.0
    price_buckets: int = 10
    title_hash_buckets: int = 4096
    title_tokens: int = 8
    # model
    model: str = "two_tower"
    encoder: str = (
        "cnn"  # measured best R@10 on ecommerce+news next-day splits at moderate cost (CHANGELOG, 0.1.0)
    )
    embedding_dim: int = 64
    epochs: int = 1  # at the default size the best validation epoch was the first (CHANGELOG, 0.1.0)
    batch_size: int = 1024
    learning_rate: float = 0.003
    # "sampled": in-batch negatives with log-Q correction; "full": every catalogue item as a negative (up to 50k
    # items). At the default size sampled trains 1.8x faster for 1.6% less validation Recall@10 (CHANGELOG, 0.1.0).
    softmax: str = "sampled"
    skip_training: bool = False
    # start the deep model from the production deep model's weights when its architecture matches (False: cold)
    warm_start: bool = True
    # memory limits of the item-item baselines (models/baselines.py): a model dense in the catalogue (EASE, a dense
    # items x items inverse, about 24 * items^2 bytes at its peak) is fitted only within dense_item_budget_mb and
    # otherwise skipped with its reason; item_block_mb bounds one block of the sparse item cosine's fit and scoring
    dense_item_budget_mb: int = 4096
    item_block_mb: int = 256
    # evaluation and gate
    eval_k: int = 10
    gate_metric: str = "ndcg_at_10"
    gate_margin: float = 0.0
    # scoring and publish
    top_n: int = 100
    category_cap: int = 0  # 0 disables the per-category diversity cap
    similar_items_n: int = 20
    score_block_users: int = 4096
    max_cold_start_share: float = 0.5
    # validation (Great Expectations suites in schemas/suites.py, run by jobs/validate.py)
    validation_engine: str = (
        "pandas"  # pandas: pyarrow read, no JVM start; spark: for tables too big for one process
    )
    volume_band: float = (
        0.5  # day's clean rows must lie within median*(1 -/+ band) of the previous days' counts
    )
    volume_history_days: int = 7  # how many earlier daily partitions the median is taken over
    volume_min_history: int = 3  # with fewer earlier partitions than this, only "not empty" is checked
    raw_max_bad_share: float = (
        0.05  # share of raw lines that may be unparseable or incomplete (cleaning quarantines)
    )
    min_recall_at_k: float = 0.01  # absolute floor for the best model's Recall@eval_k
    min_ndcg_at_k: float = 0.005  # absolute floor for the best model's nDCG@eval_k
    min_lift_over_popularity: float = (
        0.0  # best model's Recall/nDCG minus popularity's must be >= this (-1: off)
    )
    # tracking and model registry (MLflow, models/tracking.py). Tracking URI: mlflow_tracking_uri, else the env's
    # MLFLOW_TRACKING_URI (a tracking server on a cluster), else sqlite:///<lake_root>/mlflow/mlflow.db. Artifacts
    # of a new experiment: mlflow_artifact_root, else <lake_root>/mlflow/artifacts. The deep model registers as
    # mlflow_registered_model, a promoted baseline as recflow_<name>.
    mlflow_tracking_uri: str = ""
    mlflow_artifact_root: str = ""
    mlflow_experiment: str = "recflow_nightly"
    mlflow_registered_model: str = "recflow_two_tower"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        positive = (
            "users",
            "items",
            "days",
            "events_per_day",
            "window_days",
            "history_length",
            "top_n",
            "embedding_dim",
            "epochs",
            "batch_size",
            "eval_k",
            "similar_items_n",
            "score_block_users",
            "item_block_mb",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dense_item_budget_mb < 0:
            raise ValueError(f"dense_item_budget_mb must be >= 0, got {self.dense_item_budget_mb}")
        if self.softmax not in SOFTMAX_KINDS:
            raise ValueError(f"softmax must be one of {SOFTMAX_KINDS}, got {self.softmax!r}")
        if not 0.0 <= self.max_cold_start_share <= 1.0:
            raise ValueError(f"max_cold_start_share must be in [0, 1], got {self.max_cold_start_share}")

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then ``RECFLOW_*`` environment variables, then ``overrides`` (None values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _coerce(field.name, _field_type(field), raw)
        for name, value in (overrides or {}).items():
            if value is None:
                continue
            field_map = {f.name: f for f in dataclasses.fields(cls)}
            if name not in field_map:
                raise ValueError(f"unknown setting {name!r}")
            values[name] = _coerce(name, _field_type(field_map[name]), value)
        return cls(**values)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], steering: Iterable[str] = STEERING_PARAMS) -> Settings:
        """From Airflow params: every key must be a settings field (applied) or a steering param (ignored); an
        unknown key, e.g. a typo, is refused rather than leaving its setting at the default."""
        names = {f.name for f in dataclasses.fields(cls)}
        problem = unknown_names(params, names | set(steering))
        if problem:
            raise ValueError(problem)
        return cls.load({k: v for k, v in params.items() if k in names})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds ``--<field-name>`` for every field; unset flags keep the environment/default value."""
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            if field.name == "run_date":
                parser.add_argument(
                    flag, "--date", help="the run's date, YYYY-MM-DD", dest=field.name, default=None
                )
            else:
                parser.add_argument(flag, help=f"default {field.default!r}", dest=field.name, default=None)

    @classmethod
    def from_cli(cls, argv: Sequence[str] | None = None, description: str = "") -> Settings:
        parser = argparse.ArgumentParser(description=description)
        cls.add_arguments(parser)
        return cls.load(vars(parser.parse_args(argv)))

    def replace(self, **changes: Any) -> Settings:
        return Settings.load({**self.to_dict(), **changes}, env={})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run_date"] = self.run_date.isoformat()
        return out

    def to_cli(self) -> list[str]:
        """The flags that reproduce these settings in a spark-submit'ted job."""
        args: list[str] = []
        for name, value in self.to_dict().items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args

    # ---- derived ------------------------------------------------------------------------------------
    @property
    def ds(self) -> str:
        return self.run_date.isoformat()

    def window_dates(self) -> list[dt.date]:
        """The training window: the ``window_days`` days ending the day before ``run_date`` (oldest first)."""
        return [self.run_date - dt.timedelta(days=i) for i in range(self.window_days, 0, -1)]


def _field_type(field: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(Settings)
    return hints[field.name]


def _coerce(name: str, typ: Any, value: Any) -> Any:
    if isinstance(typ, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is dt.date:
            if isinstance(value, dt.datetime):
                return value.date()
            if isinstance(value, dt.date):
                return value
            return dt.date.fromisoformat(str(value)[:10])
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return typ(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"setting {name!r}: cannot read {value!r} as {getattr(typ, '__name__', typ)}"
        ) from err
