"""Fused per-step kernels for the LSTM and GRU gate arithmetic, compiled by Numba.

NumPy pays one pass over memory and ~0.5-1 µs of call overhead per operation, and its
float32 tanh is not vectorised on many CPUs (~3 ns an element). A step of an LSTM is a
dozen such operations; here each step is one pass, with a vectorisable rational tanh.
The recurrent and weight GEMMs stay in BLAS. Same tape, same equations, same order of
the backward lines as the NumPy code in cells/ (equation numbers from
docs/derivation.md); the NumPy code is the reference these kernels are tested against.

Used for float32 only (float64 is the verification dtype and runs the exact NumPy
path). The kernels work in PyTorch's gate order, so the weights go in and the gradients
come out without the reordering the NumPy path does. Without Numba, or with the environment variable BPTT_FUSED=0, or with
``fused.ENABLED = False``, every layer runs the NumPy path.

Accuracy: ``_tanh`` is x·P(x²)/Q(x²) on [−9, 9], within 4e-7 absolute of tanh (a few
float32 ulp); sigmoid is ½·tanh(z/2) + ½ (A3).
"""
from __future__ import annotations

import os

import numpy as np

try:
    from numba import njit
    AVAILABLE = True
except ImportError:          # pragma: no cover - depends on the environment
    AVAILABLE = False

ENABLED = AVAILABLE and os.environ.get("BPTT_FUSED", "1") != "0"


def use_for(dtype) -> bool:
    """Whether the fused kernels run for arrays of this dtype."""
    return ENABLED and np.dtype(dtype) == np.float32


if AVAILABLE:
    _jit = njit(fastmath=True, error_model="numpy", cache=True)
    _inline = njit(fastmath=True, error_model="numpy", cache=True, inline="always")

    @_inline
    def _tanh(x):
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

    @_inline
    def _sigmoid(z):
        return np.float32(0.5) * _tanh(np.float32(0.5) * z) + np.float32(0.5)   # (A3)

    @_jit
    def tanh(a, out):
        """out = tanh(a), elementwise, for contiguous arrays (tests measure _tanh with it)."""
        src, dst = a.reshape(-1), out.reshape(-1)
        for k in range(src.size):
            dst[k] = _tanh(src[k])

    # Each kernel works row by row on 1-D slices, with no branch inside the inner loop,
    # so that LLVM vectorises it (a branch or 2-D indexing there costs 5-10x).

    # ---- LSTM, PyTorch's gate order (i, f, g, o) -------------------------------------------

    @_jit
    def lstm_forward_step(gt, rec, h_prev, c_prev, h_out, c_out, valid):
        """gt (B, 4H): input part of z_t in, activated gates out; rec (B, 4H) = W_h h_{t-1}."""
        B, H = h_prev.shape
        for b in range(B):
            zi, zf, zg, zo = gt[b, :H], gt[b, H:2 * H], gt[b, 2 * H:3 * H], gt[b, 3 * H:]
            ri, rf, rg, ro = rec[b, :H], rec[b, H:2 * H], rec[b, 2 * H:3 * H], rec[b, 3 * H:]
            cp, co, ho = c_prev[b], c_out[b], h_out[b]
            for j in range(H):
                g = _tanh(zg[j] + rg[j])                                     # (L1), (L2)
                i = _sigmoid(zi[j] + ri[j])
                f = _sigmoid(zf[j] + rf[j])
                o = _sigmoid(zo[j] + ro[j])
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
    def gru_forward_step(gt, rec, b_hn, h_prev, q_out, h_out, valid):
        """gt (B, 3H): input parts in, activated r, z, n out; rec (B, 3H) = W_h h_{t-1}."""
        B, H = h_prev.shape
        for b in range(B):
            ar, az, an = gt[b, :H], gt[b, H:2 * H], gt[b, 2 * H:]
            rr, rz, rn = rec[b, :H], rec[b, H:2 * H], rec[b, 2 * H:]
            hp, qo, ho = h_prev[b], q_out[b], h_out[b]
            for j in range(H):
                z = _sigmoid(az[j] + rz[j])                                  # (G2)
                r = _sigmoid(ar[j] + rr[j])                                  # (G1)
                q = rn[j] + b_hn[j]                                          # (G3)
                n = _tanh(an[j] + r * q)                                     # (G4)
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
