"""A Model's layers run forward and backward: directions, and the noise between layers
(floor 3, beside model.py).

With ``bidirectional=False`` layer l reads layer l − 1's outputs. With ``bidirectional=True``
every layer has two directions, each with its own parameters: ``layer{l}`` runs forward in
time, ``layer{l}_reverse`` runs each sequence from its last valid step back to its first
(as PyTorch's packed sequences do, so that padding changes nothing), and the layer's
output at step t is [h_t forward, h_t reverse] (B, 2H), what the layer above and the head
read. The reverse direction is the same layer on the time-reversed sequence: a gather
by a permutation of the steps (``reversal``), which is its own inverse, so the gradient
goes back through the same gather (docs/derivation.md, "Model: stacking and chunks").

States and tapes are kept per layer and direction, at index k = l · D + d (D directions,
d = 0 forward, 1 reverse): PyTorch's layout of h_n.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import dropout as noise


class Forward(NamedTuple):
    top: np.ndarray          # (T, B, D·H) the last layer's outputs
    states: list             # per layer and direction (k), a tuple of (B, H) arrays
    tapes: list              # per k
    scales: list             # per layer, what multiplied its input (dropout.input_scale), or None
    order: np.ndarray | None  # (T, B) the reverse direction's gather (reversal), or None


def reversal(mask, T: int, B: int):
    """(T, B) int64: the step each reverse step reads. Sequence b's valid steps in reverse
    order, its padded steps where they are; None without a mask (all of x reversed)."""
    if mask is None:
        return None
    lengths = mask.sum(axis=0)
    steps = np.arange(T)[:, None]
    if (mask == (steps < lengths)).all():                        # valid steps first: a prefix
        return np.where(steps < lengths, lengths - 1 - steps, steps)
    order = np.broadcast_to(steps, (T, B)).copy()
    for b in range(B):
        valid = np.flatnonzero(mask[:, b])
        order[valid, b] = valid[::-1]
    return order


def reverse(a, order):
    """a (T, B, …) with each sequence's steps reversed by ``order`` (its own inverse)."""
    if order is None:
        return np.ascontiguousarray(a[::-1])
    return a[order, np.arange(a.shape[1])[None, :]]


def forward(model, x, state0, mask, resets, masks) -> Forward:
    """The stack's forward pass; state0 per k."""
    D = model.directions
    order = reversal(mask, *x.shape[:2]) if D == 2 else None
    layer_in, states, tapes, scales = x, [], [], []
    for l in range(model.num_layers):
        scale = noise.input_scale(masks, l)
        if scale is not None:
            layer_in = layer_in * scale                                                 # (N5)
        outputs = []
        for d in range(D):
            k = l * D + d
            read = layer_in if d == 0 else reverse(layer_in, order)
            try:
                h, sT, tape = model.layer.forward(model.direction_params(l, d), read, state0[k], mask, resets,
                                                  noise.layer_noise(model, masks, k))
            except ValueError as exc:
                named = _named_writer(model, exc)
                if named is None:
                    raise
                raise named from exc
            outputs.append(h if d == 0 else reverse(h, order))
            states.append(sT)
            tapes.append(tape)
        layer_in = outputs[0] if D == 1 else np.concatenate(outputs, axis=2)
        scales.append(scale)
    return Forward(layer_in, states, tapes, scales, order)


def _named_writer(model, exc):
    """The error to raise for ``exc`` from a layer's forward pass: NumPy's bare "output array
    is read-only" (or "assignment destination is read-only") comes from a cell's step that
    writes into u or its state, which the Python loop (cells/loop.py) hands over read-only;
    it names the cell. None for any other error."""
    if str(exc) not in ("output array is read-only", "assignment destination is read-only"):
        return None
    cell = getattr(model.layer, "cell", model.layer)
    return ValueError(f"cell: {type(cell).__name__}.step writes into its state or u, which it may only read "
                      f"(the loop hands them over read-only: views of the tape and of the caller's state0); "
                      f"return new arrays")


def backward(model, fw: Forward, dh, dstateT, input_grad):
    """(∂L/∂x or None, ∂L/∂state0 per k, {name: gradient}) from dh (T, B, D·H) on the top
    layer's outputs (None: none) and dstateT per k (None: none)."""
    D, H = model.directions, model.output_width
    grads, dstate0 = {}, [None] * len(fw.tapes)
    for l in range(model.num_layers - 1, -1, -1):
        dx = None
        for d in range(D):
            k = l * D + d
            part = None if dh is None else (dh if D == 1 else dh[:, :, d * H:(d + 1) * H])
            if part is not None and d == 1:
                part = reverse(part, fw.order)
            dx_d, dstate0[k], g = model.layer.backward(model.direction_params(l, d), part,
                                                       None if dstateT is None else dstateT[k], fw.tapes[k],
                                                       need_dx=l > 0 or input_grad)
            if dx_d is not None:
                dx_d = dx_d if d == 0 else reverse(dx_d, fw.order)
                dx = dx_d if dx is None else dx + dx_d
            grads.update({f"{model.direction_prefix(l, d)}.{name}": v for name, v in g.items()})
        if dx is not None and fw.scales[l] is not None:
            dx = dx * fw.scales[l]                                                      # (N5)
        dh = dx
    return dh, dstate0, grads
