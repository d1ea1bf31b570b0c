"""OpenLineage for ``recflow_nightly``: every task reports the lake tables it reads and writes.

The OpenLineage provider asks a task for ``get_openlineage_facets_on_start`` / ``_on_complete`` when it has them
(its ``DefaultExtractor``) and reports the returned datasets as the run's inputs and outputs. Spark stages run in a
``spark-submit`` subprocess (no OpenLineage listener in the JVM), so the datasets come from the stage's entry in
``schemas.lake.STAGE_TABLES`` instead, resolved at run time under the worker's lake root: the same root the run's
settings use (``RECFLOW_LAKE_ROOT`` or the default), not the one the DAG file was parsed with.

Dataset names follow OpenLineage's naming spec: a local lake is namespace ``file`` and the table's absolute path;
an object store ``s3://bucket`` (``s3a``/``s3n`` count as ``s3``) or ``gs://bucket`` and the key; any other URI
``scheme://authority`` and the path. Where events go is Airflow's ``[openlineage] transport``; without one the
provider emits nothing. Lineage only: no Assets, so no asset events (publish's Assets stay as they are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schemas import lake
from schemas.settings import Settings

_SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}  # Hadoop's and gcsfs' spellings of the same stores


def dataset_name(location: str) -> tuple[str, str]:
    """``(namespace, name)`` of a table location (a local path or a URI), by OpenLineage's naming spec (the
    client's ``openlineage.client.naming.dataset`` classes); another scheme: ``scheme://authority`` and the path."""
    from openlineage.client.naming import dataset as naming

    parts = urlsplit(location)
    scheme = _SCHEMES.get(parts.scheme, parts.scheme)
    key = parts.path.lstrip("/")
    spec: naming.DatasetNaming
    if scheme in ("", "file"):
        spec = naming.LocalFileSystem(path=str(Path(parts.path if scheme else location).resolve()))
    elif scheme == "s3":
        spec = naming.S3(bucket_name=parts.netloc, object_key=key)
    elif scheme == "gs":
        spec = naming.GCS(bucket_name=parts.netloc, object_key=key)
    elif scheme == "hdfs" and parts.hostname and parts.port:
        spec = naming.HDFS(namenode_host=parts.hostname, namenode_port=str(parts.port), path=parts.path)
    else:
        return f"{scheme}://{parts.netloc}", parts.path
    return spec.get_namespace(), spec.get_name()


def stage_lineage(stage: str, lake_root: str | None = None) -> Any:
    """The provider's ``OperatorLineage`` of ``stage``: its tables under ``lake_root`` (default: this worker's)."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    tables = lake.stage_tables(lake_root or Settings.load().lake_root, stage)
    return OperatorLineage(
        inputs=[InputDataset(*dataset_name(path)) for path in tables.inputs],
        outputs=[OutputDataset(*dataset_name(path)) for path in tables.outputs],
    )


class _StageLineage:
    """The two methods the provider looks up on a task, for one stage (the same datasets at start and end)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_start(self) -> Any:
        return stage_lineage(self.stage)

    def on_complete(self, task_instance: Any) -> Any:
        return stage_lineage(self.stage)


def report_lake_lineage(tasks: list[Any]) -> None:
    """Give each task (an operator, or a TaskFlow call's XComArg) listed in ``schemas.lake.STAGE_TABLES`` by its
    task id the methods the OpenLineage provider reads its datasets from; other tasks touch no table."""
    for node in tasks:
        operator = getattr(node, "operator", node)
        if operator.task_id in lake.STAGE_TABLES:
            lineage = _StageLineage(operator.task_id)
            operator.get_openlineage_facets_on_start = lineage.on_start
            operator.get_openlineage_facets_on_complete = lineage.on_complete
