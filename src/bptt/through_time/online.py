"""Online approximations of RTRL: gradient estimates carried forward, with no backward pass
and less than RTRL's memory, for one recurrent layer of any cell.

Each keeps its own picture of the influence M_t = ∂s_t/∂θ (rtrl.py (T1)) and collects
(∂L_t/∂h_t)ᵀ M_t[h] as each loss arrives (T2); the head's gradient is exact. Both use the
step Jacobian J_t and the immediate influence I_t of rtrl.py (T3) (docs/derivation.md,
block O). K = S·H state values, n parameters of the layer, per sequence:

    SnAp-n (Menick et al. 2021)   M_t = P_n ⊙ (J_t M_{t−1} + I_t), P_n the entries of M that
                                  n steps can reach from θ: P_1 every state value of the
                                  units a parameter acts on in one step (all of the LSTM's
                                  h_i and c_i for a parameter of unit i), then
                                  P_{n+1} = P_n ∪ (J P_n). Exact where P_n holds all of M's
                                  non-zeros (SnAp-1 on a diagonal recurrence).               (O1)
    UORO (Tallec & Ollivier 2018) M_t ≈ ũ_t θ̃_tᵀ, a rank-one estimate whose expectation is
                                  M_t: ũ_t = ρ₀ J_t ũ_{t−1} + ρ₁ ν_t, θ̃_t = θ̃_{t−1}/ρ₀ + I_tᵀ ν_t/ρ₁,
                                  ν_t random signs, ρ₀ = √(‖θ̃_{t−1}‖/‖J_t ũ_{t−1}‖) and
                                  ρ₁ = √(‖I_tᵀ ν_t‖/‖ν_t‖), the choice that makes the
                                  estimate's variance least.                                 (O2)

Cost per step of the algorithms (the Jacobians J_t and I_t aside, which the cell's
step_backward gives in O(K) backward steps of the batch): SnAp-1 keeps S values per
parameter of the built-in cells (its unit's), O(B·S·n) memory and O(B·S²·n) time; SnAp-2
of a dense W_h reaches every entry, RTRL's O(B·K·n) and O(B·K²·n); UORO keeps two vectors,
O(B·(K + n)) memory, and O(B·(K² + K·n)) time. Here SnAp keeps M dense and masks it, which
computes SnAp's numbers at RTRL's cost: a reference for the estimators' quality, not their
speed.
"""
from __future__ import annotations

import numpy as np

from .rtrl import Influence, forward_mode


def _one_layer(model, method):
    if model.num_layers != 1:
        raise ValueError(f"model: {method} is defined here for one recurrent layer, got num_layers={model.num_layers}")


class SnAp(Influence):
    """SnAp-n (O1): RTRL's influence kept on the entries n steps reach."""

    def __init__(self, model, B: int, state0=None, n: int = 1):
        _one_layer(model, "SnAp")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: expected a positive integer (SnAp-n), got {n!r}")
        super().__init__(model, B, state0)
        self.pattern = self._pattern(n)
        self.M = np.zeros((B, self.K, self.n), model.dtype)
        self.grad = np.zeros(self.n, model.dtype)

    def _pattern(self, n):
        """P_n (K, n_θ) bool, from one step at a random state and input (where exact zeros
        are the structure's, not the numbers')."""
        rng = np.random.default_rng(0)
        kept = self.state
        self.state = [tuple(rng.standard_normal((2, self.H)).astype(self.model.dtype) for _ in range(self.S))]
        _, _, J, I, _ = self.local(0, rng.standard_normal((2, self.model.input_size)).astype(self.model.dtype))
        self.state = kept
        reach, touched = (J != 0).any(axis=0).astype(np.int64), (I != 0).any(axis=0)
        units = touched.reshape(self.S, self.H, -1).any(axis=0)                         # (H, n_θ)
        pattern = np.tile(units, (self.S, 1))                                           # every state value of those units
        for _ in range(n - 1):
            pattern = pattern | ((reach @ pattern.astype(np.int64)) > 0)
        return pattern

    def step(self, x_t, mask_t=None, reset_t=None):
        prev, new, J, I, _ = self.local(0, x_t, reset_t)
        M_prev = self.M if reset_t is None or not reset_t.any() else np.where(reset_t[:, None, None], 0, self.M)
        M = (J @ M_prev + I) * self.pattern                                               # (O1)
        if mask_t is not None and not mask_t.all():                                       # (M1)
            M = np.where(mask_t[:, None, None], M, M_prev)
        self.M = M
        return self.advance(0, prev, new, mask_t)

    def collect(self, dh):
        self.grad += np.einsum("bk,bkn->n", dh, self.M[:, :self.H])                      # (T2)

    def grads(self) -> dict:
        return self.named(self.grad)


class UORO(Influence):
    """UORO (O2): an unbiased rank-one estimate ũ θ̃ᵀ of the influence, per sequence."""

    EPS = 1e-7

    def __init__(self, model, B: int, state0=None, rng=None):
        _one_layer(model, "UORO")
        super().__init__(model, B, state0)
        self.rng = np.random.default_rng(rng)
        self.u = np.zeros((B, self.K), model.dtype)
        self.theta = np.zeros((B, self.n), model.dtype)
        self.grad = np.zeros(self.n, model.dtype)

    def step(self, x_t, mask_t=None, reset_t=None):
        prev, new, J, I, _ = self.local(0, x_t, reset_t)
        u, theta = self.u, self.theta
        if reset_t is not None and reset_t.any():                                         # (M4): M = 0
            u, theta = np.where(reset_t[:, None], 0, u), np.where(reset_t[:, None], 0, theta)
        Ju = np.einsum("bkj,bj->bk", J, u)
        nu = self.rng.choice(np.array([-1.0, 1.0], dtype=u.dtype), size=u.shape)
        nu_I = np.einsum("bk,bkn->bn", nu, I)
        eps = self.EPS
        rho0 = np.sqrt((np.linalg.norm(theta, axis=1) + eps) / (np.linalg.norm(Ju, axis=1) + eps))[:, None]
        rho1 = np.sqrt((np.linalg.norm(nu_I, axis=1) + eps) / (np.linalg.norm(nu, axis=1) + eps))[:, None]
        new_u, new_theta = rho0 * Ju + rho1 * nu, theta / rho0 + nu_I / rho1                # (O2)
        if mask_t is not None and not mask_t.all():                                       # (M1)
            new_u = np.where(mask_t[:, None], new_u, u)
            new_theta = np.where(mask_t[:, None], new_theta, theta)
        self.u, self.theta = new_u, new_theta
        return self.advance(0, prev, new, mask_t)

    def collect(self, dh):
        self.grad += np.einsum("b,bn->n", (dh * self.u[:, :self.H]).sum(axis=1), self.theta)   # (T2)

    def grads(self) -> dict:
        return self.named(self.grad)


def snap(model, x, targets, n: int = 1, state0=None, mask=None, resets=None):
    """(loss, gradient estimate, final state) by SnAp-n (O1), one recurrent layer."""
    return forward_mode(lambda B: SnAp(model, B, state0, n), model, x, targets, mask, resets)


def uoro(model, x, targets, state0=None, mask=None, resets=None, rng=None):
    """(loss, gradient estimate, final state) by UORO (O2), one recurrent layer; ``rng``
    (a seed or a Generator) draws the signs ν_t."""
    return forward_mode(lambda B: UORO(model, B, state0, rng), model, x, targets, mask, resets)
