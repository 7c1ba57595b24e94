"""Fused per-step kernels for the gate arithmetic of every cell, compiled by Numba.

NumPy pays one pass over memory and ~0.5-1 µs of call overhead per operation, and its
float32 tanh is not vectorised on many CPUs (~3 ns an element). A step of an LSTM is a
dozen such operations; here each step is one pass, with a vectorisable rational tanh.
The recurrent and weight GEMMs stay in BLAS. Same tape, same equations, same order of
the backward lines as the NumPy code in cells/ (equation numbers from
docs/derivation.md); the NumPy code is the reference these kernels are tested against.

Which dtypes take them: float32 by default. float64 is the verification dtype and runs
the exact NumPy path unless ``FLOAT64`` is set (environment BPTT_FUSED=all); in float64
the kernels use the libm tanh, and the tests hold the two paths equal to 1e-12. Without
Numba, with BPTT_FUSED=0, or with ``fused.ENABLED = False``, every layer runs the NumPy
path. The kernels work in PyTorch's gate order, so the weights go in and the gradients
come out without the reordering the NumPy path does.

Threads: a kernel call is serial. A parallel (prange) kernel between two-thread BLAS
GEMMs made the threads of the two pools spin against each other (a 100-step LSTM
forward went from 6.5 ms to 870 ms). On 2 cores the compiled loops instead run each
step on two threads of our own, each with its rows of the batch (loop_threads.py).

Accuracy (float32): ``_tanh`` is x·P(x²)/Q(x²) on [−9, 9], within 4e-7 absolute of tanh
(a few float32 ulp); sigmoid is ½·tanh(z/2) + ½ (A3).
"""
from __future__ import annotations

import math
import os

import numpy as np

try:
    from numba import njit, types
    from numba.extending import overload
    AVAILABLE = True
except ImportError:          # pragma: no cover - depends on the environment
    AVAILABLE = False

_MODE = os.environ.get("BPTT_FUSED", "1")
ENABLED = AVAILABLE and _MODE != "0"
FLOAT64 = _MODE == "all"

# Elman nonlinearities, as the kernels number them.
KINDS = {"tanh": 0, "relu": 1, "sigmoid": 2, "identity": 3}


def use_for(dtype) -> bool:
    """Whether the fused kernels run for arrays of this dtype."""
    dtype = np.dtype(dtype)
    return ENABLED and (dtype == np.float32 or (FLOAT64 and dtype == np.float64))


if AVAILABLE:
    _jit = njit(fastmath=True, error_model="numpy", cache=True)

    def _tanh(x):
        return math.tanh(x)

    @overload(_tanh, jit_options={"fastmath": True})
    def _tanh_for(x):
        if x == types.float32:
            def rational(x):
                x = min(max(x, np.float32(-9.0)), np.float32(9.0))
                x2 = x * x
                p = np.float32(-2.76076847742355e-16)
                p = p * x2 + np.float32(2.00018790482477e-13)
                p = p * x2 + np.float32(-8.60467152213735e-11)
                p = p * x2 + np.float32(5.12229709037114e-08)
                p = p * x2 + np.float32(1.48572235717979e-05)
                p = p * x2 + np.float32(6.37261928875436e-04)
                p = p * x2 + np.float32(4.89352455891786e-03)
                q = np.float32(1.19825839466702e-06)
                q = q * x2 + np.float32(1.18534705686654e-04)
                q = q * x2 + np.float32(2.26843463243900e-03)
                q = q * x2 + np.float32(4.89352518554385e-03)
                return x * p / q
            return rational
        return lambda x: math.tanh(x)                                  # float64: libm

    def _sigmoid(z):
        return 0.5 * math.tanh(0.5 * z) + 0.5

    @overload(_sigmoid, jit_options={"fastmath": True})
    def _sigmoid_for(z):
        if z == types.float32:                                          # stay in float32
            return lambda z: np.float32(0.5) * _tanh(np.float32(0.5) * z) + np.float32(0.5)   # (A3)
        return lambda z: 0.5 * _tanh(0.5 * z) + 0.5

    @_jit
    def tanh(a, out):
        """out = tanh(a), elementwise, for contiguous arrays (tests measure _tanh with it)."""
        src, dst = a.reshape(-1), out.reshape(-1)
        for k in range(src.size):
            dst[k] = _tanh(src[k])

    # Each kernel works row by row on 1-D slices, with no branch inside the inner loop,
    # so that LLVM vectorises it (a branch or 2-D indexing there costs 5-10x).

    # ---- Elman RNN --------------------------------------------------------------------------

    @_jit
    def rnn_forward_step(a_t, rec, bias, h_prev, valid, kind):
        """a_t (B, H): W_x x_t in, h_t = f(a_t) out (R1), (R2); rec = W_h h_{t-1}; bias = b_h."""
        B, H = h_prev.shape
        for b in range(B):
            row, r = a_t[b], rec[b]
            if kind == 0:
                for j in range(H):
                    row[j] = _tanh(row[j] + r[j] + bias[j])
            elif kind == 1:
                for j in range(H):
                    row[j] = max(row[j] + r[j] + bias[j], 0)
            elif kind == 2:
                for j in range(H):
                    row[j] = _sigmoid(row[j] + r[j] + bias[j])
            else:
                for j in range(H):
                    row[j] = row[j] + r[j] + bias[j]
            if not valid[b]:                                                 # (M1)
                row[:] = h_prev[b]

    @_jit
    def rnn_backward_step(dh_above, dh_next, h_t, valid, kind, delta_t, dh_skip):
        """(R3), (R4): delta_t = (e_t + dh⁺_t) ⊙ f'(a_t), f' from h_t (A2); dh_skip: the
        part of dh_t that a padded step passes straight to h_{t-1} (M3)."""
        B, H = h_t.shape
        for b in range(B):
            da, dn, h, d, skip = dh_above[b], dh_next[b], h_t[b], delta_t[b], dh_skip[b]
            if not valid[b]:                                                 # (M2), (M3)
                for j in range(H):
                    d[j] = 0
                    skip[j] = da[j] + dn[j]
                continue
            if kind == 0:
                for j in range(H):
                    d[j] = (da[j] + dn[j]) * (1 - h[j] * h[j])
            elif kind == 1:
                for j in range(H):
                    d[j] = (da[j] + dn[j]) if h[j] > 0 else 0
            elif kind == 2:
                for j in range(H):
                    d[j] = (da[j] + dn[j]) * h[j] * (1 - h[j])
            else:
                for j in range(H):
                    d[j] = da[j] + dn[j]
            skip[:] = 0

    # ---- LSTM, PyTorch's gate order (i, f, g, o) -------------------------------------------

    @_jit
    def lstm_forward_step(gt, rec, bias, h_prev, c_prev, h_out, c_out, valid):
        """gt (B, 4H): W_x x_t in, activated gates out; rec (B, 4H) = W_h h_{t-1}; bias = b_h."""
        B, H = h_prev.shape
        bi, bf, bg, bo = bias[:H], bias[H:2 * H], bias[2 * H:3 * H], bias[3 * H:]
        for b in range(B):
            zi, zf, zg, zo = gt[b, :H], gt[b, H:2 * H], gt[b, 2 * H:3 * H], gt[b, 3 * H:]
            ri, rf, rg, ro = rec[b, :H], rec[b, H:2 * H], rec[b, 2 * H:3 * H], rec[b, 3 * H:]
            cp, co, ho = c_prev[b], c_out[b], h_out[b]
            for j in range(H):
                g = _tanh(zg[j] + rg[j] + bg[j])                             # (L1), (L2)
                i = _sigmoid(zi[j] + ri[j] + bi[j])
                f = _sigmoid(zf[j] + rf[j] + bf[j])
                o = _sigmoid(zo[j] + ro[j] + bo[j])
                zg[j] = g
                zi[j] = i
                zf[j] = f
                zo[j] = o
                c = f * cp[j] + i * g                                        # (L3)
                co[j] = c
                ho[j] = o * _tanh(c)                                         # (L4)
            if not valid[b]:                                                 # (M1)
                co[:] = cp
                ho[:] = h_prev[b]

    @_jit
    def lstm_backward_step(dh_above, dh_next, dc_next, gt, c_t, c_prev, valid, dz_t, dh_skip):
        """One step of (L5)-(L9). dh_next in: W_hᵀ δz_{t+1} (+ the skip of padded steps);
        dc_next in: dc from t+1, out: dc for t-1. dz_t (B, 4H) out: δz_t; dh_skip out:
        the part of dh_t that a padded step passes straight to h_{t-1} (M3)."""
        B, H = dh_next.shape
        for b in range(B):
            da, dn, dcn = dh_above[b], dh_next[b], dc_next[b]
            if not valid[b]:                                                 # (M2), (M3)
                dz_t[b, :] = 0
                for j in range(H):
                    dh_skip[b, j] = da[j] + dn[j]
                continue                                                     # dc passes unchanged
            i, f, g, o = gt[b, :H], gt[b, H:2 * H], gt[b, 2 * H:3 * H], gt[b, 3 * H:]
            di, df, dg, do = dz_t[b, :H], dz_t[b, H:2 * H], dz_t[b, 2 * H:3 * H], dz_t[b, 3 * H:]
            ct, cp, skip = c_t[b], c_prev[b], dh_skip[b]
            for j in range(H):
                dh = da[j] + dn[j]                                           # (L5)
                tc = _tanh(ct[j])
                dc = dcn[j] + dh * o[j] * (1 - tc * tc)                      # (L6)
                dg[j] = dc * i[j] * (1 - g[j] * g[j])                        # (L8)
                di[j] = dc * g[j] * i[j] * (1 - i[j])
                df[j] = dc * cp[j] * f[j] * (1 - f[j])
                do[j] = dh * tc * o[j] * (1 - o[j])                          # (L7)
                dcn[j] = dc * f[j]                                           # (L9)
                skip[j] = 0

    # ---- GRU, PyTorch's gate order (r, z, n) ---------------------------------------------

    @_jit
    def gru_forward_step(gt, rec, bias, b_hn, h_prev, q_out, h_out, valid):
        """gt (B, 3H): W_x x_t in, activated r, z, n out; rec (B, 3H) = W_h h_{t-1}; bias = b_h."""
        B, H = h_prev.shape
        br, bz, bn = bias[:H], bias[H:2 * H], bias[2 * H:]
        for b in range(B):
            ar, az, an = gt[b, :H], gt[b, H:2 * H], gt[b, 2 * H:]
            rr, rz, rn = rec[b, :H], rec[b, H:2 * H], rec[b, 2 * H:]
            hp, qo, ho = h_prev[b], q_out[b], h_out[b]
            for j in range(H):
                z = _sigmoid(az[j] + rz[j] + bz[j])                          # (G2)
                r = _sigmoid(ar[j] + rr[j] + br[j])                          # (G1)
                q = rn[j] + b_hn[j]                                          # (G3)
                n = _tanh(an[j] + bn[j] + r * q)                             # (G4)
                az[j] = z
                ar[j] = r
                an[j] = n
                qo[j] = q
                ho[j] = n + z * (hp[j] - n)                                  # (G5)
            if not valid[b]:                                                 # (M1)
                ho[:] = hp

    @_jit
    def gru_backward_step(dh_above, dh_next, gt, q_t, h_prev, valid, d_rec_t, d_n_t, dh_direct):
        """One step of (G6)-(G9): d_rec_t (B, 3H) = [δa_r, δa_z, δq], d_n_t = δn's
        pre-activation gradient, dh_direct = the part of dh_t reaching h_{t-1} directly."""
        B, H = dh_next.shape
        for b in range(B):
            da, dnx, direct = dh_above[b], dh_next[b], dh_direct[b]
            if not valid[b]:                                                 # (M2), (M3)
                d_rec_t[b, :] = 0
                d_n_t[b, :] = 0
                for j in range(H):
                    direct[j] = da[j] + dnx[j]
                continue
            r, z, n = gt[b, :H], gt[b, H:2 * H], gt[b, 2 * H:]
            dr, dz, dq = d_rec_t[b, :H], d_rec_t[b, H:2 * H], d_rec_t[b, 2 * H:]
            dn_out, q, hp = d_n_t[b], q_t[b], h_prev[b]
            for j in range(H):
                dh = da[j] + dnx[j]                                          # (G6)
                dn = dh * (1 - z[j]) * (1 - n[j] * n[j])                     # (G7)
                dn_out[j] = dn
                dz[j] = dh * (hp[j] - n[j]) * z[j] * (1 - z[j])              # (G8)
                dr[j] = dn * q[j] * r[j] * (1 - r[j])                        # (G9)
                dq[j] = dn * r[j]
                direct[j] = dh * z[j]                                        # (G6)
