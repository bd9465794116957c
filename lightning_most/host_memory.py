"""Host (CPU) memory: keep freed blocks in the process instead of handing them back to the kernel.

glibc's malloc serves every block above its mmap threshold (32 MiB at most) with a fresh `mmap` and unmaps it
on `free`. A training step allocates and frees the same large tensors every step (activations, and the stacked
experts' weight gradients: 2.2 GB per DeepSeek-V2-Lite MoE layer), so every step faults them back in page by
page and the kernel zeroes each page first. CUDA's caching allocator keeps freed GPU blocks for reuse; PyTorch
leaves host memory to malloc. `reuse_freed_host_memory` tells glibc to take large blocks from its heap too
(`M_MMAP_MAX` 0) and never to trim the heap's top (`M_TRIM_THRESHOLD`), so freed blocks are reused.

Measured (bench/RESULTS.md, 2-core VM, fp32): one MAMoE layer at DeepSeek-V2-Lite width, forward + backward,
7.22 s -> 4.94 s; the equal-FLOPs dense floor 5.18 s -> 4.31 s. The cost: the process's resident memory stays at
its peak (as with the CUDA allocator) instead of falling between steps, and the heap settles only after a few
steps: torch asks `posix_memalign` for 64-byte alignment, which glibc 2.36 cannot serve from a freed chunk of the
request's own size, so the first rounds of a repeated allocation extend the heap (4-8 rounds of 64 MiB in the test).

`python -m lightning_most` calls it first; `LIGHTNING_MOST_HOST_MALLOC=system` keeps glibc's defaults. Other C
libraries (musl) and other systems are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

HOST_MALLOC_ENV = "LIGHTNING_MOST_HOST_MALLOC"
"""`reuse` (default): freed large blocks stay in the process; `system`: glibc's defaults."""
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h> mallopt parameters
_NEVER_TRIM = -1  # mallopt's int, read by glibc as size_t: the largest threshold


def reuse_freed_host_memory() -> bool:
    """Make glibc malloc reuse freed large blocks (see the module docstring); True if it is now in effect.

    Raises ValueError if `LIGHTNING_MOST_HOST_MALLOC` holds anything but `reuse` or `system`.
    """
    mode = os.environ.get(HOST_MALLOC_ENV, "reuse")
    if mode not in ("reuse", "system"):
        raise ValueError(f"{HOST_MALLOC_ENV}={mode!r}: use 'reuse' (the default) or 'system' (glibc's own settings)")
    if mode == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        log.debug("no glibc mallopt: host memory keeps the C library's defaults")
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
