"""Real-time recurrent learning: the exact gradient in forward mode, for any cell.

A second, independent algorithm that must agree with BPTT. Each layer carries the
influence of every recurrent parameter on its state forward in time, per sequence,

    M_t = ∂s_t/∂θ = J_t M_{t−1} + ∂s_t/∂θ|_{s_{t−1} fixed},   M_0 = 0                   (T1)

and each step's loss gradient is collected as it comes,

    ∂L/∂θ = Σ_t (∂L_t/∂h_t)ᵀ M_t[h]                                                      (T2)

J_t = ∂s_t/∂s_{t−1} is the cell's step Jacobian with the recurrent product included. Both
terms come from the cell's own ``step_backward``, which is linear in the gradient it is
given: fed the S·H unit vectors e_k of the state, it returns row k of ∂s_t/∂u_t,
∂s_t/∂v_t and of the direct ∂s_t/∂s_{t−1} (docs/derivation.md (T3)). So every cell of the
protocol, a user's included, gets RTRL without a line of its own. The influence of a
stacked layer's input, h of the layer below, enters through ∂s_t/∂u_t W_x (T4). Masks,
resets and zoneout's evaluation mixing follow the time loop's (M1), (M4) and (N3).

Memory O(B·S·H·n) and time O(T·B·(S·H)²·n) for n recurrent parameters: for small
networks, as a check of BPTT and as the reference of the online approximations.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks
from ..model import check_model
from ..cells import head as head_layer
from ..cells.loop import check_step
from ..dropout import layer_noise
from ..ops import LOSSES


def bmm(a, b):
    """a[i] @ b[i] for every i: one BLAS product each (NumPy's stacked matmul does not
    call BLAS for these shapes and runs several times slower)."""
    out = np.empty(a.shape[:-1] + b.shape[-1:], np.result_type(a, b))
    for i in range(a.shape[0]):
        np.matmul(a[i], b[i], out=out[i])
    return out


class Local(NamedTuple):
    """One layer's step and its Jacobians (Influence.local)."""
    prev: tuple
    new: tuple
    J: np.ndarray          # (B, K, K) ∂s_t/∂s_{t−1}
    direct: np.ndarray     # (B, K, K) the part of J not through v_t = s⁰_{t−1} W_hᵀ
    I: np.ndarray | None   # (B, K, n_l) ∂s_t/∂θ_l with s_{t−1} fixed (None: not formed)
    du: np.ndarray         # (B, K, G·H) ∂s_t/∂u_t
    inputs: np.ndarray     # (B, D_l) what the step read (for immediate_vjp)
    cache: tuple           # the cell's step cache
    kept: np.ndarray | None  # (S, H) zoneout's d at evaluation, or None


class Influence:
    """What every forward-mode method shares: the model's state, advanced one step at a time,
    and each layer's step Jacobian J_t and immediate influence I_t = ∂s_t/∂θ|_{s_{t−1}
    fixed} of its own parameters (T3). Subclasses keep their own picture of M_t and give
    ``step(x_t, mask_t, reset_t)`` -> h_t of the top layer, ``collect(dh_t)`` (T2) and
    ``grads()``."""

    def __init__(self, model, B: int, state0=None):
        check_model(model)
        if model.bidirectional or model.proj_size:
            raise ValueError(f"model: {type(self).__name__} (forward mode) carries one direction's unprojected "
                             f"state forward; got bidirectional={model.bidirectional}, proj_size={model.proj_size}")
        self.model, self.B = model, _checks.positive_int("B", B)
        self.cell = model.layer.cell
        self.S, self.H = len(model.layer.STATE), model.hidden_size
        self.K = self.S * self.H
        self.state = [tuple(a.copy() for a in s) for s in model._split_state(state0, B)]
        self.checked = set()                           # layers whose step's return was checked once
        self.blocks, self.offsets, n = [], [], 0       # per layer: {name: (offset in the layer, shape)}
        for l in range(model.num_layers):
            block, start = {}, n
            for name, value in model.layer_params(l).items():
                block[name] = (n - start, value.shape)
                n += value.size
            self.blocks.append(block)
            self.offsets.append((start, n))
        self.n = n
        self.zone = [layer_noise(model, None, l) for l in range(model.num_layers)]
        self.extras = tuple(self.cell.extra_shapes(self.H))
        self._units = {}

    def _step_inputs(self, x_t, mask_t, reset_t):
        """A step's x_t (B, D) and mask_t, reset_t (B,) bool or None, checked against the B
        this influence was made for and the model: ``step`` is public, called a step at a
        time (docs/through_time.md)."""
        B = self.B
        x_t = _checks.float_array("x_t", x_t, self.model.dtype, (B, self.model.input_size))
        mask_t = None if mask_t is None else _checks.bool_mask("mask_t", mask_t, (B,), _checks.VALID_STEP)
        reset_t = None if reset_t is None else _checks.bool_mask("reset_t", reset_t, (B,), _checks.RESET)
        return x_t, mask_t, reset_t

    def _dh(self, dh):
        """``collect``'s dh (B, H): ∂L_t/∂h_t of the top layer. A non-finite one is taken
        (a state or loss that overflowed) and shows in the gradient, as in BPTT."""
        return _checks.float_array("dh", dh, self.model.dtype, (self.B, self.H), finite=False)

    def local(self, l, inputs, reset_t=None, immediate=True):
        """Layer l's step from ``inputs`` (B, D_l), a ``Local``: prev the state it read (after a
        reset, (M4)), new its new state (after zoneout's mix, (N3)), J (B, K, K) =
        ∂s_t/∂s_{t−1}, direct the part of J not through the recurrent product v_t, I (B, K,
        n_l) over the layer's own parameters (``immediate=False``: not formed, for a method
        that needs only cᵀ I_t, ``immediate_vjp``), du (B, K, G·H) = ∂s_t/∂u_t (for (T4))."""
        p = self.model.layer_params(l)
        B, H, K = inputs.shape[0], self.H, self.K
        prev = self.state[l]
        if reset_t is not None and reset_t.any():                                         # (M4)
            prev = tuple(np.where(reset_t[:, None], 0, s).astype(s.dtype) for s in prev)
        u = inputs @ p["W_x"].T + p["b_h"]                                                # (K1)
        v = prev[0] @ p["W_h"].T                                                          # (K2)
        new, cache = self.cell.step(p, u, v, prev)                                        # (K3)
        if l not in self.checked:                     # rows of the cache are repeated below
            check_step(self.cell, new, cache, len(prev), (B, H), u.dtype)
            self.checked.add(l)
        kept = None if self.zone[l] is None else self.zone[l].zone_at(0, u.dtype)[0]      # (S, H): d
        if kept is not None:
            new = tuple(kept[i] * s + (1 - kept[i]) * n for i, (n, s) in enumerate(zip(new, prev)))   # (N3)
        # Row k of every Jacobian at once: step_backward of the unit vectors e_k, the batch
        # repeated K times (row b·K + k) (T3).
        dstate = self._unit_rows(l, B, u.dtype, kept)
        rep = tuple(np.repeat(c, K, axis=0) for c in cache)
        try:
            du, dv, back, _ = self.cell.step_backward(p, dstate, rep)
        except ValueError as exc:
            if "read-only" not in str(exc):
                raise
            raise ValueError(f"cell: {type(self.cell).__name__}.step_backward writes into dstate, which it may "
                             f"only read (forward mode hands every step the same unit rows); write into "
                             f"arrays of its own") from exc
        du, dv = du.reshape(B, K, -1), dv.reshape(B, K, -1)
        direct = np.concatenate([b.reshape(B, K, H) for b in back], axis=2)               # not through v_t
        if kept is not None:
            direct += np.diag(kept.reshape(K))                                            # (N3)
        J = direct.copy()
        J[:, :, :H] += dv @ p["W_h"]                                                      # through v_t (K5)
        if not immediate:
            return Local(prev, new, J, direct, None, du, inputs, cache, kept)
        I = self._immediate(l, du, dv, inputs, prev[0], dstate, rep)
        return Local(prev, new, J, direct, I, du, inputs, cache, kept)

    def immediate_vjp(self, l, local, c):
        """(B, n_l): c_bᵀ I_t[b] for every row b, with c (B, K): one step_backward of the rows
        of c instead of the K unit vectors that form I_t (T3), the same sum; zoneout's mix
        (N3) scales what reaches the cell by 1 − d."""
        H = self.H
        if local.kept is not None:
            c = c * (1 - local.kept.reshape(1, -1))
        dstate = tuple(np.ascontiguousarray(c[:, i * H:(i + 1) * H]) for i in range(self.S))
        du, dv, _, _ = self.cell.step_backward(self.model.layer_params(l), dstate, local.cache)
        return self._immediate(l, du[:, None], dv[:, None], local.inputs, local.prev[0], dstate, local.cache)[:, 0]

    def _immediate(self, l, du, dv, inputs, h_prev, dstate, cache):
        """(B, R, n_l): R cotangents per sequence times ∂s_t/∂θ_l (T3), from what step_backward
        gave for them, du and dv (B, R, G·H): their outer products with the step's inputs and
        h_{t−1} for W_x and W_h, du itself for b_h. ``dstate`` and ``cache``: the B·R rows
        step_backward took (row b·R + r), for the extra parameters' gradients, which the
        protocol sums over its batch: one row at a time."""
        p, block = self.model.layer_params(l), self.blocks[l]
        B, R = du.shape[:2]
        start, end = self.offsets[l]
        out = np.zeros((B, R, end - start), du.dtype)
        n0 = block["W_x"][0]
        out[:, :, n0:n0 + du.shape[2] * inputs.shape[1]] = (du[:, :, :, None] * inputs[:, None, None, :]).reshape(B, R, -1)
        n0 = block["W_h"][0]
        out[:, :, n0:n0 + dv.shape[2] * self.H] = (dv[:, :, :, None] * h_prev[:, None, None, :]).reshape(B, R, -1)
        n0 = block["b_h"][0]
        out[:, :, n0:n0 + du.shape[2]] = du
        if self.extras:
            for r in range(B * R):
                _, _, _, dextra = self.cell.step_backward(p, tuple(d[r:r + 1] for d in dstate),
                                                          tuple(c[r:r + 1] for c in cache))
                for name, g in dextra.items():
                    n0 = block[name][0]
                    out[r // R, r % R, n0:n0 + g.size] += g.reshape(-1)
        return out

    def _unit_rows(self, l, B, dtype, kept):
        """The unit vectors e_k of the state for every row of the batch, (1 − d_k) e_k with
        zoneout (N3): the same at every step, so made once per layer and batch size."""
        key = (l, B, np.dtype(dtype))
        if key not in self._units:
            K, H = self.K, self.H
            unit = np.eye(K, dtype=dtype) if kept is None else np.diag(1 - kept.reshape(K)).astype(dtype)
            rows = tuple(np.tile(unit[:, i * H:(i + 1) * H], (B, 1)) for i in range(self.S))
            for r in rows:
                r.flags.writeable = False            # shared by every step: a cell may read, not write
            self._units[key] = rows
        return self._units[key]

    def advance(self, l, prev, new, mask_t):
        """Store layer l's new state; padded rows keep the state they read (M1)."""
        if mask_t is not None and not mask_t.all():
            new = tuple(np.where(mask_t[:, None], n, s) for n, s in zip(new, prev))
        self.state[l] = new
        return new[0]

    def named(self, grad) -> dict:
        """A flat gradient over every layer's parameters, by name: copies, so that a dict
        kept from ``grads()`` stays as it was when the next steps add to the running sum."""
        out = {}
        for l, block in enumerate(self.blocks):
            start = self.offsets[l][0]
            for name, (n0, shape) in block.items():
                block = grad[start + n0:start + n0 + int(np.prod(shape))]
                out[f"{self.model.direction_prefix(l)}.{name}"] = block.reshape(shape).copy()
        return out

    def public_state(self):
        return self.model._join_state(self.state)

    def reset_grads(self):
        """Start collecting (T2) anew: the next update's gradient, the influence kept."""
        self.grad[...] = 0

    def carried(self) -> dict:
        """{name: array} of what goes on from step to step: the state and the method's
        influence (a checkpoint saves it; ``restore`` puts it back)."""
        out = {f"state.{l}.{i}": s for l, layer in enumerate(self.state) for i, s in enumerate(layer)}
        return out | {name: getattr(self, name) for name in self.CARRIED}

    def completed(self, arrays: dict) -> dict:
        """A checkpoint's ``arrays`` with what one written before a method carried it lacks,
        taken from this estimator (``restore`` and the trainer's check read this); by
        default they are complete as they are."""
        return arrays

    def restore(self, arrays: dict):
        self.state = [tuple(arrays[f"state.{l}.{i}"].copy() for i in range(self.S))
                      for l in range(self.model.num_layers)]
        for name in self.CARRIED:
            setattr(self, name, arrays[name].copy())


class ExactInfluence(Influence):
    """Exact RTRL: every layer's M_t over all parameters below and at it (T1), (T4)."""

    CARRIED = ()

    def __init__(self, model, B: int, state0=None):
        super().__init__(model, B, state0)
        self.M = [np.zeros((B, self.K, self.n), model.dtype) for _ in range(model.num_layers)]
        self.grad = np.zeros(self.n, model.dtype)

    def step(self, x_t, mask_t=None, reset_t=None):
        x_t, mask_t, reset_t = self._step_inputs(x_t, mask_t, reset_t)
        inputs, M_in = x_t, None
        for l in range(self.model.num_layers):
            local = self.local(l, inputs, reset_t)
            prev, new, J, I, du = local.prev, local.new, local.J, local.I, local.du
            M_prev = self.M[l]
            if reset_t is not None and reset_t.any():
                M_prev = np.where(reset_t[:, None, None], 0, M_prev)                      # (M4)
            M = bmm(J, M_prev)                                                            # (T1)
            start, end = self.offsets[l]
            M[:, :, start:end] += I
            if M_in is not None:
                M += bmm(du @ self.model.layer_params(l)["W_x"], M_in)                    # (T4)
            if mask_t is not None and not mask_t.all():                                   # (M1)
                M = np.where(mask_t[:, None, None], M, M_prev)
            self.M[l] = M
            inputs, M_in = self.advance(l, prev, new, mask_t), M[:, :self.H]
        return inputs

    def collect(self, dh):
        """Add (∂L_t/∂h_t)ᵀ M_t[h] for the top layer's h_t (T2); dh (B, H)."""
        dh = self._dh(dh)
        self.grad += np.einsum("bk,bkn->n", dh, self.M[-1][:, :self.H])

    def grads(self) -> dict:
        return self.named(self.grad)

    def influence(self):
        """M_t of the top layer, (B, K, n)."""
        return self.M[-1]

    def carried(self) -> dict:
        return super().carried() | {f"M.{l}": M for l, M in enumerate(self.M)}

    def restore(self, arrays: dict):
        super().restore(arrays)
        self.M = [arrays[f"M.{l}"].copy() for l in range(self.model.num_layers)]


def rtrl(model, x, targets, state0=None, mask=None, resets=None):
    """(loss, grads, final state) of ``model`` on (x, targets) by forward-mode RTRL: the
    same numbers as ``model.loss_and_grads`` (BPTT), computed without a backward pass
    through time. Any cell, stacked layers, masks and resets; evaluation mode (no
    dropout; zoneout at its expectation).
    Shapes as ``Model.gradients`` takes them: x (T, B, D), targets (T, B, O) or class indices
    (T, B), mask and resets (T, B) bool, state0 (L, B, H) or (h, c).
    """
    return forward_mode(lambda B: ExactInfluence(model, B, state0), model, x, targets, mask, resets,
                        carried=state0 is not None)


def forward_mode(make, model, x, targets, mask=None, resets=None, loss_mask=None, carried=False):
    """(loss, gradient, final state) with the influence ``make(B)`` advanced over the
    sequence: each step's loss gradient is collected as it comes (T2), the head's exactly.
    ``loss_mask`` (T, B) bool: only these positions add loss, as in ``Model.gradients``.
    ``carried``: ``make`` starts from a given state (Model._check_inputs)."""
    check_model(model)
    x, mask, resets = model._check_inputs(x, mask, resets, carried=carried)
    T, B, _ = x.shape
    targets = model._check_targets(targets, T, B)
    influence = make(B)
    loss, grads = window(influence, model, x, targets, mask, resets, loss_mask)
    return loss, grads, influence.public_state()


def window(influence, model, x, targets, mask=None, resets=None, loss_mask=None):
    """(loss, gradient) of the steps of x from the influence's current state and picture of
    M, which both go on: the next window continues them (online training over a stream).
    The loss is the model's over these steps (a mean over their positions, by default)."""
    T, B, _ = x.shape
    influence.reset_grads()
    head = model.head_params()
    head_grads = {k: np.zeros_like(v) for k, v in head.items()}
    weights = model._row_weights(mask, T, B, loss_mask)
    loss = 0.0
    for t in range(T):
        h = influence.step(x[t], None if mask is None else mask[t], None if resets is None else resets[t])
        if model.outputs == "all" and targets is not None:
            o = head_layer.forward(head, h)
            tgt = targets[t].reshape(B, -1) if model.loss != "cross_entropy" else targets[t].reshape(-1)
            step_loss, do = LOSSES[model.loss].value_and_grad(o, tgt, weights[t * B:(t + 1) * B], model.head)
            loss += step_loss
            dh, g = head_layer.backward(head, do, h)
            for k in head_grads:
                head_grads[k] += g[k]
            influence.collect(dh)
    if model.outputs == "last" and targets is not None:
        h = influence.state[-1][0]
        loss, do = model._loss(h, targets, mask, T, B)
        dh, head_grads = head_layer.backward(head, do, h)
        influence.collect(dh)
    grads = influence.grads() | {f"head.{k}": v for k, v in head_grads.items()}
    return float(loss), {k: grads[k] for k in model.params}
