"""How many threads a compiled time loop uses, and the worker that runs the second.

A compiled loop (cells/compiled.py) can run each step on two threads: the calling thread
and one worker, each with its own rows of the batch for the recurrent GEMM and the cell's
kernel alike. W_h is packed once and shared read-only, and a row's recurrence needs only
that row, so the two halves of the batch run through time without ever meeting, and each
row's arithmetic is the same as on one thread: the same bits either way. Neither thread
calls BLAS inside the loop (the micro-kernel, or oneMKL's sequential packed GEMM); the
layer's bulk GEMMs before and after it are OpenBLAS's, on its own threads.

OpenBLAS's idle workers spin after each call they joined, for 2^N cycles with N from
OPENBLAS_THREAD_TIMEOUT (default 28, about 0.1 s), on the cores the loop needs: the RNN at
(100, 32, 64, 128) took 18.5 ms a pass with two loop threads beside spinning workers, 17.0
with one, 11.7 with the workers asleep (2-core AMD EPYC). Two OpenBLAS calls from two
threads of ours at once measured 3x slower than one after the other (a ∂W GEMM of
(128, 3200) x (3200, 192): 10 ms against 2 x 3), so the bulk GEMMs are not shared out.
So two threads only where the workers sleep soon (settings.blas_workers_sleep: bptt sets
N = 20 before NumPy loads OpenBLAS, unless it is set already).

When (``parts_for``): two threads are wanted (``use(2)``, else settings.loop_threads():
2 where the process may run on 2 cores or more), the workers sleep soon, each thread gets
``MIN_ROWS_SPLIT`` rows (so that its micro-kernel keeps enough sums in flight) and the
whole loop's GEMM is at least ``MIN_LOOP_FLOPS``, to pay for handing half of it to the
worker (about 0.1 ms a call): whole forward+backward passes split against one thread
measured 1.13-1.35x at 6.5-13 MFLOP a loop, 0.96 at 26, 0.76-0.85 at 52-520 (2-core AMD
EPYC). Inside the batch halves of batch_split.py each half is already a thread: they ask
for one. One worker serves the process: a second thread whose loop finds it busy runs
both parts itself rather than wait (``run_pair`` answers False).
"""
from __future__ import annotations

import contextlib
import contextvars
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


def parts_for(B: int, GH: int, H: int, T: int = 1) -> int:
    """Into how many parts (1 or 2) to cut each step of a loop of T steps with batch B and
    W_h (GH, H)."""
    two = wanted() == 2 and settings.blas_workers_sleep()
    return 2 if two and B >= MIN_ROWS_SPLIT and T * 2.0 * B * GH * H >= MIN_LOOP_FLOPS else 1


_POOL: ThreadPoolExecutor | None = None
_PAIR = threading.Lock()                 # held while the worker runs a part


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
    if parts == 2 and not run_pair(loop, args):
        loop(*args, 0, 2)
        loop(*args, 1, 2)
    elif parts == 1:
        loop(*args, 0, 1)
