"""Tallec & Ollivier's influence balancing: a problem on which truncation learns the wrong sign.

One scalar parameter θ drives n linear units, the first p with +θ and the others with −θ,
and each unit passes half of its value to the unit before it; the loss asks the first
unit to sit at 1 (Tallec & Ollivier 2018, "Unbiased Online Recurrent Optimization"):

    s_t = A s_{t−1} + θ σ,   A = ½ (I + N),  N_{i,i+1} = 1,  σ = (1, …, 1, −1, …, −1)   (p ones)
    L_t = (s⁰_t − 1)²

θ's effect on s⁰ within k steps is (Σ_{i<k} A^i σ)_0 = Σ_{i<k} 2^{−i} Σ_j C(i, j) σ_j: while
the binomial weights of A^i sit on the first p units (short horizons) it is positive, and
in the long run it is negative: at the fixed point s⁰ = c θ with c = ((I − A)^{−1} σ)_0 =
2 (2p − n), −6 for n = 23, p = 10, so θ* = 1/c. A method that sees only short horizons
moves θ away from θ*, and the loss grows without bound; RTRL and UORO, which carry the
whole influence forward, converge (docs/through_time.md).

The problem is a bptt.Model: an Elman layer with the identity, W_h = A, b_h = θ σ, no
input, the head reading s⁰, the target 1 at every step. θ is shared by b_h, so ∂L/∂θ =
σᵀ ∂L/∂b_h; only θ learns (the rest is the problem). Each method computes its gradient
over the whole layer's parameters and θ's is taken from it: for UORO still unbiased,
with the variance of its rank-one estimate over every parameter of the layer.

One update per step (the online setting): truncated BPTT is Williams & Peng's BPTT(h; 1),
each step's loss backpropagated through the last ``window`` steps (schedules.truncated
with k1 = 1, k2 = window); the forward-mode methods collect each step's gradient from the
influence they carry.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks
from .online import ESTIMATORS
from .rtrl import window as forward_window
from .schedules import truncated

METHODS = ("tbptt",) + tuple(ESTIMATORS)


class Balancing(NamedTuple):
    """A run: θ and the loss after every step, θ*, and the step at which |θ| passed
    ``limit`` (None: it did not)."""
    theta: np.ndarray
    loss: np.ndarray
    theta_star: float
    diverged_at: int | None


def problem(n: int = 23, positive: int = 10, theta: float = 0.5):
    """(model, σ, θ*) of the problem with n units, the first ``positive`` driven by +θ."""
    from ..model import Model

    n = _checks.positive_int("n", n)
    if n < 2:
        raise ValueError(f"n: expected an integer of at least 2 (units driven by +θ and by −θ), got {n}")
    if isinstance(positive, bool) or not isinstance(positive, (int, np.integer)) or not 0 < positive < n:
        raise ValueError(f"positive: expected an integer from 1 to n - 1 = {n - 1}, got {positive!r}")
    if 2 * positive == n:
        raise ValueError(f"positive: with positive = n/2 = {positive} θ has no effect at the fixed point (c = 0)")
    theta = _checks.number("theta", theta, expected="a finite number")
    sigma = np.r_[np.ones(positive), -np.ones(n - positive)]
    model = Model("rnn", input_size=1, hidden_size=n, output_size=1, nonlinearity="identity", head="identity",
                  loss="mse", outputs="all", dtype="float64")
    p = model.params
    p["layer0.W_x"][:] = 0
    p["layer0.W_h"][:] = 0.5 * (np.eye(n) + np.eye(n, k=1))
    p["layer0.b_h"][:] = theta * sigma
    p["head.W_y"][:] = 0
    p["head.W_y"][0, 0] = 1
    p["head.b_y"][:] = 0
    c = 2 * (2 * positive - n)                      # ((I − A)^{−1} σ)_0: (I − A)^{−1} = 2 Σ_k N^k
    return model, sigma, 1 / c


def influence_balancing(method: str, steps: int, lr: float, window: int | None = None, n: int = 23,
                        positive: int = 10, theta0: float = 0.5, rng=None, limit: float = 1e3) -> Balancing:
    """θ learnt online by ``method`` (``"tbptt"`` with ``window`` steps, or a name of
    online.ESTIMATORS) with plain gradient steps of size ``lr``, from θ = ``theta0`` and the
    state s_0 = 1. Stops early when |θ| > ``limit`` (the loss then grows like θ²)."""
    steps = _checks.positive_int("steps", steps)
    method = _checks.choice("method", method, METHODS)
    if method == "tbptt":
        window = _checks.positive_int("window", window)
    elif window is not None:
        raise ValueError(f"window: applies to method='tbptt' only, got window={window} with method={method!r}")
    lr = _checks.number("lr", lr, lambda v: v > 0, "a positive number")
    theta0 = _checks.number("theta0", theta0, expected="a finite number")
    limit = _checks.number("limit", limit, lambda v: v > 0, "a positive number (the |θ| that stops the run)")
    model, sigma, theta_star = problem(n, positive, theta0)
    b_h = model.params["layer0.b_h"]
    state0 = np.ones((1, 1, n))
    thetas, losses = np.full(steps, np.nan), np.full(steps, np.nan)
    theta, diverged = float(theta0), None
    if method == "tbptt":
        x, y = np.zeros((steps, 1, 1)), np.ones((steps, 1, 1))
        updates = truncated(model, x, y, k1=1, k2=window, state0=state0)
    else:
        influence = ESTIMATORS[method](model, 1, _checks.generator("rng", rng))
        influence.restore(influence.carried() | {"state.0.0": state0[0]})
        x, y = np.zeros((1, 1, 1)), np.ones((1, 1, 1))
        updates = (forward_window(influence, model, x, y) for _ in range(steps))
    for t, update in enumerate(updates):
        loss, grads = update[0], update[1]
        theta -= lr * float(sigma @ grads["layer0.b_h"])          # ∂L/∂θ = σᵀ ∂L/∂b_h
        b_h[:] = theta * sigma
        thetas[t], losses[t] = theta, loss
        if not abs(theta) <= limit:
            diverged = t
            break
    return Balancing(thetas, losses, theta_star, diverged)
