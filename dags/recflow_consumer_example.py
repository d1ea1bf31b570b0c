"""
### recflow_consumer_example

An example downstream DAG: scheduled on the `recflow_recommendations` Asset, so it runs each time
`recflow_nightly` publishes a new recommendations table. It reads the latest publication (through the `_LATEST`
pointer, never a half-written partition) and logs what a consumer would check first: rows, users, items per user.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import dag, get_current_context, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _params import RECOMMENDATIONS_ASSET  # noqa: E402  (the producer's own Asset object)


def read_latest_recommendations(lake_root: str) -> Any:
    """The latest complete publication as a pyarrow Table, through the publish job's own reader (``_LATEST``)."""
    from storage.publish import read_latest

    return read_latest(lake_root)


@dag(
    dag_id="recflow_consumer_example",
    schedule=[RECOMMENDATIONS_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["recflow", "consumer", "example"],
    doc_md=__doc__,
    default_args={
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": dt.timedelta(minutes=10),
    },
)
def recflow_consumer_example() -> None:
    @task
    def report_latest_recommendations() -> dict[str, Any]:
        ctx = get_current_context()
        events = ctx["triggering_asset_events"].get(RECOMMENDATIONS_ASSET, [])
        extra = dict(events[-1].extra) if events else {}
        from schemas.settings import Settings

        lake_root = extra.get("lake_root") or Settings.load().lake_root
        table = read_latest_recommendations(lake_root)
        users = len(table.column("user_id").unique())
        stats = {
            "published_dt": extra.get("dt"),
            "rows": table.num_rows,
            "users": users,
            "items_per_user": round(table.num_rows / users, 2) if users else 0.0,
        }
        print(f"latest recommendations: {stats}")
        return stats

    report_latest_recommendations()


recflow_consumer_example()
