"""Model.gradients over two halves of the batch, on two threads at once (floor 3, beside model.py).

Every stream of a batch is independent until the loss sums them: the halves' losses and
weight gradients add up to the whole batch's, and their ∂L/∂x, ∂L/∂state0 and final
states are the whole batch's rows. The compiled time loops release the GIL
(cells/compiled.py), so two threads run two halves at once, each with its own step
kernels and GEMMs. Used with BLAS held to one thread for the whole run (the trainer does
it where a layer is too small for its loops to share their rows between two threads):
then each core runs one half, kernels included. `benchmarks/batch_split.py` measures a
layer this way, and the trainer's update both ways.

A mean reduction divides by the whole batch's count of loss positions (``loss_count``),
so that each half's loss is its share of the whole batch's mean. The weight gradients
are the two halves' sums added: the same numbers as one pass up to the order of those
sums (float32: about 5e-7 relative), so a run keeps one way throughout.
"""
from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .backends import loop_threads

_POOL: ThreadPoolExecutor | None = None
# A forked child has none of the pool's threads (a half queued there would wait for ever): a fresh pool.
os.register_at_fork(after_in_child=lambda: globals().update(_POOL=None))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(2, thread_name_prefix="bptt-half")
    return _POOL


def _rows_of(a, rows, axis):
    """a's rows along axis (the batch axis), contiguous; None stays None."""
    if a is None:
        return None
    index = (slice(None),) * axis + (rows,)
    return np.ascontiguousarray(a[index])


def _state_rows(model, state, rows):
    """A public state (L, B, H), or the LSTM's (h, c) of them, cut to these streams."""
    if state is None:
        return None
    if model.tuple_state:
        return tuple(_rows_of(s, rows, 1) for s in state)
    if isinstance(state, (tuple, list)):
        state = state[0]
    return _rows_of(state, rows, 1)


def _join_states(model, first, second):
    if model.tuple_state:
        return tuple(np.concatenate([a, b], axis=1) for a, b in zip(first, second))
    return np.concatenate([first, second], axis=1)


def can_split(mask, B) -> bool:
    """Two halves need two streams, and with a mask each half needs a valid step."""
    if B < 2:
        return False
    if mask is None:
        return True
    return bool(mask[:, :B // 2].any()) and bool(mask[:, B // 2:].any())


def gradients(model, x, targets, state0, mask, dstate, input_grad, resets, loss_mask, loss_count, masks=None):
    """model.gradients of the whole batch, computed as two halves on two threads.
    Inputs as Model.gradients takes them, already checked; returns its Gradients."""
    T, B, _ = x.shape
    if model.reduction == "mean" and loss_count is None and targets is not None:
        loss_count = model.loss_positions(mask, T, B, loss_mask)      # the whole batch's
    halves = (slice(0, B // 2), slice(B // 2, B))
    target_axis = 1 if model.outputs == "all" else 0

    def half(rows):
        with loop_threads.use(1):            # this half is one core's work already
            return model.gradients(
                _rows_of(x, rows, 1), _rows_of(targets, rows, target_axis), _state_rows(model, state0, rows),
                _rows_of(mask, rows, 1), _state_rows(model, dstate, rows), input_grad, _rows_of(resets, rows, 1),
                _rows_of(loss_mask, rows, 1), loss_count, threads=1, masks=None if masks is None else masks.rows(rows),
                carried_state=True)                       # checked (or carried) by the caller already

    # Each half runs in a copy of the caller's context, so that np.errstate (a context
    # variable) holds there too: the trainer's overflow policy, for one.
    contexts = [contextvars.copy_context() for _ in halves]
    first, second = _pool().map(lambda ctx, rows: ctx.run(half, rows), contexts, halves)
    params = {k: first.params[k] + second.params[k] for k in first.params}
    dx = None if first.x is None else np.concatenate([first.x, second.x], axis=1)
    return type(first)(first.loss + second.loss, params, dx, _join_states(model, first.state0, second.state0),
                       _join_states(model, first.state, second.state))
