"""Runtime settings, in one place: read from the environment at first use, not at import.

    BPTT_LOOPS=0             every layer runs the Python time loop (cells/loop.py) with the
                             cell's NumPy step, not the compiled loop (cells/compiled.py)
    BPTT_STEP_GEMM=packed|mkl
                             the compiled loop's per-step recurrent GEMM, W_h packed once a
                             pass either way: for bptt's micro-kernel (backends/packed_gemm.py)
                             or for oneMKL's packed GEMM (backends/mkl.py, the extra ``mkl``).
                             Default: mkl where it is installed and the CPU runs AVX-512
                             (there it measured 1.5-1.9x the micro-kernel's rate, which is
                             written for AVX2), else packed (on AVX2 the micro-kernel measured
                             1.1-1.5x MKL's rate; benchmarks/step_gemm.py)
    BPTT_LOOP_THREADS=1|2    threads a compiled loop may use (default: 2 where the process
                             may run on 2 cores or more, else 1)
    BPTT_WORKSPACE_MB=N      free blocks kept for reuse by backends/workspace.py (default 512)
    BPTT_CACHE_DIR=DIR       where the generated loop modules and their compiled code go
                             (default $XDG_CACHE_HOME/bptt, else ~/.cache/bptt)

One setting is not bptt's: OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads
it, for how long its idle workers spin (2^N cycles; N = 28 by default, about 0.1 s) on
cores a two-thread loop needs (backends/loop_threads.py). ``import bptt`` sets N = 20
(under 1 ms) when NumPy is not loaded yet and the variable is unset; else the setting in
force is kept, and ``blas_workers_sleep()`` tells the loops whether it is short enough.

Each is read once per process; ``reset()`` forgets what was read (tests change the
environment and call it). A bad value is a ValueError naming the variable.
"""
from __future__ import annotations

import functools
import os

def _choice(name, allowed, default):
    value = os.environ.get(name, "") or default
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)} (or unset), got {value!r}")
    return value


@functools.cache
def loops_enabled() -> bool:
    return _choice("BPTT_LOOPS", ("0", "1"), "1") == "1"


@functools.cache
def step_gemm() -> str:
    from . import mkl
    default = "mkl" if vector_isa() == "AVX-512" and mkl.library_path() else "packed"
    return _choice("BPTT_STEP_GEMM", ("packed", "mkl"), default)


def vector_isa() -> str:
    """"AVX-512", "AVX2" or "other": the widest vector instructions in force here. An AVX2
    imitation (NUMBA_CPU_NAME=haswell or MKL_ENABLE_INSTRUCTIONS=AVX2) counts as AVX2."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    imitated = os.environ.get("NUMBA_CPU_NAME", "").lower() == "haswell" or \
        os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").upper() == "AVX2"
    if "avx512f" in flags and not imitated:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "other"


def available_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@functools.cache
def loop_threads() -> int:
    default = "2" if available_cores() >= 2 else "1"
    return int(_choice("BPTT_LOOP_THREADS", ("1", "2"), default))


@functools.cache
def workspace_bytes() -> int:
    wanted = os.environ.get("BPTT_WORKSPACE_MB", "512")
    try:
        mib = float(wanted)
    except ValueError:
        mib = -1.0
    if not 0 <= mib < 2 ** 40:                   # not NaN, not negative, not inf
        raise ValueError(f"BPTT_WORKSPACE_MB: expected a number of MiB >= 0 (0: no cache), got {wanted!r}")
    return int(mib * 2 ** 20)


IDLE_SPIN_LOG2 = 20


def shorten_blas_idle_spin() -> None:
    """Before NumPy loads OpenBLAS: its idle workers sleep after 2^20 cycles."""
    import sys
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(IDLE_SPIN_LOG2))


@functools.cache
def blas_workers_sleep() -> bool:
    """Whether OpenBLAS's idle workers give their core back within a millisecond (a BLAS
    other than OpenBLAS keeps no such workers)."""
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    return (value.isdigit() and int(value) <= IDLE_SPIN_LOG2) or not _numpy_has_openblas()


def _numpy_has_openblas() -> bool:
    from threadpoolctl import threadpool_info
    return any(lib.get("internal_api") == "openblas" for lib in threadpool_info())


@functools.cache
def cache_dir() -> str:
    if os.environ.get("BPTT_CACHE_DIR"):
        return os.environ["BPTT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bptt")


def reset() -> None:
    for read in (loops_enabled, step_gemm, loop_threads, workspace_bytes, cache_dir, blas_workers_sleep):
        if hasattr(read, "cache_clear"):          # (a test may have put a plain function here)
            read.cache_clear()
