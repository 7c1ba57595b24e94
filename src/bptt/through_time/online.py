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
    e-prop (Bellec et al. 2020)   M_t ≈ E_t = J_t^direct E_{t−1} + I_t, J_t^direct the part of
    RFLO (Murray 2019)            J_t that does not pass through the recurrent product
                                  v_t = h_{t−1} W_hᵀ: the LSTM's f_t on c (Bellec et al.'s
                                  eligibility traces), the GRU's z_t, and for the Elman
                                  layer the leak alone: with zoneout p at evaluation,
                                  h_t = p h_{t−1} + (1 − p) f(a_t) is Murray's leaky RNN with
                                  α = 1 − p, and E_t = (1 − α) E_{t−1} + α f′(a_t) x̂_tᵀ per unit. (O3)
    KF-RTRL (Mujika et al. 2018)  the Elman layer's M_t ≈ u_tᵀ ⊗ A_t, u over the layer's
                                  input x̂_t = [x_t, h_{t−1}, 1], A (H, H): u_t = c₁ p₁ u_{t−1} +
                                  c₂ p₂ x̂_t, A_t = c₁ J_t A_{t−1}/p₁ + c₂ D_t/p₂ with random
                                  signs c₁, c₂ and D_t = ∂h_t/∂a_t; unbiased.                (O4)

Cost per step of the algorithms (the Jacobians J_t and I_t aside, which the cell's
step_backward gives in O(K) backward steps of the batch): SnAp-1 keeps S values per
parameter of the built-in cells (its unit's), O(B·S·n) memory and O(B·S²·n) time; SnAp-2
of a dense W_h reaches every entry, RTRL's O(B·K·n) and O(B·K²·n); UORO keeps two vectors,
O(B·(K + n)) memory, and O(B·(K² + n)) time, forming J_t but not I_t: ν_tᵀ I_t is one
backward step of ν_t (Influence.immediate_vjp); e-prop and RFLO keep the same entries as
SnAp-1 with a diagonal J^direct, O(B·S·n) and O(B·S²·n); KF-RTRL keeps u and A,
O(B·(D + H + H²)) memory and O(B·H³ + B·H·(D + H)) time, and forms J_t and ∂s_t/∂u_t
only. Here SnAp keeps M dense and masks it, which computes SnAp's numbers at RTRL's cost:
a reference for the estimators' quality, not their speed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .. import _checks
from ..model import check_model
from .rtrl import ExactInfluence, Influence, bmm, forward_mode


def _one_layer(model, method):
    check_model(model)
    if model.num_layers != 1:
        raise ValueError(f"model: {method} is defined here for one recurrent layer, got num_layers={model.num_layers}")


class _Dense(Influence, ABC):
    """A method that keeps a (B, K, n) picture of the influence; ``_next`` advances it."""

    CARRIED = ("M",)

    def __init__(self, model, B: int, state0=None):
        super().__init__(model, B, state0)
        self.M = np.zeros((B, self.K, self.n), model.dtype)
        self.grad = np.zeros(self.n, model.dtype)

    @abstractmethod
    def _next(self, local, M_prev):
        """M_t from M_{t−1} and the step's Jacobians (rtrl.Local)."""

    def step(self, x_t, mask_t=None, reset_t=None):
        x_t, mask_t, reset_t = self._step_inputs(x_t, mask_t, reset_t)
        local = self.local(0, x_t, reset_t)
        M_prev = self.M if reset_t is None or not reset_t.any() else np.where(reset_t[:, None, None], 0, self.M)
        M = self._next(local, M_prev)
        if mask_t is not None and not mask_t.all():                                       # (M1)
            M = np.where(mask_t[:, None, None], M, M_prev)
        self.M = M
        return self.advance(0, local.prev, local.new, mask_t)

    def collect(self, dh):
        dh = self._dh(dh)
        self.grad += np.einsum("bk,bkn->n", dh, self.M[:, :self.H])                      # (T2)

    def grads(self) -> dict:
        return self.named(self.grad)

    def influence(self):
        return self.M


class SnAp(_Dense):
    """SnAp-n (O1): RTRL's influence kept on the entries n steps reach."""

    # The pattern goes on with M: it is probed from W_h as it is when the method starts (zeros
    # in W_h, as init="identity" leaves, reach fewer units), so a resumed run keeps its own.
    CARRIED = ("M", "pattern")

    def __init__(self, model, B: int, state0=None, n: int = 1):
        _one_layer(model, "SnAp")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: expected a positive integer (SnAp-n), got {n!r}")
        super().__init__(model, B, state0)
        self.pattern = self._pattern(n)

    PROBE_SCALES = np.logspace(-1, 2, 16)

    def _pattern(self, n):
        """P_n (K, n_θ) bool, from the non-zeros of J and I at steps from random states and
        inputs, two rows at each scale of PROBE_SCALES, united. A zero is the structure's
        only where it is zero at every probe: one probe can zero an entry by its numbers (a
        ReLU unit inactive there, a tanh saturated to 1 − tanh² = 0), and the large scales
        outweigh a bias that holds a ReLU unit inactive at the small ones."""
        rng, dtype = np.random.default_rng(0), self.model.dtype
        kept = self.state
        reach, touched = np.zeros((self.K, self.K), bool), np.zeros((self.K, self.n), bool)
        for scale in self.PROBE_SCALES:
            self.state = [tuple((scale * rng.standard_normal((2, self.H))).astype(dtype) for _ in range(self.S))]
            local = self.local(0, (scale * rng.standard_normal((2, self.model.input_size))).astype(dtype))
            reach |= (local.J != 0).any(axis=0)
            touched |= (local.I != 0).any(axis=0)
        self.state = kept
        reach = reach.astype(np.int64)
        units = touched.reshape(self.S, self.H, -1).any(axis=0)                         # (H, n_θ)
        pattern = np.tile(units, (self.S, 1))                                           # every state value of those units
        for _ in range(n - 1):
            pattern = pattern | ((reach @ pattern.astype(np.int64)) > 0)
        return pattern

    def _next(self, local, M_prev):
        return (bmm(local.J, M_prev) + local.I) * self.pattern                           # (O1)

    def completed(self, arrays: dict) -> dict:
        """A checkpoint without the pattern (written before it was carried) keeps the one probed now."""
        return {"pattern": self.pattern} | arrays

    def restore(self, arrays: dict):
        super().restore(self.completed(arrays))


def _signs(influence, dtype, shape, axis):
    """Random ±1 of ``shape``, the batch along ``axis``, from the influence's generator.
    With ``draw_rows`` (n, rows), this process holds rows of a batch of n (an MPI rank):
    the signs of all n are drawn and its rows kept, so that the draw is one process's."""
    signs = np.array([-1.0, 1.0], dtype=dtype)
    if influence.draw_rows is None:
        return influence.rng.choice(signs, size=shape)
    n, rows = influence.draw_rows
    drawn = influence.rng.choice(signs, size=shape[:axis] + (n,) + shape[axis + 1:])
    return drawn[(slice(None),) * axis + (rows,)]


class UORO(Influence):
    """UORO (O2): an unbiased rank-one estimate ũ θ̃ᵀ of the influence, per sequence."""

    CARRIED = ("u", "theta")

    EPS = 1e-7
    draw_rows = None                 # (n, rows): this process's rows of a batch of n (_signs)

    def __init__(self, model, B: int, state0=None, rng=None):
        _one_layer(model, "UORO")
        super().__init__(model, B, state0)
        self.rng = _checks.generator("rng", rng)
        self.u = np.zeros((B, self.K), model.dtype)
        self.theta = np.zeros((B, self.n), model.dtype)
        self.grad = np.zeros(self.n, model.dtype)

    def step(self, x_t, mask_t=None, reset_t=None):
        x_t, mask_t, reset_t = self._step_inputs(x_t, mask_t, reset_t)
        local = self.local(0, x_t, reset_t, immediate=False)
        prev, new, J = local.prev, local.new, local.J
        u, theta = self.u, self.theta
        if reset_t is not None and reset_t.any():                                         # (M4): M = 0
            u, theta = np.where(reset_t[:, None], 0, u), np.where(reset_t[:, None], 0, theta)
        Ju = np.einsum("bkj,bj->bk", J, u)
        nu = _signs(self, u.dtype, u.shape, 0)
        nu_I = self.immediate_vjp(0, local, nu)                                          # νᵀ I_t: one VJP
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
        dh = self._dh(dh)
        self.grad += np.einsum("b,bn->n", (dh * self.u[:, :self.H]).sum(axis=1), self.theta)   # (T2)

    def grads(self) -> dict:
        return self.named(self.grad)

    def influence(self):
        return self.u[:, :, None] * self.theta[:, None, :]


def snap(model, x, targets, n: int = 1, state0=None, mask=None, resets=None):
    """(loss, gradient estimate, final state) by SnAp-n (O1), one recurrent layer."""
    return forward_mode(lambda B: SnAp(model, B, state0, n), model, x, targets, mask, resets,
                        carried=state0 is not None)


def uoro(model, x, targets, state0=None, mask=None, resets=None, rng=None):
    """(loss, gradient estimate, final state) by UORO (O2), one recurrent layer; ``rng``
    (a seed or a Generator) draws the signs ν_t."""
    return forward_mode(lambda B: UORO(model, B, state0, rng), model, x, targets, mask, resets,
                        carried=state0 is not None)


class Eligibility(_Dense):
    """e-prop and RFLO (O3): the influence carried through J^direct only."""

    def __init__(self, model, B: int, state0=None):
        _one_layer(model, "e-prop")
        super().__init__(model, B, state0)

    def _next(self, local, M_prev):
        return bmm(local.direct, M_prev) + local.I                                        # (O3)


class KFRTRL(Influence):
    """KF-RTRL (O4): the Elman layer's influence as one Kronecker product u ⊗ A, unbiased."""

    CARRIED = ("u", "A")

    EPS = 1e-7
    draw_rows = None                 # (n, rows): this process's rows of a batch of n (_signs)

    def __init__(self, model, B: int, state0=None, rng=None):
        _one_layer(model, "KF-RTRL")
        if model.cell != "rnn":
            raise ValueError(f"model: KF-RTRL is defined for the Elman layer (cell='rnn'), got cell={model.cell_name!r}")
        super().__init__(model, B, state0)
        self.rng = _checks.generator("rng", rng)
        D, H = model.input_size, self.H
        self.u = np.zeros((B, D + H + 1), model.dtype)
        self.A = np.zeros((B, H, H), model.dtype)
        self.gW = np.zeros((H, D + H + 1), model.dtype)          # ∂L/∂[W_x, W_h, b_h], rows by unit

    def step(self, x_t, mask_t=None, reset_t=None):
        x_t, mask_t, reset_t = self._step_inputs(x_t, mask_t, reset_t)
        local = self.local(0, x_t, reset_t, immediate=False)
        prev, new, J, du = local.prev, local.new, local.J, local.du
        u, A = self.u, self.A
        if reset_t is not None and reset_t.any():                                         # (M4): M = 0
            u, A = np.where(reset_t[:, None], 0, u), np.where(reset_t[:, None, None], 0, A)
        x_hat = np.concatenate([x_t, prev[0], np.ones((x_t.shape[0], 1), x_t.dtype)], axis=1)
        JA = J @ A
        eps = self.EPS
        p1 = np.sqrt((np.linalg.norm(JA, axis=(1, 2)) + eps) / (np.linalg.norm(u, axis=1) + eps))
        p2 = np.sqrt((np.linalg.norm(du, axis=(1, 2)) + eps) / (np.linalg.norm(x_hat, axis=1) + eps))
        c1, c2 = _signs(self, u.dtype, (2, u.shape[0]), 1)
        new_u = (c1 * p1)[:, None] * u + (c2 * p2)[:, None] * x_hat                      # (O4)
        new_A = (c1 / p1)[:, None, None] * JA + (c2 / p2)[:, None, None] * du
        if mask_t is not None and not mask_t.all():                                       # (M1)
            new_u = np.where(mask_t[:, None], new_u, u)
            new_A = np.where(mask_t[:, None, None], new_A, A)
        self.u, self.A = new_u, new_A
        return self.advance(0, prev, new, mask_t)

    def collect(self, dh):
        dh = self._dh(dh)
        g = np.einsum("bk,bki->bi", dh, self.A)                                          # (T2) through A's rows
        self.gW += g.T @ self.u

    def reset_grads(self):
        self.gW[...] = 0

    def grads(self) -> dict:
        D, H = self.model.input_size, self.H                 # the blocks' order: W_x, W_h, b_h
        return self.named(np.concatenate([self.gW[:, :D].ravel(), self.gW[:, D:D + H].ravel(), self.gW[:, D + H]]))

    def influence(self):
        """u ⊗ A laid out as the parameters are: W_x, then W_h, then b_h, rows by unit."""
        D, H, B = self.model.input_size, self.H, self.u.shape[0]
        kron = self.A[:, :, :, None] * self.u[:, None, None, :]                          # (B, K, H, D + H + 1)
        return np.concatenate([kron[..., :D].reshape(B, H, -1), kron[..., D:D + H].reshape(B, H, -1),
                               kron[..., D + H]], axis=2)


def eprop(model, x, targets, state0=None, mask=None, resets=None):
    """(loss, gradient estimate, final state) by e-prop (O3): eligibility traces through the
    cell's own dynamics, not through W_h; one recurrent layer of any cell."""
    return forward_mode(lambda B: Eligibility(model, B, state0), model, x, targets, mask, resets,
                        carried=state0 is not None)


def rflo(model, x, targets, state0=None, mask=None, resets=None):
    """(loss, gradient estimate, final state) by RFLO (O3) for the Elman layer, leaky where
    the model has zoneout (α = 1 − p at evaluation)."""
    check_model(model)
    if model.cell != "rnn":
        raise ValueError(f"model: RFLO is defined for the (leaky) Elman layer (cell='rnn'), got "
                         f"cell={model.cell_name!r}; e-prop is its form for gated cells")
    return forward_mode(lambda B: Eligibility(model, B, state0), model, x, targets, mask, resets,
                        carried=state0 is not None)


def kf_rtrl(model, x, targets, state0=None, mask=None, resets=None, rng=None):
    """(loss, gradient estimate, final state) by KF-RTRL (O4), the Elman layer; ``rng``
    draws the signs c₁, c₂."""
    return forward_mode(lambda B: KFRTRL(model, B, state0, rng), model, x, targets, mask, resets,
                        carried=state0 is not None)


# The methods by the names of `bptt train --through-time`: a factory (model, B, rng) -> influence.
ESTIMATORS = {
    "rtrl": lambda model, B, rng: ExactInfluence(model, B),
    "snap1": lambda model, B, rng: SnAp(model, B, n=1),
    "snap2": lambda model, B, rng: SnAp(model, B, n=2),
    "uoro": lambda model, B, rng: UORO(model, B, rng=rng),
    "kf-rtrl": lambda model, B, rng: KFRTRL(model, B, rng=rng),
    "eprop": lambda model, B, rng: Eligibility(model, B),
    "rflo": lambda model, B, rng: Eligibility(model, B),
}


def estimate(name, model, x, targets, rng=None, loss_mask=None, draw_rows=None):
    """(loss, gradient, final state) of the method ``name`` of ESTIMATORS on a batch.
    ``draw_rows`` (n, rows): x holds those rows of a batch of n, and random signs are drawn
    for all n (an MPI rank draws what one process would)."""
    check_model(model)
    if name == "rflo" and model.cell != "rnn":
        raise ValueError(f"through-time: rflo is defined for the (leaky) Elman layer, got cell={model.cell_name!r}")

    def make(B):
        influence = ESTIMATORS[name](model, B, rng)
        if draw_rows is not None:
            influence.draw_rows = draw_rows
        return influence
    return forward_mode(make, model, x, targets, loss_mask=loss_mask)

