"""The weight-gradient GEMM of a backward pass, δᵀ·u, in whichever orientation is faster.

A layer's weight gradients sum over all N = T·B rows at once: ∂L/∂W = Σ_t δ_tᵀ u_t, with
δ (N, G·H) the pre-activation gradients and u (N, K) the rows the weights multiplied
((L10): u = [x_t | h_{t-1}]). OpenBLAS is not equally fast at δᵀ·u and at (uᵀ·δ)ᵀ, the
same product computed transposed and then copied back (a small (G·H, K) copy). Measured
here (float32, 2 threads, the copy included): 4.66 against 5.07 ms at the LSTM's
(N, G·H, K) = (3200, 512, 192), but 87 against 78 ms at (6400, 1536, 512). So the choice is
measured, once per shape and process, as the recurrent GEMM's is (recurrent_gemm.choose,
which BPTT_GEMM=plain|transposed fixes). Both give the same numbers up to the order of the
sums inside the GEMM.
"""
from __future__ import annotations

import numpy as np

from . import recurrent_gemm
from .arrays import array_module, empty, matmul

MEASURE_ROWS = 4096        # rows of the trial product: the choice depends on G·H and K, not on N beyond this


def weight_gradient(delta, inputs):
    """δᵀ·u (G·H, K) for δ (N, G·H) and u (N, K), a C-contiguous array."""
    xp = array_module(delta, inputs)
    N, GH = delta.shape
    K = inputs.shape[1]
    dtype = xp.result_type(delta, inputs)
    if xp is not np or N == 0 or not transposed_is_faster(N, GH, K, dtype):
        return matmul(delta.T, inputs)
    out = empty(np, (GH, K), dtype)
    np.copyto(out, matmul(inputs.T, delta).T)
    return out


def transposed_is_faster(N, GH, K, dtype) -> bool:
    rows = min(N, MEASURE_ROWS)
    key = ("weight gradient", rows, GH, K, np.dtype(dtype).str)
    return recurrent_gemm.choose(key, lambda: _measure(rows, GH, K, dtype))


def _measure(N, GH, K, dtype) -> bool:
    rng = np.random.default_rng(0)
    delta = rng.standard_normal((N, GH)).astype(dtype)
    inputs = rng.standard_normal((N, K)).astype(dtype)
    out = np.empty((GH, K), dtype)
    outT = np.empty((K, GH), dtype)
    n = max(1, min(20, int(1e8 / (2 * N * GH * K))))              # about 100 MFLOP a round

    def plain(count):
        for _ in range(count):
            np.matmul(delta.T, inputs, out=out)

    def transposed(count):
        for _ in range(count):
            np.matmul(inputs.T, delta, out=outT)
            np.copyto(out, outT.T)
    return recurrent_gemm.second_is_faster(plain, transposed, n)
