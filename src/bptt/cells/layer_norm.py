"""Layer-normalised LSTM and GRU (Ba et al. 2016): the NumPy reference steps and the
compiled kernels, side by side. docs/derivation.md block LN says which tensors are
normalised and derives the backward pass.

    LN(a) = (a − mean(a)) / sqrt(var(a) + ε)   over the G·H pre-activations of one row  (LN1)

    LSTM:  a = γ_x ⊙ LN(x W_xᵀ + b_h) + γ_h ⊙ LN(h_{t-1} W_hᵀ) + β                        (LN2)
           i, f, g, o from a as (L2);  c_t = f ⊙ c_{t-1} + i ⊙ g (carried unnormalised)  (L3)
           h_t = o ⊙ tanh(γ_c ⊙ LN(c_t) + β_c)                                         (LN3)
    GRU:   r, z from γ_x ⊙ LN(·) + γ_h ⊙ LN(·) + β as (LN2);  q = γ_h,n ⊙ LN(·)_n + b_hn
           n = tanh(γ_x,n ⊙ LN(·)_n + β_n + r ⊙ q);  h_t = n + z ⊙ (h_{t-1} − n)       (LN4)

Shapes: x (T, B, D), W_x (G·H, D), W_h (G·H, H), b_h, γ_x (ln_gain_x), γ_h (ln_gain_h),
β (ln_bias) (G·H,), γ_c (ln_gain_c), β_c (ln_bias_c), b_hn (H,). b_h lies inside the
input part's normalisation (the loop adds it to x W_xᵀ, cells/protocol.py); it starts at
zero, and β is the bias of the gates. Gains start at 1, β, β_c at 0, ε = 1e-5 (PyTorch's
LayerNorm).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..ops.activations import sigmoid as sigmoid_array
from .protocol import Cell
from .scalar import sigmoid, tanh

EPS = 1e-5
_jit = njit(fastmath=True, error_model="numpy", cache=True, nogil=True)


def _normalised(a):
    """(LN1) over each row: (n, 1/σ) with σ = sqrt(var + ε)."""
    centred = a - a.mean(axis=1, keepdims=True)
    inv = 1 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + EPS)
    return centred * inv, inv


def _normalised_back(dn, n, inv):
    """(LN5): ∂L/∂a = (dn − mean(dn) − n ⊙ mean(dn ⊙ n)) / σ, row by row."""
    return inv * (dn - dn.mean(axis=1, keepdims=True) - n * (dn * n).mean(axis=1, keepdims=True))


class _LayerNormCell(Cell):
    dv_is_du = False

    def initialize(self, params, rng, hidden_size):
        params["b_h"][:] = 0
        for name in ("ln_gain_x", "ln_gain_h", "ln_gain_c"):
            if name in params:
                params[name][:] = 1
        for name in ("ln_bias", "ln_bias_c"):
            if name in params:
                params[name][:] = 0


class LayerNormLSTM(_LayerNormCell):
    """The LSTM of cells/lstm.py with (LN2) and (LN3)."""
    name = "ln-lstm"
    gates = 4
    state = ("h", "c")

    def extra_shapes(self, H):
        return {"ln_gain_x": (4 * H,), "ln_gain_h": (4 * H,), "ln_bias": (4 * H,), "ln_gain_c": (H,),
                "ln_bias_c": (H,)}

    def tape_width(self, H):
        return 10 * H + 3                          # n_x, n_h (4H each), n_c, tanh(ĉ) (H each), three 1/σ

    def step(self, p, u, v, state):
        h_prev, c_prev = state
        H = h_prev.shape[1]
        nx, ix = _normalised(u)
        nh, ih = _normalised(v)
        a = p["ln_gain_x"] * nx + p["ln_gain_h"] * nh + p["ln_bias"]                   # (LN2)
        i, f, o = sigmoid_array(a[:, :H]), sigmoid_array(a[:, H:2 * H]), sigmoid_array(a[:, 3 * H:])  # (L2)
        g = np.tanh(a[:, 2 * H:3 * H])
        c = f * c_prev + i * g                                                         # (L3)
        nc, ic = _normalised(c)
        hc = np.tanh(p["ln_gain_c"] * nc + p["ln_bias_c"])                             # (LN3)
        return (o * hc, c), (i, f, g, o, c_prev, nx, ix, nh, ih, nc, ic, hc)

    def step_backward(self, p, dstate, cache):
        dh, dc_next = dstate
        i, f, g, o, c_prev, nx, ix, nh, ih, nc, ic, hc = cache
        d_hat = dh * o * (1 - hc * hc)                                                  # (LN6)
        dc = dc_next + _normalised_back(d_hat * p["ln_gain_c"], nc, ic)                 # (LN6), (LN5)
        da = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),          # (L8)
                             dc * i * (1 - g * g), dh * hc * o * (1 - o)], axis=1)      # (L7)
        du = _normalised_back(da * p["ln_gain_x"], nx, ix)                              # (LN7)
        dv = _normalised_back(da * p["ln_gain_h"], nh, ih)
        dextra = {"ln_gain_x": (da * nx).sum(axis=0), "ln_gain_h": (da * nh).sum(axis=0),
                  "ln_bias": da.sum(axis=0), "ln_gain_c": (d_hat * nc).sum(axis=0),
                  "ln_bias_c": d_hat.sum(axis=0)}                                       # (LN7), (LN6)
        return du, dv, (np.zeros_like(dh), f * dc), dextra                              # (L9)


class LayerNormGRU(_LayerNormCell):
    """The GRU of cells/gru.py with (LN2) and (LN4)."""
    name = "ln-gru"
    gates = 3

    def extra_shapes(self, H):
        return {"ln_gain_x": (3 * H,), "ln_gain_h": (3 * H,), "ln_bias": (3 * H,), "b_hn": (H,)}

    def tape_width(self, H):
        return 7 * H + 2                           # n_x, n_h (3H each), q (H), two 1/σ

    def step(self, p, u, v, state):
        h_prev = state[0]
        H = h_prev.shape[1]
        nx, ix = _normalised(u)
        nh, ih = _normalised(v)
        ax, ah, beta = p["ln_gain_x"] * nx, p["ln_gain_h"] * nh, p["ln_bias"]
        r = sigmoid_array(ax[:, :H] + ah[:, :H] + beta[:H])                             # (LN2)
        z = sigmoid_array(ax[:, H:2 * H] + ah[:, H:2 * H] + beta[H:2 * H])
        q = ah[:, 2 * H:] + p["b_hn"]                                                   # (LN4)
        n = np.tanh(ax[:, 2 * H:] + beta[2 * H:] + r * q)
        return (n + z * (h_prev - n),), (r, z, n, q, h_prev, nx, ix, nh, ih)

    def step_backward(self, p, dstate, cache):
        dh = dstate[0]
        r, z, n, q, h_prev, nx, ix, nh, ih = cache
        da_n = dh * (1 - z) * (1 - n * n)                                               # (G7)
        da_z = dh * (h_prev - n) * z * (1 - z)                                          # (G8)
        da_r = da_n * q * r * (1 - r)                                                   # (G9)
        dq = da_n * r
        dx_side = np.concatenate([da_r, da_z, da_n], axis=1)
        dh_side = np.concatenate([da_r, da_z, dq], axis=1)
        du = _normalised_back(dx_side * p["ln_gain_x"], nx, ix)                         # (LN7)
        dv = _normalised_back(dh_side * p["ln_gain_h"], nh, ih)
        dextra = {"ln_gain_x": (dx_side * nx).sum(axis=0), "ln_gain_h": (dh_side * nh).sum(axis=0),
                  "ln_bias": dx_side.sum(axis=0), "b_hn": dq.sum(axis=0)}
        return du, dv, (dh * z,), dextra                                                # (G6)


# ---- compiled kernels: one row of the batch ----------------------------------------------------

@njit(inline="always", fastmath=True, error_model="numpy", nogil=True)   # inlined: one copy (compiled.py _inlined)
def _normalise_row(a, out):
    """(LN1): out = LN(a) for one row; returns 1/σ. Every constant in a's dtype: an int or
    a Python float would widen float32 to float64 (half the vector width)."""
    G, zero = a.dtype.type(a.size), a.dtype.type(0)
    mean = zero
    for j in range(a.size):
        mean += a[j]
    mean /= G
    var = zero
    for j in range(a.size):
        var += (a[j] - mean) * (a[j] - mean)
    inv = a.dtype.type(1) / np.sqrt(var / G + a.dtype.type(EPS))
    for j in range(a.size):
        out[j] = (a[j] - mean) * inv
    return inv


@_jit
def lstm_forward_kernel(z, rec, bias, extra, prev, new, aux, option):
    """One row of (LN1)-(LN3): z (4H) in, the activated gates out; aux: n_x, n_h, n_c,
    tanh(ĉ), 1/σ_x, 1/σ_h, 1/σ_c."""
    H = prev.shape[1]
    G = 4 * H
    gx, gh, beta, gc, bc = extra[:G], extra[G:2 * G], extra[2 * G:3 * G], extra[3 * G:3 * G + H], extra[3 * G + H:]
    nx, nh, nc, hc = aux[:G], aux[G:2 * G], aux[2 * G:2 * G + H], aux[2 * G + H:2 * G + 2 * H]
    for j in range(G):
        z[j] += bias[j]                                                    # x W_xᵀ + b_h
    aux[2 * G + 2 * H] = _normalise_row(z, nx)
    aux[2 * G + 2 * H + 1] = _normalise_row(rec, nh)
    for j in range(G):
        a = gx[j] * nx[j] + gh[j] * nh[j] + beta[j]                        # (LN2)
        z[j] = tanh(a) if H * 2 <= j < H * 3 else sigmoid(a)               # (L2)
    c_prev, h_out, c_out = prev[1], new[0], new[1]
    for j in range(H):
        c_out[j] = z[H + j] * c_prev[j] + z[j] * z[2 * H + j]              # (L3)
    aux[2 * G + 2 * H + 2] = _normalise_row(c_out, nc)
    for j in range(H):
        hc[j] = tanh(gc[j] * nc[j] + bc[j])                                # (LN3)
        h_out[j] = z[3 * H + j] * hc[j]


@_jit
def lstm_backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    """One row of (LN5)-(LN7) and (L7)-(L9); dv holds δa until it is overwritten."""
    H = prev.shape[1]
    G = 4 * H
    gx, gh, gc = extra[:G], extra[G:2 * G], extra[3 * G:3 * G + H]
    dgx, dgh, dbeta = dextra[:G], dextra[G:2 * G], dextra[2 * G:3 * G]
    dgc, dbc = dextra[3 * G:3 * G + H], dextra[3 * G + H:]
    nx, nh, nc, hc = aux[:G], aux[G:2 * G], aux[2 * G:2 * G + H], aux[2 * G + H:2 * G + 2 * H]
    ix, ih, ic = aux[2 * G + 2 * H], aux[2 * G + 2 * H + 1], aux[2 * G + 2 * H + 2]
    dh, dc_next, c_prev = ds[0], ds[1], prev[1]
    one, zero = du.dtype.type(1), du.dtype.type(0)
    s1, s2 = zero, zero
    for j in range(H):
        d_hat = dh[j] * z[3 * H + j] * (one - hc[j] * hc[j])               # (LN6)
        dgc[j] += d_hat * nc[j]
        dbc[j] += d_hat
        s1 += d_hat * gc[j]
        s2 += d_hat * gc[j] * nc[j]
    s1, s2 = s1 / du.dtype.type(H), s2 / du.dtype.type(H)
    da = dv
    for j in range(H):
        i, f, g, o = z[j], z[H + j], z[2 * H + j], z[3 * H + j]
        dn_c = dh[j] * o * (one - hc[j] * hc[j]) * gc[j]
        dc = dc_next[j] + ic * (dn_c - s1 - nc[j] * s2)                    # (LN6), (LN5)
        da[j] = dc * g * i * (one - i)                                     # (L8)
        da[H + j] = dc * c_prev[j] * f * (one - f)
        da[2 * H + j] = dc * i * (one - g * g)
        da[3 * H + j] = dh[j] * hc[j] * o * (one - o)                      # (L7)
        ds_prev[1, j] = dc * f                                             # (L9)
        ds_prev[0, j] = 0
    _normalised_pair_back(da, da, gx, gh, nx, nh, ix, ih, du, dv, dgx, dgh, dbeta)


@njit(inline="always", fastmath=True, error_model="numpy", nogil=True)   # inlined: one copy (compiled.py _inlined)
def _normalised_pair_back(da_x, da_h, gx, gh, nx, nh, ix, ih, du, dv, dgx, dgh, dbeta):
    """(LN7) for one row: du from δa on the input side (da_x), dv from δa on the
    recurrent side (da_h), and the gains' and β's gradients. da_x, da_h may be du, dv or
    one array: each du[j], dv[j] is written after da_x[j], da_h[j] are read."""
    zero = du.dtype.type(0)
    ux, uxn, uh, uhn = zero, zero, zero, zero
    for j in range(da_x.size):
        ux += da_x[j] * gx[j]
        uxn += da_x[j] * gx[j] * nx[j]
        uh += da_h[j] * gh[j]
        uhn += da_h[j] * gh[j] * nh[j]
    G = du.dtype.type(da_x.size)
    ux, uxn, uh, uhn = ux / G, uxn / G, uh / G, uhn / G
    for j in range(da_x.size):
        dx, dr = da_x[j], da_h[j]
        dgx[j] += dx * nx[j]
        dgh[j] += dr * nh[j]
        dbeta[j] += dx
        du[j] = ix * (dx * gx[j] - ux - nx[j] * uxn)                       # (LN5)
        dv[j] = ih * (dr * gh[j] - uh - nh[j] * uhn)


@_jit
def gru_forward_kernel(z, rec, bias, extra, prev, new, aux, option):
    """One row of (LN1), (LN2), (LN4): z (3H) in, (r, z, n) out; aux: n_x, n_h, q, 1/σ_x, 1/σ_h."""
    H = prev.shape[1]
    G = 3 * H
    gx, gh, beta, b_hn = extra[:G], extra[G:2 * G], extra[2 * G:3 * G], extra[3 * G:]
    nx, nh, q = aux[:G], aux[G:2 * G], aux[2 * G:2 * G + H]
    for j in range(G):
        z[j] += bias[j]
    aux[2 * G + H] = _normalise_row(z, nx)
    aux[2 * G + H + 1] = _normalise_row(rec, nh)
    h_prev, h_out = prev[0], new[0]
    for j in range(H):
        r = sigmoid(gx[j] * nx[j] + gh[j] * nh[j] + beta[j])               # (LN2)
        u = sigmoid(gx[H + j] * nx[H + j] + gh[H + j] * nh[H + j] + beta[H + j])
        q[j] = gh[2 * H + j] * nh[2 * H + j] + b_hn[j]                     # (LN4)
        n = tanh(gx[2 * H + j] * nx[2 * H + j] + beta[2 * H + j] + r * q[j])
        z[j], z[H + j], z[2 * H + j] = r, u, n
        h_out[j] = n + u * (h_prev[j] - n)


@_jit
def gru_backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    """One row of (G6)-(G9) through (LN7): du from [δa_r, δa_z, δa_n], dv from
    [δa_r, δa_z, δq], each through its own normalisation."""
    H = prev.shape[1]
    G = 3 * H
    gx, gh = extra[:G], extra[G:2 * G]
    dgx, dgh, dbeta, db_hn = dextra[:G], dextra[G:2 * G], dextra[2 * G:3 * G], dextra[3 * G:]
    nx, nh, q = aux[:G], aux[G:2 * G], aux[2 * G:2 * G + H]
    ix, ih = aux[2 * G + H], aux[2 * G + H + 1]
    dh, h_prev = ds[0], prev[0]
    one = du.dtype.type(1)
    for j in range(H):
        r, u, n = z[j], z[H + j], z[2 * H + j]
        da_n = dh[j] * (one - u) * (one - n * n)                           # (G7)
        da_r = da_n * q[j] * r * (one - r)                                 # (G9)
        du[j] = dv[j] = da_r
        du[H + j] = dv[H + j] = dh[j] * (h_prev[j] - n) * u * (one - u)    # (G8)
        du[2 * H + j] = da_n
        dv[2 * H + j] = da_n * r                                           # δq
        db_hn[j] += da_n * r
        ds_prev[0, j] = dh[j] * u                                          # (G6)
    _normalised_pair_back(du, dv, gx, gh, nx, nh, ix, ih, du, dv, dgx, dgh, dbeta)   # (LN5), (LN7)


LayerNormLSTM.kernels = (lstm_forward_kernel, lstm_backward_kernel)
LayerNormGRU.kernels = (gru_forward_kernel, gru_backward_kernel)
