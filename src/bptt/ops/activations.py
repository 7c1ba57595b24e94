"""Elementwise activations, each written as its value and its derivative side by side.

The recurrent layers need f'(a) during backward. For every activation here f' can
be recovered from the output h = f(a) alone (tanh: 1 - h², sigmoid: h(1 - h),
relu: 1[h > 0], identity: 1), so layers keep h on the tape and never the
pre-activation a. Equation numbers refer to docs/derivation.md.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


class Activation(NamedTuple):
    name: str
    forward: Callable        # forward(a, out) -> f(a), written into out (may be a itself)
    derivative: Callable     # derivative(h) -> f'(a) as a new array, from h = f(a)   (A2)
    gamma: float             # max |f'|, the γ of the vanishing/exploding bound (V3)


def _tanh(a, out):
    return np.tanh(a, out=out)                                    # (A1)


def _tanh_d(h):
    d = np.multiply(h, h)
    np.subtract(1, d, out=d)                                      # (A2) 1 - h²
    return d


def _sigmoid(a, out):
    # sigmoid(a) = 0.5·tanh(a/2) + 0.5: one transcendental (tanh, no exp), no overflow for large |a|.
    np.multiply(a, 0.5, out=out)
    np.tanh(out, out=out)
    np.multiply(out, 0.5, out=out)
    return np.add(out, 0.5, out=out)                              # (A1) σ, computed by (A3)


def _sigmoid_d(h):
    d = np.subtract(1, h)
    return np.multiply(d, h, out=d)                               # (A2) h(1 - h)


def _relu(a, out):
    return np.maximum(a, 0, out=out)                              # (A1)


def _relu_d(h):
    return (h > 0).astype(h.dtype)                                # (A2) 1[a > 0]; f'(0) = 0 as in PyTorch


def _identity(a, out):
    if out is not a:
        np.copyto(out, a)
    return out                                                    # (A1)


def _identity_d(h):
    return np.ones_like(h)                                        # (A2)


ACTIVATIONS = {
    "tanh": Activation("tanh", _tanh, _tanh_d, 1.0),
    "sigmoid": Activation("sigmoid", _sigmoid, _sigmoid_d, 0.25),
    "relu": Activation("relu", _relu, _relu_d, 1.0),
    "identity": Activation("identity", _identity, _identity_d, 1.0),
}


# ---- output heads g: y = g(o), with the vector-Jacobian product dy -> do ----------------

def softmax(o: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits o (N, O), shifted by the row max for stability.  (H3)"""
    y = o - o.max(axis=-1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y


def softmax_vjp(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """do = y ⊙ (dy - <dy, y>), the softmax Jacobian applied to dy.  (H5)"""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def sigmoid(a):
    """σ(a) = ½·tanh(a/2) + ½ as a new array: the sigmoid head, and the gates of the cells'
    NumPy steps.  (A3)"""
    return _sigmoid(a, np.empty_like(a))


HEADS = {
    # name: (g(o), vjp(y, dy) -> do)                                  (H2)-(H5)
    "identity": (lambda o: o, lambda y, dy: dy),
    "sigmoid": (sigmoid, lambda y, dy: dy * _sigmoid_d(y)),
    "softmax": (softmax, softmax_vjp),
}
