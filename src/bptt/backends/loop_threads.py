"""A layer's compiled time loop on two threads of our own: how the loops use 2 cores.

With BLAS on two threads and the loop on one, each step's recurrent GEMM is split by
OpenBLAS (which re-packs W_h and synchronises its threads inside every call) and the
step kernel runs on one core while the other waits. Here the calling thread and one
worker each run half of every step (backends/cpu_loops.py, ``parts = 2``). With the
packed GEMM (the default, backends/packed_gemm.py: W_h packed once, shared read-only),
each thread takes half of the batch's rows for the GEMM and the kernel alike, and so
the two halves run through time without meeting: 2-8% faster than the split below at
(100, 32, 64, 128) and (200, 32, 128, 512) (benchmarks/RESULTS.md). With
BPTT_STEP_GEMM=blas the GEMM is split into two blocks of output columns, each thread's
block single-threaded with only its half of W_h packed, and the kernel into two blocks
of batch rows; they meet at a spin barrier (backends/spin.py) twice a step. BLAS is held
to one thread while they run, and goes back to its setting after. Measured on 2 cores
(benchmarks/RESULTS.md): the LSTM's backward loop at (200, 32, 128, 512)
0.63-0.81 of the one-thread loop's time.
The first such loop makes OpenBLAS's idle workers sleep within a millisecond instead of
spinning for 110 ms (cblas.quiet_idle_workers): a worker spinning after the layer's own
two-thread GEMMs took a core from the loop and tripled its time.

When (``parts_for``): two threads are wanted (``use(2)``, or by default where the
process has exactly 2 cores: the only machine it was measured on; ``BPTT_LOOP_THREADS``
sets the default), and the work is large enough. Where the threads never meet (the
packed GEMM), the batch must have ``MIN_ROWS_SPLIT`` rows, so that each thread's
micro-kernel gets packed_gemm.MIN_ROWS (with 2 rows it runs at half its rate, and two
threads do no more than one), and the whole loop's GEMM must be at least
``MIN_LOOP_FLOPS``, to pay for handing half of it to the worker (about 0.1 ms a call):
whole forward+backward passes split against one thread measured 1.13-1.35x at 6.5-13
MFLOP a loop, 0.96 at 26, 0.76-0.85 at 52-520. Where they meet twice a step (BLAS), the
batch must have two rows and a step's GEMM be at least ``MIN_STEP_FLOPS`` (below it the
two meetings a step cost about what they save: the RNN at 1.05 MFLOP a step measured
1.13x slower split, LSTM and GRU steps of 2.1-3.2 MFLOP 0.85-0.94). Inside the batch
halves of batch_split.py each half is already a thread: they ask for one. One worker
serves the process: a second thread whose loop finds it busy runs its loop whole rather
than wait (``run_pair`` answers False).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import cblas, packed_gemm, spin

MIN_STEP_FLOPS = 2.0e6
MIN_LOOP_FLOPS = 3.0e7
MIN_ROWS_SPLIT = 2 * packed_gemm.MIN_ROWS


def available_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _default() -> int:
    wanted = os.environ.get("BPTT_LOOP_THREADS", "")
    if wanted in ("1", "2"):
        return int(wanted)
    if wanted:
        raise ValueError(f"BPTT_LOOP_THREADS: expected 1 or 2 (or unset), got {wanted!r}")
    return 2 if available_cores() == 2 else 1


DEFAULT = _default()
_WANTED: contextvars.ContextVar[int | None] = contextvars.ContextVar("bptt_loop_threads", default=None)


def wanted() -> int:
    """1 or 2: the threads a compiled loop may use here (``use``, else ``DEFAULT``)."""
    chosen = _WANTED.get()
    return DEFAULT if chosen is None else chosen


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


def parts_for(B: int, GH: int, H: int, T: int = 1, meets: bool = True) -> int:
    """Into how many parts (1 or 2) to cut each step of a loop of T steps with batch B and
    W_h (GH, H); ``meets``: whether the two threads meet at every step (the BLAS split).
    Two only where OpenBLAS's idle workers can be made to sleep (cblas.quiet_idle_workers):
    a worker spinning after the layer's own two-thread GEMMs would take a core from the loop."""
    step_flops = 2.0 * B * GH * H
    if meets:
        big_enough = B >= 2 and step_flops >= MIN_STEP_FLOPS
    else:
        big_enough = B >= MIN_ROWS_SPLIT and T * step_flops >= MIN_LOOP_FLOPS
    if wanted() == 2 and spin.AVAILABLE and big_enough and cblas.quiet_idle_workers():
        return 2
    return 1


_POOL: ThreadPoolExecutor | None = None
_BLAS = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(1, thread_name_prefix="bptt-loop")
    return _POOL


def blas_one_thread():
    """A context that holds BLAS to one thread (threadpoolctl's controller, made once)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS.limit(limits=1)


def _run_part(loop, args, part, sync):
    try:
        loop(*args, part, 2, sync)
    except BaseException:
        sync[spin.ABORT] = 1                 # the partner stops waiting for this thread
        raise


_PAIR = threading.Lock()                 # held while the worker runs a part


def run_pair(loop, args) -> bool:
    """loop(*args, part, 2, sync) for part 0 on this thread and part 1 on the worker,
    BLAS held to one thread; returns True when both are done, raising either one's error.
    Returns False at once, running nothing, when the worker is busy with another thread's
    loop: that caller then runs its loop whole (two callers sharing one worker would spin
    waiting for it, measured 5x slower)."""
    if not _PAIR.acquire(blocking=False):
        return False
    try:
        sync = spin.new_sync()
        with blas_one_thread():
            other = _pool().submit(_run_part, loop, args, 1, sync)
            try:
                _run_part(loop, args, 0, sync)
            finally:
                error = other.exception()    # waits for the worker either way
        if error is not None:
            raise error
        return True
    finally:
        _PAIR.release()


NO_SYNC = np.zeros(spin.ABORT + 1, dtype=np.int64)   # what a one-part loop is given
