"""oneMKL's packed GEMM from Numba code: W_h packed once a pass, each step only the product.

cblas_?gemm_pack lays W_h out in MKL's internal format once; cblas_?gemm_compute then
multiplies by it with no repacking: MKL's API for the recurrent GEMM's case. It comes
with the extra ``mkl`` (the ``mkl`` wheel's ``libmkl_rt``), loaded at first use with the
sequential threading layer (each loop thread makes its own calls; OpenMP workers would
spin on the loop's cores).

    pack_into(W_h, forward, m, buffer)    B = W_hᵀ (forward) or W_h (backward), for products of
                                          m rows (packed_size(W_h, forward, m) elements)
    compute(a, buffer, out)               out (m, N) = a (m, K) · B, from Numba code only

The symbols are registered with LLVM under fixed names, so that generated loops calling
them (cells/compiled.py) can be cached on disk.
"""
from __future__ import annotations

import ctypes
import importlib.metadata

import numpy as np
from numba import types
from numba.extending import overload

ROW_MAJOR, NO_TRANS, TRANS, PACKED, B_MATRIX = 101, 111, 112, 151, 162
SEQUENTIAL, LP64 = 1, 0                          # MKL_THREADING_SEQUENTIAL, MKL_INTERFACE_LP64
_lib = None


def library_path() -> str | None:
    """libmkl_rt of the installed ``mkl`` wheel, or None."""
    try:
        dist = importlib.metadata.distribution("mkl")
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in dist.files or () if f.name.startswith("libmkl_rt.so")]
    return str(dist.locate_file(found[0])) if found else None


def load():
    """Load libmkl_rt once (sequential; LP64, the 32-bit MKL_INT the calls pass, whatever
    MKL_INTERFACE_LAYER says), register its packed GEMM with LLVM; the library."""
    global _lib
    if _lib is None:
        path = library_path()
        if path is None:
            raise RuntimeError("BPTT_STEP_GEMM=mkl needs oneMKL: pip install 'bptt[mkl]'")
        lib = ctypes.CDLL(path)
        lib.MKL_Set_Interface_Layer(ctypes.c_int(LP64))
        lib.MKL_Set_Threading_Layer(ctypes.c_int(SEQUENTIAL))
        import llvmlite.binding as llvm
        for kind in "sd":
            llvm.add_symbol(f"bptt_mkl_{kind}gemm_compute",
                            ctypes.cast(getattr(lib, f"cblas_{kind}gemm_compute"), ctypes.c_void_p).value)
            getattr(lib, f"cblas_{kind}gemm_pack_get_size").restype = ctypes.c_size_t
        _lib = lib
    return _lib


def _dims(W_h, forward):
    return W_h.shape if forward else W_h.shape[::-1]            # (N, K) of B: W_hᵀ (G·H, H) or W_h


def packed_size(W_h, forward: bool, m: int) -> int:
    """Elements of W_h's dtype that ``pack_into`` needs for products of m rows."""
    kind = "s" if W_h.dtype == np.float32 else "d"
    return -(-getattr(load(), f"cblas_{kind}gemm_pack_get_size")(B_MATRIX, m, *_dims(W_h, forward)) // W_h.itemsize)


def pack_into(W_h, forward: bool, m: int, buffer) -> None:
    """W_h (G·H, H), C-contiguous, packed into buffer as B of an (m, K) · (K, N) product:
    B = W_hᵀ forward, W_h backward. The buffer must not move afterwards (MKL's rule)."""
    kind = "s" if W_h.dtype == np.float32 else "d"
    real = ctypes.c_float if kind == "s" else ctypes.c_double
    N, K = _dims(W_h, forward)
    getattr(load(), f"cblas_{kind}gemm_pack")(ROW_MAJOR, B_MATRIX, TRANS if forward else NO_TRANS, m, N, K, real(1),
                                              W_h.ctypes.data_as(ctypes.c_void_p), W_h.shape[1],
                                              buffer.ctypes.data_as(ctypes.c_void_p))


def _compute_type(real):
    I = types.int32                               # MKL_INT of the LP64 interface load() sets
    return types.void(I, I, I, I, I, I, types.voidptr, I, types.voidptr, I, real, types.voidptr, I)


_sgemm = types.ExternalFunction("bptt_mkl_sgemm_compute", _compute_type(types.float32))
_dgemm = types.ExternalFunction("bptt_mkl_dgemm_compute", _compute_type(types.float64))


def compute(a, buffer, out):
    """out = a · B for a buffer from ``pack``; Numba-compiled callers only."""
    raise TypeError("mkl.compute is called from Numba-compiled code")


@overload(compute)
def _compute_for(a, buffer, out):
    fn, real = (_sgemm, np.float32) if a.dtype == types.float32 else (_dgemm, np.float64)

    def impl(a, buffer, out):
        M, K = a.shape
        N = out.shape[1]
        fn(ROW_MAJOR, NO_TRANS, PACKED, M, N, K, a.ctypes.data, a.strides[0] // a.itemsize, buffer.ctypes.data,
           N, real(0), out.ctypes.data, out.strides[0] // out.itemsize)
    return impl
