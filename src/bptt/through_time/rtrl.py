"""Real-time recurrent learning: the exact gradient in forward mode, for the Elman layer.

A second, independent algorithm that must agree with BPTT. It carries the sensitivity
of the state to every recurrent parameter forward in time,

    P_t = ∂h_t/∂θ = diag(f'(a_t)) (W_h P_{t−1} + ∂a_t/∂θ|_{h_{t−1} fixed}),   P_0 = 0,   (T1)

where ∂a_t/∂θ puts x_tᵀ on row i of W_x's block, h_{t−1}ᵀ on row i of W_h's and 1 on
b_h's (for unit i), and adds each step's loss gradient as it comes:

    ∂L/∂θ = Σ_t (∂L_t/∂h_t)ᵀ P_t.                                                       (T2)

Memory O(B·H·n) and time O(T·B·H²·n) for n = H·D + H² + H parameters: for small
networks, as a check and for teaching. The head's gradient needs no recursion.
"""
from __future__ import annotations

import numpy as np

from ..cells import head as head_layer
from ..ops import ACTIVATIONS


def rtrl(model, x, targets, state0=None):
    """(loss, grads) of a one-layer Elman model (cell="rnn") by forward-mode RTRL."""
    if model.cell != "rnn" or model.num_layers != 1 or model.bidirectional:
        raise ValueError(f"model: RTRL is implemented for one Elman layer (cell='rnn', num_layers=1), "
                         f"got cell={model.cell!r}, num_layers={model.num_layers}")
    x, _, _ = model._check_inputs(x, None)
    T, B, D = x.shape
    targets = model._check_targets(targets, T, B)
    (h,) = model._split_state(state0, B)[0]
    H = model.hidden_size
    W_x, W_h, b_h = (model.params[f"layer0.{k}"] for k in ("W_x", "W_h", "b_h"))
    act = ACTIVATIONS[model.nonlinearity]
    n_x, n_h = H * D, H * H
    P = np.zeros((B, H, n_x + n_h + H), dtype=model.dtype)              # ∂h_t/∂θ per sequence
    units = np.arange(H)
    grad = np.zeros(P.shape[2], dtype=model.dtype)
    loss, head_grads = 0.0, {k: np.zeros_like(v) for k, v in model.head_params().items()}
    count = T * B if model.outputs == "all" else None
    for t in range(T):
        h_prev = h
        a = x[t] @ W_x.T + h_prev @ W_h.T + b_h
        h = act.forward(a, np.empty_like(a))
        P = np.einsum("ij,bjn->bin", W_h, P)                             # (T1) W_h P_{t−1}
        P[:, :, :n_x].reshape(B, H, H, D)[:, units, units, :] += x[t][:, None, :]     # ∂a/∂W_x
        P[:, :, n_x:n_x + n_h].reshape(B, H, H, H)[:, units, units, :] += h_prev[:, None, :]
        P[:, units, n_x + n_h + units] += 1                              # ∂a/∂b_h
        P *= act.derivative(h)[:, :, None]                               # (T1) diag(f'(a_t))
        if model.outputs == "all" or t == T - 1:
            step_targets = targets[t] if model.outputs == "all" else targets
            step_loss, do = model._loss(h, step_targets, None, 1, B, loss_count=count)
            loss += step_loss
            dh, g = head_layer.backward(model.head_params(), do, h)
            for k in head_grads:
                head_grads[k] += g[k]
            grad += np.einsum("bi,bin->n", dh, P)                        # (T2)
    grads = {"layer0.W_x": grad[:n_x].reshape(H, D), "layer0.W_h": grad[n_x:n_x + n_h].reshape(H, H),
             "layer0.b_h": grad[n_x + n_h:], "head.W_y": head_grads["W_y"], "head.b_y": head_grads["b_y"]}
    return loss, grads
