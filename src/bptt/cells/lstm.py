"""LSTM layer over a whole sequence in PyTorch's gate order (i, f, g, o).

    z_t = W_x x_t + W_h h_{t-1} + b_h                          (L1)  z = [z_i, z_f, z_g, z_o]
    i = σ(z_i)  f = σ(z_f)  g = tanh(z_g)  o = σ(z_o)          (L2)
    c_t = f ⊙ c_{t-1} + i ⊙ g                                  (L3)
    h_t = o ⊙ tanh(c_t)                                        (L4)

Shapes (row-vector batches, time-major):
    x (T, B, D)  W_x (4H, D)  W_h (4H, H)  b_h (4H,)  h0, c0 (B, H)  h, c (T, B, H)

b_h is PyTorch's b_ih + b_hh. Inside, the gate blocks are reordered to (g, i, f, o):
the three sigmoid gates are then contiguous for the forward pass (one tanh over all
4H, σ(z) = ½·tanh(z/2) + ½ (A3), with their weights pre-scaled by ½), and the three
gates driven by dc are contiguous for the backward pass. Parameters and gradients
keep PyTorch's order at the interface. Equation numbers refer to docs/derivation.md.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends import cpu_loops, fused, recurrent_gemm
from ..backends.arrays import array_module, column_sums, empty, kernels_for, matmul
from ..backends.weight_gemm import weight_gradient
from ._blocks import GateBlocks
from ._resets import previous_states, steps_with_resets, zero_where

GATES = 4
STATE = ("h", "c")
_BLOCKS = GateBlocks(perm=[2, 0, 1, 3], sigmoid=[False, True, True, True])  # internal order: (g, i, f, o)
_TORCH_ORDER = GateBlocks(perm=list(range(4)), sigmoid=[True, True, False, True])  # the fused kernels' order


def param_shapes(input_size: int, hidden_size: int) -> dict:
    H = hidden_size
    return {"W_x": (4 * H, input_size), "W_h": (4 * H, H), "b_h": (4 * H,)}


class Tape(NamedTuple):
    x: np.ndarray              # (T, B, D)
    h0: np.ndarray             # (B, H)
    c0: np.ndarray             # (B, H)
    gates: np.ndarray          # (T, B, 4H) activated gates, internal order (g, i, f, o);
                               # PyTorch's (i, f, g, o) when fused
    c: np.ndarray              # (T, B, H)
    h: np.ndarray              # (T, B, H)
    mask: np.ndarray | None    # (T, B) bool
    resets: np.ndarray | None  # (T, B) bool
    fused: bool                # gates in PyTorch's order, for the fused backward


def forward(params, x, state0, mask=None, resets=None):
    T, B, D = x.shape
    H = params["W_h"].shape[1]
    xp = array_module(x)                 # NumPy, or CuPy on a GPU (fused path only)
    fast = xp is not np or fused.use_for(x.dtype)
    halve = not fast               # the NumPy path gets σ from one tanh of z/2 (A3)
    blocks = _TORCH_ORDER if fast else _BLOCKS
    h_prev, c_prev = state0
    # The whole loop compiled (backends/cpu_loops.py) when every array is of the fused dtype.
    if fast and cpu_loops.use_for(x, params["W_x"], params["W_h"], params["b_h"], h_prev, c_prev):
        C = cpu_loops.contiguous
        W_h = C(params["W_h"])
        gates, W_x_packed = cpu_loops.inputs_for_loop(params, x)   # (L1) input part, or in the loop
        c = empty(xp, (T, B, H), gates.dtype)
        h = empty(xp, (T, B, H), gates.dtype)
        valid, reset_at, resets_c = cpu_loops.step_flags(mask, resets, T, B)
        loop_args = (gates, C(x), W_x_packed, W_h, C(params["b_h"]), C(h_prev), C(c_prev), h, c, valid, reset_at,
                     resets_c, xp.empty((B, 4 * H), h.dtype), xp.empty((B, H), h.dtype), xp.empty((B, H), h.dtype))
        cpu_loops.run(cpu_loops.lstm_forward, loop_args, W_h, B, T, forward=True)
        final = (h[-1], c[-1]) if T else (h_prev, c_prev)
        return h, final, Tape(x, state0[0], state0[1], gates, c, h, mask, resets, fast)
    gates, W_hT = blocks.project_inputs(params, x, halve, bias=not fast)   # (T, B, 4H) (L1), input part
    c = empty(xp, (T, B, H), gates.dtype)
    h = empty(xp, (T, B, H), gates.dtype)
    reset_at = steps_with_resets(resets, T)
    if fast:
        kernels = kernels_for(xp)
        valid = xp.ones((T, B), dtype=bool) if mask is None else mask
        recurrent = recurrent_gemm.for_module(xp, W_hT, B)
        for t in range(T):
            if reset_at[t]:
                h_prev, c_prev = zero_where(h_prev, resets[t]), zero_where(c_prev, resets[t])   # (M4)
            rec = recurrent(h_prev)                                # W_h h_{t-1}
            kernels.lstm_forward_step(gates[t], rec, params["b_h"], h_prev, c_prev, h[t], c[t], valid[t])  # (L1)-(L4), (M1)
            h_prev, c_prev = h[t], c[t]
        return h, (h_prev, c_prev), Tape(x, state0[0], state0[1], gates, c, h, mask, resets, fast)
    rec = np.empty((B, 4 * H), dtype=gates.dtype)
    ig = np.empty((B, H), dtype=gates.dtype)
    for t in range(T):
        if reset_at[t]:
            h_prev, c_prev = zero_where(h_prev, resets[t]), zero_where(c_prev, resets[t])       # (M4)
        gt = gates[t]
        np.matmul(h_prev, W_hT, out=rec)
        np.add(gt, rec, out=gt)                                    # (L1)
        np.tanh(gt, out=gt)                                        # (L2) g, and tanh(z/2) for i, f, o
        sig = gt[:, H:]
        np.multiply(sig, 0.5, out=sig)
        np.add(sig, 0.5, out=sig)                                  # (A3) σ = ½·tanh(z/2) + ½
        np.multiply(gt[:, 2 * H:3 * H], c_prev, out=c[t])
        np.multiply(gt[:, H:2 * H], gt[:, :H], out=ig)
        np.add(c[t], ig, out=c[t])                                 # (L3)
        np.tanh(c[t], out=h[t])
        np.multiply(h[t], gt[:, 3 * H:], out=h[t])                 # (L4)
        if mask is not None:
            keep = ~mask[t, :, None]
            np.copyto(h[t], h_prev, where=keep)                    # (M1)
            np.copyto(c[t], c_prev, where=keep)
        h_prev, c_prev = h[t], c[t]
    return h, (h_prev, c_prev), Tape(x, state0[0], state0[1], gates, c, h, mask, resets, fast)


def backward(params, dh, dstateT, tape, need_dx=True):
    """dh (T, B, H): ∂L/∂h_t from above; dstateT: (∂L/∂h_T, ∂L/∂c_T) from the future."""
    x, h = tape.x, tape.h
    T, B, D = x.shape
    H = h.shape[2]
    dt = h.dtype
    blocks = _TORCH_ORDER if tape.fused else _BLOCKS
    W_x = blocks.to_internal(params["W_x"], H)
    W_h = blocks.to_internal(params["W_h"], H)
    xp = array_module(x)
    dh_next = xp.zeros((B, H), dtype=dt) if dstateT is None else dstateT[0].copy()
    dc_next = xp.zeros((B, H), dtype=dt) if dstateT is None else dstateT[1].copy()
    recursion = _recursion_fused if tape.fused else _recursion_numpy
    dz = recursion(W_h, dh, dh_next, dc_next, tape)                # (T, B, 4H); dh_next, dc_next -> t = 0
    dz2 = dz.reshape(T * B, 4 * H)
    # (L10): ∂L/∂W_x = Σ δz_t x_tᵀ and ∂L/∂W_h = Σ δz_t h_{t-1}ᵀ as one GEMM against the rows
    # [x_t | h_{t-1}] (T·B, D + H): one wide GEMM is faster than two narrow ones (P), in the
    # orientation measured faster (backends/weight_gemm.py).
    inputs = empty(xp, (T * B, D + H), dt)
    inputs[:, :D] = x.reshape(T * B, D)
    if tape.resets is not None:
        inputs[:, D:] = previous_states(tape.h0, h, tape.resets).reshape(T * B, H)   # (M5)
    else:
        inputs[:B, D:] = tape.h0
        inputs[B:, D:] = h[:-1].reshape((T - 1) * B, H)
    dW = weight_gradient(dz2, inputs)                              # (4H, D + H) (L10)
    grads = {
        "W_x": blocks.to_torch_order(dW[:, :D], H),
        "W_h": blocks.to_torch_order(dW[:, D:], H),
        "b_h": blocks.to_torch_order(column_sums(dz2), H).reshape(-1),    # (L10)
    }
    dx = matmul(dz2, W_x).reshape(T, B, D) if need_dx else None    # (L11)
    return dx, (dh_next, dc_next), grads


def _recursion_fused(W_h, dh, dh_next, dc_next, tape):
    """(L5)-(L9) backwards in time, one fused kernel and one GEMM per step."""
    gates, c, mask = tape.gates, tape.c, tape.mask
    T, B, H = c.shape
    xp = array_module(c)
    dz = empty(xp, (T, B, 4 * H), c.dtype)
    no_dh = xp.zeros((B, H), dtype=c.dtype)
    dh_skip = xp.empty((B, H), dtype=c.dtype)
    c_in = None if tape.resets is None else previous_states(tape.c0, c, tape.resets)
    # The whole loop compiled (backends/cpu_loops.py) when every array is of the fused dtype.
    if cpu_loops.use_for(c, W_h, dh, dh_next, dc_next, tape.c0):
        C = cpu_loops.contiguous
        W_h = C(W_h)
        valid, reset_at, resets = cpu_loops.step_flags(mask, tape.resets, T, B)
        loop_args = (W_h, no_dh[None] if dh is None else C(dh), dh is not None, dh_next, dc_next, C(gates), C(c),
                     C(tape.c0), c if c_in is None else c_in, c_in is not None, valid, mask is not None,
                     reset_at, resets, dz, dh_skip, no_dh)
        cpu_loops.run(cpu_loops.lstm_backward, loop_args, W_h, B, T, forward=False)
        return dz
    kernels = kernels_for(xp)
    valid = xp.ones((T, B), dtype=bool) if mask is None else mask
    reset_at = steps_with_resets(tape.resets, T)
    for t in range(T - 1, -1, -1):
        c_prev = c_in[t] if c_in is not None else (tape.c0 if t == 0 else c[t - 1])
        kernels.lstm_backward_step(no_dh if dh is None else dh[t], dh_next, dc_next, gates[t], c[t],
                                   c_prev, valid[t], dz[t], dh_skip)
        xp.matmul(dz[t], W_h, out=dh_next)                         # (L5) W_hᵀ δz_t
        if mask is not None:
            xp.add(dh_next, dh_skip, out=dh_next)                  # (M3)
        if reset_at[t]:
            dh_next[tape.resets[t]] = 0                            # (M5)
            dc_next[tape.resets[t]] = 0
    return dz


def _recursion_numpy(W_h, dh, dh_next, dc_next, tape):
    """(L5)-(L9) backwards in time: factors in bulk, a few in-place ufuncs per step."""
    gates, c, mask = tape.gates, tape.c, tape.mask
    T, B, H = c.shape
    dt = c.dtype
    G = gates.reshape(T, B, 4, H)
    g, i, f, o = G[:, :, 0], G[:, :, 1], G[:, :, 2], G[:, :, 3]
    # Factors that do not depend on the backward recursion, for all steps in bulk.
    # dz holds them first and is scaled in place by dc_t or dh_t inside the loop.
    dz = np.subtract(1, gates).reshape(T, B, 4, H)                 # 1 − gate, all four at once
    np.multiply(dz, G, out=dz)                                     # gate(1 − gate): σ' for i, f, o
    np.multiply(g, g, out=dz[:, :, 0])
    np.subtract(1, dz[:, :, 0], out=dz[:, :, 0])                   # 1 − g²: tanh' for g
    dz[:, :, 0] *= i                                               # (L8) z_g: i(1 − g²)
    dz[:, :, 1] *= g                                               # (L8) z_i: g·i(1 − i)
    if tape.resets is not None:
        dz[:, :, 2] *= previous_states(tape.c0, c, tape.resets)    # (L8) z_f: c_{t-1}·f(1 − f), (M5)
    else:
        dz[0, :, 2] *= tape.c0                                     # (L8) z_f: c_{t-1}·f(1 − f)
        dz[1:, :, 2] *= c[:-1]
    tanh_c = np.tanh(c)
    dz[:, :, 3] *= tanh_c                                          # (L7) z_o: tanh(c)·o(1 − o)
    k_c = np.multiply(tanh_c, tanh_c, out=tanh_c)
    np.subtract(1, k_c, out=k_c)
    np.multiply(k_c, o, out=k_c)                                   # (L6) o(1 − tanh²c)
    if mask is not None:
        m = mask[:, :, None].astype(dt)                            # (T, B, 1)
        dz[:, :, 3] *= m                                           # (M2)
        k_c *= m
        keep = 1 - m
    dh_t = np.empty((B, H), dtype=dt)
    dc_t = np.empty((B, H), dtype=dt)
    tmp = np.empty((B, H), dtype=dt)
    dz_rows = dz.reshape(T, B, 4 * H)
    reset_at = steps_with_resets(tape.resets, T)
    for t in range(T - 1, -1, -1):
        if dh is None:
            np.copyto(dh_t, dh_next)
        else:
            np.add(dh[t], dh_next, out=dh_t)                       # (L5)
        np.multiply(dh_t, k_c[t], out=dc_t)
        if mask is None:
            np.add(dc_t, dc_next, out=dc_t)                        # (L6)
        else:
            np.multiply(dc_next, m[t], out=tmp)
            np.add(dc_t, tmp, out=dc_t)                            # (L6) with (M2)
        np.multiply(dz[t, :, :3], dc_t[:, None, :], out=dz[t, :, :3])   # (L8)
        np.multiply(dz[t, :, 3], dh_t, out=dz[t, :, 3])            # (L7)
        np.matmul(dz_rows[t], W_h, out=dh_next)                    # (L5) W_hᵀ δz_t
        if mask is None:
            np.multiply(dc_t, f[t], out=dc_next)                   # (L9)
        else:
            np.multiply(dc_next, keep[t], out=tmp)
            np.multiply(dc_t, f[t], out=dc_next)                   # (L9)
            np.add(dc_next, tmp, out=dc_next)                      # (M3)
            np.multiply(dh_t, keep[t], out=tmp)
            np.add(dh_next, tmp, out=dh_next)                      # (M3)
        if reset_at[t]:
            dh_next[tape.resets[t]] = 0                            # (M5)
            dc_next[tape.resets[t]] = 0
    return dz
