"""Fixed glibc allocator thresholds for a long-running inference process.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after
the model is loaded the buffers of a request (phoneme tensors, onnxruntime's activations,
audio) come from the heap, and what they free stays in the process as resident memory.
Fixing the thresholds keeps blocks of 1 MiB and more in their own mappings, which go back
to the kernel when freed: on the bundled voice a 500-phoneme request peaked at 295 MiB
instead of 423-449 MiB (docs/server.md, Memory). Setting ``MALLOC_MMAP_THRESHOLD_`` in the
environment does the same before the interpreter starts; this is for every other launch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 20
"""Blocks this large or larger are mapped on their own; the heap is trimmed above it."""


def fix_malloc_thresholds(threshold: int = THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap and trim thresholds (which turns off their dynamic growth).

    Returns False, changing nothing, where the C library is not glibc (musl, macOS).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    if not done:
        log.warning("mallopt refused the thresholds; freed request buffers may stay resident")
    return done
