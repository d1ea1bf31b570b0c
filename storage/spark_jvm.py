"""JVM options for Spark drivers and executors started from this venv: the class-data-sharing archive of Spark's
classes when one fits this JDK and Spark (built by ``tools/class_archive.py``), else nothing.

An archive belongs to one JDK and one Spark classpath: it is offered only while the stamp beside it matches both,
and the JVM itself falls back to loading classes normally if it does not fit (``-Xshare:auto``, its warning
silenced), so a stale or missing archive costs start-up time, never a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ARCHIVE = Path(sys.prefix) / "share" / "recflow" / "spark-driver-classes.jsa"
STAMP = ARCHIVE.with_suffix(".json")
QUIET = "-Xlog:cds*=off"  # an archive that does not fit is skipped without a word


def java_binary() -> str | None:
    """The java binary Spark's launcher runs (spark-class: ``$JAVA_HOME/bin/java`` when set, else ``java``)."""
    if os.environ.get("JAVA_HOME"):
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java")
        return java if os.path.isfile(java) else None
    return shutil.which("java")


def fingerprint() -> dict[str, str]:
    """What the archive is only valid for: this JDK (its binary, by path and change time) and Spark's jars."""
    import pyspark

    java = os.path.realpath(java_binary() or "")
    jars = Path(pyspark.__file__).parent / "jars"
    return {
        "java": java,
        "java_changed": str(os.stat(java).st_mtime_ns) if os.path.isfile(java) else "",
        "pyspark": pyspark.__version__,
        "jars": str(jars),
        "jars_changed": str(max((p.stat().st_mtime_ns for p in jars.glob("*.jar")), default=0)),
    }


def archive_is_current() -> bool:
    try:
        return ARCHIVE.is_file() and json.loads(STAMP.read_text()) == fingerprint()
    except (OSError, ValueError):
        return False


def spark_jvm_options() -> str:
    """The archive's options when it fits this JDK and Spark, else nothing (where the file is absent, e.g. a
    cluster's executor hosts, the JVM ignores it)."""
    return f"-XX:SharedArchiveFile={ARCHIVE} {QUIET}" if archive_is_current() else ""
