"""`bptt explain`: the article, live, on a network small enough to read.

D = 1 input, H = 2 units, T = 3 steps, one output with the identity head and
L = Σ_t (y_t − y*_t)² (mse, summed). Every forward quantity, then every line of the
backward recursion with its equation number from docs/derivation.md, then each gradient
entry beside a central finite difference and the library's own ``Model.gradients``.
The recursion here is written out plainly, apart from the fast layers in cells/, so the
comparison at the end checks one against the other.
"""
from __future__ import annotations

import sys

import numpy as np

from ..gradcheck import _central_differences
from ..model import Model

T, D, H = 3, 1, 2
X = np.array([0.5, -1.0, 0.8])
Y_STAR = np.array([0.2, -0.1, 0.4])


def _v(a) -> str:
    a = np.atleast_1d(np.asarray(a, dtype=float)).ravel()
    return "[" + ", ".join(f"{v:+.4f}" for v in a) + "]"


def _sig(a):
    return 1 / (1 + np.exp(-a))


class _Printer:
    def __init__(self, out):
        self.out = out

    def __call__(self, text=""):
        print(text, file=self.out)

    def eq(self, lhs, value, label, indent=7):
        self(f"{' ' * indent}{lhs:<31} = {value:<18} {label}".rstrip())


def _model(cell) -> Model:
    m = Model(cell, D, H, 1, head="identity", loss="mse", reduction="sum", dtype="float64", seed=0)
    rng = np.random.default_rng(2024)           # fixed, readable numbers: two decimals
    for name, p in m.params.items():
        p[...] = rng.uniform(-0.8, 0.8, p.shape).round(2)
    return m


def explain(cell: str = "rnn", out=None) -> dict:
    """Print the walk-through for ``cell`` ("rnn", "lstm" or "gru") to ``out``, a text file
    object (None: stdout); return the gradients the printed recursion arrives at (same
    keys as ``Model.params``)."""
    if cell not in ("rnn", "lstm", "gru"):
        raise ValueError(f"cell: expected one of rnn, lstm, gru, got {cell!r}")
    if out is not None and not callable(getattr(out, "write", None)):
        raise ValueError(f"out: expected a text file object (with a write method) or None for stdout, "
                         f"got {type(out).__name__} {out!r}; hint: open(path, 'w') for a file")
    p = _Printer(out or sys.stdout)
    m = _model(cell)
    P = m.params
    what = {"rnn": "an Elman RNN, h_t = tanh(W_x x_t + W_h h_{t-1} + b_h)",
            "lstm": "an LSTM, gates i, f, g, o (PyTorch's order)",
            "gru": "a GRU, gates r, z, n (PyTorch's form)"}[cell]
    p(f"bptt explain: {what}")
    p(f"D = {D}, H = {H}, T = {T};  y_t = W_y h_t + b_y;  L = Σ_t (y_t − y*_t)²")
    p("Equation numbers refer to docs/derivation.md.")
    p()
    p("Parameters, PyTorch's layout (a line: a gate block of W_x or b_h, a row of W_h)")
    for name, value in P.items():
        rows = value.reshape(-1, H) if value.size % H == 0 else value.reshape(1, -1)
        for i, row in enumerate(rows):
            p(f"  {name if i == 0 else '':<14} {_v(row)}")
    p(f"  x  = {_v(X)}    y* = {_v(Y_STAR)}")
    p(f"  h_0 = {_v(np.zeros(H))}" + (f"    c_0 = {_v(np.zeros(H))}" if cell == "lstm" else ""))
    p()
    step = {"rnn": _rnn, "lstm": _lstm, "gru": _gru}[cell]
    grads = step(P, p)
    grads["head.W_y"], grads["head.b_y"] = grads.pop("W_y"), grads.pop("b_y")
    grads = {k: grads[k.split(".", 1)[1]] if k.startswith("layer0.") else grads[k] for k in P}
    _compare(m, grads, p)
    return grads


# ---- the head, shared ---------------------------------------------------------------------

def _head_forward(P, h, t, p):
    o = P["head.W_y"] @ h + P["head.b_y"]
    p.eq(f"y_{t} = W_y h_{t} + b_y", _v(o), "(H1), (H2)")
    loss = float(((o - Y_STAR[t - 1]) ** 2).sum())
    p.eq(f"L_{t} = (y_{t} − y*_{t})²", f"{loss:+.6f}", "(C1)")
    return o, loss


def _head_backward(P, y, h, t, g, p):
    do = 2 * (y - Y_STAR[t - 1])
    p.eq(f"δo_{t} = 2 (y_{t} − y*_{t})", _v(do), "(C2), (H4)")
    g["W_y"] += np.outer(do, h)
    g["b_y"] += do
    e = P["head.W_y"].T @ do
    p.eq(f"e_{t} = W_yᵀ δo_{t}", _v(e), "(H7)")
    return e


def _footer(g, p, total):
    p()
    p(f"  L = Σ_t L_t = {total:+.6f}")
    p("  Sums over t: ∂L/∂W_y = Σ δo_t h_tᵀ, ∂L/∂b_y = Σ δo_t (H6).")


# ---- Elman RNN ----------------------------------------------------------------------------------

def _rnn(P, p):
    W_x, W_h, b = P["layer0.W_x"], P["layer0.W_h"], P["layer0.b_h"]
    h = [np.zeros(H)]
    ys, total = [], 0.0
    p("Forward")
    for t in range(1, T + 1):
        p(f"  t = {t}   x_{t} = {X[t - 1]:+.4f}")
        a = W_x @ X[t - 1:t] + W_h @ h[-1] + b
        p.eq(f"a_{t} = W_x x_{t} + W_h h_{t - 1} + b_h", _v(a), "(R1)")
        h.append(np.tanh(a))
        p.eq(f"h_{t} = tanh(a_{t})", _v(h[-1]), "(R2)")
        y, loss = _head_forward(P, h[-1], t, p)
        ys.append(y)
        total += loss
    p()
    p("Backward, t = T … 1 (dh⁺_T = 0: nothing flows in from a later chunk)")
    g = {"W_x": np.zeros_like(W_x), "W_h": np.zeros_like(W_h), "b_h": np.zeros_like(b),
         "W_y": np.zeros_like(P["head.W_y"]), "b_y": np.zeros_like(P["head.b_y"])}
    dh_next = np.zeros(H)
    for t in range(T, 0, -1):
        p(f"  t = {t}")
        e = _head_backward(P, ys[t - 1], h[t], t, g, p)
        dh = e + dh_next
        p.eq(f"dh_{t} = e_{t} + dh⁺_{t}", _v(dh), "(R3)")
        da = dh * (1 - h[t] ** 2)
        p.eq(f"δa_{t} = dh_{t} ⊙ (1 − h_{t}²)", _v(da), "(R4), (A2)")
        g["W_x"] += np.outer(da, X[t - 1:t])                      # (R5)
        g["W_h"] += np.outer(da, h[t - 1])                        # (R6)
        g["b_h"] += da                                            # (R7)
        dh_next = W_h.T @ da
        p.eq(f"dh⁺_{t - 1} = W_hᵀ δa_{t}", _v(dh_next), "(R3)" if t > 1 else "(R9) = ∂L/∂h_0")
    _footer(g, p, total)
    p("  ∂L/∂W_x = Σ δa_t x_tᵀ (R5), ∂L/∂W_h = Σ δa_t h_{t-1}ᵀ (R6),")
    p("  ∂L/∂b_h = Σ δa_t (R7).")
    return g


# ---- LSTM ---------------------------------------------------------------------------------------

def _lstm(P, p):
    W_x, W_h, b = P["layer0.W_x"], P["layer0.W_h"], P["layer0.b_h"]
    h, c = [np.zeros(H)], [np.zeros(H)]
    gates, ys, total = [], [], 0.0
    p("Forward")
    for t in range(1, T + 1):
        p(f"  t = {t}   x_{t} = {X[t - 1]:+.4f}")
        z = W_x @ X[t - 1:t] + W_h @ h[-1] + b
        p.eq(f"z_{t} = W_x x_{t} + W_h h_{t - 1} + b_h", "(4H values)", "(L1)")
        zi, zf, zg, zo = z.reshape(4, H)
        i, f, g, o = _sig(zi), _sig(zf), np.tanh(zg), _sig(zo)
        p.eq(f"i_{t} = σ(z_i)", _v(i), "(L2)")
        p.eq(f"f_{t} = σ(z_f)", _v(f), "(L2)")
        p.eq(f"g_{t} = tanh(z_g)", _v(g), "(L2)")
        p.eq(f"o_{t} = σ(z_o)", _v(o), "(L2)")
        c.append(f * c[-1] + i * g)
        p.eq(f"c_{t} = f_{t} ⊙ c_{t - 1} + i_{t} ⊙ g_{t}", _v(c[-1]), "(L3)")
        h.append(o * np.tanh(c[-1]))
        p.eq(f"h_{t} = o_{t} ⊙ tanh(c_{t})", _v(h[-1]), "(L4)")
        gates.append((i, f, g, o))
        y, loss = _head_forward(P, h[-1], t, p)
        ys.append(y)
        total += loss
    p()
    p("Backward, t = T … 1 (dh⁺_T = dc⁺_T = 0)")
    gr = {"W_x": np.zeros_like(W_x), "W_h": np.zeros_like(W_h), "b_h": np.zeros_like(b),
          "W_y": np.zeros_like(P["head.W_y"]), "b_y": np.zeros_like(P["head.b_y"])}
    dh_next, dc_next = np.zeros(H), np.zeros(H)
    for t in range(T, 0, -1):
        p(f"  t = {t}")
        i, f, g, o = gates[t - 1]
        e = _head_backward(P, ys[t - 1], h[t], t, gr, p)
        dh = e + dh_next
        p.eq(f"dh_{t} = e_{t} + dh⁺_{t}", _v(dh), "(L5)")
        tc = np.tanh(c[t])
        dc = dh * o * (1 - tc ** 2) + dc_next
        p.eq(f"dc_{t} = dh_{t} o(1 − tanh²c_{t}) + dc⁺_{t}", _v(dc), "(L6)")
        dzo = dh * tc * o * (1 - o)
        p.eq("δz_o = dh ⊙ tanh(c) ⊙ o(1 − o)", _v(dzo), "(L7)")
        dzg = dc * i * (1 - g ** 2)
        p.eq("δz_g = dc ⊙ i ⊙ (1 − g²)", _v(dzg), "(L8)")
        dzi = dc * g * i * (1 - i)
        p.eq("δz_i = dc ⊙ g ⊙ i(1 − i)", _v(dzi), "(L8)")
        dzf = dc * c[t - 1] * f * (1 - f)
        p.eq(f"δz_f = dc ⊙ c_{t - 1} ⊙ f(1 − f)", _v(dzf), "(L8)")
        dz = np.concatenate([dzi, dzf, dzg, dzo])
        gr["W_x"] += np.outer(dz, X[t - 1:t])                     # (L10)
        gr["W_h"] += np.outer(dz, h[t - 1])                       # (L10)
        gr["b_h"] += dz                                           # (L10)
        dh_next = W_h.T @ dz
        p.eq(f"dh⁺_{t - 1} = W_hᵀ δz_{t}", _v(dh_next), "(L5)")
        dc_next = f * dc
        p.eq(f"dc⁺_{t - 1} = f_{t} ⊙ dc_{t}", _v(dc_next), "(L9)")
    _footer(gr, p, total)
    p("  ∂L/∂W_x = Σ δz_t x_tᵀ, ∂L/∂W_h = Σ δz_t h_{t-1}ᵀ,")
    p("  ∂L/∂b_h = Σ δz_t (L10).")
    return gr


# ---- GRU ----------------------------------------------------------------------------------------

def _gru(P, p):
    W_x, W_h, b, b_hn = P["layer0.W_x"], P["layer0.W_h"], P["layer0.b_h"], P["layer0.b_hn"]
    h = [np.zeros(H)]
    saved, ys, total = [], [], 0.0
    p("Forward")
    for t in range(1, T + 1):
        p(f"  t = {t}   x_{t} = {X[t - 1]:+.4f}")
        ax = (W_x @ X[t - 1:t] + b).reshape(3, H)
        ah = W_h.reshape(3, H, H) @ h[-1]
        r = _sig(ax[0] + ah[0])
        p.eq(f"r_{t} = σ(W_xr x + W_hr h_{t - 1} + b_r)", _v(r), "(G1)")
        z = _sig(ax[1] + ah[1])
        p.eq(f"z_{t} = σ(W_xz x + W_hz h_{t - 1} + b_z)", _v(z), "(G2)")
        q = ah[2] + b_hn
        p.eq(f"q_{t} = W_hn h_{t - 1} + b_hn", _v(q), "(G3)")
        n = np.tanh(ax[2] + r * q)
        p.eq(f"n_{t} = tanh(W_xn x + b_in + r ⊙ q)", _v(n), "(G4)")
        h.append((1 - z) * n + z * h[-1])
        p.eq(f"h_{t} = (1 − z) ⊙ n + z ⊙ h_{t - 1}", _v(h[-1]), "(G5)")
        saved.append((r, z, q, n))
        y, loss = _head_forward(P, h[-1], t, p)
        ys.append(y)
        total += loss
    p()
    p("Backward, t = T … 1 (dh⁺_T = 0)")
    gr = {"W_x": np.zeros_like(W_x), "W_h": np.zeros_like(W_h), "b_h": np.zeros_like(b),
          "b_hn": np.zeros_like(b_hn), "W_y": np.zeros_like(P["head.W_y"]), "b_y": np.zeros_like(P["head.b_y"])}
    dh_next = np.zeros(H)
    for t in range(T, 0, -1):
        p(f"  t = {t}")
        r, z, q, n = saved[t - 1]
        e = _head_backward(P, ys[t - 1], h[t], t, gr, p)
        dh = e + dh_next
        p.eq(f"dh_{t} = e_{t} + dh⁺_{t}", _v(dh), "(G6)")
        da_n = dh * (1 - z) * (1 - n ** 2)
        p.eq("δa_n = dh ⊙ (1 − z) ⊙ (1 − n²)", _v(da_n), "(G7)")
        da_z = dh * (h[t - 1] - n) * z * (1 - z)
        p.eq(f"δa_z = dh ⊙ (h_{t - 1} − n) ⊙ z(1 − z)", _v(da_z), "(G8)")
        da_r = da_n * q * r * (1 - r)
        p.eq("δa_r = δa_n ⊙ q ⊙ r(1 − r)", _v(da_r), "(G9)")
        dq = da_n * r
        p.eq("δq = δa_n ⊙ r", _v(dq), "(G9)")
        d_in = np.concatenate([da_r, da_z, da_n])
        d_rec = np.concatenate([da_r, da_z, dq])
        gr["W_x"] += np.outer(d_in, X[t - 1:t])                   # (G10)
        gr["b_h"] += d_in
        gr["W_h"] += np.outer(d_rec, h[t - 1])
        gr["b_hn"] += dq
        dh_next = W_h.T @ d_rec + z * dh
        p.eq(f"dh⁺_{t - 1} = W_hᵀ[δa_r; δa_z; δq] + z ⊙ dh", _v(dh_next), "(G6)")
    _footer(gr, p, total)
    p("  ∂L/∂W_x = Σ [δa_r; δa_z; δa_n] x_tᵀ, ∂L/∂b_h = Σ [δa_r; δa_z; δa_n],")
    p("  ∂L/∂W_h = Σ [δa_r; δa_z; δq] h_{t-1}ᵀ, ∂L/∂b_hn = Σ δq (G10).")
    return gr


# ---- the check ------------------------------------------------------------------------------------

def _loss(m):
    return m.loss_value(X.reshape(T, 1, D), Y_STAR.reshape(T, 1, 1))


def _compare(m, grads, p, eps=1e-3):
    p()
    p("Gradients: the recursion above, beside gradcheck's 4th-order finite difference")
    p(f"  {'entry':<16}{'recursion':>16}{'finite diff.':>16}{'|difference|':>14}")
    worst = 0.0
    for name, value in m.params.items():
        numeric = _central_differences(lambda: _loss(m), value, eps, range(value.size)).reshape(value.shape)
        for idx in np.ndindex(value.shape):
            ours, fd = grads[name][idx], numeric[idx]
            worst = max(worst, abs(ours - fd))
            label = f"{name.split('.', 1)[1]}[{','.join(map(str, idx))}]"
            p(f"  {label:<16}{ours:>+16.9f}{fd:>+16.9f}{abs(ours - fd):>14.1e}")
    lib = m.gradients(X.reshape(T, 1, D), Y_STAR.reshape(T, 1, 1)).params
    agree = max(float(np.abs(lib[k] - grads[k]).max()) for k in grads)
    p(f"  largest |recursion − finite difference| = {worst:.1e} (eps = {eps:g})")
    p(f"  largest |recursion − Model.gradients|   = {agree:.1e}")
