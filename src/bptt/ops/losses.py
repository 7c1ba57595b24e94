"""Losses on the head's logits o (N, O), each returning its value and ∂L/∂o together.

Every row n carries a weight w_n: 0 for padded positions, and 1/count for the mean
reduction, so masks and reductions are one mechanism. Equations (C1)-(C6) in
docs/derivation.md.

    mse           L = Σ_n w_n Σ_k (y_nk − y*_nk)²,  y = g(o) for any head g      (C1, C2)
    cross_entropy L = Σ_n w_n (logsumexp(o_n) − o_n[y*_n]),  head softmax       (C3, C4)
    bce           L = Σ_n w_n Σ_k [max(o,0) − o·y* + log(1 + e^−|o|)], sigmoid  (C5, C6)
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .activations import HEADS


class Loss(NamedTuple):
    name: str
    value_and_grad: Callable   # (o, targets, w, head) -> (loss: float, do: (N, O))
    heads: tuple               # heads this loss is defined with
    per_element: bool          # mean divides by positions × O (as torch's MSELoss/BCEWithLogitsLoss)


def _mse(o, targets, w, head):
    g, vjp = HEADS[head]
    y = g(o)
    diff = y - targets
    loss = float(np.einsum("n,nk,nk->", w, diff, diff))          # (C1)
    dy = diff * (2 * w)[:, None]                                   # (C2)
    return loss, vjp(y, dy)                                        # (H4)/(H5)


def _cross_entropy(o, targets, w, head):
    shifted = o - o.max(axis=1, keepdims=True)
    rows = np.arange(o.shape[0])
    picked = shifted[rows, targets]
    do = np.exp(shifted, out=shifted)                              # one exp serves (C3) and (C4)
    z = do.sum(axis=1)
    loss = float(w @ (np.log(z) - picked))                         # (C3)
    do /= z[:, None]                                               # softmax(o), as (H3)
    do[rows, targets] -= 1                                         # (C4) softmax(o) − onehot
    do *= w[:, None]
    return loss, do


def _bce(o, targets, w, head):
    per = np.maximum(o, 0) - o * targets + np.log1p(np.exp(-np.abs(o)))
    loss = float(w @ per.sum(axis=1))                              # (C5)
    do = HEADS["sigmoid"][0](o)
    do -= targets
    do *= w[:, None]                                               # (C6) σ(o) − y*
    return loss, do


LOSSES = {
    "mse": Loss("mse", _mse, ("identity", "sigmoid", "softmax"), True),
    "cross_entropy": Loss("cross_entropy", _cross_entropy, ("softmax",), False),
    "bce": Loss("bce", _bce, ("sigmoid",), True),
}
