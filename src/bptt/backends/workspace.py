"""Large arrays reused from one training step to the next, without fresh pages.

A training step allocates its large arrays again: the tape (gates, states), δz, the rows
of the weight-gradient GEMM. glibc gives blocks of that size back to the kernel when
they are freed (above its mmap and trim thresholds), so the next step gets fresh pages
and pays a page fault, and the kernel's zeroing, for every 4 KiB it first touches: about
1 900 faults a step for the LSTM at (T, B, D, H) = (100, 32, 64, 128), measured as 10 ms
of its 36 on this machine (a VM, where a fault costs about 5 µs; benchmarks/RESULTS.md).
PyTorch's GPU allocator keeps freed blocks for the same reason. Here the layers' own
large arrays come from a cache of blocks, and only up to a limit:

    empty(shape, dtype)    an uninitialised C-contiguous ndarray, in a free cached block
                           of its size class when there is one (else a new block)
    release()              give every free cached block back to the system now
    stats()                free blocks and bytes held, blocks made and blocks reused

An array from here is an ordinary ndarray. Its block is free again when the last array
viewing it is gone, and not before: the block is lent through a small owner object that
NumPy keeps alive as the ``base`` of the array and of every view of it, and whose
finalizer hands the block back. Sizes are rounded up to one of eight classes per
doubling (at most 12.5% more); a request takes a free block of its class, else one of up
to twice its size. When none fits, free blocks of as many bytes as the new one are given
back to the system first (the least recently freed), so the cache holds no more memory
than the arrays in use would take: a training step that repeats its sizes reuses every
block, and a pattern that does not (checkpointed BPTT) does not grow the peak. Free
blocks are kept up to settings.workspace_bytes() (``BPTT_WORKSPACE_MB``, default 512; 0 turns the
cache off); arrays smaller than ``MIN_BYTES`` (glibc's heap serves those without new
pages) or larger than the limit come from ``np.empty`` directly.
"""
from __future__ import annotations

import collections
import math
import os
import threading

import numpy as np

from . import settings

MIN_BYTES = 256 * 1024
ALIGN = 64                                   # bytes: a cache line, and the widest SIMD load



_lock = threading.Lock()
_free: dict[int, dict[int, np.ndarray]] = {}                 # size class -> {id: block}
_order: collections.OrderedDict[int, int] = collections.OrderedDict()   # id -> size class, oldest first
_returned: collections.deque = collections.deque()          # (size, block) freed, not yet filed
_counts = {"free_bytes": 0, "made": 0, "reused": 0}


def _new_lock_in_child():
    """A fork while another thread held the lock would leave the child's copy held."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def size_class(nbytes: int) -> int:
    """nbytes rounded up to a multiple of 1/8 of its power of two (and of ALIGN)."""
    step = max(ALIGN, 1 << max(0, int(nbytes - 1).bit_length() - 4))
    return -(-nbytes // step) * step


class _Lease:
    """The owner NumPy records as ``base``: holds the block while any view of it lives."""
    __slots__ = ("block", "size", "__array_interface__", "__weakref__")

    def __init__(self, block, size, shape, dtype):
        self.block = block
        self.size = size
        start = block.ctypes.data
        self.__array_interface__ = {"data": (start + (-start) % ALIGN, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}

    def __del__(self):
        try:
            _returned.append((self.size, self.block))    # atomic; filed by whoever holds the lock
            if _lock.acquire(blocking=False):            # not when this runs inside empty() itself
                try:
                    _file_returned()
                finally:
                    _lock.release()
        except Exception:                                # pragma: no cover - interpreter shutdown
            pass


def _file_returned():
    """File the freed blocks as free, then give back the oldest beyond LIMIT. Lock held."""
    while _returned:
        size, block = _returned.popleft()
        _free.setdefault(size, {})[id(block)] = block
        _order[id(block)] = size
        _counts["free_bytes"] += size
    while _counts["free_bytes"] > settings.workspace_bytes() and _order:
        _drop_oldest()


def _drop_oldest() -> int:
    """Give the least recently freed block back to the system; its size. Lock held."""
    key, size = _order.popitem(last=False)
    _unfile(size, key)
    return size


def _unfile(size, key):
    blocks = _free[size]
    block = blocks.pop(key)
    if not blocks:
        del _free[size]                          # keep _take's scan to the classes held
    _counts["free_bytes"] -= size
    return block


def empty(shape, dtype=np.float64) -> np.ndarray:
    """np.empty(shape, dtype), C order, in a cached block when the array is large."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    nbytes = math.prod(shape) * dtype.itemsize          # (Python ints: np.prod costs µs a call)
    if nbytes < MIN_BYTES or nbytes > settings.workspace_bytes() or dtype.hasobject:
        return np.empty(shape, dtype)
    size = size_class(nbytes)
    with _lock:
        _file_returned()
        size, block = _take(size)
        if block is None:
            _give_back(size)
            _counts["made"] += 1
        else:
            _counts["reused"] += 1
    if block is None:
        block = np.empty(size + ALIGN, np.uint8)
    return np.asarray(_Lease(block, size, shape, dtype))


def _take(size):
    """(class, block): a free block of this size class, the most recently freed (warm in
    cache); else the smallest free one of up to twice the size; else (size, None). Lock held."""
    fits = [k for k in _free if size <= k <= 2 * size]
    if not fits:
        return size, None
    k = size if size in fits else min(fits)
    key = next(reversed(_free[k]))               # the most recently freed of its class
    del _order[key]
    return k, _unfile(k, key)


def _give_back(nbytes):
    """Before a new block of nbytes is made: give back free blocks, the least recently
    freed first, until as many bytes went back (or none is left). So a pattern of sizes
    the cache cannot serve (checkpointed BPTT's segments of every length) leaves it
    holding about what the arrays in use take, not a pile of free blocks. Lock held."""
    while nbytes > 0 and _order:
        nbytes -= _drop_oldest()


def release() -> None:
    """Give every free cached block back to the system (arrays in use are untouched)."""
    with _lock:
        _file_returned()
        _free.clear()
        _order.clear()
        _counts["free_bytes"] = 0


def stats() -> dict:
    """{"free_blocks", "free_bytes", "made", "reused"} of the cache so far."""
    with _lock:
        _file_returned()
        return {"free_blocks": len(_order), **_counts}
