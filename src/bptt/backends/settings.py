"""Runtime settings, in one place: read from the environment at first use, not at import.

    BPTT_LOOPS=0             every layer runs the Python time loop (cells/loop.py) with the
                             cell's NumPy step, not the compiled loop (cells/compiled.py)
    BPTT_STEP_GEMM=packed|mkl
                             the compiled loop's recurrent GEMM over W_h packed once a pass:
                             bptt's micro-kernel (backends/packed_gemm.py) or oneMKL's
                             packed GEMM (backends/mkl.py, extra ``mkl``). Default: mkl where
                             it is installed and the CPU is an Intel one running AVX-512,
                             else packed (benchmarks/step_gemm.py: on AMD, AVX2 and AVX-512
                             alike, the micro-kernel is the faster; MKL chooses its own
                             kernels by the CPU's vendor)
    BPTT_LOOP_THREADS=1|2    threads a compiled loop may use (default: 2 where the process
                             may run on 2 cores or more, else 1)
    BPTT_WORKSPACE_MB=N      MiB of freed memory glibc's malloc keeps for reuse (default 512;
                             0: glibc's own thresholds), see keep_freed_memory()
    BPTT_CACHE_DIR=DIR       where the generated loop modules and their compiled code go, in
                             DIR/loops (default DIR: $XDG_CACHE_HOME/bptt, else ~/.cache/bptt; the 32
                             loop modules used last are kept, cells/compiled.py)

One setting is not bptt's: OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads
it, for how long its idle workers spin on cores a two-thread loop needs
(backends/loop_threads.py). ``import bptt`` sets it to 20 (2^20 cycles, under 1 ms) when
NumPy is not loaded yet and it is unset; ``blas_workers_sleep()`` says whether the value
in force is short enough.

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
    intel_avx512 = vector_isa() == "AVX-512" and cpu_vendor() == "GenuineIntel"
    default = "mkl" if intel_avx512 and mkl.library_path() else "packed"
    return _choice("BPTT_STEP_GEMM", ("packed", "mkl"), default)


def _cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo, or "" (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""


def cpu_vendor() -> str:
    """"GenuineIntel", "AuthenticAMD", … (/proc/cpuinfo's vendor_id), or ""."""
    return _cpuinfo("vendor_id")


def vector_isa() -> str:
    """"AVX-512", "AVX2" or "other": the widest vector instructions in force here. An AVX2
    imitation (NUMBA_CPU_NAME=haswell, with NUMBA_CPU_FEATURES=-avx512f for Numba's own
    code, or MKL_ENABLE_INSTRUCTIONS=AVX2) counts as AVX2."""
    flags = _cpuinfo("flags").split()
    imitated = os.environ.get("NUMBA_CPU_NAME", "").lower() == "haswell" or \
        os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").upper() == "AVX2"
    if "avx512f" in flags and not imitated:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "other"


def available_cores() -> int:
    """The cores this process may run on (its affinity, as taskset sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    if not 0 <= mib <= 1024:                     # not NaN, not negative; glibc takes at most an int
        raise ValueError(f"BPTT_WORKSPACE_MB: expected a number of MiB from 0 to 1024 (0: glibc's "
                         f"defaults), got {wanted!r}")
    return int(mib * 2 ** 20)


@functools.cache
def keep_freed_memory() -> int:
    """Set glibc's malloc to serve blocks up to workspace_bytes() from its heap and to keep
    that much freed memory (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), once per process;
    the bytes set, 0 when off or not glibc. A training step allocates the same large arrays
    again (tape, δz, the rows of ∂W); by default glibc maps each block afresh and unmaps it
    when freed, so every step pays a page fault and the kernel's zeroing per 4 KiB touched
    (about 2,300 faults a pass for the LSTM at (100, 32, 64, 128)). The layers call this at
    their first pass; it is process-wide, as the allocator is."""
    limit = workspace_bytes()
    if limit == 0:
        return 0
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, limit) and libc.mallopt(-1, limit)     # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):            # not glibc
        return 0
    return limit if ok else 0


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


@functools.cache
def _numpy_blas():
    """threadpoolctl's controller of the BLAS NumPy calls, or None."""
    from threadpoolctl import ThreadpoolController
    found = ThreadpoolController().select(user_api="blas").lib_controllers
    return next((c for c in found if "numpy" in c.filepath), found[0] if found else None)


def numpy_blas_threads() -> int:
    """The threads NumPy's BLAS may use now (limits in force included; about 1 µs)."""
    blas = _numpy_blas()
    return blas.get_num_threads() if blas is not None else 1


def blas_has_avx512_kernel() -> bool:
    """Whether NumPy's BLAS is OpenBLAS running one of its AVX-512 kernels (threadpoolctl's
    ``architecture``: SkylakeX, Cooperlake, SapphireRapids; OPENBLAS_CORETYPE can set it)."""
    return getattr(_numpy_blas(), "architecture", "") in ("SkylakeX", "Cooperlake", "SapphireRapids")


def _numpy_has_openblas() -> bool:
    return getattr(_numpy_blas(), "internal_api", "") == "openblas"


@functools.cache
def cache_dir() -> str:
    if os.environ.get("BPTT_CACHE_DIR"):
        return os.environ["BPTT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bptt")


def reset() -> None:
    for read in (loops_enabled, step_gemm, loop_threads, workspace_bytes, keep_freed_memory, cache_dir, blas_workers_sleep):
        if hasattr(read, "cache_clear"):          # (a test may have put a plain function here)
            read.cache_clear()
