"""NumPy's own BLAS, callable from Numba-compiled code.

The compiled time loops (backends/cpu_loops.py) multiply by W_h at every step without
coming back to Python. They call the very library ``np.matmul`` calls, found among the
loaded libraries by threadpoolctl, so they share its threads and its numbers. Only
OpenBLAS is looked for (NumPy's wheels bundle it); with any other BLAS, or without
threadpoolctl, ``AVAILABLE`` is False and the layers keep their Python loop.

The entry points are registered with LLVM under fixed names (``bptt_cblas64_sgemm`` …), so
that the compiled loops refer to them by name and can be cached on disk.

    gemm(trans_a, trans_b, a, b, out)   out (M, N) = op(a) · op(b), op = transpose or not;
                                        every array 2-D with contiguous rows (C-contiguous,
                                        or a block of columns of such an array: the row
                                        stride is passed as the leading dimension)
    gemv(trans, w, x, y)                y = op(w) · x for one row, where gemv beats gemm

Integer width: ILP64 builds (NumPy's ``scipy_openblas64_``) take 64-bit sizes; the
library's own configuration string says which.
"""
from __future__ import annotations

import ctypes

AVAILABLE = False
INT64 = False
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _find_openblas():
    """(CDLL, prefix, suffix) of the OpenBLAS NumPy loaded, or None."""
    try:
        import numpy  # noqa: F401  (loads its BLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:          # pragma: no cover - threadpoolctl is a dependency
        return None
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api != "blas" or lib.internal_api != "openblas":
            continue
        dll = ctypes.CDLL(lib.filepath)
        for prefix in ("scipy_", ""):
            for suffix in ("64_", "_64", ""):
                if all(hasattr(dll, f"{prefix}cblas_{name}{suffix}") for name in ("sgemm", "dgemm", "sgemv", "dgemv")):
                    return dll, prefix, suffix
    return None


def _symbol(name):
    """The name the compiled code links against. It carries the integer width, so that code
    cached on disk for one BLAS cannot link against another's entry points. Numba's disk
    cache of cpu_loops.py does not see edits to this file: after changing these names or
    the signatures below, delete src/bptt/backends/__pycache__/cpu_loops.*.nb[ic]."""
    return f"bptt_cblas{64 if INT64 else 32}_{name}"


_DLL = None
IDLE_SPIN_LOG2 = 20              # OpenBLAS's workers spin 2^20 cycles (under 1 ms) when idle
_quiet: bool | None = None


def quiet_idle_workers() -> bool:
    """Make OpenBLAS's idle worker threads go to sleep after 2^IDLE_SPIN_LOG2 cycles
    instead of the default 2^28 (about 110 ms here), once per process. Returns whether
    the workers are quiet.

    Why: after every multi-threaded call each worker busy-waits for the next one. When
    our own two threads run a loop (loop_threads.py) right after a two-thread GEMM, that
    worker takes a core from them: measured, an LSTM forward at (100, 32, 64, 128) went
    from 10 to 30 ms. How: OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it starts its
    workers, so it is set, re-read (``openblas_read_env``) and the workers restarted
    (``blas_thread_shutdown_``; the next threaded call starts them again). A value the
    user set in OPENBLAS_THREAD_TIMEOUT is left alone and counts as quiet only if small.
    Called the first time two threads run a loop, not at import, so that a process that
    never does keeps OpenBLAS exactly as it was. The restart must not meet another
    thread inside OpenBLAS: our own threads never are there then (the batch halves of
    batch_split.py ask for one-thread loops, so they never get here), but a program that
    calls BLAS from threads of its own while a first layer starts could be; set
    OPENBLAS_THREAD_TIMEOUT (20 or less) before starting such a program."""
    global _quiet
    if _quiet is not None:
        return _quiet
    import os
    own = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if own is not None:
        _quiet = own.isdigit() and int(own) <= IDLE_SPIN_LOG2
        return _quiet
    read_env = getattr(_DLL, "openblas_read_env", None)
    shutdown = getattr(_DLL, "blas_thread_shutdown_", None)
    if read_env is None or shutdown is None:
        _quiet = False
        return _quiet
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(IDLE_SPIN_LOG2)
    read_env()
    shutdown()
    _quiet = True
    return _quiet


def _register():
    global AVAILABLE, INT64, _DLL
    found = _find_openblas()
    if found is None:
        return
    dll, prefix, suffix = found
    _DLL = dll
    config = getattr(dll, f"{prefix}openblas_get_config{suffix}", None)
    if config is None:
        return
    config.restype = ctypes.c_char_p
    INT64 = b"USE64BITINT" in (config() or b"")
    import llvmlite.binding as llvm
    for name in ("sgemm", "dgemm", "sgemv", "dgemv"):
        fn = getattr(dll, f"{prefix}cblas_{name}{suffix}")
        llvm.add_symbol(_symbol(name), ctypes.cast(fn, ctypes.c_void_p).value)
    AVAILABLE = True


_register()

if AVAILABLE:
    import numpy as np
    from numba import njit, types
    from numba.extending import overload

    _I = types.int64 if INT64 else types.int32
    _E = types.int32                 # the CBLAS enums are C ints
    _P = types.voidptr

    def _gemm_type(real):
        return types.void(_E, _E, _E, _I, _I, _I, real, _P, _I, _P, _I, real, _P, _I)

    def _gemv_type(real):
        return types.void(_E, _E, _I, _I, real, _P, _I, _P, _I, real, _P, _I)

    _sgemm = types.ExternalFunction(_symbol("sgemm"), _gemm_type(types.float32))
    _dgemm = types.ExternalFunction(_symbol("dgemm"), _gemm_type(types.float64))
    _sgemv = types.ExternalFunction(_symbol("sgemv"), _gemv_type(types.float32))
    _dgemv = types.ExternalFunction(_symbol("dgemv"), _gemv_type(types.float64))

    # The Python bodies are the meaning, in NumPy; Numba-compiled callers get the
    # overloads below, which call BLAS itself.
    def gemm(trans_a, trans_b, a, b, out):
        np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

    def gemv(trans, w, x, y):
        np.matmul(w.T if trans else w, x, out=y)

    @overload(gemm)
    def _gemm_for(trans_a, trans_b, a, b, out):
        fn, one = (_sgemm, np.float32) if a.dtype == types.float32 else (_dgemm, np.float64)

        def impl(trans_a, trans_b, a, b, out):
            M, N = out.shape
            K = a.shape[0] if trans_a else a.shape[1]
            fn(ROW_MAJOR, TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS,
               M, N, K, one(1), a.ctypes.data, _leading(a), b.ctypes.data, _leading(b), one(0),
               out.ctypes.data, _leading(out))
        return impl

    @njit(inline="always")
    def _leading(a):
        """The leading dimension of a row-major 2-D array: its row stride in elements (at
        least one row's length, as BLAS requires even of a single row)."""
        return max(a.strides[0] // a.itemsize, a.shape[1], 1)

    @overload(gemv)
    def _gemv_for(trans, w, x, y):
        fn, one = (_sgemv, np.float32) if w.dtype == types.float32 else (_dgemv, np.float64)

        def impl(trans, w, x, y):
            M, N = w.shape
            fn(ROW_MAJOR, TRANS if trans else NO_TRANS, M, N, one(1), w.ctypes.data, N,
               x.ctypes.data, 1, one(0), y.ctypes.data, 1)
        return impl
