"""Keep freed memory in the process for TensorFlow on the CPU.

glibc hands blocks above its mmap threshold back to the kernel on ``free``, and trims the heap top above 128 KiB.
TensorFlow allocates and frees the same large tensors at every training step, so each step page-faults in freshly
zeroed pages. Measured on the demo lake (2 cores): half of the training's CPU time was in the kernel (page faults,
page clearing, unmapping) and ``fit`` took 107 s; with the settings below it took 47 s (README, "The nightly run").

The price: the process keeps its peak heap until it exits instead of returning it between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: blocks up to 32 MiB come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # the heap top is returned to the kernel only above 1 GiB free
TOP_PAD = 64 << 20  # each heap extension asks for 64 MiB more, so growth is not one page-fault burst per step

# (mallopt parameter, the same setting's glibc environment variable, value)
_SETTINGS = (
    (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),
    (_M_TOP_PAD, "MALLOC_TOP_PAD_", TOP_PAD),
)

_applied: bool | None = None


def allocator_env() -> dict[str, str]:
    """The same settings as glibc environment variables, for a whole process from its start: the Airflow process
    that runs tasks in-process (``airflow dags test``), where threads and arenas exist before a task can call
    :func:`retain_freed_memory`."""
    return {name: str(value) for _, name, value in _SETTINGS}


def retain_freed_memory() -> bool:
    """Applies the settings above once per process (glibc only); returns whether they are in effect."""
    global _applied
    if _applied is None:
        _applied = False
        name = ctypes.util.find_library("c")
        try:
            mallopt = ctypes.CDLL(name).mallopt if name else None
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:  # not glibc (musl, macOS): nothing to tune
            _applied = all(mallopt(param, value) == 1 for param, _, value in _SETTINGS)
        log.debug("retain freed memory: %s", _applied)
    return _applied
