"""The Elman RNN cell: the NumPy reference step and the compiled kernels, side by side.

    a_t = W_x x_t + W_h h_{t-1} + b_h          (R1)
    h_t = f(a_t),  f in tanh, relu, sigmoid, identity   (R2)

Shapes (row-vector batches, time-major):
    x (T, B, D)  W_x (H, D)  W_h (H, H)  b_h (H,)  h0 (B, H)  h (T, B, H)

b_h is PyTorch's b_ih + b_hh: the two only ever appear summed. Backward, the gradient
δa_t = dh_t ⊙ f'(a_t) (R3, R4), with f' recovered from h_t (A2); it is both du and dv of
the protocol (K4), and h_{t-1} is reached only through W_h. Equation numbers refer to
docs/derivation.md.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..ops import ACTIVATIONS
from .protocol import Cell
from .scalar import sigmoid, tanh

KINDS = {"tanh": 0, "relu": 1, "sigmoid": 2, "identity": 3}     # the kernels' ``option``


class RNN(Cell):
    """h_t = f(W_x x_t + W_h h_{t-1} + b_h) for f = ``nonlinearity``."""
    gates = 1
    state = ("h",)
    dv_is_du = True
    backward_reads_z = False          # f' comes from h_t (A2)

    def __init__(self, nonlinearity: str = "tanh"):
        if nonlinearity not in KINDS:
            raise ValueError(f"nonlinearity: expected one of {tuple(KINDS)}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.option = KINDS[nonlinearity]
        self.name = "rnn"

    def config(self) -> dict:
        """The arguments that build this cell again (saved models record them)."""
        return {"nonlinearity": self.nonlinearity}

    def step(self, p, u, v, state):
        a = u + v                                                          # (R1)
        h = ACTIVATIONS[self.nonlinearity].forward(a, a)                   # (R2)
        return (h,), (h,)

    def step_backward(self, p, dstate, cache):
        (dh,), (h,) = dstate, cache
        delta = dh * ACTIVATIONS[self.nonlinearity].derivative(h)          # (R4), (A2)
        return delta, delta, (np.zeros_like(dh),), {}


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def forward_kernel(z, rec, bias, extra, prev, new, aux, option):
    """One row of (R1), (R2): z (H,) the input part in, kept as is; h_t into new[0]."""
    h = new[0]
    if option == 0:
        for j in range(h.size):
            h[j] = tanh(z[j] + rec[j] + bias[j])
    elif option == 1:
        for j in range(h.size):
            h[j] = max(z[j] + rec[j] + bias[j], 0)
    elif option == 2:
        for j in range(h.size):
            h[j] = sigmoid(z[j] + rec[j] + bias[j])
    else:
        for j in range(h.size):
            h[j] = z[j] + rec[j] + bias[j]


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    """One row of (R4): du = dv = δa_t = dh_t ⊙ f'(a_t), f' from h_t (A2); nothing reaches
    h_{t-1} but through W_h (R3)."""
    dh, h, back = ds[0], new[0], ds_prev[0]
    one = du.dtype.type(1)                 # 1 - x in the tape's dtype (an int 1 would widen float32)
    if option == 0:
        for j in range(h.size):
            du[j] = dh[j] * (one - h[j] * h[j])
    elif option == 1:
        for j in range(h.size):
            du[j] = dh[j] if h[j] > 0 else 0
    elif option == 2:
        for j in range(h.size):
            du[j] = dh[j] * h[j] * (one - h[j])
    else:
        for j in range(h.size):
            du[j] = dh[j]
    back[:] = 0


RNN.kernels = (forward_kernel, backward_kernel)
