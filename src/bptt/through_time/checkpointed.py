"""Memory-efficient BPTT: keep states at checkpoints, recompute each segment's tape.

The gradient is full BPTT's: a segment's backward takes the gradient flowing into its
final state from the later segments (dstate) and returns the one flowing to its start,
exactly as chunks do (docs/derivation.md, "Model: stacking and chunks").

Memory is counted in slots: one slot holds one step of the whole stack's tape, or one
stored state (a state is smaller than a step of tape, so this overcounts a little).

- budget=None: checkpoints every ⌈√T⌉ steps, one extra forward pass in all.
- budget=M slots: the schedule of Gruslys et al. 2016 (BPTT-HSM), by their dynamic
  programme over C(t, m), the least number of forward steps that backpropagates t steps
  with m slots:
      C(t, m) = t                                          if t <= m (one taped segment)
      C(t, 1) = t(t + 1)/2                                 (recompute from the start per step)
      C(t, m) = min_{1<=y<t} [ y + C(t − y, m − 1) + C(y, m) ]   otherwise
  (run y steps without tape, store a checkpoint there, do the right part with one slot
  fewer, then the left part with the slot back). The programme runs compiled, and over
  the spans a slot count can meet only. Where its work would pass _MAX_WORK, the splits
  fall on multiples of a unit of several steps (CheckpointPlan.unit); every slot is kept
  (a checkpoint costs one slot, as in the run), and a span of one unit is split by the
  exact programme over its steps, so the plan costs a little more than the optimum and
  never drops to a coarser problem with fewer slots.
  ``CheckpointPlan.operations()`` lists what the run does, so ``forward_steps()`` counts
  the steps it runs.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit

from .. import _checks
from ..model import check_model
from .schedules import refuse_bidirectional

_MAX_WORK = 2 * 10 ** 8  # candidate splits the programme may scan (units² · slots, summed)


def checkpointed(model, x, targets, state0=None, mask=None, budget=None, resets=None, masks=None):
    """(loss, grads, final state), equal to ``full``'s, holding at most ``budget`` steps of
    tape. ``masks`` (model.draw_masks over all T steps) are cut to each segment's steps.
    Shapes as ``Model.gradients`` takes them: x (T, B, D), targets (T, B, O) or class indices
    (T, B), mask and resets (T, B) bool, state0 (L, B, H) or (h, c).
    """
    check_model(model)
    refuse_bidirectional(model, "checkpointed BPTT")
    x, mask, resets = model._check_inputs(x, mask, resets, carried=state0 is not None)
    T, B, _ = x.shape
    targets = model._check_targets(targets, T, B)
    model._split_state(state0, B)
    masks = model._masks(masks, T, B)
    if budget is not None:
        budget = _budget(budget)
    if model.outputs == "all":
        count = T * B if mask is None else int(mask.sum())
    else:
        count = None
    run = _Run(model, x, targets, mask, resets, count, masks)
    state = model.init_state(B) if state0 is None else state0
    if budget is None:
        final = run.sqrt_schedule(state, max(1, math.ceil(math.sqrt(T))))
    else:
        final = run.planned(state, checkpoint_plan(T, budget))
    return run.loss, run.grads, final


class _Run:
    """One checkpointed backward: the segments' losses and gradients add up here."""

    def __init__(self, model, x, targets, mask, resets, count, masks=None):
        self.model, self.x, self.targets, self.mask, self.resets = model, x, targets, mask, resets
        self.masks = masks
        self.count = count
        self.T = x.shape[0]
        self.loss = 0.0
        self.grads = {k: np.zeros_like(v) for k, v in model.params.items()}
        self.final_state = None

    def _part(self, a, b):
        return (self.x[a:b], None if self.mask is None else self.mask[a:b],
                None if self.resets is None else self.resets[a:b],
                None if self.masks is None else self.masks.steps(a, b))

    def advance(self, a, b, state, chunk):
        """The state at b from the state at a, holding at most ``chunk`` steps of tape."""
        for lo in range(a, b, chunk):
            x, mask, resets, masks = self._part(lo, min(lo + chunk, b))
            state = self.model.advance(x, state, mask, resets, masks, carried_state=True)
        return state

    def segment(self, a, b, state, dstate):
        """Backward of [a, b) with its tape; returns the gradient at its initial state."""
        x, mask, resets, masks = self._part(a, b)
        if self.targets is None:                                  # no loss: dstate drives it
            targets = None
        elif self.model.outputs == "all":
            targets = self.targets[a:b]
        else:
            targets = self.targets if b == self.T else None      # the head reads the last state
        g = self.model.gradients(x, targets, state, mask, dstate=dstate, input_grad=False,
                                 resets=resets, loss_count=self.count, masks=masks, carried_state=True)
        self.loss += g.loss
        for k, v in g.params.items():
            self.grads[k] += v
        if b == self.T:
            self.final_state = g.state
        return g.state0

    def sqrt_schedule(self, state, k):
        starts = list(range(0, self.T, k))
        states = [state]
        for a in starts[1:]:
            states.append(self.advance(a - k, a, states[-1], k))
        dstate = None
        for a, s in zip(reversed(starts), reversed(states)):
            dstate = self.segment(a, min(a + k, self.T), s, dstate)
        return self.final_state

    def planned(self, state, plan):
        """Backpropagate all T steps following the plan's operations. A state is kept from
        the advance that makes it until the segment that starts there, its last reader."""
        states, dstate = {0: state}, None
        for kind, a, b, chunk in plan.operations():
            if kind == "advance":
                states[b] = self.advance(a, b, states[a], chunk)
            else:
                dstate = self.segment(a, b, states.pop(a), dstate)
        return self.final_state


class CheckpointPlan:
    """Gruslys et al.'s optimal splits for T steps and a budget of slots, over units of steps.

    ``unit`` is 1 (the exact programme) where its work fits _MAX_WORK; beyond, splits fall
    on multiples of ``unit`` steps, every slot is kept (a checkpoint costs one slot, as in
    the run), and a span of one unit with fewer slots than steps follows the exact
    programme over its steps."""

    def __init__(self, T, budget):
        self.T, self.budget = T, budget
        self.slots = budget
        self.unit, self._fine_slots = _unit(T, budget)
        self._best, self._start, self._fine = _tables(T, budget, self.unit, self._fine_slots)

    def split(self, steps, slots):
        """Steps to run before the checkpoint, for a span of ``steps`` with ``slots`` slots."""
        units = math.ceil(steps / self.unit)
        if units <= 1:                                     # inside one unit: the exact programme
            y = int(self._fine[min(slots, self._fine_slots), steps])
        else:
            a, b = self._start[slots], self._start[slots + 1]
            i = min(a + units - (slots // self.unit + 1), b - 1)
            y = int(self._best[i]) * self.unit if i >= a else steps // 2
        return min(max(1, y), steps - 1)

    def operations(self):
        """The run, in order: ("advance", a, b, chunk) runs steps [a, b) without tape from the
        state at a (chunk steps at a time) and keeps the state at b; ("segment", a, b, None)
        runs [a, b) with its tape from the state at a and backpropagates it. Pending left
        parts wait on a stack, the right part first."""
        stack, current = [], (0, self.T, self.slots)
        while True:
            a, b, slots = current
            if b - a <= slots:                                     # one taped segment
                yield "segment", a, b, None
            elif slots == 1:                                       # no room for a checkpoint:
                yield "advance", a, b - 1, 1                       # recompute from a for each step
                yield "segment", b - 1, b, None
                stack.append((a, b - 1, 1))
            else:
                y = self.split(b - a, slots)
                yield "advance", a, a + y, slots
                stack.append((a, a + y, slots))                    # the left part, its slot returned
                current = (a + y, b, slots - 1)                    # the right part first
                continue
            if not stack:
                return
            current = stack.pop()

    def forward_steps(self):
        """The forward steps the run computes, the taped ones included: C(T, budget) where
        ``unit`` is 1."""
        return sum(b - a for _, a, b, _ in self.operations())


def checkpoint_plan(T, budget) -> CheckpointPlan:
    """The plan ``checkpointed(..., budget=budget)`` follows for T steps with at most
    ``budget`` steps of tape (Gruslys et al.'s optimal splits): ``operations()`` lists its
    advances and taped segments in order, ``forward_steps()`` counts the forward steps it
    computes, the taped ones included. T and budget are positive integers (else a
    ValueError names the argument)."""
    return CheckpointPlan(_checks.positive_int("T", T), _budget(budget))


def _budget(budget):
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget: expected an integer number of steps of tape, got {budget!r}")
    if budget < 1:
        raise ValueError(f"budget: expected at least 1 step of tape (the least that holds one step), got {budget}")
    return int(budget)


def _unit(T, budget):
    """(unit, fine slots): the fewest steps a unit such that the programme's candidate
    splits (summed over the spans each slot count can meet) fit _MAX_WORK, and the slots of
    the exact programme over one unit's steps, whose work, units² · slots, takes a quarter of
    it (more slots than that serve a span of one unit as that many do)."""
    m = np.arange(2, budget + 1, dtype=np.float64)
    unit = 1
    while True:
        n = math.ceil(T / unit)
        lo, hi = _span_range(n, budget, unit, m)
        k = np.maximum(hi - lo + 1, 0)
        if float(np.sum(k * (lo + hi) / 2)) <= _MAX_WORK or n <= 2:
            break
        unit = max(unit + 1, int(unit * 1.05))
    fine = min(budget, unit - 1, int(_MAX_WORK / 2 / (unit * unit)))
    return unit, max(1, fine)


def _span_range(n, budget, unit, m):
    """The units a span with m slots is split at: more than fit one taped segment, and at
    most n − (budget − m), as each checkpoint above it holds a unit or more."""
    return m // unit + 1, np.minimum(n, n - (budget - m))


@lru_cache(maxsize=8)
def _tables(T, budget, unit, fine_slots):
    """The programme's splits over units (``_coarse``) and over the steps of one unit
    (fine[m, t] in steps, m <= fine_slots)."""
    fine_cost, fine = _exact(unit, fine_slots)
    first = np.full(budget + 1, unit, dtype=np.int64)      # one unit with m >= unit slots: taped
    for m in range(2, min(budget + 1, unit)):
        first[m] = fine_cost[min(m, fine_slots), unit]
    best, start = _coarse(math.ceil(T / unit), budget, unit, first)
    return best, start, fine


@njit(cache=True, nogil=True)
def _exact(n, m_max):
    """cost[m, t] = C(t, m) and best[m, t] = its smallest optimal y, for t <= n, m <= m_max."""
    cost = np.zeros((m_max + 1, n + 1), np.int64)
    best = np.zeros((m_max + 1, n + 1), np.int32)
    for t in range(n + 1):
        cost[1, t], best[1, t] = t * (t + 1) // 2, max(t - 1, 0)
    for m in range(2, m_max + 1):
        for t in range(n + 1):
            if t <= m:
                cost[m, t] = t
                continue
            c_best, y_best = cost[1, t], t - 1
            for y in range(1, t):
                if t + y >= c_best:                        # every step runs once: cost >= t + y
                    break
                c = y + cost[m - 1, t - y] + cost[m, y]
                if c < c_best:
                    c_best, y_best = c, y
            cost[m, t], best[m, t] = c_best, y_best
    return cost, best


@njit(cache=True, nogil=True)
def _coarse(n, m_max, unit, first):
    """The programme over k <= n units of ``unit`` steps with m <= m_max slots, a
    checkpoint costing one slot, first[m] the cost of one unit with m slots. Returns
    (best, start): the optimal y in units for k units and m slots is
    best[start[m] + k − lo], for k in the span range of m (``_span_range``)."""
    start = np.zeros(m_max + 2, np.int64)
    for m in range(2, m_max + 1):
        lo, hi = m // unit + 1, min(n, n - (m_max - m))
        start[m + 1] = start[m] + max(0, hi - lo + 1)
    best = np.zeros(start[m_max + 1], np.int32)
    prev = np.empty(n + 1, np.int64)                       # the costs with m − 1 slots
    cur = np.empty(n + 1, np.int64)
    for k in range(n + 1):
        prev[k] = k * unit * (k * unit + 1) // 2           # one slot: from the start per step
    for m in range(2, m_max + 1):
        lo, hi = m // unit + 1, min(n, n - (m_max - m))
        for k in range(lo, hi + 1):
            if k == 1:
                cur[1] = first[m]
                continue
            c_best, y_best = np.int64(1) << 62, 1
            for y in range(1, k):
                if (k + y) * unit >= c_best:               # every step runs once: cost >= (k + y)·unit
                    break
                right = (k - y) * unit if (k - y) * unit <= m - 1 else prev[k - y]
                left = y * unit if y < lo else cur[y]      # fewer than lo units: one taped segment
                c = y * unit + right + left
                if c < c_best:
                    c_best, y_best = c, y
            cur[k] = c_best
            best[start[m] + k - lo] = y_best
        prev, cur = cur, prev
    return best, start
