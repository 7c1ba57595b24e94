"""The output head's affine map, applied to all positions at once.

    o = W_y h + b_y     (H1)      y = g(o) is applied by the loss (ops/), fused where stable.

Shapes: h (N, H) with N = T·B (outputs at every step) or B (last step only),
W_y (O, H), b_y (O,), o (N, O).
"""
from __future__ import annotations

from ..backends.arrays import column_sums
from ..backends.bulk import t_times


def param_shapes(hidden_size: int, output_size: int) -> dict:
    return {"W_y": (output_size, hidden_size), "b_y": (output_size,)}


def forward(params, h):
    o = h @ params["W_y"].T                                        # (N, O) (H1)
    o += params["b_y"]
    return o


def backward(params, do, h):
    """do (N, O) = ∂L/∂o  ->  (∂L/∂h (N, H), grads)."""
    grads = {"W_y": t_times(do, h), "b_y": column_sums(do)}         # (H6)
    return do @ params["W_y"], grads                               # (H7)
