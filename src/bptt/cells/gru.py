"""GRU layer over a whole sequence in PyTorch's form (r, z, n).

    r = σ(W_xr x_t + W_hr h_{t-1} + b_r)                       (G1)
    z = σ(W_xz x_t + W_hz h_{t-1} + b_z)                       (G2)
    q_t = W_hn h_{t-1} + b_hn                                  (G3)
    n = tanh(W_xn x_t + b_in + r ⊙ q_t)                        (G4)
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}                            (G5)

Shapes (row-vector batches, time-major):
    x (T, B, D)  W_x (3H, D)  W_h (3H, H)  b_h (3H,)  b_hn (H,)  h0 (B, H)  h (T, B, H)

b_h = [b_ir + b_hr, b_iz + b_hz, b_in]: PyTorch's two biases summed where they only
appear summed; b_hn stays apart because the reset gate multiplies it. Inside, the
blocks are reordered to (z, r, n) so that the sigmoid gates are contiguous for the
forward pass (one tanh, σ(z) = ½·tanh(z/2) + ½ (A3)) and the blocks scaled by δn are
contiguous for the backward pass. Equation numbers refer to docs/derivation.md.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends import cpu_loops, fused, recurrent_gemm
from ..backends.arrays import array_module, column_sums, empty, kernels_for, matmul
from ..backends.weight_gemm import weight_gradient
from ._blocks import GateBlocks
from ._resets import previous_states, steps_with_resets, zero_where

GATES = 3
STATE = ("h",)
_BLOCKS = GateBlocks(perm=[1, 0, 2], sigmoid=[True, True, False])  # internal order: (z, r, n)
_TORCH_ORDER = GateBlocks(perm=list(range(3)), sigmoid=[True, True, False])  # the fused kernels' order


def param_shapes(input_size: int, hidden_size: int) -> dict:
    H = hidden_size
    return {"W_x": (3 * H, input_size), "W_h": (3 * H, H), "b_h": (3 * H,), "b_hn": (H,)}


class Tape(NamedTuple):
    x: np.ndarray              # (T, B, D)
    h0: np.ndarray             # (B, H)
    gates: np.ndarray          # (T, B, 3H) activated z, r, n (internal order);
                               # r, z, n (PyTorch's) when fused
    q: np.ndarray              # (T, B, H) W_hn h_{t-1} + b_hn                       (G3)
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
    b_hn = params["b_hn"]
    (h_prev,) = state0
    # The whole loop compiled (backends/cpu_loops.py) when every array is of the fused dtype.
    if fast and cpu_loops.use_for(x, params["W_x"], params["W_h"], params["b_h"], b_hn, h_prev):
        C = cpu_loops.contiguous
        W_h = C(params["W_h"])
        gates, W_x_packed = cpu_loops.inputs_for_loop(params, x)   # (G1)-(G4) input parts, or in the loop
        q = empty(xp, (T, B, H), gates.dtype)
        h = empty(xp, (T, B, H), gates.dtype)
        valid, reset_at, resets_c = cpu_loops.step_flags(mask, resets, T, B)
        loop_args = (gates, C(x), W_x_packed, W_h, C(params["b_h"]), C(b_hn), C(h_prev), q, h, valid, reset_at,
                     resets_c, xp.empty((B, 3 * H), h.dtype), xp.empty((B, H), h.dtype))
        cpu_loops.run(cpu_loops.gru_forward, loop_args, W_h, B, T, forward=True)
        return h, (h[-1] if T else h_prev,), Tape(x, state0[0], gates, q, h, mask, resets, fast)
    gates, W_hT = blocks.project_inputs(params, x, halve, bias=not fast)   # (T, B, 3H) (G1)-(G4), input parts
    q = empty(xp, (T, B, H), gates.dtype)
    h = empty(xp, (T, B, H), gates.dtype)
    reset_at = steps_with_resets(resets, T)
    if fast:
        kernels = kernels_for(xp)
        valid = xp.ones((T, B), dtype=bool) if mask is None else mask
        recurrent = recurrent_gemm.for_module(xp, W_hT, B)
        for t in range(T):
            if reset_at[t]:
                h_prev = zero_where(h_prev, resets[t])             # (M4)
            rec = recurrent(h_prev)                                # W_h h_{t-1}
            kernels.gru_forward_step(gates[t], rec, params["b_h"], b_hn, h_prev, q[t], h[t], valid[t])  # (G1)-(G5), (M1)
            h_prev = h[t]
        return h, (h_prev,), Tape(x, state0[0], gates, q, h, mask, resets, fast)
    rec = np.empty((B, 3 * H), dtype=gates.dtype)
    tmp = np.empty((B, H), dtype=gates.dtype)
    for t in range(T):
        if reset_at[t]:
            h_prev = zero_where(h_prev, resets[t])                 # (M4)
        gt = gates[t]
        np.matmul(h_prev, W_hT, out=rec)
        zr = gt[:, :2 * H]
        np.add(zr, rec[:, :2 * H], out=zr)
        np.tanh(zr, out=zr)
        np.multiply(zr, 0.5, out=zr)
        np.add(zr, 0.5, out=zr)                                    # (G1), (G2) via (A3)
        z, r, n = gt[:, :H], gt[:, H:2 * H], gt[:, 2 * H:]
        np.add(rec[:, 2 * H:], b_hn, out=q[t])                     # (G3)
        np.multiply(r, q[t], out=tmp)
        np.add(n, tmp, out=n)
        np.tanh(n, out=n)                                          # (G4)
        np.subtract(h_prev, n, out=tmp)
        np.multiply(tmp, z, out=tmp)
        np.add(n, tmp, out=h[t])                                   # (G5) n + z(h_{t-1} − n)
        if mask is not None:
            np.copyto(h[t], h_prev, where=~mask[t, :, None])       # (M1)
        h_prev = h[t]
    return h, (h_prev,), Tape(x, state0[0], gates, q, h, mask, resets, fast)


def backward(params, dh, dstateT, tape, need_dx=True):
    """dh (T, B, H): ∂L/∂h_t from above; dstateT: (∂L/∂h_T,) from the future."""
    x, h = tape.x, tape.h
    T, B, D = x.shape
    H = h.shape[2]
    dt = h.dtype
    blocks = _TORCH_ORDER if tape.fused else _BLOCKS
    W_x = blocks.to_internal(params["W_x"], H)
    W_h = blocks.to_internal(params["W_h"], H)
    xp = array_module(x)
    dh_next = xp.zeros((B, H), dtype=dt) if dstateT is None else dstateT[0].copy()
    recursion = _recursion_fused if tape.fused else _recursion_numpy
    d_rec, d_n = recursion(W_h, dh, dh_next, tape)                 # (T, B, 3H), (T, B, H); dh_next -> t = 0
    d2 = d_rec.reshape(T * B, 3 * H)
    dn2 = d_n.reshape(T * B, H)
    x2 = x.reshape(T * B, D)
    if tape.resets is not None:
        dW_h = weight_gradient(d2, previous_states(tape.h0, h, tape.resets).reshape(T * B, H))    # (G10), (M5)
    else:
        dW_h = d2[:B].T @ tape.h0                                  # (G10)
        if T > 1:
            dW_h += d2[B:].T @ h[:-1].reshape((T - 1) * B, H)
    dW_x = xp.concatenate([weight_gradient(d2[:, :2 * H], x2),     # (G10) input side: [δz_z, δz_r, δn]
                           weight_gradient(dn2, x2)])
    db = xp.concatenate([column_sums(d2[:, :2 * H]), column_sums(dn2)])
    grads = {
        "W_x": blocks.to_torch_order(dW_x, H),
        "W_h": blocks.to_torch_order(dW_h, H),
        "b_h": blocks.to_torch_order(db, H).reshape(-1),
        "b_hn": column_sums(d2[:, 2 * H:]),                         # (G10)
    }
    dx = None
    if need_dx:
        dx = matmul(d2[:, :2 * H], W_x[:2 * H])                    # (G11)
        dx += dn2 @ W_x[2 * H:]
        dx = dx.reshape(T, B, D)
    return dx, (dh_next,), grads


def _recursion_fused(W_h, dh, dh_next, tape):
    """(G6)-(G9) backwards in time, one fused kernel and one GEMM per step."""
    gates, q, h, mask = tape.gates, tape.q, tape.h, tape.mask
    T, B, H = h.shape
    xp = array_module(h)
    d_rec = empty(xp, (T, B, 3 * H), h.dtype)
    d_n = empty(xp, (T, B, H), h.dtype)
    no_dh = xp.zeros((B, H), dtype=h.dtype)
    direct = xp.empty((B, H), dtype=h.dtype)
    h_in = None if tape.resets is None else previous_states(tape.h0, h, tape.resets)
    # The whole loop compiled (backends/cpu_loops.py) when every array is of the fused dtype.
    if cpu_loops.use_for(h, W_h, dh, dh_next, tape.h0):
        C = cpu_loops.contiguous
        W_h = C(W_h)
        valid, reset_at, resets = cpu_loops.step_flags(mask, tape.resets, T, B)
        loop_args = (W_h, no_dh[None] if dh is None else C(dh), dh is not None, dh_next, C(gates), C(q), C(h),
                     C(tape.h0), h if h_in is None else h_in, h_in is not None, valid, reset_at, resets, d_rec,
                     d_n, direct, no_dh)
        cpu_loops.run(cpu_loops.gru_backward, loop_args, W_h, B, T, forward=False)
        return d_rec, d_n
    kernels = kernels_for(xp)
    valid = xp.ones((T, B), dtype=bool) if mask is None else mask
    reset_at = steps_with_resets(tape.resets, T)
    for t in range(T - 1, -1, -1):
        h_prev = h_in[t] if h_in is not None else (tape.h0 if t == 0 else h[t - 1])
        kernels.gru_backward_step(no_dh if dh is None else dh[t], dh_next, gates[t], q[t],
                                  h_prev, valid[t], d_rec[t], d_n[t], direct)
        xp.matmul(d_rec[t], W_h, out=dh_next)                      # (G6) W_hᵀ [δz_z, δz_r, δq]
        xp.add(dh_next, direct, out=dh_next)                       # (G6) + z ⊙ dh_t
        if reset_at[t]:
            dh_next[tape.resets[t]] = 0                            # (M5)
    return d_rec, d_n


def _recursion_numpy(W_h, dh, dh_next, tape):
    """(G6)-(G9) backwards in time: factors in bulk, a few in-place ufuncs per step."""
    gates, q, h, mask = tape.gates, tape.q, tape.h, tape.mask
    T, B, H = h.shape
    dt = h.dtype
    G = gates.reshape(T, B, 3, H)
    z, r, n = G[:, :, 0], G[:, :, 1], G[:, :, 2]
    # Bulk factors; the loop scales them in place. d_rec holds the gradients of the
    # recurrent pre-activations [z_z, z_r, q] (G8), (G9); d_n those of n's pre-activation (G7).
    d_rec = np.subtract(1, gates).reshape(T, B, 3, H)
    np.multiply(d_rec, G, out=d_rec)                               # gate(1 − gate): σ' for z and r
    h_minus_n = empty(np, (T, B, H), dt)                           # contiguous: strided outputs are slow
    if tape.resets is not None:
        np.subtract(previous_states(tape.h0, h, tape.resets), n, out=h_minus_n)   # (M5)
    else:
        np.subtract(tape.h0, n[0], out=h_minus_n[0])
        np.subtract(h[:-1], n[1:], out=h_minus_n[1:])
    d_rec[:, :, 0] *= h_minus_n                                    # (G8) (h_{t-1} − n)·z(1 − z)
    d_rec[:, :, 1] *= q                                            # (G9) q·r(1 − r)
    d_rec[:, :, 2] = r                                             # (G9) r
    d_n = np.multiply(n, n, out=h_minus_n)
    np.subtract(1, d_n, out=d_n)
    d_n *= 1 - z                                                   # (G7) (1 − z)(1 − n²)
    if mask is None:
        carry = z                                                  # (G6) z_t: h_{t-1}'s direct share
    else:
        m = mask[:, :, None].astype(dt)
        d_rec[:, :, 0] *= m                                        # (M2)
        d_n *= m
        carry = m * z + (1 - m)                                    # (G6) with (M3)
    dh_t = np.empty((B, H), dtype=dt)
    tmp = np.empty((B, H), dtype=dt)
    d_rows = d_rec.reshape(T, B, 3 * H)
    reset_at = steps_with_resets(tape.resets, T)
    for t in range(T - 1, -1, -1):
        if dh is None:
            np.copyto(dh_t, dh_next)
        else:
            np.add(dh[t], dh_next, out=dh_t)                       # (G6)
        np.multiply(d_n[t], dh_t, out=d_n[t])                      # (G7)
        np.multiply(d_rec[t, :, 0], dh_t, out=d_rec[t, :, 0])      # (G8)
        np.multiply(d_rec[t, :, 1:], d_n[t][:, None, :], out=d_rec[t, :, 1:])   # (G9)
        np.matmul(d_rows[t], W_h, out=dh_next)                     # (G6) W_hᵀ [δz_z, δz_r, δq]
        np.multiply(dh_t, carry[t], out=tmp)
        np.add(dh_next, tmp, out=dh_next)                          # (G6) + z ⊙ dh_t
        if reset_at[t]:
            dh_next[tape.resets[t]] = 0                            # (M5)
    return d_rec, d_n
