"""The LSTM cell in PyTorch's gate order (i, f, g, o): the NumPy reference step and the
compiled kernels, side by side.

    z_t = W_x x_t + W_h h_{t-1} + b_h                          (L1)  z = [z_i, z_f, z_g, z_o]
    i = σ(z_i)  f = σ(z_f)  g = tanh(z_g)  o = σ(z_o)          (L2)
    c_t = f ⊙ c_{t-1} + i ⊙ g                                  (L3)
    h_t = o ⊙ tanh(c_t)                                        (L4)

Shapes (row-vector batches, time-major):
    x (T, B, D)  W_x (4H, D)  W_h (4H, H)  b_h (4H,)  h0, c0 (B, H)  h, c (T, B, H)

b_h is PyTorch's b_ih + b_hh. The carried state is (h, c); δz_t is both du and dv of the
protocol (K4), and the tape row keeps the activated gates (i, f, g, o). Equation numbers
refer to docs/derivation.md.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..ops.activations import sigmoid as sigmoid_array
from .protocol import Cell
from .scalar import sigmoid, tanh


class LSTM(Cell):
    """Long short-term memory, PyTorch's nn.LSTM without projections."""
    name = "lstm"
    gates = 4
    state = ("h", "c")
    dv_is_du = True

    def step(self, p, u, v, state):
        h_prev, c_prev = state
        H = h_prev.shape[1]
        z = u + v                                                          # (L1)
        i, f, o = sigmoid_array(z[:, :H]), sigmoid_array(z[:, H:2 * H]), sigmoid_array(z[:, 3 * H:])  # (L2)
        g = np.tanh(z[:, 2 * H:3 * H])
        c = f * c_prev + i * g                                             # (L3)
        tanh_c = np.tanh(c)
        return (o * tanh_c, c), (i, f, g, o, c_prev, tanh_c)               # (L4)

    def step_backward(self, p, dstate, cache):
        dh, dc_next = dstate
        i, f, g, o, c_prev, tanh_c = cache
        dc = dh * o * (1 - tanh_c * tanh_c) + dc_next                      # (L6)
        dz = np.concatenate([dc * g * i * (1 - i),                         # (L8) i
                             dc * c_prev * f * (1 - f),                    # (L8) f
                             dc * i * (1 - g * g),                         # (L8) g
                             dh * tanh_c * o * (1 - o)], axis=1)           # (L7) o
        return dz, dz, (np.zeros_like(dh), f * dc), {}                     # (L5), (L9)


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def forward_kernel(z, rec, bias, extra, prev, new, aux, option):
    """One row of (L1)-(L4): z (4H,) the input part in, the activated gates out (the tape)."""
    H = prev.shape[1]
    zi, zf, zg, zo = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
    ri, rf, rg, ro = rec[:H], rec[H:2 * H], rec[2 * H:3 * H], rec[3 * H:]
    bi, bf, bg, bo = bias[:H], bias[H:2 * H], bias[2 * H:3 * H], bias[3 * H:]
    c_prev, h_out, c_out = prev[1], new[0], new[1]
    for j in range(H):
        i = sigmoid(zi[j] + ri[j] + bi[j])                                 # (L1), (L2)
        f = sigmoid(zf[j] + rf[j] + bf[j])
        g = tanh(zg[j] + rg[j] + bg[j])
        o = sigmoid(zo[j] + ro[j] + bo[j])
        zi[j], zf[j], zg[j], zo[j] = i, f, g, o
        c = f * c_prev[j] + i * g                                          # (L3)
        c_out[j] = c
        h_out[j] = o * tanh(c)                                             # (L4)


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    """One row of (L6)-(L9): du = dv = δz_t; ds_prev = (0, f ⊙ dc_t), the part of the
    gradient that reaches (h_{t-1}, c_{t-1}) other than through W_h."""
    H = prev.shape[1]
    i, f, g, o = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
    di, df, dg, do = du[:H], du[H:2 * H], du[2 * H:3 * H], du[3 * H:]
    dh, dc_next, c_t, c_prev = ds[0], ds[1], new[1], prev[1]
    dh_back, dc_back = ds_prev[0], ds_prev[1]
    one = du.dtype.type(1)                 # 1 - x in the tape's dtype (an int 1 would widen float32)
    for j in range(H):
        tanh_c = tanh(c_t[j])
        dc = dc_next[j] + dh[j] * o[j] * (one - tanh_c * tanh_c)           # (L6)
        dg[j] = dc * i[j] * (one - g[j] * g[j])                            # (L8)
        di[j] = dc * g[j] * i[j] * (one - i[j])
        df[j] = dc * c_prev[j] * f[j] * (one - f[j])
        do[j] = dh[j] * tanh_c * o[j] * (one - o[j])                       # (L7)
        dc_back[j] = dc * f[j]                                             # (L9)
        dh_back[j] = 0


LSTM.kernels = (forward_kernel, backward_kernel)
