"""Gradient clipping, and the guard that never lets a non-finite gradient through silently."""
from __future__ import annotations

import math

import numpy as np


class NonFiniteGradient(ValueError):
    """A loss or gradient is NaN or infinite; ``name`` is the first parameter affected."""

    def __init__(self, name, value):
        self.name = name
        what = name if name == "the loss" else f"gradient of {name}"
        super().__init__(f"{what}: not finite ({value}); the update was not applied")


class NonFiniteParameters(ValueError):
    """An optimizer step left a parameter NaN or infinite (a learning rate too large for
    the gradients); ``name`` is the first parameter affected."""

    def __init__(self, name, value, step):
        self.name = name
        super().__init__(f"parameter {name}: not finite ({value}) after update {step}: the optimizer's step "
                         f"overflowed; expected a smaller learning rate")


def check_finite_parameters(params: dict, step: int) -> None:
    """NonFiniteParameters at the first parameter that is not finite after update ``step``."""
    for name, p in params.items():
        if not np.isfinite(p).all():
            raise NonFiniteParameters(name, p[~np.isfinite(p)].flat[0], step)


def check_finite(loss, grads: dict) -> None:
    if not np.isfinite(loss):
        raise NonFiniteGradient("the loss", loss)
    for name, g in grads.items():
        if not np.isfinite(g).all():
            raise NonFiniteGradient(name, g[~np.isfinite(g)].flat[0])


def global_norm(grads: dict) -> float:
    """The L2 norm of all gradients together. A float32 gradient whose sum of squares
    passes float32's range (entries above about 1.8e19, still finite) is summed again in
    float64, and float64 gradients whose squares pass float64's (entries above about
    1.3e154) again divided by their largest entry: an infinite norm would make norm
    clipping scale every gradient by 0."""
    norm = float(np.sqrt(sum(_sum_of_squares(g) for g in grads.values())))
    if math.isinf(norm):
        largest = max(float(np.abs(g).max()) for g in grads.values())
        if math.isfinite(largest):
            norm = largest * math.sqrt(sum(float(np.vdot(g / largest, g / largest)) for g in grads.values()))
    return norm


def _sum_of_squares(g) -> float:
    total = float(np.vdot(g, g))
    if math.isinf(total) and g.dtype == np.float32:
        wide = g.astype(np.float64)
        total = float(np.vdot(wide, wide))
    return total


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most max_norm.

    Returns the norm before clipping, as torch.nn.utils.clip_grad_norm_ does (and scales
    by max_norm / (norm + 1e-6), as it does). Where float32 squares overflow, torch's norm
    is inf and it scales by 0; here the norm is global_norm's, finite, and the gradients
    are scaled to max_norm.
    """
    if not max_norm > 0:                       # a negative bound would flip every gradient
        raise ValueError(f"max_norm: expected a positive number, got {max_norm}")
    norm = global_norm(grads)
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= scale
    return norm


def clip_grad_value(grads: dict, limit: float) -> None:
    """Clip every gradient entry into [−limit, limit] (min-char-rnn's ±5)."""
    if not (limit > 0 and np.isfinite(limit)):
        raise ValueError(f"limit: expected a positive number, got {limit}")
    for g in grads.values():
        np.clip(g, -limit, limit, out=g)
