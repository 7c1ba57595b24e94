"""Full BPTT and truncated BPTT(k1, k2) over a sequence or B parallel streams.

Truncated BPTT(k1, k2), in Sutskever's notation (Williams and Peng's BPTT(h; h') with
h = k2, h' = k1): the sequence is cut into blocks of k1 steps. For the block [a, e) the
update computes the exact gradient of

    J(θ) = Σ_{t ∈ [a, e)} L_t(θ),  with the state s_w at w = max(0, a − (k2 − k1)) held constant,

where the steps [w, e) run from s_w under the current θ: each update backpropagates
through its k1 new steps and the k2 − k1 steps before them, and counts only the new
steps' losses (the earlier ones had their update). With reduction="mean", J is the mean
over the block's valid positions. The state at the next window's start is taken from
this update's forward pass, so a stream's state is always the one its parameters of the
time produced. See docs/through_time.md.
"""
from __future__ import annotations

import numpy as np

from .. import _checks
from ..model import check_model


def full(model, x, targets, state0=None, mask=None, resets=None):
    """The reference schedule: (loss, grads, final state) of one backward over all of x.
    Shapes as ``Model.gradients`` takes them: x (T, B, D), targets (T, B, O) or class indices
    (T, B), mask and resets (T, B) bool, state0 (L, B, H) or (h, c).
    """
    check_model(model)
    return model.loss_and_grads(x, targets, state0, mask, resets=resets)


def refuse_bidirectional(model, schedule):
    """A schedule that cuts the sequence in time cannot run the reverse direction, which
    starts from each sequence's end: a clear error instead."""
    if model.bidirectional:
        raise ValueError(f"model: {schedule} runs the sequence in pieces, carrying the state forward; the "
                         f"reverse direction of a bidirectional model needs the whole sequence first "
                         f"(bidirectional=True): use full BPTT")


def _slice(a, lo, hi):
    return None if a is None else a[lo:hi]


def truncated(model, x, targets, k1, k2=None, state0=None, mask=None, resets=None, rng=None):
    """TBPTT(k1, k2): yields (loss, grads, state) after every block of k1 steps.

    Args:
        x (T, B, D), targets (T, B, O) or (T, B): B parallel streams of T steps.
        k1: steps between updates. k2 >= k1: steps each update backpropagates through
            (default k1: plain chunks). The last block may be shorter than k1.
        state0: the streams' state before step 0 (zeros when omitted).
        mask (T, B): valid steps; resets (T, B): a stream's state is set to zero before
            step t (a document boundary in a text stream).
        rng: a generator (or a seed, as uoro and kf_rtrl take) for the model's dropout
            and zoneout masks, drawn once per update for the whole window it
            backpropagates through; None: no noise.
    The caller may change ``model.params`` between updates (that is what updates are
    for); each update runs with the parameters as they are when it starts.
    """
    rng = None if rng is None else _checks.generator("rng", rng)
    return (u[:3] for u in _updates(model, x, targets, k1, k2, state0, mask, resets, rng=rng))


def _updates(model, x, targets, k1, k2, state0, mask, resets, loss_count=None, rng=None):
    """The updates of TBPTT(k1, k2), as stream_updates yields them.

    Checks everything at the call, then returns the generator.
    """
    check_model(model)
    k1 = _checks.positive_int("k1", k1)
    k2 = k1 if k2 is None else _checks.positive_int("k2", k2)
    if k2 < k1:
        raise ValueError(f"k2: expected k2 >= k1 = {k1} (each update backpropagates at least "
                         f"through its own k1 steps), got {k2}")
    if model.outputs != "all":
        raise ValueError(f"model: truncated BPTT needs outputs='all' (a loss at every step), "
                         f"got outputs={model.outputs!r}")
    refuse_bidirectional(model, "truncated BPTT")
    x, mask, resets = model._check_inputs(x, mask, resets, carried=state0 is not None)
    T, B, _ = x.shape
    model._check_targets(targets, T, B)
    model._split_state(state0, B)
    return stream_updates(model, T, lambda lo, hi: x[lo:hi], lambda lo, hi: _slice(targets, lo, hi), k1, k2 - k1,
                          state0, mask=mask, resets=resets, loss_count=loss_count,
                          draw_masks=None if rng is None else lambda T, B: model.draw_masks(T, B, rng))


def stream_updates(model, T, inputs, targets, k1, context, state0, start=0, window_state=None,
                   mask=None, resets=None, loss_count=None, draw_masks=None):
    """The loop of TBPTT over steps [start, T), with the inputs and targets of steps
    [lo, hi) given by ``inputs(lo, hi)`` and ``targets(lo, hi)`` (a trainer builds them
    on the fly). Yields (loss, grads, state, a, e, window_start, window_state): the last
    two are what a checkpoint needs to resume exactly after this update.
    ``draw_masks(steps, B)``: the dropout masks of an update's window (one draw per
    window; the state carried to the next window runs under the same masks)."""
    refuse_bidirectional(model, "truncated BPTT")
    B = None
    window_start = max(0, start - context)
    if window_state is None:
        window_state = state0
    for a in range(start, T, k1):
        e = min(a + k1, T)
        w = window_start                          # = max(0, a − context)
        x = inputs(w, e)
        B = x.shape[1]
        if window_state is None:                  # zeros, given: a window of padding alone carries them
            window_state = model.init_state(B)
        loss_mask = None
        if w < a:
            loss_mask = np.zeros((e - w, B), dtype=bool)
            loss_mask[a - w:] = True              # only the new block's losses count
        masks = None if draw_masks is None else draw_masks(e - w, B)
        g = model.gradients(x, targets(w, e), window_state, _slice(mask, w, e), input_grad=False,
                            resets=_slice(resets, w, e), loss_mask=loss_mask, loss_count=loss_count,
                            masks=masks, carried_state=True)
        # The next window starts k2 − k1 steps before this block's end: take its state from
        # this update's parameters, before the caller changes them.
        w_next = max(0, e - context)
        if w_next == e:
            window_state = g.state
        elif w_next > w:
            _, window_state = model.forward(x[:w_next - w], window_state, _slice(mask, w, w_next),
                                            _slice(resets, w, w_next),
                                            None if masks is None else masks.steps(0, w_next - w), carried_state=True)
        window_start = w_next
        yield g.loss, g.params, g.state, a, e, window_start, window_state
