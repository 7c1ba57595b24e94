"""Truncation bias: how far the truncated gradient is from the full one, as k grows.

For each k, g_k is the sum over the updates of TBPTT(k, k) at fixed parameters (each
update's mean taken over the whole sequence's count, so that g_k and the full gradient g
are gradients of the same objective, truncated or not). Per parameter tensor, and for
all parameters together:

    relative error  ‖g_k − g‖ / ‖g‖          cosine  ⟨g_k, g⟩ / (‖g_k‖ ‖g‖)

so that k can be chosen from data: the smallest k whose gradient points where the full
one does.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..model import check_model
from .schedules import _updates


class TruncationBias(NamedTuple):
    ks: np.ndarray                 # (K,) the truncation lengths
    relative_error: dict           # name -> (K,), and "all" for every parameter together
    cosine: dict                   # name -> (K,), and "all"

    def __str__(self):
        lines = [f"{'k':>6}  {'relative error':>14}  {'cosine':>8}"]
        for i, k in enumerate(self.ks):
            lines.append(f"{int(k):>6}  {self.relative_error['all'][i]:>14.3e}  {self.cosine['all'][i]:>8.5f}")
        return "\n".join(lines)


def truncation_bias(model, x, targets, ks, state0=None, mask=None, resets=None) -> TruncationBias:
    """Relative error and cosine similarity of TBPTT(k, k)'s gradient against full BPTT's.
    Shapes as ``Model.gradients`` takes them: x (T, B, D), targets (T, B, O) or class indices
    (T, B), mask and resets (T, B) bool, state0 (L, B, H) or (h, c).
    """
    check_model(model)
    if targets is None:
        raise ValueError("targets: the truncation bias compares gradients of a loss, which needs targets; got None")
    listed = list(ks) if isinstance(ks, (list, tuple, range, np.ndarray)) else None
    if not listed or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in listed):
        raise ValueError(f"ks: expected a list of positive integer truncation lengths, got {ks!r}")
    ks = np.asarray(sorted({int(k) for k in listed}))
    full = model.gradients(x, targets, state0, mask, input_grad=False, resets=resets).params
    T, B = np.shape(x)[:2]
    count = T * B if mask is None else int(np.sum(mask))
    names = list(full) + ["all"]
    rel = {n: np.empty(ks.size) for n in names}
    cos = {n: np.empty(ks.size) for n in names}
    for i, k in enumerate(ks):
        g = {n: np.zeros_like(v) for n, v in full.items()}
        for _, grads, *_ in _updates(model, x, targets, int(k), int(k), state0, mask, resets, count):
            for n in g:
                g[n] += grads[n]
        for n in names:
            a = np.concatenate([g[m].ravel() for m in full]) if n == "all" else g[n].ravel()
            b = np.concatenate([full[m].ravel() for m in full]) if n == "all" else full[n].ravel()
            a, b = a.astype(np.float64), b.astype(np.float64)
            nb, na = np.linalg.norm(b), np.linalg.norm(a)
            rel[n][i] = np.linalg.norm(a - b) / nb if nb > 0 else 0.0
            cos[n][i] = a @ b / (na * nb) if na > 0 and nb > 0 else 1.0
    return TruncationBias(ks, rel, cos)
