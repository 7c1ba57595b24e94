"""Exploding gradients and clipping, shown: one initialisation, two runs, every norm recorded.

The recurrent weights are scaled so that η = γ·σ_max(W_h) = ``gain`` > 1, the necessary
condition for explosion (V5). Then the same mini-batches train one copy with plain SGD
and one with the global norm clipped (Pascanu, Mikolov and Bengio 2013), and the gradient
norm before clipping is recorded at every update.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import _checks
from ..model import Model
from ..ops import ACTIVATIONS
from .clip import clip_grad_norm
from .optim import make_optimizer
from .tasks import make_task


@dataclasses.dataclass
class ClippingStudy:
    label: str
    gain: float                  # η at initialisation
    clip: float
    grad_norm: np.ndarray        # (2, updates) before clipping: [without, with]; NaN once non-finite
    loss: np.ndarray             # (2, updates)
    diverged_at: list            # per run, the first update whose gradient was not finite, or None;
                                 # counted from 1, as plot_clipping's axis and Trainer.step count
    baseline: float | None       # the task's trivial loss

    def summary(self) -> list:
        rows = []
        for run, name in enumerate(("no clipping", f"clip at {self.clip:g}")):
            g, loss = self.grad_norm[run], self.loss[run]
            ok = np.isfinite(g)
            tail = loss[ok][-max(1, ok.sum() // 10):]
            rows.append({"run": name, "median_norm": float(np.median(g[ok])) if ok.any() else float("nan"),
                         "max_norm": float(g[ok].max()) if ok.any() else float("nan"),
                         "spikes": int((g[ok] > 10 * self.clip).sum()),
                         "final_loss": float(tail.mean()) if tail.size else float("nan"),
                         "diverged_at": self.diverged_at[run]})
        return rows


def exploding_model(cell, task, hidden, gain, seed, nonlinearity="tanh") -> Model:
    """A model whose every W_h is scaled to γ·σ_max(W_h) = gain."""
    model = Model(cell, hidden_size=hidden, nonlinearity=nonlinearity, dtype="float64", seed=seed,
                  **task.model_kwargs)
    gamma = ACTIVATIONS[nonlinearity].gamma if cell == "rnn" else 1.0
    for l in range(model.num_layers):
        W_h = model.params[f"layer{l}.W_h"]
        W_h *= gain / (gamma * np.linalg.norm(W_h, 2))
    return model


def clipping_study(cell="rnn", task="adding", seq_len=50, hidden=32, gain=3.0, clip=1.0, updates=300,
                   lr=0.05, batch=16, seed=0, nonlinearity="tanh") -> ClippingStudy:
    """Train twice from one exploding initialisation, without and with norm clipping (SGD)."""
    updates = _checks.positive_int("updates", updates)
    batch = _checks.positive_int("batch", batch)
    gain = _checks.number("gain", gain, lambda v: v > 0, "a positive number")
    clip = _checks.number("clip", clip, lambda v: v > 0, "a positive number")
    the_task = make_task(task, seq_len)
    norms = np.full((2, updates), np.nan)
    losses = np.full((2, updates), np.nan)
    diverged = [None, None]
    for run, max_norm in enumerate((None, clip)):
        model = exploding_model(cell, the_task, hidden, gain, seed, nonlinearity)
        optimizer = make_optimizer("sgd", model.params, lr)
        rng = np.random.default_rng(seed)                     # the same batches for both runs
        for u in range(updates):
            x, y = the_task.batch(rng, batch, np.float64)
            with np.errstate(all="ignore"):                   # the unclipped run may overflow
                loss, grads, _ = model.loss_and_grads(x, y)
                norm = clip_grad_norm(grads, math.inf if max_norm is None else max_norm)   # norm before clipping
            if not (np.isfinite(loss) and np.isfinite(norm)):
                diverged[run] = u + 1                            # update u + 1: u updates went before
                break
            norms[run, u], losses[run, u] = norm, loss
            optimizer.step(grads)
    label = f"{cell}-{nonlinearity}" if cell == "rnn" else cell
    return ClippingStudy(label, gain, clip, norms, losses, diverged, getattr(the_task, "baseline", None))
