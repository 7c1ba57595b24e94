"""Where a gradient stopped being finite: the first step, forward or backward, and the layer.

A NaN or an inf in ∂L/∂θ says little by itself: the sums (R5)-(R7) gather every step. This
runs the model's own dtype (float32 overflows where float64 would not) through the forward
pass and then the backward recursion (V1) one step at a time, with the linearised steps of
steps.py, and reports the first step whose state (forward) or whose ∂L/∂h_k (backward,
counting from the last step down) is not finite, for each layer.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..cells import head as head_layer
from ..model import check_model
from .steps import linearise


class NonFinite(NamedTuple):
    loss_finite: bool
    forward: list        # per layer: the first step t with a non-finite state h_t, or None
    backward: list       # per layer: the first step k (from T-1 down) with a non-finite ∂L/∂h_k, or None

    def describe(self) -> str:
        """The first departure in time: the forward pass's earliest step (at a tie, the lower
        layer, which feeds the other), else the backward recursion's latest step, where it
        starts (at a tie, the higher layer, where the gradient enters)."""
        hits = [(t, l) for l, t in enumerate(self.forward) if t is not None]
        if hits:
            t, l = min(hits)
            return f"the forward pass left the finite range at step {t} (layer {l})"
        hint = ", and the loss is not finite" if not self.loss_finite else ""
        hits = [(t, l) for l, t in enumerate(self.backward) if t is not None]
        if hits:
            t, l = max(hits)
            return (f"the backward recursion left the finite range at step {t} "
                    f"(layer {l}, counting down from the last step){hint}")
        return "every state and every ∂L/∂h_k is finite" + hint


def first_nonfinite(model, x, targets, state0=None, mask=None) -> NonFinite:
    """Locate the first non-finite state or state gradient of ``model`` on (x, targets)."""
    check_model(model)
    if model.bidirectional or model.proj_size:
        raise ValueError("model: first_nonfinite follows one direction's unprojected state through time; "
                         f"got bidirectional={model.bidirectional}, proj_size={model.proj_size}")
    x, mask, _ = model._check_inputs(x, mask, carried=state0 is not None)
    T, B, _ = x.shape
    targets = model._check_targets(targets, T, B)
    L, H = model.num_layers, model.hidden_size
    with np.errstate(all="ignore"):
        fw = model._forward(x, model._split_state(state0, B), mask)
        forward = [_first(~np.isfinite(tape.states[0]).all(axis=(1, 2))) for tape in fw.tapes]
        rows = model._head_rows(fw)
        loss, do = model._loss(rows, targets, mask, T, B)
        e, _ = head_layer.backward(model.head_params(), do, rows)
        lin = [linearise(model, model.layer_params(l), tape) for l, tape in enumerate(fw.tapes)]
        ds = [[np.zeros((1, B, H), dtype=model.dtype) for _ in lin[0].state] for _ in range(L)]
        if model.outputs == "all":
            e = e.reshape(T, B, H)
        else:
            ds[-1][0][0] = e
        backward = [None] * L
        for k in range(T - 1, -1, -1):
            from_above = None
            for l in range(L - 1, -1, -1):
                if l == L - 1 and model.outputs == "all":
                    ds[l][0][0] += e[k]
                elif l < L - 1:
                    ds[l][0] += from_above
                _, prev, total, from_above = lin[l].vjp(k, tuple(ds[l]), need_dx=l > 0)
                if backward[l] is None and not all(np.isfinite(t).all() for t in total):
                    backward[l] = k
                ds[l] = list(prev)
    return NonFinite(bool(np.isfinite(loss)), forward, backward)


def _first(flags):
    hits = np.flatnonzero(flags)
    return int(hits[0]) if hits.size else None
