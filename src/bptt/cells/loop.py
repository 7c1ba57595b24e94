"""One time loop for any cell of the protocol (cells/protocol.py), in Python: the reference.

``CellLayer(cell)`` is a layer with the contract of cells/__init__.py. Forward: (K1) for
all steps in one GEMM, then per step (M4) resets, (K2), (K3) and (M1) for masks.
Backward per step, newest first: the gradient from above joins the one from the future
(R3 for s⁰), padded rows get zero (M2) so that the cell's linear backward gives them
nothing and their gradient passes to s_{t-1} unchanged (M3), (K4), (K5), and (M5) stops
it at a reset; then (K6) as one GEMM each. With resets, stream b's state is set to zero
before step t where resets[t, b]: the step reads s_in = (1 − r_t) ⊙ s_{t-1} (M4), nothing
crosses a reset backward, and the weight gradients use s_in (M5). Equation numbers refer
to docs/derivation.md.

Noise (bptt/dropout.py draws it; ``Noise`` below) enters in two places, per layer. Variational
recurrent dropout: the GEMM of (K2) reads m ⊙ s⁰_{t-1} with one mask m (B, H) for all steps
(N1); backward, (K5) returns m ⊙ (dv_t W_h) and ∂L/∂W_h sums dv_tᵀ (m ⊙ s⁰_{t-1}) (N2).
Zoneout: the cell's new state s̃_t is mixed with the one it read, s_t = d_t ⊙ s_{t-1} +
(1 − d_t) ⊙ s̃_t (N3), d_t a (B, S, H) block of 0 and 1 in training, the rate p everywhere
in evaluation; backward, (1 − d_t) ⊙ ds_t enters the cell and d_t ⊙ ds_t passes to s_{t-1}
(N4). On a padded step (M1) neither applies.

It runs a cell's NumPy ``step`` and ``step_backward``: for a cell without compiled
kernels, for arrays the compiled loop (cells/compiled.py) does not take (CuPy arrays;
BPTT_LOOPS=0), and in the tests as the reference the compiled loop is held to.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends import settings
from ..backends.arrays import array_module
from .protocol import check_cell


class Noise(NamedTuple):
    """A layer's noise; either may be None."""
    recurrent: np.ndarray | None   # (B, H) m: what multiplies s⁰_{t-1} before W_h (N1)
    zone: np.ndarray | None        # (T or 1, B or 1, S, H) d_t: the share of s_{t-1} kept (N3),
                                   # bool (a draw) or the state's dtype (the rate, in evaluation)

    def zone_at(self, t, dtype):
        """d_t as (B or 1, S, H) in ``dtype``."""
        return self.zone[t if self.zone.shape[0] > 1 else 0].astype(dtype, copy=False)


class Tape(NamedTuple):
    x: np.ndarray              # (T, B, D)
    state0: tuple              # (B, H) each: the state the layer started from
    states: tuple              # (T, B, H) each: s_t after every step
    caches: list               # per step, what cell.step kept for step_backward
    mask: np.ndarray | None    # (T, B) bool
    resets: np.ndarray | None  # (T, B) bool
    noise: Noise | None


class CellLayer:
    """The layer of ``cell``: its parameters' shapes and the time loop over it."""

    def __init__(self, cell, steps=None):
        """steps: an object with the cell's step and step_backward to run instead of the
        cell's own (backends/cuda.py's kernels); by default the cell's, or on CuPy arrays
        the CUDA kernels of a built-in cell."""
        self.cell = check_cell(cell)
        self.steps = steps
        self.GATES = cell.gates
        self.STATE = tuple(cell.state)

    def _steps(self, xp):
        if self.steps is not None:
            return self.steps
        if xp is not np:
            from ..backends import cuda
            return cuda.steps_for(self.cell) or self.cell
        return self.cell

    def param_shapes(self, input_size: int, hidden_size: int) -> dict:
        return self.cell.param_shapes(input_size, hidden_size)

    def forward(self, params, x, state0, mask=None, resets=None, noise=None):
        T, B, D = x.shape
        H = params["W_h"].shape[1]
        xp = array_module(x)
        if xp is np:
            settings.keep_freed_memory()
        cell = self._steps(xp)
        u = (x.reshape(T * B, D) @ params["W_x"].T + params["b_h"]).reshape(T, B, -1)      # (K1)
        states = tuple(xp.empty((T, B, H), x.dtype) for _ in self.STATE)
        caches = []
        reset_at = [False] * T if resets is None else resets.any(axis=1).tolist()
        dropped = noise is not None and noise.recurrent is not None
        zoned = noise is not None and noise.zone is not None
        u_in, prev, tape_in = _read_only(xp, u)[0], tuple(_read_only(xp, *state0)), _read_only(xp, *states)
        W_hT = params["W_h"].T
        for t in range(T):
            if reset_at[t]:
                prev = tuple(xp.where(resets[t][:, None], 0, s).astype(s.dtype, copy=False) for s in prev)  # (M4)
            v = (prev[0] * noise.recurrent if dropped else prev[0]) @ W_hT               # (K2), (N1)
            new, cache = cell.step(params, u_in[t], v, prev)                              # (K3)
            if t == 0:                                   # what the cell returns, checked once
                check_step(cell, new, cache, len(self.STATE), (B, H), x.dtype)
            if zoned:
                d = noise.zone_at(t, x.dtype)
                new = tuple(d[:, i] * p + (1 - d[:, i]) * n for i, (n, p) in enumerate(zip(new, prev)))   # (N3)
            for i, s in enumerate(new):
                states[i][t] = s
                if mask is not None:
                    xp.copyto(states[i][t], prev[i], where=~mask[t, :, None])         # (M1)
            caches.append(cache)
            prev = tuple(s[t] for s in tape_in)
        return states[0], prev, Tape(x, tuple(state0), states, caches, mask, resets, noise)

    def backward(self, params, dh, dstateT, tape, need_dx=True):
        x, states, mask, noise = tape.x, tape.states, tape.mask, tape.noise
        T, B, D = x.shape
        H = params["W_h"].shape[1]
        W_h, xp = params["W_h"], array_module(x)
        cell = self._steps(xp)
        dropped = noise is not None and noise.recurrent is not None
        zoned = noise is not None and noise.zone is not None
        extra = {k: xp.zeros_like(params[k]) for k in self.cell.extra_shapes(H)}
        ds = tuple(xp.zeros((B, H), x.dtype) for _ in self.STATE) if dstateT is None else tuple(dstateT)
        du = xp.empty((T, B, self.GATES * H), x.dtype)
        dv = xp.empty((T, B, self.GATES * H), x.dtype)
        for t in range(T - 1, -1, -1):
            if dh is not None:
                ds = (ds[0] + dh[t],) + ds[1:]                                         # (R3)
            valid = None if mask is None else mask[t, :, None]
            into_step = ds if valid is None else tuple(xp.where(valid, s, 0) for s in ds)  # (M2)
            if zoned:
                d = noise.zone_at(t, x.dtype)
                kept = tuple(d[:, i] * s for i, s in enumerate(into_step))              # (N4)
                into_step = tuple((1 - d[:, i]) * s for i, s in enumerate(into_step))
            result = cell.step_backward(params, into_step, tape.caches[t])                # (K4)
            if t == T - 1:                               # what the cell returns, checked once
                check_step_backward(cell, result, len(self.STATE), (B, H), (B, self.GATES * H), extra, x.dtype)
            du_t, dv_t, back, dextra = result
            du[t], dv[t] = du_t, dv_t
            for k, g in dextra.items():
                extra[k] += g
            rec = dv_t @ W_h
            back = (back[0] + (rec * noise.recurrent if dropped else rec),) + tuple(back[1:])   # (K5), (N2)
            if zoned:
                back = tuple(b + k for b, k in zip(back, kept))                       # (N4)
            if valid is not None:
                back = tuple(b + xp.where(valid, 0, s) for b, s in zip(back, ds))      # (M3)
            if tape.resets is not None and tape.resets[t].any():
                back = tuple(xp.where(tape.resets[t][:, None], 0, b) for b in back)    # (M5)
            ds = back
        du2, dv2 = du.reshape(T * B, -1), dv.reshape(T * B, -1)
        h_prev = previous_states(tape.state0[0], states[0], tape.resets)
        if dropped:
            h_prev *= noise.recurrent                                                  # (N2)
        grads = {"W_x": du2.T @ x.reshape(T * B, D), "W_h": dv2.T @ h_prev.reshape(T * B, H),
                 "b_h": du2.sum(axis=0)} | extra                                         # (K6)
        dx = (du2 @ params["W_x"]).reshape(T, B, D) if need_dx else None                 # (K6)
        return dx, ds, grads


def _read_only(xp, *arrays):
    """Views of the arrays that cannot be written (NumPy's), made once a pass: a step that
    writes into u, the tape or the caller's state0 fails at once instead of giving wrong
    gradients."""
    views = [a.view() for a in arrays]
    for view in views if xp is np else ():
        view.flags.writeable = False
    return views


def check_step(cell, new, cache, n, shape, dtype):
    """A cell's step must give one (B, H) array per state name, in the model's dtype, and a
    cache of arrays with the batch first."""
    name = type(cell).__name__
    if not isinstance(new, tuple) or len(new) != n:
        raise ValueError(f"cell: {name}.step must return (state, cache) with state a tuple of {n} "
                         f"arrays, got {type(new).__name__} of length {len(new) if hasattr(new, '__len__') else '?'}")
    for s in new:
        if getattr(s, "shape", None) != shape or s.dtype != dtype:
            raise ValueError(f"cell: {name}.step must return state arrays of shape {shape} and dtype "
                             f"{np.dtype(dtype).name}, got {getattr(s, 'shape', None)} "
                             f"{getattr(s, 'dtype', type(s).__name__)}")
    for i, a in enumerate(cache if isinstance(cache, tuple) else [cache]):
        if getattr(a, "shape", ())[:1] != shape[:1] or not isinstance(cache, tuple):
            got = f"cache[{i}] of shape {getattr(a, 'shape', None)}" if isinstance(cache, tuple) else type(cache).__name__
            raise ValueError(f"cell: {name}.step's cache must be a tuple of arrays with the batch ({shape[0]}) first "
                             f"(RTRL and the flow report take rows of it; a parameter comes from p), got {got}")


def check_step_backward(cell, result, n, shape, gates_shape, extra, dtype):
    """A cell's step_backward must give (du, dv) of (B, G·H), one (B, H) array per state
    name, and the gradient of each extra parameter in that parameter's shape, all in the
    model's dtype (float32 in a float64 model would round the gradient silently)."""
    name = f"cell: {type(cell).__name__}.step_backward must return (du, dv, dstate_prev, dextra)"
    if not (isinstance(result, tuple) and len(result) == 4):
        raise ValueError(f"{name}, got {type(result).__name__} of length "
                         f"{len(result) if hasattr(result, '__len__') else '?'}")
    du, dv, back, dextra = result
    for what, a in (("du", du), ("dv", dv)):
        if getattr(a, "shape", None) != gates_shape:
            raise ValueError(f"{name} with {what} of shape {gates_shape} (B, G·H), got {getattr(a, 'shape', a)}")
    if not (isinstance(back, tuple) and len(back) == n and all(getattr(b, "shape", None) == shape for b in back)):
        raise ValueError(f"{name} with dstate_prev a tuple of {n} arrays of shape {shape}, got "
                         f"{[getattr(b, 'shape', b) for b in back] if isinstance(back, tuple) else type(back).__name__}")
    wanted = {k: g.shape for k, g in extra.items()}
    got = {k: getattr(g, "shape", g) for k, g in dextra.items()} if isinstance(dextra, dict) else type(dextra).__name__
    if got != wanted:
        raise ValueError(f"{name} with dextra {{name: gradient}} of shapes {wanted}, got {got}")
    dtypes = sorted({str(a.dtype) for a in (du, dv, *back, *dextra.values()) if a.dtype != dtype})
    if dtypes:
        raise ValueError(f"{name} in the model's dtype {np.dtype(dtype).name}, got {', '.join(dtypes)}")


def previous_states(first, seq, resets=None):
    """(T, B, H): the state each step read, [first, seq[0], …, seq[T-2]], after (M4) when
    resets are given."""
    prev = array_module(seq).empty(seq.shape, dtype=seq.dtype)
    prev[0] = first
    prev[1:] = seq[:-1]
    if resets is not None:
        prev *= ~resets[:, :, None]
    return prev
