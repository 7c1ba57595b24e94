"""The LSTM with a projected output (Sak et al. 2014; PyTorch's ``proj_size``), run by the
LSTM's own layer (compiled or Python loop) with the projection folded in.

    z_t = W_x x_t + W_h h_{t-1} + b_h        W_h (4H, P), h (B, P)                     (PR1)
    c_t, m_t = the LSTM's (L2)-(L4), m_t = o ⊙ tanh(c_t)  (B, H)
    h_t = m_t W_hrᵀ                          W_hr (P, H)                                (PR2)

Since h_{t-1} W_hᵀ = m_{t-1} (W_h W_hr)ᵀ, the inner layer carries (m, c), both H wide, with
W_eff = W_h W_hr as its recurrent matrix, and h_t = m_t W_hrᵀ is one product after the
loop. Only the first product reads the given h_0 (P wide) instead: the inner layer starts
from m_0 = 0 and takes h_0 W_hᵀ as part of the input projection, through x'_t = [x_t, e_t]
and W_x' = [W_x, W_h] with e_t = h_0 at each sequence's first valid step and 0 elsewhere
(0 there too where a reset comes first). The LSTM's step reads c_{t-1} only, never
m_{t-1}, so m_0 = 0 changes nothing else. Backward (docs/derivation.md (PR3)):

    dm_t = dh_t W_hr,  ∂L/∂W_hr = Σ_t dh_tᵀ m_t + W_hᵀ ∂L/∂W_eff,  ∂L/∂W_h = ∂L/∂W_eff W_hrᵀ + (∂L/∂W_x')_h,
    ∂L/∂h_0 = ∂L/∂e at each sequence's first valid step.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ProjectedTape(NamedTuple):
    inner: object            # the inner layer's tape
    inner_params: dict       # W_x' = [W_x, W_h], W_eff = W_h W_hr and the rest, as the inner layer ran
    m: np.ndarray            # (T, B, H) m_t, the LSTM's unprojected output
    mT: np.ndarray           # (B, H)
    first: np.ndarray        # (B,) each sequence's first valid step
    fed: np.ndarray          # (B,) bool: h_0 entered there (no reset before it)
    held: np.ndarray         # (T, B) bool: h_t is h_0 held (padding before the first valid step, no reset yet)
    D: int                   # input width


class ProjectedLayer:
    """An LSTM layer of ``inner`` (cells.layer_of(LSTM())) with outputs projected to P."""

    def __init__(self, inner, proj_size: int):
        self.inner, self.P = inner, proj_size
        self.cell, self.GATES, self.STATE = inner.cell, inner.GATES, inner.STATE

    def param_shapes(self, input_size: int, hidden_size: int) -> dict:
        shapes = self.inner.param_shapes(input_size, hidden_size)
        return shapes | {"W_h": (self.GATES * hidden_size, self.P), "W_hr": (self.P, hidden_size)}

    def state_widths(self, hidden_size: int) -> tuple:
        """(P, H): h is projected, c is not."""
        return (self.P, hidden_size)

    def _inner_params(self, params):
        W_h, W_hr = params["W_h"], params["W_hr"]
        return {k: v for k, v in params.items() if k not in ("W_h", "W_hr")} | \
            {"W_x": np.concatenate([params["W_x"], W_h], axis=1), "W_h": W_h @ W_hr}

    def forward(self, params, x, state0, mask=None, resets=None, noise=None):
        T, B, D = x.shape
        h0, c0 = state0
        H = c0.shape[1]
        first = np.zeros(B, dtype=np.int64) if mask is None else mask.argmax(axis=0)
        fed = np.ones(B, dtype=bool)
        if resets is not None:                  # a reset at or before the first valid step zeroes h_0
            fed = ~(resets & (np.arange(T)[:, None] <= first[None, :])).any(axis=0)
        e = np.zeros((T, B, self.P), x.dtype)
        rows = np.flatnonzero(fed)
        e[first[rows], rows] = h0[rows]
        inner_params = self._inner_params(params)
        m, (mT, cT), tape = self.inner.forward(inner_params, np.concatenate([x, e], axis=2),
                                               (np.zeros((B, H), x.dtype), c0), mask, resets, noise)
        W_hrT = params["W_hr"].T
        h = (m.reshape(T * B, H) @ W_hrT).reshape(T, B, self.P)                          # (PR2)
        # Before a sequence's first valid step (all of it, in a chunk of padding only) the
        # state is h_0 held (M1), zero from a reset on (M4); m_t is 0 there, so h_t is set.
        held = np.zeros((T, B), dtype=bool) if mask is None else ~np.logical_or.accumulate(mask, axis=0)
        if resets is not None:
            held &= ~np.logical_or.accumulate(resets, axis=0)
        hT = mT @ W_hrT
        if held.any():
            t, b = np.nonzero(held)
            h[t, b] = h0[b]
            hT[held[-1]] = h0[held[-1]]
        return h, (hT, cT), ProjectedTape(tape, inner_params, m, mT, first, fed, held, D)

    def backward(self, params, dh, dstateT, tape, need_dx=True):
        W_h, W_hr = params["W_h"], params["W_hr"]
        m = tape.m
        T, B, H = m.shape
        dhT, dcT = (None, None) if dstateT is None else dstateT
        dm = None if dh is None else (dh.reshape(T * B, self.P) @ W_hr).reshape(T, B, H)           # (PR3)
        dmT = None if dhT is None else dhT @ W_hr
        inner_dT = None if dstateT is None else (dmT if dmT is not None else np.zeros((B, H), m.dtype), dcT)
        dx_all, (_, dc0), g = self.inner.backward(tape.inner_params, dm, inner_dT, tape.inner,
                                                  need_dx=True)
        D = tape.D
        dW_eff = g.pop("W_h")
        dW_x_all = g.pop("W_x")
        dW_hr = W_h.T @ dW_eff                                                             # (PR3)
        if dh is not None:
            dW_hr += dh.reshape(T * B, self.P).T @ m.reshape(T * B, H)
        if dhT is not None:
            dW_hr += dhT.T @ tape.mT
        grads = g | {"W_x": dW_x_all[:, :D], "W_h": dW_eff @ W_hr.T + dW_x_all[:, D:], "W_hr": dW_hr}
        dh0 = np.zeros((B, self.P), m.dtype)
        rows = np.flatnonzero(tape.fed)
        dh0[rows] = dx_all[tape.first[rows], rows, D:]
        if dh is not None:                                                                 # h_0 held (M3)
            dh0 += (dh * tape.held[:, :, None]).sum(axis=0)
        if dhT is not None:
            dh0 += dhT * tape.held[-1][:, None]
        return (dx_all[:, :, :D] if need_dx else None), (dh0, dc0), grads
