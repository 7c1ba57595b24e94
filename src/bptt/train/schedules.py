"""Learning-rate schedules: lr(step) for step = 1, 2, … of a run of ``total`` updates."""
from __future__ import annotations

import math

from .. import _checks

SCHEDULES = ("constant", "step", "cosine")


def learning_rate(step, base_lr, schedule="constant", total=1, warmup=0, step_size=1000,
                  gamma=0.5, min_lr=0.0):
    """The learning rate of update ``step`` (1-based).

    constant: base_lr. step: base_lr·gamma^⌊(step−1)/step_size⌋. cosine: from base_lr
    down to min_lr over ``total`` updates. warmup > 0 multiplies the first ``warmup``
    updates by step/warmup (linear warm-up).
    """
    _checks.choice("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        lr = base_lr
    elif schedule == "step":
        lr = base_lr * gamma ** ((step - 1) // step_size)
    else:
        progress = min(1.0, (step - 1) / max(1, total - 1))
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
    if warmup and step <= warmup:
        lr *= step / warmup
    return lr
