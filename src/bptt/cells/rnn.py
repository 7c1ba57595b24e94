"""Elman RNN layer over a whole sequence, forward and backward side by side.

    a_t = W_x x_t + W_h h_{t-1} + b_h          (R1)
    h_t = f(a_t),  f in tanh, relu, sigmoid, identity   (R2)

Shapes (row-vector batches, time-major):
    x (T, B, D)  W_x (H, D)  W_h (H, H)  b_h (H,)  h0 (B, H)  h (T, B, H)  mask (T, B)

b_h is PyTorch's b_ih + b_hh: the two only ever appear summed. Equation numbers
refer to docs/derivation.md.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends import cpu_loops, fused, recurrent_gemm
from ..backends.arrays import array_module, column_sums, empty, kernels_for, matmul
from ..backends.weight_gemm import weight_gradient
from ..ops import ACTIVATIONS
from ._resets import previous_states, steps_with_resets, zero_where

GATES = 1
STATE = ("h",)


def param_shapes(input_size: int, hidden_size: int) -> dict:
    H = hidden_size
    return {"W_x": (H, input_size), "W_h": (H, H), "b_h": (H,)}


class Tape(NamedTuple):
    x: np.ndarray              # (T, B, D)  the layer's input
    h0: np.ndarray             # (B, H)
    h: np.ndarray              # (T, B, H)  outputs; f'(a_t) is recovered from them (A2)
    mask: np.ndarray | None    # (T, B) bool
    resets: np.ndarray | None  # (T, B) bool
    nonlinearity: str


def forward(params, x, state0, mask=None, resets=None, nonlinearity="tanh"):
    W_x, W_h, b_h = params["W_x"], params["W_h"], params["b_h"]
    T, B, D = x.shape
    H = W_h.shape[0]
    f = ACTIVATIONS[nonlinearity].forward
    (h_prev,) = state0
    xp = array_module(x)                 # NumPy, or CuPy on a GPU (fused path only)
    fast = xp is not np or fused.use_for(x.dtype)
    # The whole loop compiled (backends/cpu_loops.py) when every array is of the fused dtype.
    if fast and cpu_loops.use_for(x, W_x, W_h, b_h, h_prev):
        C = cpu_loops.contiguous
        W_h = C(W_h)
        h, W_x_packed = cpu_loops.inputs_for_loop(params, x)      # (R1) input part, or in the loop
        valid, reset_at, resets_c = cpu_loops.step_flags(mask, resets, T, B)
        loop_args = (h, C(x), W_x_packed, W_h, C(b_h), C(h_prev), valid, fused.KINDS[nonlinearity], reset_at,
                     resets_c, np.empty((B, H), h.dtype), np.empty((B, H), h.dtype))
        cpu_loops.run(cpu_loops.rnn_forward, loop_args, W_h, B, T, forward=True)
        return h, (h[-1] if T else h_prev,), Tape(x, state0[0], h, mask, resets, nonlinearity)
    # (R1) input part of every step in one GEMM; h holds a_t until f turns it into h_t.
    h = matmul(x.reshape(T * B, D), W_x.T)                         # (T·B, H)
    if not fast:
        h += b_h                                                   # (the fused kernel adds b_h itself)
    h = h.reshape(T, B, H)
    W_hT = W_h.T
    reset_at = steps_with_resets(resets, T)
    if fast:
        kernels = kernels_for(xp)
        kind = fused.KINDS[nonlinearity]
        valid = xp.ones((T, B), dtype=bool) if mask is None else mask
        recurrent = recurrent_gemm.for_module(xp, W_hT, B)
        for t in range(T):
            if reset_at[t]:
                h_prev = zero_where(h_prev, resets[t])             # (M4)
            rec = recurrent(h_prev)                                # W_h h_{t-1}
            kernels.rnn_forward_step(h[t], rec, b_h, h_prev, valid[t], kind)   # (R1), (R2), (M1)
            h_prev = h[t]
        return h, (h_prev,), Tape(x, state0[0], h, mask, resets, nonlinearity)
    rec = np.empty((B, H), dtype=h.dtype)
    for t in range(T):
        if reset_at[t]:
            h_prev = zero_where(h_prev, resets[t])                 # (M4)
        np.matmul(h_prev, W_hT, out=rec)                           # (B, H)
        np.add(h[t], rec, out=h[t])                                # (R1)
        f(h[t], h[t])                                              # (R2)
        if mask is not None:
            np.copyto(h[t], h_prev, where=~mask[t, :, None])       # (M1) padded steps keep the state
        h_prev = h[t]
    return h, (h_prev,), Tape(x, state0[0], h, mask, resets, nonlinearity)


def backward(params, dh, dstateT, tape, need_dx=True):
    """dh (T, B, H): ∂L/∂h_t from above; dstateT: (∂L/∂h_T,) flowing in from the future."""
    W_x, W_h = params["W_x"], params["W_h"]
    x, h0, h = tape.x, tape.h0, tape.h
    T, B, D = x.shape
    H = h.shape[2]
    xp = array_module(h)
    dh_next = xp.zeros((B, H), dtype=h.dtype) if dstateT is None else dstateT[0].copy()
    recursion = _recursion_fused if xp is not np or fused.use_for(h.dtype) else _recursion_numpy
    delta_a, dh_next = recursion(W_h, dh, dh_next, tape)            # (T, B, H); ∂L/∂h_0
    da2 = delta_a.reshape(T * B, H)
    grads = {"W_x": weight_gradient(da2, x.reshape(T * B, D)), "b_h": column_sums(da2)}    # (R5), (R7)
    if tape.resets is not None:
        grads["W_h"] = weight_gradient(da2, previous_states(h0, h, tape.resets).reshape(T * B, H))   # (R6), (M5)
    else:
        grads["W_h"] = delta_a[0].T @ h0                            # (R6), t = 1 term
        if T > 1:
            grads["W_h"] += da2[B:].T @ h[:-1].reshape((T - 1) * B, H)   # (R6), t > 1 terms
    grads = {k: grads[k] for k in ("W_x", "W_h", "b_h")}
    dx = matmul(da2, W_x).reshape(T, B, D) if need_dx else None    # (R8)
    return dx, (dh_next,), grads


def _recursion_fused(W_h, dh, dh_next, tape):
    """(R3), (R4) backwards in time, one fused kernel and one GEMM per step."""
    h, mask = tape.h, tape.mask
    T, B, H = h.shape
    xp = array_module(h)
    delta_a = empty(xp, (T, B, H), h.dtype)
    no_dh = xp.zeros((B, H), dtype=h.dtype)
    dh_skip = xp.empty((B, H), dtype=h.dtype)
    kind = fused.KINDS[tape.nonlinearity]
    # The whole loop compiled (backends/cpu_loops.py) when every array is of the fused dtype.
    if cpu_loops.use_for(h, W_h, dh, dh_next):
        C = cpu_loops.contiguous
        W_h = C(W_h)
        valid, reset_at, resets = cpu_loops.step_flags(mask, tape.resets, T, B)
        loop_args = (W_h, no_dh[None] if dh is None else C(dh), dh is not None, dh_next, C(h), valid,
                     mask is not None, kind, reset_at, resets, delta_a, dh_skip, no_dh)
        cpu_loops.run(cpu_loops.rnn_backward, loop_args, W_h, B, T, forward=False)
        return delta_a, dh_next
    kernels = kernels_for(xp)
    valid = xp.ones((T, B), dtype=bool) if mask is None else mask
    reset_at = steps_with_resets(tape.resets, T)
    for t in range(T - 1, -1, -1):
        kernels.rnn_backward_step(no_dh if dh is None else dh[t], dh_next, h[t], valid[t], kind,
                                delta_a[t], dh_skip)                 # (R3), (R4), (M2)
        xp.matmul(delta_a[t], W_h, out=dh_next)                     # (R3) W_hᵀ δa_t
        if mask is not None:
            xp.add(dh_next, dh_skip, out=dh_next)                   # (M3)
        if reset_at[t]:
            dh_next[tape.resets[t]] = 0                             # (M5)
    return delta_a, dh_next


def _recursion_numpy(W_h, dh, dh_next, tape):
    """(R3), (R4) backwards in time: f'(a_t) for all steps in bulk, three ufuncs a step."""
    h, mask = tape.h, tape.mask
    T, B, H = h.shape
    # δa starts as f'(a_t) for all steps in bulk, then is scaled in place by dh_t.
    delta_a = ACTIVATIONS[tape.nonlinearity].derivative(h)          # (T, B, H) (A2)
    if mask is not None:
        delta_a *= mask[:, :, None]                                 # (M2)
        keep = (~mask[:, :, None]).astype(h.dtype)                  # (T, B, 1)
    dh_t = np.empty((B, H), dtype=h.dtype)
    reset_at = steps_with_resets(tape.resets, T)
    for t in range(T - 1, -1, -1):
        if dh is None:
            dh_t, dh_next = dh_next, dh_t
        else:
            np.add(dh[t], dh_next, out=dh_t)                        # (R3)
        np.multiply(dh_t, delta_a[t], out=delta_a[t])               # (R4)
        np.matmul(delta_a[t], W_h, out=dh_next)                     # (R3)/(R9) W_hᵀ δa_t
        if mask is not None:
            dh_t *= keep[t]
            dh_next += dh_t                                         # (M3)
        if reset_at[t]:
            dh_next[tape.resets[t]] = 0                             # (M5)
    return delta_a, dh_next
