"""Keyed pseudonyms for user ids: HMAC-SHA256 built from Spark SQL builtins (no Python UDF), truncated to 32 hex.

The key is a secret of the deployment, never of the code: it comes from the environment variable named by
``settings.pseudonym_key_env`` or, when that is unset and Airflow is importable, from the password of the Airflow
connection ``settings.pseudonym_conn_id``. Without a key the job stops (a pseudonym with a guessable key is not one).

Same key, same id -> same pseudonym, so events, users and every later table join on the pseudonym; rotating the key
re-keys every table from the next full recompute.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from schemas.settings import Settings

PSEUDONYM_HEX_CHARS = 32  # 128 bits: collisions are negligible at any user count this pipeline sees
_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104)


class PseudonymKeyMissing(RuntimeError):
    """No pseudonymisation key in the environment or the Airflow connection."""


def resolve_key(settings: Settings, env: dict[str, str] | None = None) -> bytes:
    """The HMAC key: env var ``settings.pseudonym_key_env``, else the Airflow connection's password."""
    env = dict(os.environ) if env is None else env
    value = env.get(settings.pseudonym_key_env, "")
    if value:
        return value.encode("utf-8")
    airflow_error = _key_from_airflow(settings.pseudonym_conn_id)
    if isinstance(airflow_error, bytes):
        return airflow_error
    raise PseudonymKeyMissing(
        f"no pseudonymisation key: set the environment variable {settings.pseudonym_key_env} "
        f"or the password of the Airflow connection {settings.pseudonym_conn_id!r} ({airflow_error}). "
        "The key is a deployment secret and is never read from code or the repository."
    )


def key_for_spark_job(settings: Settings | None = None) -> str:
    """The key for a spark-submit'ted job's environment, as the DAG's clean task renders it (a template macro,
    run in the Airflow worker): the password of the Airflow connection ``settings.pseudonym_conn_id`` when that
    connection exists, else the worker's environment variable ``settings.pseudonym_key_env`` (as before), else "".
    Either value is registered with Airflow's secrets masker, so task logs and rendered fields show ``***``."""
    settings = settings or Settings.load()
    found = _key_from_airflow(settings.pseudonym_conn_id)  # Connection.get masks the password it returns
    value = (
        found.decode("utf-8") if isinstance(found, bytes) else os.environ.get(settings.pseudonym_key_env, "")
    )
    if value:
        from airflow.sdk.log import mask_secret

        mask_secret(value)
    return value


def _key_from_airflow(conn_id: str) -> bytes | str:
    """The connection's password as bytes, or a short reason why there is none."""
    try:
        from airflow.sdk import Connection
    except ImportError:
        return "airflow is not importable here"
    try:
        password = Connection.get(conn_id).password
    except Exception as err:  # not defined, or no Airflow context/backends in this process
        return f"Airflow connection lookup failed: {type(err).__name__}"
    if not password:
        return "the Airflow connection has no password"
    return str(password).encode("utf-8")


def _pads(key: bytes) -> tuple[bytes, bytes]:
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def pseudonym(user_id: str, key: bytes) -> str:
    """Reference implementation (pure Python): what :func:`pseudonym_column` computes in Spark."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def pseudonym_column(user_id: Any, key: bytes) -> Any:
    """HMAC-SHA256(key, utf8(user_id)) as lowercase hex, truncated; null stays null.

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)); the two padded keys are constants, so the whole thing is two
    ``sha2`` calls over binary concatenations, all inside the JVM.
    """
    from pyspark.sql import functions as F

    inner_pad, outer_pad = _pads(key)
    message = F.encode(user_id, "UTF-8")
    inner = F.unhex(F.sha2(F.concat(F.lit(bytearray(inner_pad)), message), 256))
    outer = F.sha2(F.concat(F.lit(bytearray(outer_pad)), inner), 256)
    return F.substring(outer, 1, PSEUDONYM_HEX_CHARS)
