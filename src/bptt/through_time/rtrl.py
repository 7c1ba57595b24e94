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

import numpy as np

from ..cells import head as head_layer
from ..dropout import layer_noise
from ..ops import LOSSES


class ExactInfluence:
    """The influence matrices of every layer, advanced one step at a time (T1), (T3), (T4).

    ``step(x_t, mask_t, reset_t)`` advances the state and the influence and returns the top
    layer's output h_t (B, H); ``collect(dh_t)`` adds (∂L_t/∂h_t)ᵀ M_t[h] to ``grad`` (T2);
    ``grads()`` gives them by parameter name. The head's gradient is not here: it needs no
    recursion."""

    def __init__(self, model, B: int, state0=None):
        if model.bidirectional or model.proj_size:
            raise ValueError(f"model: RTRL carries one direction's unprojected state forward; got "
                             f"bidirectional={model.bidirectional}, proj_size={model.proj_size}")
        self.model, self.B = model, B
        self.cell = model.layer.cell
        self.S, self.H = len(model.layer.STATE), model.hidden_size
        self.state = [tuple(a.copy() for a in s) for s in model._split_state(state0, B)]
        self.blocks, n = [], 0                       # per layer: {name: (offset, shape)}
        for l in range(model.num_layers):
            block = {}
            for name, value in model.layer_params(l).items():
                block[name] = (n, value.shape)
                n += value.size
            self.blocks.append(block)
        self.n = n
        K = self.S * self.H
        self.M = [np.zeros((B, K, n), model.dtype) for _ in range(model.num_layers)]
        self.grad = np.zeros(n, model.dtype)
        self.zone = [layer_noise(model, None, l) for l in range(model.num_layers)]
        self.extras = tuple(self.cell.extra_shapes(self.H))

    def step(self, x_t, mask_t=None, reset_t=None):
        inputs, M_in = x_t, None
        for l in range(self.model.num_layers):
            inputs, M_in = self._layer_step(l, inputs, M_in, mask_t, reset_t)
        return inputs

    def _layer_step(self, l, inputs, M_in, mask_t, reset_t):
        p, block = self.model.layer_params(l), self.blocks[l]
        B, S, H, K = self.B, self.S, self.H, self.S * self.H
        prev, M_prev = self.state[l], self.M[l]
        if reset_t is not None and reset_t.any():                                         # (M4)
            prev = tuple(np.where(reset_t[:, None], 0, s).astype(s.dtype) for s in prev)
            M_prev = np.where(reset_t[:, None, None], 0, M_prev)
        u = inputs @ p["W_x"].T + p["b_h"]                                                # (K1)
        v = prev[0] @ p["W_h"].T                                                          # (K2)
        new, cache = self.cell.step(p, u, v, prev)                                        # (K3)
        kept = None if self.zone[l] is None else self.zone[l].zone_at(0, u.dtype)[0]      # (S, H): d
        if kept is not None:
            new = tuple(kept[i] * s + (1 - kept[i]) * n for i, (n, s) in enumerate(zip(new, prev)))   # (N3)
        # Row k of every Jacobian at once: step_backward of the unit vectors e_k, the batch
        # repeated K times (row b·K + k) (T3).
        unit = np.eye(K, dtype=u.dtype) if kept is None else np.diag(1 - kept.reshape(K))
        dstate = tuple(np.tile(unit[:, i * H:(i + 1) * H], (B, 1)) for i in range(S))
        rep = tuple(np.repeat(c, K, axis=0) for c in cache)
        du, dv, back, _ = self.cell.step_backward(p, dstate, rep)
        du, dv = du.reshape(B, K, -1), dv.reshape(B, K, -1)
        J = np.concatenate([b.reshape(B, K, H) for b in back], axis=2)                    # direct ∂s_t/∂s_{t−1}
        J[:, :, :H] += dv @ p["W_h"]                                                      # through v_t (K5)
        if kept is not None:
            J += np.diag(kept.reshape(K))                                                 # (N3)
        M = J @ M_prev                                                                    # (T1)
        n0, _ = block["W_x"]
        M[:, :, n0:n0 + du.shape[2] * inputs.shape[1]] += (du[:, :, :, None] * inputs[:, None, None, :]).reshape(B, K, -1)
        n0, _ = block["W_h"]
        M[:, :, n0:n0 + dv.shape[2] * H] += (dv[:, :, :, None] * prev[0][:, None, None, :]).reshape(B, K, -1)
        n0, _ = block["b_h"]
        M[:, :, n0:n0 + du.shape[2]] += du
        if self.extras:
            self._add_extras(M, p, block, dstate, rep)
        if M_in is not None:
            M += (du @ p["W_x"]) @ M_in                                                   # (T4)
        if mask_t is not None and not mask_t.all():                                       # (M1)
            new = tuple(np.where(mask_t[:, None], n, s) for n, s in zip(new, prev))
            M = np.where(mask_t[:, None, None], M, M_prev)
        self.state[l], self.M[l] = new, M
        return new[0], M[:, :H]

    def _add_extras(self, M, p, block, dstate, rep):
        """∂s_t/∂(extra parameters): step_backward sums them over its batch, so one row at
        a time."""
        B, K = M.shape[0], M.shape[1]
        for r in range(B * K):
            _, _, _, dextra = self.cell.step_backward(p, tuple(d[r:r + 1] for d in dstate),
                                                      tuple(c[r:r + 1] for c in rep))
            for name, g in dextra.items():
                n0, shape = block[name]
                M[r // K, r % K, n0:n0 + g.size] += g.reshape(-1)

    def collect(self, dh):
        """Add (∂L_t/∂h_t)ᵀ M_t[h] for the top layer's h_t (T2); dh (B, H)."""
        self.grad += np.einsum("bk,bkn->n", dh, self.M[-1][:, :self.H])

    def grads(self) -> dict:
        out = {}
        for l, block in enumerate(self.blocks):
            for name, (n0, shape) in block.items():
                out[f"{self.model.direction_prefix(l)}.{name}"] = self.grad[n0:n0 + int(np.prod(shape))].reshape(shape)
        return out

    def public_state(self):
        return self.model._join_state(self.state)


def rtrl(model, x, targets, state0=None, mask=None, resets=None):
    """(loss, grads, final state) of ``model`` on (x, targets) by forward-mode RTRL: the
    same numbers as ``model.loss_and_grads`` (BPTT), computed without a backward pass
    through time. Any cell, stacked layers, masks and resets; evaluation mode (no
    dropout; zoneout at its expectation)."""
    x, mask, resets = model._check_inputs(x, mask, resets)
    T, B, _ = x.shape
    targets = model._check_targets(targets, T, B)
    influence = ExactInfluence(model, B, state0)
    head = model.head_params()
    head_grads = {k: np.zeros_like(v) for k, v in head.items()}
    weights = model._row_weights(mask, T, B)
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
    return float(loss), {k: grads[k] for k in model.params}, influence.public_state()
