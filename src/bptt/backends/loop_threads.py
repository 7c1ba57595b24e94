"""How many threads a compiled time loop uses, and the worker that runs the second.

A compiled loop (cells/compiled.py) can run each step on two threads, the caller and one
worker, each on its own rows of the batch for the recurrent GEMM and the kernel alike. A
row's recurrence needs only that row and W_h (packed once, read only), so the two halves
never meet, and each row's arithmetic is that of one thread: the same bits either way.
Neither thread calls OpenBLAS inside the loop; the bulk GEMMs before and after it run on
OpenBLAS's own threads, never two at once (concurrent calls from two threads of ours
compete for the same cores and OpenBLAS's own workers).

OpenBLAS's idle workers spin after each call (2^N cycles, N = OPENBLAS_THREAD_TIMEOUT,
default 28, about 0.1 s) on the cores the loop needs, so two threads are used only where
they sleep soon (settings.blas_workers_sleep; ``import bptt`` sets N = 20 before NumPy
loads OpenBLAS). ``parts_for`` also asks that each thread get ``MIN_ROWS_SPLIT`` rows
(enough sums in flight for the micro-kernel) and that the loop's GEMM be at least
``MIN_LOOP_FLOPS``, the size from which handing half of it to the worker pays for the
hand-over (`benchmarks/cells.py` with `BPTT_LOOP_THREADS=1` and `2` measures both). Inside the batch halves of batch_split.py
each half is already a thread: they ask for one (``use(1)``). One worker serves the
process: a thread whose loop finds it busy runs both parts itself (``run_pair`` answers
False).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from . import packed_gemm, settings

MIN_LOOP_FLOPS = 3.0e7
MIN_ROWS_SPLIT = 2 * packed_gemm.MIN_ROWS

_WANTED: contextvars.ContextVar[int | None] = contextvars.ContextVar("bptt_loop_threads", default=None)


def wanted() -> int:
    """1 or 2: the threads a compiled loop may use here (``use``, else the setting)."""
    chosen = _WANTED.get()
    return settings.loop_threads() if chosen is None else chosen


@contextlib.contextmanager
def use(threads: int):
    """Within the block (this thread and context), the compiled loops use this many threads."""
    if threads not in (1, 2):
        raise ValueError(f"threads: expected 1 or 2, got {threads!r}")
    token = _WANTED.set(threads)
    try:
        yield
    finally:
        _WANTED.reset(token)


def large_enough(B: int, GH: int, H: int, T: int = 1) -> bool:
    """Whether a loop of T steps with batch B and W_h (GH, H) is worth two threads: by its
    shape alone (the trainer decides by it too, so that its choice never depends on the
    environment)."""
    return B >= MIN_ROWS_SPLIT and T * 2.0 * B * GH * H >= MIN_LOOP_FLOPS


def parts_for(B: int, GH: int, H: int, T: int = 1) -> int:
    """Into how many parts (1 or 2) to cut each step of a loop of T steps with batch B and
    W_h (GH, H)."""
    two = wanted() == 2 and settings.blas_workers_sleep()
    return 2 if two and large_enough(B, GH, H, T) else 1


_POOL: ThreadPoolExecutor | None = None
_PAIR = threading.Lock()                 # held while the worker runs a part
# A forked child has no worker thread (the pool would queue its part for ever): a fresh one.
os.register_at_fork(after_in_child=lambda: globals().update(_POOL=None, _PAIR=threading.Lock()))


def run_pair(loop, args) -> bool:
    """loop(*args, part, 2) for part 0 on this thread and part 1 on the worker; True when
    both are done, raising either one's error. False at once, running nothing, when the
    worker is busy with another thread's loop."""
    global _POOL
    if not _PAIR.acquire(blocking=False):
        return False
    try:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(1, thread_name_prefix="bptt-loop")
        other = _POOL.submit(loop, *args, 1, 2)
        try:
            loop(*args, 0, 2)
        finally:
            error = other.exception()        # waits for the worker either way
        if error is not None:
            raise error
        return True
    finally:
        _PAIR.release()


def run(loop, args, parts) -> None:
    """loop(*args, part, parts): with parts = 2 on two threads where the worker is free,
    else both parts one after the other here; with parts = 1 whole, here."""
    if parts == 1 or not run_pair(loop, args):
        for part in range(parts):
            loop(*args, part, parts)
