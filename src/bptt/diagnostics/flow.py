"""The gradient through time, measured: ``flow(model, x, targets)`` -> FlowReport.

One forward pass, one ordinary backward pass (for ∂L/∂W_h), then two passes of the
linearised steps (steps.py):

- the *credit pass* runs the backward recursion with one channel per loss L_t, all
  channels at once (channel t is born at step t): ∂L_t/∂h_k for every k <= t and every
  layer (D1), their sum ∂L/∂h_k (V1), and the split of ∂L/∂W_h by lag τ = t − k (D3),
  with the norm of each lag's part (D4);
- the *Jacobian pass* runs it from the identity at chosen steps t of one sequence,
  giving the matrices ∂s_t/∂s_k of the first layer (D2), s = h, or (h, c) for the LSTM,
  whose singular values are taken where the report samples them.

All in float64 (a float32 model is copied). Indices are 0-based array indices: row t of
``credit`` is the loss at x[t]. Shapes, with T steps, L layers:

    grad_norm (T, L)       ‖∂L/∂h_k‖ over batch and units     cell_grad_norm (T, L) LSTM's ‖∂L/∂c_k‖
                           (s_k = (h_k, c_k) the carried state: c_k reaches L through later steps)
    credit (T, T)          [t, k] = ‖∂L_t/∂h_k‖, 0 above the diagonal (first layer)
    credit_by_layer (L, T, T)
    jacobian_norm (T, T)   [t, k] = σ_max(∂s_t/∂s_k) of the first layer, NaN where not sampled,
                           inf where the product left the float64 range
    jacobian_singular (T, T, r)   its top r singular values
    lag_norm (T,)          [τ] = ‖G_τ‖ (Frobenius, D4), G_τ the part of G = ∂L/∂W_h (first layer)
                           that dependencies τ steps long supply, G = Σ_τ G_τ (D3): how much each
                           lag moves W_h, whatever its direction. ``lag_share()`` is its cumulative
                           share Σ_{τ'≤τ}‖G_τ'‖ / Σ_τ‖G_τ‖: in [0, 1], rising to 1
    lag_profile (T,)       [τ] = ⟨G_τ, G⟩ / ‖G‖ (D3), signed: G_τ's projection on the total's
                           direction; sums exactly to ‖G‖, but a lag whose G_τ pulls against the
                           total gives a negative term, so partial sums can be < 0 or > ‖G‖
    lag_by_layer (L, T)    lag_profile of every layer

The credit pass builds the G_τ of the first layer (for ``lag_norm``) in blocks of
steps, one GEMM per block; they take T·G·H² floats, or, beyond LAG_MEMORY bytes, the
lags are split into windows and the credit pass runs once more for each further window.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import _checks
from ..model import check_model
from ..cells import head as head_layer
from ..dropout import drawn_rate
from ..ops import ACTIVATIONS
from .steps import linearise

AUTO_ALL_BELOW = 32         # up to this T, every pair (t, k) is measured
AUTO_FLOPS = 6e10           # beyond it: as many target steps t as this many flops allow (2–16) ...
AUTO_SHORT_LAGS = 8         # ... with every lag up to this ...
AUTO_LONG_LAGS = 24         # ... and this many geometrically spaced longer lags
LAG_MEMORY = 1 << 30        # bytes for the G_τ (and their staging buffer) in one credit pass
LAG_BLOCK_ROWS = 128        # steps × batch rows gathered before one GEMM adds them to the G_τ ...
LAG_GEMM_COLUMNS = 16384    # ... taken this many columns at a time


@dataclasses.dataclass
class FlowReport:
    cell: str
    nonlinearity: str
    loss: float
    grad_norm: np.ndarray
    cell_grad_norm: np.ndarray | None
    credit: np.ndarray
    credit_by_layer: np.ndarray
    jacobian_norm: np.ndarray
    jacobian_singular: np.ndarray
    sigma_max: float
    gamma: float
    eta: float
    lag_norm: np.ndarray             # (T,) ‖G_τ‖ of the first layer
    lag_profile: np.ndarray          # (T,) ⟨G_τ, G⟩ / ‖G‖, signed
    lag_by_layer: np.ndarray
    weight_grad_norm: float          # ‖∂L/∂W_h‖ of the first layer
    lag_grads: np.ndarray | None     # (T, G·H, H) the G_τ themselves, when asked for
    sequence: int
    seconds: float
    valid: np.ndarray | None = None  # (T,) bool: the steps of ``sequence`` the mask keeps (None: all)
    zoneout: float = 0.0             # the rate p of zoneout's evaluation mix (N3), 0 without

    @property
    def T(self) -> int:
        return self.grad_norm.shape[0]

    def _per_step_bound(self):
        """p + (1 − p)·η, the bound (D5) on a valid step's ‖J_j‖, and (T + 1,): [n] = the
        valid steps of ``sequence`` before index n."""
        kept = np.ones(self.T, dtype=bool) if self.valid is None else self.valid
        return self.zoneout + (1 - self.zoneout) * self.eta, np.concatenate([[0], np.cumsum(kept)])   # (D5)

    def bound(self) -> np.ndarray:
        """(T, T): the bound (D5) on ‖∂s_t/∂s_k‖₂ of ``sequence`` below the diagonal, NaN
        above it: η^(t−k) (V4), with each step's factor p + (1 − p)·η under zoneout and 1
        on a padded step (its J_j = I, M3)."""
        per_step, before = self._per_step_bound()
        t, k = np.indices((self.T, self.T))
        with np.errstate(over="ignore"):
            return np.where(t >= k, per_step ** (before[t + 1] - before[k + 1]).astype(float), np.nan)

    def bound_by_lag(self) -> np.ndarray:
        """(T,): [τ] = the largest ``bound()`` of the pairs t − k = τ, so it bounds every
        ‖∂s_t/∂s_k‖₂ at lag τ; η^τ without masks and zoneout. plot_flow draws it."""
        per_step, before = self._per_step_bound()
        pick = np.max if per_step >= 1 else np.min               # the most or the fewest valid steps
        steps = [pick(before[tau + 1:] - before[1:self.T - tau + 1]) for tau in range(self.T)]
        with np.errstate(over="ignore"):
            return per_step ** np.array(steps, dtype=float)

    def measured_pairs(self):
        """(t, k, ‖∂s_t/∂s_k‖) for every pair the Jacobian pass sampled, k < t, and measured
        (not those whose product overflowed: inf in ``jacobian_norm``)."""
        t, k = np.nonzero(np.isfinite(self.jacobian_norm) & (np.tri(self.T, k=-1, dtype=bool)))
        return t, k, self.jacobian_norm[t, k]

    def lag_share(self) -> np.ndarray:
        """(T,): [τ] = Σ_{τ'≤τ} ‖G_τ'‖ / Σ_τ' ‖G_τ'‖, the share of the lag parts' magnitudes
        from lags up to τ: non-decreasing, in [0, 1], ending at 1 (all 0 when every G_τ = 0,
        NaN when a gradient is not finite)."""
        total = self.lag_norm.sum()
        if not np.isfinite(total):
            return np.full_like(self.lag_norm, np.nan)
        if total == 0:
            return np.zeros_like(self.lag_norm)
        share = np.cumsum(self.lag_norm) / total
        share[-1] = 1.0                       # the rounding of the cumulative sum, not a share
        return np.minimum(share, 1.0)

    def summary(self, long_lag: int = 10) -> dict:
        """The figures worth a table row.

        ``long_lag_share`` = Σ_{τ≥long_lag} ‖G_τ‖ / Σ_τ ‖G_τ‖ is in [0, 1].
        ``long_lag_signed_projection`` = Σ_{τ≥long_lag} profile[τ] / ‖G‖
        = ⟨Σ_{τ≥long_lag} G_τ, G⟩ / ‖G‖² is signed: below 0 when the long lags pull W_h against the total, above 1 when the
        short ones do.
        """
        if isinstance(long_lag, bool) or not isinstance(long_lag, (int, np.integer)) or long_lag < 0:
            raise ValueError(f"long_lag: expected a lag in steps, an integer >= 0, got {long_lag!r}")
        g = self.grad_norm[:, 0]
        t, k, norms = self.measured_pairs()
        lags = t - k
        rate = float(np.exp(np.sum(np.log(np.maximum(norms, 1e-300)) * lags) / np.sum(lags ** 2))) \
            if lags.size else None                       # one step: no pair to fit a rate to
        above = float(np.mean(norms > self.bound()[t, k] * (1 + 1e-9))) if lags.size else 0.0
        total = self.lag_profile.sum()
        magnitude = self.lag_norm.sum()
        return {
            "cell": self.cell if self.cell != "rnn" else f"rnn-{self.nonlinearity}",
            "loss": self.loss,
            "sigma_max": self.sigma_max,
            "eta": self.eta,
            "jacobian_rate": rate,         # per-step factor fitted to log‖∂s_t/∂s_k‖ ≈ τ log(rate), or None
            "above_bound": above,          # share of measured pairs with ‖∂s_t/∂s_k‖ > bound() (D5)
            "grad_first_over_last": float(g[0] / g[-1]) if g[-1] > 0 else float("inf"),
            "long_lag_share": float(self.lag_norm[long_lag:].sum() / magnitude) if magnitude else 0.0,
            "long_lag_signed_projection": float(self.lag_profile[long_lag:].sum() / total) if total else 0.0,
            "seconds": self.seconds,
        }


def _norm(a, axis=None):
    """‖a‖₂ over ``axis`` (every axis by default), a divided by max|a| before it is squared:
    squares overflow past 1e154 and underflow below 1e-154, where the gradients of networks
    that explode or vanish over long sequences lie (np.linalg.norm squares a as it is)."""
    scale = np.max(np.abs(a), axis=axis, keepdims=True)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return np.sqrt(np.sum((a / scale) ** 2, axis=axis)) * np.squeeze(scale, axis=axis)


def _targets_and_lags(T, S, jacobian_steps, jacobian_lags):
    if jacobian_steps is None:
        n = int(np.clip(AUTO_FLOPS // (T * 2 * S ** 3), 2, 16))      # a target's sweep: T products S×S
        steps = np.arange(T) if T <= AUTO_ALL_BELOW else np.unique(np.linspace(T - 1, 0, n, endpoint=False).round())
    elif isinstance(jacobian_steps, str) and jacobian_steps == "all":
        steps = np.arange(T)
    else:
        steps = np.asarray(jacobian_steps)
        steps = steps.astype(int) if isinstance(jacobian_steps, (list, tuple)) and steps.size == 0 else steps
        if steps.ndim != 1 or steps.dtype.kind not in "iu" or (steps.size and (steps.min() < 0 or steps.max() >= T)):
            raise ValueError(f"jacobian_steps: expected 'all' or integer steps in [0, {T}), got {jacobian_steps!r}")
    if jacobian_lags is None:
        if T <= AUTO_ALL_BELOW:
            lags = np.arange(T)
        else:
            long = np.geomspace(AUTO_SHORT_LAGS + 1, T - 1, AUTO_LONG_LAGS).round() if T - 1 > AUTO_SHORT_LAGS else []
            lags = np.unique(np.concatenate([np.arange(AUTO_SHORT_LAGS + 1), long]))
    elif isinstance(jacobian_lags, str) and jacobian_lags == "all":
        lags = np.arange(T)
    else:
        lags = np.asarray(jacobian_lags)
        lags = lags.astype(int) if isinstance(jacobian_lags, (list, tuple)) and lags.size == 0 else lags
        if lags.ndim != 1 or lags.dtype.kind not in "iu" or (lags.size and (lags.min() < 0 or lags.max() >= T)):
            raise ValueError(f"jacobian_lags: expected 'all' or integer lags in [0, {T}) (a lag spans at most the "
                             f"sequence), got {jacobian_lags!r}")
    return np.sort(steps.astype(int))[::-1], set(lags.astype(int).tolist())


def flow(model, x, targets, state0=None, mask=None, *, jacobian_steps=None, jacobian_lags=None,
         sequence=0, n_singular=4, lag_grads=False) -> FlowReport:
    """Measure how the gradient of ``model``'s loss on (x, targets) flows back through time.

    Args:
        model, x, targets, state0, mask: as for ``Model.gradients`` (targets required).
        jacobian_steps: the steps t whose products ∂s_t/∂s_k are formed: None (every step
            up to T = 32; beyond, 2 to 16 spread over the sequence, the last included, as
            many as about 6e10 flops allow), "all", or a list of step indices (empty: none
            formed, ``jacobian_norm`` all NaN).
        jacobian_lags: which k = t − τ to take singular values at: None (every lag up to
            T = 32, else lags 0–8 and 24 geometrically spaced up to T − 1), "all", or a list.
        sequence: the batch index whose Jacobians are formed (they are per sequence).
        n_singular: how many of the largest singular values to keep.
        lag_grads: also keep the (T, G·H, H) matrices G_τ of the first layer (memory T·G·H²,
            in one credit pass whatever LAG_MEMORY says).
    """
    start = time.perf_counter()
    check_model(model)
    if model.bidirectional or model.proj_size:
        raise ValueError("model: the flow report follows one direction's unprojected state back through time; "
                         f"got bidirectional={model.bidirectional}, proj_size={model.proj_size}")
    m = model if model.dtype == np.float64 else model.astype("float64")
    if targets is None:
        raise ValueError("targets: the flow report needs targets (a loss to take the gradient of), got None")
    x, mask, _ = model._check_inputs(x, mask, carried=state0 is not None)   # against the caller's dtype
    T, B, _ = x.shape
    targets = model._check_targets(targets, T, B)
    s0 = [tuple(a.astype(np.float64) for a in s) for s in model._split_state(state0, B)]
    x = x.astype(np.float64)
    if targets.dtype.kind == "f":
        targets = targets.astype(np.float64)
    if isinstance(sequence, bool) or not isinstance(sequence, (int, np.integer)) or not 0 <= sequence < B:
        raise ValueError(f"sequence: expected a batch index in [0, {B}), got {sequence!r}")
    sequence = int(sequence)
    n_singular = _checks.positive_int("n_singular", n_singular)
    lag_grads = _checks.flag("lag_grads", lag_grads)
    S = model.hidden_size * len(model.layer.STATE)
    steps, lag_set = _targets_and_lags(T, S, jacobian_steps, jacobian_lags)

    fw = m._forward(x, s0, mask)
    rows = m._head_rows(fw)
    loss, do = m._loss(rows, targets, mask, T, B)
    e, _ = head_layer.backward(m.head_params(), do, rows)            # (H7), (T·B, H) or (B, H)
    weight_grads = m.gradients(x, targets, m._join_state(s0), mask, input_grad=False).params
    lin = [linearise(m, m.layer_params(l), tape) for l, tape in enumerate(fw.tapes)]

    GH, H = weight_grads["layer0.W_h"].shape
    block = max(1, LAG_BLOCK_ROWS // B)                               # steps per GEMM into the G_τ
    width = T if lag_grads else int(np.clip(LAG_MEMORY // (8 * GH * (H + block * B)), 1, T))
    credit, gnorm, cnorm, lag, lagmats = _credit_pass(m, lin, e, weight_grads, T, B, (0, width), block)
    norms = [[_norm(g) for g in lagmats]]
    for lo in range(width, T, width):           # beyond LAG_MEMORY: the further lags, one window a pass
        further = _credit_pass(m, lin, e, weight_grads, T, B, (lo, min(lo + width, T)), block)[-1]
        norms.append([_norm(g) for g in further])
    lag_norm = np.concatenate(norms)
    jnorm, jsing = _jacobian_pass(lin[0].select(sequence), steps, lag_set, n_singular, T, m.hidden_size)

    W_h = m.params["layer0.W_h"]
    sigma_max = float(np.linalg.norm(W_h, 2))
    gamma = ACTIVATIONS[m.nonlinearity].gamma if m.cell == "rnn" else 1.0
    return FlowReport(
        cell=m.cell if isinstance(m.cell, str) else m.cell_name,       # a Cell object: its name
        nonlinearity=m.nonlinearity, loss=float(loss),
        grad_norm=gnorm, cell_grad_norm=cnorm if m.cell == "lstm" else None,
        credit=credit[0], credit_by_layer=credit,
        jacobian_norm=jnorm, jacobian_singular=jsing,
        sigma_max=sigma_max, gamma=gamma, eta=gamma * sigma_max,
        lag_norm=lag_norm, lag_profile=lag[0], lag_by_layer=lag,
        weight_grad_norm=float(_norm(weight_grads["layer0.W_h"])),
        lag_grads=np.ascontiguousarray(lagmats) if lag_grads else None, sequence=sequence,
        seconds=time.perf_counter() - start, valid=None if mask is None else mask[:, sequence].copy(),
        zoneout=drawn_rate(m.zoneout))


def _credit_pass(m, lin, e, weight_grads, T, B, window, rows):
    """Backward with one channel per loss L_t (D1), all layers, all steps; lag split (D3).

    Also the G_τ of the first layer for the lags τ in ``window`` = [lo, hi), shape
    (hi − lo, G·H, H), a view of an (H, (hi − lo)·G·H) array: the δ rows of ``rows``
    consecutive steps are staged by lag, then one GEMM (inner size rows·B) adds
    Σ_k δ_k^{(k+τ)} h_{k−1}ᵀ of the whole block to every G_τ it touches (D3).
    """
    L, H = m.num_layers, m.hidden_size
    every_step = m.outputs == "all"
    C = T if every_step else 1
    source = np.arange(T) if every_step else np.array([T - 1])
    ds = [[np.zeros((C, B, H)) for _ in lin[0].state] for _ in range(L)]
    if every_step:
        e = e.reshape(T, B, H)
    else:
        ds[-1][0][0] = e                                 # the last row enters as dstate_T[h]
    credit = np.zeros((L, T, T))
    gnorm = np.zeros((T, L))
    cnorm = np.zeros((T, L))
    lag = np.zeros((L, T))
    G = [weight_grads[f"layer{l}.W_h"] for l in range(L)]
    G_unit = [g / max(_norm(g), np.finfo(np.float64).smallest_subnormal) for g in G]     # 0 where G = 0
    lo, hi = window
    GH, n = G[0].shape[0], window[1] - window[0]
    lag_t = np.zeros((H, n * GH))                        # [:, (τ − lo)·GH + g] = G_τ[g, :]
    staged = np.zeros((rows * B, n * GH))                # [j·B + b, (τ − lo)·GH + g] = δ_k^{(k+τ)}[b, g],
                                                         # k = top − j
    by_lag = staged.reshape(rows, B, n, GH)
    h_rows = np.zeros((rows * B, H))                     # [j·B + b] = h_{k−1}[b] of the same step
    top, touched = T - 1, [hi, lo]                       # the block's first step; its lags' range
    for k in range(T - 1, -1, -1):
        act = slice(k, T) if every_step else slice(0, 1)
        src = source[act]
        from_above = None
        for l in range(L - 1, -1, -1):
            dh = ds[l][0]
            if l == L - 1:
                if every_step:
                    dh[k] += e[k]                        # (H7): L_k reaches h_k directly
            else:
                dh[act] += from_above                    # (R8), (L11), (G11) from the layer above
            delta, prev, total, from_above = lin[l].vjp(k, tuple(d[act] for d in ds[l]), need_dx=l > 0)
            credit[l, src, k] = _norm(total[0], axis=(1, 2))                          # (D1)
            gnorm[k, l] = _norm(total[0].sum(axis=0))                                # (V1)
            if len(total) > 1:
                cnorm[k, l] = _norm(total[1].sum(axis=0))
            u = lin[l].h_in[k] @ G_unit[l].T                                         # (B, G·H)
            lag[l, src - k] += np.einsum("cbg,bg->c", delta, u)                      # (D3)
            if l == 0:
                j = top - k
                first = src[0] - k                       # channel c has lag first + c, in order
                c0, c1 = max(lo - first, 0), min(hi - first, len(src))
                if c0 < c1:
                    by_lag[j, :, first + c0 - lo:first + c1 - lo] = delta[c0:c1].transpose(1, 0, 2)
                    touched = [min(touched[0], first + c0), max(touched[1], first + c1)]
                h_rows[j * B:(j + 1) * B] = lin[0].h_in[k]
                if j == rows - 1 or k == 0:              # (D4): the block into the G_τ it touches
                    hT = h_rows.T
                    for c in range((touched[0] - lo) * GH, (touched[1] - lo) * GH, LAG_GEMM_COLUMNS):
                        cols = slice(c, min(c + LAG_GEMM_COLUMNS, (touched[1] - lo) * GH))
                        lag_t[:, cols] += hT @ staged[:, cols]
                        staged[:, cols] = 0
                    top, touched = k - 1, [hi, lo]
                    h_rows[:] = 0
            for d, p in zip(ds[l], prev):
                d[act] = p
    return credit, gnorm, cnorm, lag, lag_t.reshape(H, n, GH).transpose(1, 2, 0)


def _jacobian_pass(lin, steps, lag_set, r, T, H):
    """∂s_t/∂s_k from the identity at each target t (D2).

    Step k's Jacobian J_k = ∂s_k/∂s_{k-1} is formed once, as the vjp of the S unit rows;
    then one GEMM moves the rows of every product still open, M ← M J_k.
    """
    n_state = len(lin.state)
    S = n_state * H
    r = min(r, S)
    jnorm = np.full((T, T), np.nan)
    jsing = np.full((T, T, r), np.nan)
    for t in steps:
        if 0 in lag_set:
            jnorm[t, t] = 1.0                                 # ∂s_t/∂s_t = I
            jsing[t, t] = 1.0
    if steps.size == 0:
        return jnorm, jsing
    eye = np.eye(S)
    unit_rows = tuple(eye[:, i * H:(i + 1) * H][:, None, :] for i in range(n_state))   # (S, 1, H) each
    M = np.tile(eye, (len(steps), 1))                         # block j: ∂s_{t_j}/∂s_k, (S, S)
    pending = []
    for k in range(int(steps[0]), 0, -1):
        active = int(np.searchsorted(-steps, -k, side="right"))   # steps sorted descending: t >= k
        _, prev, _, _ = lin.vjp(k, unit_rows, need_dx=False)
        J = np.concatenate([p[:, 0] for p in prev], axis=1)   # (S, S) = ∂s_k/∂s_{k-1}      (D2)
        M[:active * S] = M[:active * S] @ J                   # now w.r.t. s_{k-1}
        for j in range(active):
            t = int(steps[j])
            if t - (k - 1) in lag_set:
                pending.append((t, k - 1, M[j * S:(j + 1) * S].copy()))
        if len(pending) >= 64 or k == 1:
            _singular(pending, jnorm, jsing, r)
            pending = []
    return jnorm, jsing


def _singular(pending, jnorm, jsing, r):
    """The top r singular values of each product. One that left the float64 range (a network
    that explodes, at long lags) has σ_max = inf and the others unknown (NaN): LAPACK's SVD
    does not converge on it."""
    if not pending:
        return
    products = np.stack([p[2] for p in pending])
    finite = np.isfinite(products).all(axis=(1, 2))
    sv = np.full((len(pending), r), np.nan)
    if finite.any():
        sv[finite] = np.linalg.svd(products[finite], compute_uv=False)[:, :r]
    sv[~finite, 0] = np.inf
    for (t, k, _), s in zip(pending, sv):
        jnorm[t, k] = s[0]
        jsing[t, k] = s
