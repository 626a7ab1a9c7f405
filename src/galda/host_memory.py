"""Host memory reuse between training steps (glibc's ``mallopt``).

Why: glibc's ``malloc`` serves every block above its *mmap threshold* with a fresh mapping from the
kernel and unmaps it on ``free``. The threshold rises as such blocks are freed, but never above
32 MiB on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``, glibc ``malloc.c``), so each activation
larger than that is page-faulted and zeroed again at every step: the first feature map of a
256-image DeepMerge batch (source + target, 8 × 75 × 75 floats per image) is 46 MiB. That is why
an MMD or DANN step on the CPU cost more per image than the baseline's 128-image step
(benchmarks/README.md, "Host memory"). Raising the threshold (and the trim threshold, so the heap
is not handed back and re-faulted after each step) lets the allocator reuse the same memory every
step, which is what PyTorch's CPU tuning guide gets from jemalloc or tcmalloc with ``LD_PRELOAD``.

The setting is process-wide and lasts for the process; it changes speed and resident memory
(freed blocks stay with the process, up to the run's peak), never results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("galda")

# mallopt parameter numbers, glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # an int: the heap is never trimmed below its peak


def _glibc() -> ctypes.CDLL | None:
    """The running glibc, or None (macOS, Windows, musl: nothing to tune)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> int | None:
    """Keep freed host memory for reuse: ``mallopt(M_MMAP_THRESHOLD)`` and ``M_TRIM_THRESHOLD``.

    Returns the mmap threshold that took effect (glibc versions that refuse ``mmap_threshold``
    get the largest power of two down to 32 MiB that they accept), or None where the C library is
    not glibc or accepts none of them.
    """
    libc = _glibc()
    if libc is None:
        return None
    threshold = mmap_threshold
    while threshold >= 32 << 20:
        if libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1:
            libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
            return threshold
        threshold //= 2
    return None


def configure_host_memory(reuse: bool) -> int | None:
    """Apply ``reuse_host_memory`` from the config; log what took effect."""
    if not reuse:
        return None
    threshold = reuse_freed_memory()
    if threshold is None:
        log.debug("reuse_host_memory: not a glibc system, the C library's allocator is unchanged")
    else:
        log.debug("reuse_host_memory: blocks up to %d MiB reused from the heap", threshold >> 20)
    return threshold
