"""Keep freed large arrays in the process instead of giving them back to the kernel.

A training step allocates the same large arrays every time: the tape (gates, c, h), δz,
the [x_t | h_{t-1}] rows of the weight GEMM. glibc's malloc serves an array above its
mmap threshold (128 KiB, raised on the fly up to 32 MiB) with a fresh mmap and unmaps it
when it is freed, so every step the kernel hands out zeroed pages again: a page fault per
4 KiB (or a 2 MiB zeroing where NumPy asks for huge pages). Measured here on an LSTM
forward + backward, float32 (`benchmarks/cells.py` reports both settings):

    (T, B, D, H) = (100, 32, 64, 128):   about 1900 page faults a step, 31-38 ms -> 28-29 ms
    (T, B, D, H) = (200, 32, 128, 512):  468 -> 395 ms (PyTorch's allocations gain too)

``keep_freed_memory()`` raises the mmap threshold and the trim threshold (mallopt), so
freed blocks go back to malloc's free lists and the next step reuses them, already
mapped. The cost: the process keeps up to its peak of freed memory, as jemalloc or
tcmalloc would. It acts on the whole process, so the library never calls it on import;
the `bptt` command calls it for its own process, and a program of yours may call it once.
Without glibc (macOS, musl) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1            # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3

LIMIT = 1 << 30                   # blocks up to 1 GiB come from malloc's heap and stay there


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version                  # present in glibc only
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(limit: int = LIMIT) -> bool:
    """Ask glibc's malloc to serve blocks up to ``limit`` bytes from its heap and to keep
    freed memory (up to ``limit`` at the top of the heap) for reuse. True when glibc took
    both settings; False where there is no glibc or it refused them."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit < 2 ** 31:
        raise ValueError(f"limit: expected an int number of bytes in (0, 2**31), got {limit!r}")
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
