"""End to end: a defect in one day's raw data stops recflow_nightly before publish; the previous publication stays.

Builds on the session's tiny run of day D1 (``tiny_run`` in conftest.py, shared with tests/test_dags.py): on the same
lake, the generator writes raw data for D2 = D1 + 1, most of D2's raw events are then cut away (a volume drop the
raw suite cannot see, since every remaining line is valid), and the DAG runs D2 without demo data. Cleaning accepts
the few lines, ``validate_clean`` finds the day's volume far below the median of the previous days and fails the
run; nothing downstream runs, and ``recommendations/_LATEST`` still names D1's complete table.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import TINY_NIGHTLY, run_nightly
from test_validation import inject_volume_drop

from schemas import lake
from schemas.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.spark, pytest.mark.tf]

KEEP_SHARE = 0.02  # ~80 of ~4000 lines: far below the band (TINY_NIGHTLY's volume_band 0.9 keeps >= 10 %)
OUTPUTS = (lake.RECOMMENDATIONS, lake.SIMILAR_ITEMS)
# what must not run once validate_clean fails (publish above all)
DOWNSTREAM = (
    "features",
    "validate_features",
    "train",
    "evaluate",
    "validate_metrics",
    "gate",
    "score",
    "validate_recommendations",
    "publish",
)


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _publication(root: str) -> dict[str, Any]:
    """What consumers see of each output table: the _LATEST pointer, its manifest and the full table."""
    from storage.publish import MANIFEST, latest_partition, read_latest

    seen: dict[str, Any] = {}
    for name in OUTPUTS:
        path = latest_partition(root, name)
        seen[name] = {
            "partition": Path(path).name,
            "table": read_latest(root, name),
            "manifest": json.loads((Path(path) / MANIFEST).read_text()),
        }
    return seen


@pytest.fixture(scope="module")
def defective_day(dagbag: Any, tiny_run: dict[str, Any]) -> dict[str, Any]:
    from demo import generate

    root, d1 = tiny_run["lake_root"], tiny_run["run_date"]
    assert str(tiny_run["dag_run"].state) == "success", (
        "the D1 run must have published for this test to mean much"
    )
    d2 = (dt.date.fromisoformat(d1) + dt.timedelta(days=1)).isoformat()
    before = _publication(root)

    # D2's raw data as the DAG's demo step would have written it (same params, hence same world), one day only
    nightly = dagbag.dags["recflow_nightly"]
    params = copy.deepcopy(nightly.params)
    params.update({**TINY_NIGHTLY, "run_date": d2})
    settings = Settings.from_params(params.validate()).replace(lake_root=root, days=1)
    generate.generate(settings)
    kept = inject_volume_drop(root, d2, keep_share=KEEP_SHARE)

    dag_run = run_nightly(dagbag, root, d2, generate_demo_data=False)
    return {
        "root": root,
        "d1": d1,
        "d2": d2,
        "before": before,
        "kept": kept,
        "dag_run": dag_run,
        "states": _states(dag_run),
    }


def test_the_defect_fails_the_run_at_validate_clean(defective_day: dict[str, Any]) -> None:
    states = defective_day["states"]
    assert str(defective_day["dag_run"].state) == "failed", states
    # raw lines are all valid, so the raw suite passes and cleaning runs; the clean suite is where it stops
    assert states["validate_raw"] == "success" and states["clean"] == "success", states
    assert states["validate_clean"] == "failed", states
    failed = {task for task, state in states.items() if state == "failed"}
    assert failed == {"validate_clean", "fail_if_any_stage_failed"}, states
    for task in DOWNSTREAM:
        assert states[task] == "upstream_failed", f"{task} ran after the failed suite: {states}"
    assert states["summary"] == "success", "the summary still reports the failed run"


def test_the_failed_expectation_is_the_volume_band(defective_day: dict[str, Any]) -> None:
    """The kept validation result names the row-count expectation, with D2's count below D1's neighbours."""
    root, d2 = defective_day["root"], defective_day["d2"]
    clean_rows = pq.read_table(lake.partition(root, lake.CLEAN_EVENTS, d2)).num_rows
    assert 0 < clean_rows <= defective_day["kept"]
    results = []
    for path in Path(lake.report_dir(root, d2), "gx_validations").rglob("*.json"):
        doc = json.loads(path.read_text())
        if doc.get("suite_name") == "clean_events":
            results.extend(doc["results"])
    assert results, f"no clean_events validation result kept under {lake.report_dir(root, d2)}"
    failed = [r for r in results if not r["success"]]
    assert [r["expectation_config"]["type"] for r in failed] == ["expect_table_row_count_to_be_between"]
    assert failed[0]["result"]["observed_value"] == clean_rows
    assert clean_rows < failed[0]["expectation_config"]["kwargs"]["min_value"]


def test_the_previous_publication_stays_complete(defective_day: dict[str, Any]) -> None:
    from storage.publish import MANIFEST

    root, d1, d2 = defective_day["root"], defective_day["d1"], defective_day["d2"]
    before, after = defective_day["before"], _publication(root)
    for name in OUTPUTS:
        assert Path(lake.latest_pointer(root, name)).read_text().strip() == f"dt={d1}"
        assert after[name]["partition"] == f"dt={d1}"
        table = after[name]["table"]
        assert table.num_rows == after[name]["manifest"]["rows"] > 0, f"{name} is not complete"
        assert table.equals(before[name]["table"]), f"{name} changed under the consumers"
        assert after[name]["manifest"] == before[name]["manifest"]
        assert (Path(lake.partition(root, name, d1)) / MANIFEST).exists()
        # nothing of D2 reached the published tables, nor their staging area
        published = sorted(p for p in os.listdir(lake.table(root, name)) if p.startswith("dt="))
        assert published == [f"dt={d1}"], published
        assert not Path(lake.table(root, lake.STAGING), name, f"dt={d2}").exists()
