"""The layers' bulk work beside the time loop, on NumPy arrays (Numba where NumPy is slow).

    t_times(d, rows)       dᵀ · rows, C-ordered: the weight gradients (K6)
    one_hot_codes(x)       the column of each row's 1 where every row of x is one-hot, else None
    rows_summed(du, codes, D)
                           (D, G·H): du's rows summed per code, x2ᵀ du for one-hot rows x2 (K6)
    transposed(a)          a.T, C-ordered, copied in small blocks

For one-hot inputs (characters, tokens) the layers take (K1) as rows of W_xᵀ (the compiled
loop copies each step's) and ∂L/∂W_x from ``rows_summed``: no GEMM over the vocabulary,
the same numbers.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import settings


_jit = njit(fastmath=True, error_model="numpy", cache=True, nogil=True)


def t_times(d, rows):
    """dᵀ · rows, C-ordered, for d (N, G·H) and rows (N, K). Where NumPy's BLAS runs on one
    thread (one core, the trainer's batch halves, MPI ranks) with a kernel short of AVX-512
    (OpenBLAS's Haswell, Zen, …), one of C-ordered operands, (rowsᵀ · d)ᵀ, with the
    transposes copied in blocks; elsewhere OpenBLAS's product with a transposed operand (no
    copies). benchmarks/bulk.py records both forms in the trainer on each machine: the
    blocked one ahead on the AVX2 CPU (Haswell kernel), behind on the AVX-512 one
    (SkylakeX), within 3% there under the AVX2 imitation. The two round
    differently: the choice follows the BLAS threads and kernel in force, never a timing.
    One row (∂W_h's h_0 part at batch 1) is an outer product, the same bits: NumPy's
    matmul over an inner dimension of 1 takes a slow path."""
    if isinstance(d, np.ndarray) and len(d) > 1 and settings.numpy_blas_threads() == 1 and not settings.blas_has_avx512_kernel():
        return transposed(transposed(np.ascontiguousarray(rows)) @ d)
    return d.T * rows if len(d) == 1 == len(rows) else d.T @ rows


def one_hot_codes(x):
    """(T·B,) int64: the column of the single 1 in each row of x (T, B, D) where every row
    is one-hot (characters, tokens), else None. Then (K1) is a gather of rows of W_xᵀ and
    ∂L/∂W_x a sum of du's rows per column (rows_summed), with no GEMM over D."""
    rows = x.reshape(-1, x.shape[2])
    codes = np.empty(rows.shape[0], np.int64)
    return codes if rows.flags.c_contiguous and _find_ones(rows, codes) else None


@njit(error_model="numpy", cache=True, nogil=True)
def _find_ones(rows, codes):
    """codes[r] = k for rows[r] = e_k; False at the first row that is not a unit vector.
    Without fastmath: under it, NaN != 0 may fold to False and a NaN beside a 1 pass."""
    for r in range(rows.shape[0]):
        found = -1
        for k in range(rows.shape[1]):
            if rows[r, k] != 0:
                if rows[r, k] != 1 or found >= 0:
                    return False
                found = k
        if found < 0:
            return False
        codes[r] = found
    return True


@_jit
def rows_summed(du, codes, D):
    """(D, G·H): row k is the sum of du's rows r with codes[r] = k, in order of r: x2ᵀ du
    for one-hot rows x2, (K6)."""
    out = np.zeros((D, du.shape[1]), du.dtype)
    for r in range(du.shape[0]):
        o, d = out[codes[r]], du[r]
        for j in range(d.size):
            o[j] += d[j]
    return out


@_jit
def transposed(a):
    """a.T, C-ordered, copied in 8 x 8 blocks, each row of the block written whole (NumPy's
    copy of a transposed view goes row by row through the whole source). Blocks are small
    because the rows of one side lie a whole row apart: at 1024 floats a row, 32 of them
    would share one set of the L1 cache."""
    K, N = a.shape
    out = np.empty((N, K), a.dtype)
    for i0 in range(0, K, 8):
        for j0 in range(0, N, 8):
            for j in range(j0, min(j0 + 8, N)):
                for i in range(i0, min(i0 + 8, K)):
                    out[j, i] = a[i, j]
    return out
