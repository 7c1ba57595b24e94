"""The GRU cell in PyTorch's form (r, z, n): the NumPy reference step and the compiled
kernels, side by side.

    r = σ(W_xr x_t + W_hr h_{t-1} + b_r)                       (G1)
    z = σ(W_xz x_t + W_hz h_{t-1} + b_z)                       (G2)
    q_t = W_hn h_{t-1} + b_hn                                  (G3)
    n = tanh(W_xn x_t + b_in + r ⊙ q_t)                        (G4)
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}                            (G5)

Shapes (row-vector batches, time-major):
    x (T, B, D)  W_x (3H, D)  W_h (3H, H)  b_h (3H,)  b_hn (H,)  h0 (B, H)  h (T, B, H)

b_h = [b_ir + b_hr, b_iz + b_hz, b_in]: PyTorch's two biases summed where they only
appear summed; b_hn stays apart because the reset gate multiplies it (an extra parameter
of the protocol). The n block of dv is δq = r ⊙ δa_n, of du δa_n (G9, G10). The tape row
keeps the activated (r, z, n), its extra row q_t. Equation numbers refer to
docs/derivation.md.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..ops.activations import sigmoid as sigmoid_array
from .protocol import Cell
from .scalar import sigmoid, tanh


class GRU(Cell):
    """Gated recurrent unit, PyTorch's nn.GRU."""
    name = "gru"
    gates = 3
    state = ("h",)

    def extra_shapes(self, hidden_size):
        return {"b_hn": (hidden_size,)}

    def tape_width(self, hidden_size):
        return hidden_size                                                 # q_t

    def step(self, p, u, v, state):
        (h,) = state
        H = h.shape[1]
        r = sigmoid_array(u[:, :H] + v[:, :H])                             # (G1)
        z = sigmoid_array(u[:, H:2 * H] + v[:, H:2 * H])                   # (G2)
        q = v[:, 2 * H:] + p["b_hn"]                                       # (G3)
        n = np.tanh(u[:, 2 * H:] + r * q)                                  # (G4)
        return (n + z * (h - n),), (r, z, n, q, h)                         # (G5)

    def step_backward(self, p, dstate, cache):
        (dh,) = dstate
        r, z, n, q, h = cache
        da_n = dh * (1 - z) * (1 - n * n)                                  # (G7)
        da_z = dh * (h - n) * z * (1 - z)                                  # (G8)
        da_r = da_n * q * r * (1 - r)                                      # (G9)
        dq = da_n * r
        du = np.concatenate([da_r, da_z, da_n], axis=1)                    # (G10) input side
        dv = np.concatenate([da_r, da_z, dq], axis=1)                      # (G10) recurrent side
        return du, dv, (dh * z,), {"b_hn": dq.sum(axis=0)}                 # (G6), (G10)


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def forward_kernel(z, rec, bias, extra, prev, new, aux, option):
    """One row of (G1)-(G5): z (3H,) the input part in, the activated (r, z, n) out;
    aux (H,) out: q_t; extra = b_hn."""
    H = prev.shape[1]
    ar, az, an = z[:H], z[H:2 * H], z[2 * H:]
    rr, rz, rn = rec[:H], rec[H:2 * H], rec[2 * H:]
    br, bz, bn = bias[:H], bias[H:2 * H], bias[2 * H:]
    h_prev, h_out, q_out = prev[0], new[0], aux
    for j in range(H):
        r = sigmoid(ar[j] + rr[j] + br[j])                                 # (G1)
        u = sigmoid(az[j] + rz[j] + bz[j])                                 # (G2)
        q = rn[j] + extra[j]                                               # (G3)
        n = tanh(an[j] + bn[j] + r * q)                                    # (G4)
        ar[j], az[j], an[j] = r, u, n
        q_out[j] = q
        h_out[j] = n + u * (h_prev[j] - n)                                 # (G5)


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    """One row of (G6)-(G9): du = [δa_r, δa_z, δa_n], dv = [δa_r, δa_z, δq],
    ds_prev = z ⊙ dh_t (the direct path of G6), dextra (b_hn) += δq (G10)."""
    H = prev.shape[1]
    r, u, n = z[:H], z[H:2 * H], z[2 * H:]
    dur, duz, dun = du[:H], du[H:2 * H], du[2 * H:]
    dvr, dvz, dvq = dv[:H], dv[H:2 * H], dv[2 * H:]
    dh, h_prev, q, back = ds[0], prev[0], aux, ds_prev[0]
    one = du.dtype.type(1)                 # 1 - x in the tape's dtype (an int 1 would widen float32)
    for j in range(H):
        da_n = dh[j] * (one - u[j]) * (one - n[j] * n[j])                  # (G7)
        da_z = dh[j] * (h_prev[j] - n[j]) * u[j] * (one - u[j])            # (G8)
        da_r = da_n * q[j] * r[j] * (one - r[j])                           # (G9)
        dq = da_n * r[j]
        dur[j], duz[j], dun[j] = da_r, da_z, da_n
        dvr[j], dvz[j], dvq[j] = da_r, da_z, dq
        dextra[j] += dq                                                    # (G10)
        back[j] = dh[j] * u[j]                                             # (G6)


GRU.kernels = (forward_kernel, backward_kernel)
