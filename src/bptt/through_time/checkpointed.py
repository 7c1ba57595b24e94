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
  fewer, then the left part with the slot back). The programme's work grows as
  units²·slots; where steps² · slots would pass _MAX_WORK, it runs over units of several
  steps (CheckpointPlan.unit), and its splits, the coarser problem's, can cost more
  forward steps than the optimum.
  ``CheckpointPlan.operations()`` lists what the run does, so ``forward_steps()`` counts
  the steps it runs.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .. import _checks
from ..model import check_model
from .schedules import refuse_bidirectional

_MAX_WORK = 2 * 10 ** 8  # units² · slots of the programme's largest table (1,000 steps and 200 slots)
_MAX_SLOTS = 200         # more slots than this are not needed to get close to full speed


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
    """Gruslys et al.'s optimal splits for T steps and a budget of slots, over units of steps."""

    def __init__(self, T, budget):
        self.T, self.budget = T, budget
        self.unit = _unit(T, budget)
        self.slots = budget
        self._units_slots = min(max(1, budget // self.unit), _MAX_SLOTS)
        n = math.ceil(T / self.unit)
        self.cost, self._best = _programme(n, self._units_slots)

    def split(self, steps, slots):
        """Steps to run before the checkpoint, for a span of ``steps`` with ``slots`` slots."""
        units = math.ceil(steps / self.unit)
        m = min(max(1, slots // self.unit), self._units_slots)
        if units <= 1 or m <= 1:
            return max(1, steps // 2) if m > 1 else steps - 1
        y = int(self._best[m, min(units, self._best.shape[1] - 1)]) * self.unit
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
        """The forward steps the run computes, the taped ones included: C(T, m) where the
        programme runs over single steps."""
        return sum(b - a for _, a, b, _ in self.operations())


def _unit(T, budget):
    """Steps a unit of the programme: 1 where T² · slots fits _MAX_WORK, else the fewest
    that fit; at most budget // 2, so that a budget of 2 or more can place a checkpoint."""
    unit = max(1, math.ceil(T / math.sqrt(_MAX_WORK / min(budget, _MAX_SLOTS))))
    while math.ceil(T / unit) ** 2 * min(max(1, budget // unit), _MAX_SLOTS) > _MAX_WORK:
        unit += 1
    return max(1, min(unit, budget // 2))


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


@lru_cache(maxsize=16)
def _programme(n, m_max):
    """cost[m, t] = C(t, m) for t <= n, m <= m_max, and best[m, t] = the optimal y."""
    t_all = np.arange(n + 1, dtype=np.float64)
    cost = np.zeros((m_max + 1, n + 1))
    best = np.zeros((m_max + 1, n + 1), dtype=np.int64)
    cost[1] = t_all * (t_all + 1) / 2
    for m in range(2, m_max + 1):
        cost[m, :m + 1] = t_all[:m + 1]
        for t in range(m + 1, n + 1):
            y = np.arange(1, t)
            c = y + cost[m - 1, t - y] + cost[m, y]
            k = int(np.argmin(c))
            cost[m, t], best[m, t] = c[k], y[k]
    return cost, best
