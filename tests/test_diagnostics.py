"""The flow report against independent references: the layers' own backward, finite
differences of the forward pass, the PMB bound (V4) and the weight gradient itself."""
import re
import sys

import numpy as np
import pytest

import bptt
from bptt.diagnostics import flow
from bptt.diagnostics.plots import plot_clipping, plot_flow
from bptt.train.explosion import clipping_study

from helpers import make_model, make_state, ragged_mask

CELLS = ["rnn", "lstm", "gru"]


def _h(state):
    return state[0] if isinstance(state, tuple) else state


def _data(m, T, B, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, m.input_size))
    y = rng.standard_normal((T, B, m.output_size)) if m.outputs == "all" else rng.standard_normal((B, m.output_size))
    return x, y, make_state(m, B, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_credit_rows_and_grad_norm_equal_the_backward_pass_per_step(cell):
    """credit[t, k] = ‖∂L_t/∂h_k‖ from the layer's own backward over the chunk after step k,
    with only step t's loss counted; grad_norm[k] likewise with every loss."""
    m = make_model(cell, D=3, H=4, O=2)
    T, B = 7, 3
    x, y, s0 = _data(m, T, B)
    mask = ragged_mask(T, [7, 5, 6])
    N = int(mask.sum())
    r = flow(m, x, y, s0, mask)
    pred, _ = m.forward(x, s0, mask)
    e = (2 * (pred - y) / (N * m.output_size) * mask[:, :, None]) @ m.params["head.W_y"]   # (C2), (H7)
    assert np.allclose(np.diag(r.credit), np.linalg.norm(e, axis=(1, 2)), rtol=1e-12, atol=0)
    for k in range(T - 1):
        s_k = m.advance(x[:k + 1], s0, mask[:k + 1])
        rest = dict(state0=s_k, mask=mask[k + 1:], loss_count=N)
        total = _h(m.gradients(x[k + 1:], y[k + 1:], **rest).state0)[0] + e[k]
        assert r.grad_norm[k, 0] == pytest.approx(np.linalg.norm(total), rel=1e-10)
        for t in range(k + 1, T):
            only_t = np.zeros((T - k - 1, B), dtype=bool)
            only_t[t - k - 1] = True
            dh = _h(m.gradients(x[k + 1:], y[k + 1:], loss_mask=only_t, **rest).state0)[0]
            assert r.credit[t, k] == pytest.approx(np.linalg.norm(dh), rel=1e-10, abs=1e-15)
    assert np.all(np.triu(r.credit, 1) == 0)


@pytest.mark.parametrize("options", [{}, {"layer_norm": True}, {"zoneout": 0.25}])
def test_cell_grad_norm_is_the_gradient_reaching_the_carried_c_in_every_lstm(options):
    """‖∂L/∂c_k‖ = ‖dstate0[c]‖ of the model's own backward over the steps after k from s_k
    (L9), every layer, with steps padded first, inside and last. The built-in LSTM's report
    took dc of (L6) instead (h_k's own path added, 0 on a padded row), unlike the layer-norm
    and zoneout LSTMs."""
    m = make_model("lstm", layers=2, D=3, H=4, O=2, **options)
    T, B = 7, 3
    x, y, s0 = _data(m, T, B, seed=3)
    mask = np.ones((T, B), dtype=bool)
    mask[[0, 1], 1] = False
    mask[[3, 6], 2] = False
    N = int(mask.sum())
    r = flow(m, x, y, s0, mask)
    want = np.zeros((T, 2))
    for k in range(T - 1):
        s_k = m.advance(x[:k + 1], s0, mask[:k + 1])
        dc = m.gradients(x[k + 1:], y[k + 1:], s_k, mask[k + 1:], loss_count=N).state0[1]
        want[k] = np.linalg.norm(dc, axis=(1, 2))
    assert np.allclose(r.cell_grad_norm, want, rtol=1e-10, atol=1e-15)


def test_top_layer_credit_of_a_stack_equals_the_backward_pass():
    m = make_model("gru", layers=2, D=2, H=3, O=2)
    T, B = 6, 2
    x, y, s0 = _data(m, T, B, seed=1)
    r = flow(m, x, y, s0)
    for k in range(T - 1):
        s_k = m.advance(x[:k + 1], s0)
        for t in range(k + 1, T):
            only_t = np.zeros((T - k - 1, B), dtype=bool)
            only_t[t - k - 1] = True
            g = m.gradients(x[k + 1:], y[k + 1:], s_k, loss_mask=only_t, loss_count=T * B)
            assert r.credit_by_layer[1, t, k] == pytest.approx(np.linalg.norm(g.state0[1]), rel=1e-10)


@pytest.mark.parametrize("cell,nonlinearity", [("rnn", "tanh"), ("rnn", "sigmoid"), ("rnn", "relu"),
                                               ("lstm", "tanh"), ("gru", "tanh")])
def test_jacobian_products_match_finite_differences(cell, nonlinearity):
    """Every singular value of ∂s_t/∂s_k (joint (h, c) for the LSTM), sequence 1 padded."""
    m = make_model(cell, nonlinearity, D=2, H=3, O=1)
    T, B, b = 6, 2, 1
    x, y, s0 = _data(m, T, B, seed=2)
    mask = ragged_mask(T, [6, 4])
    n_state = 2 if cell == "lstm" else 1
    S = n_state * m.hidden_size
    r = flow(m, x, y, s0, mask, sequence=b, n_singular=S)

    def joint(state):
        parts = state if isinstance(state, tuple) else (state,)
        return np.concatenate([p[0, b] for p in parts])

    def with_joint(state, v):
        parts = [p.copy() for p in (state if isinstance(state, tuple) else (state,))]
        for i, p in enumerate(parts):
            p[0, b] = v[i * m.hidden_size:(i + 1) * m.hidden_size]
        return tuple(parts) if isinstance(state, tuple) else parts[0]

    eps = 1e-6
    checked = 0
    for k in range(T - 1):
        s_k = m.advance(x[:k + 1], s0, mask[:k + 1])
        v0 = joint(s_k)
        for t in range(k + 1, T):
            J = np.empty((S, S))
            for j in range(S):
                d = np.zeros(S)
                d[j] = eps
                plus = joint(m.advance(x[k + 1:t + 1], with_joint(s_k, v0 + d), mask[k + 1:t + 1]))
                minus = joint(m.advance(x[k + 1:t + 1], with_joint(s_k, v0 - d), mask[k + 1:t + 1]))
                J[:, j] = (plus - minus) / (2 * eps)
            sv = np.linalg.svd(J, compute_uv=False)
            assert np.allclose(r.jacobian_singular[t, k], sv, rtol=1e-6, atol=1e-9), (t, k)
            assert r.jacobian_norm[t, k] == pytest.approx(sv[0], rel=1e-6)
            checked += 1
    assert checked == T * (T - 1) // 2
    # the padded steps of sequence 1 (after step 4) are the identity
    assert np.allclose(r.jacobian_singular[5, 4], 1.0)


@pytest.mark.parametrize("nonlinearity,gamma", [("tanh", 1.0), ("sigmoid", 0.25)])
def test_products_stay_under_the_pmb_bound_when_eta_is_below_one(nonlinearity, gamma):
    m = bptt.Model("rnn", 3, 16, 2, nonlinearity=nonlinearity, dtype="float64", seed=1)
    W_h = m.params["layer0.W_h"]
    W_h *= 0.9 / (gamma * np.linalg.norm(W_h, 2))              # σ_max(W_h) = 0.9 / γ
    m.params["layer0.b_h"][:] = 0
    T, B = 40, 2
    rng = np.random.default_rng(3)
    x = 0.05 * rng.standard_normal((T, B, 3))                  # f' near its maximum γ: a tight test
    y = rng.standard_normal((T, B, 2))
    r = flow(m, x, y, jacobian_steps="all", jacobian_lags="all")
    assert r.gamma == gamma and r.eta == pytest.approx(0.9, rel=1e-12)
    t, k, norms = r.measured_pairs()
    assert norms.size == T * (T - 1) // 2
    lags = t - k
    assert np.all(norms <= 0.9 ** lags * (1 + 1e-12))           # (V4)
    assert norms[lags == 1].min() > 0.8 * 0.9                   # the bound is nearly reached
    assert r.summary()["above_bound"] == 0.0


def test_the_bound_counts_padded_steps_as_the_identity_and_zoneout_as_its_mix():
    """W_h = 0.5 I, identity f, zoneout 0.25: a valid step's J_j is 0.625 I, a padded one's I
    (M3), so ∂s_t/∂s_k = 0.625^n I with n the valid steps in (k, t] (D5). η^(t−k) = 0.5^(t−k)
    lies below every pair: above_bound was 1.0. A tanh RNN with random weights stays under."""
    m = bptt.Model("rnn", 2, 3, 1, nonlinearity="identity", zoneout=0.25, dtype="float64", seed=0)
    m.params["layer0.W_h"][:] = 0.5 * np.eye(3)
    T, B = 9, 2
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((T, B, 2)), rng.standard_normal((T, B, 1))
    mask = np.ones((T, B), dtype=bool)
    mask[[0, 3, 4, 8], 1] = False                                  # padded first, inside and last
    r = flow(m, x, y, None, mask, sequence=1)
    t, k, norms = r.measured_pairs()
    n = np.array([mask[kk + 1:tt + 1, 1].sum() for tt, kk in zip(t, k)])
    assert np.allclose(norms, 0.625 ** n, rtol=1e-12, atol=0)
    assert np.allclose(r.bound()[t, k], 0.625 ** n, rtol=1e-12, atol=0)
    assert r.summary()["above_bound"] == 0.0 and np.all(norms > 0.5 ** (t - k))
    by_lag = r.bound_by_lag()
    assert np.allclose([norms[t - k == tau].max() for tau in range(1, T)], by_lag[1:], rtol=1e-12)

    m = bptt.Model("rnn", 2, 8, 1, zoneout=0.25, dtype="float64", seed=1)
    m.params["layer0.W_h"][:] *= 0.05 / np.linalg.norm(m.params["layer0.W_h"], 2)      # η = 0.05
    r = flow(m, x, y, None, mask, sequence=1)
    t, k, norms = r.measured_pairs()
    assert np.all(norms <= r.bound()[t, k] * (1 + 1e-12)) and r.summary()["above_bound"] == 0.0
    assert np.all(norms <= r.bound_by_lag()[t - k] * (1 + 1e-12))


@pytest.mark.parametrize("cell", CELLS)
def test_lag_profile_sums_to_the_weight_gradient(cell):
    m = make_model(cell, layers=2, D=3, H=4, O=2)
    T, B = 9, 3
    x, y, s0 = _data(m, T, B, seed=4)
    mask = ragged_mask(T, [9, 4, 7])
    r = flow(m, x, y, s0, mask, lag_grads=True)
    g = m.gradients(x, y, s0, mask).params
    G = g["layer0.W_h"]
    assert np.abs(r.lag_grads.sum(axis=0) - G).max() <= 1e-12 * np.abs(G).max()     # (D3)
    assert r.lag_profile.sum() == pytest.approx(np.linalg.norm(G), rel=1e-12)
    assert r.lag_by_layer[1].sum() == pytest.approx(np.linalg.norm(g["layer1.W_h"]), rel=1e-12)
    assert np.allclose(r.lag_profile, [np.vdot(Gt, G) / np.linalg.norm(G) for Gt in r.lag_grads])
    assert r.lag_grads[0].any() and r.lag_grads[T - 1].any()   # lag 0 and the longest lag both contribute


@pytest.mark.parametrize("options", [dict(cell="lstm", layer_norm=True), dict(cell="gru", layer_norm=True),
                                     dict(cell="rnn", zoneout=0.3), dict(cell="lstm", zoneout=0.3),
                                     dict(cell="gru", layer_norm=True, zoneout=0.2)])
def test_layer_norm_and_zoneout_are_measured_with_their_own_equations(options):
    """The report linearised layer norm's and zoneout's layers as the plain cells' (‖∂s_11/∂s_0‖
    0.0104 where finite differences give 0.383; Σ lag_profile 0.0019 for ‖∂L/∂W_h‖ 0.354)."""
    m = make_model(layers=2, D=3, H=4, O=2, **options)
    T, B = 8, 3
    x, y, s0 = _data(m, T, B, seed=5)
    mask = ragged_mask(T, [8, 5, 7])
    r = flow(m, x, y, s0, mask)
    g = m.gradients(x, y, s0, mask).params
    assert r.lag_profile.sum() == pytest.approx(np.linalg.norm(g["layer0.W_h"]), rel=1e-12)
    assert r.lag_by_layer[1].sum() == pytest.approx(np.linalg.norm(g["layer1.W_h"]), rel=1e-12)
    b, eps = 0, 1e-6                                     # ‖∂s_7/∂s_0‖ of layer 0 by central differences
    first = m.advance(x[:1, b:b + 1], None if s0 is None else _select(s0, b))
    parts = first if isinstance(first, tuple) else (first,)
    H, v0 = m.hidden_size, np.concatenate([p[0, 0] for p in parts])
    J = np.empty((v0.size, v0.size))
    for j in range(v0.size):
        cols = []
        for sign in (1, -1):
            v = v0.copy()
            v[j] += sign * eps
            state = _with_layer0(first, v, H)
            out = m.advance(x[1:, b:b + 1], state)
            cols.append(np.concatenate([p[0, 0] for p in (out if isinstance(out, tuple) else (out,))]))
        J[:, j] = (cols[0] - cols[1]) / (2 * eps)
    one = flow(m, x[:, b:b + 1], y[:, b:b + 1], None if s0 is None else _select(s0, b))
    assert one.jacobian_norm[T - 1, 0] == pytest.approx(np.linalg.svd(J, compute_uv=False)[0], rel=1e-5)


def _select(state, b):
    return tuple(s[:, b:b + 1] for s in state) if isinstance(state, tuple) else state[:, b:b + 1]


def _with_layer0(state, v, H):
    parts = [p.copy() for p in (state if isinstance(state, tuple) else (state,))]
    for i, p in enumerate(parts):
        p[0, 0] = v[i * H:(i + 1) * H]
    return tuple(parts) if isinstance(state, tuple) else parts[0]


@pytest.mark.parametrize("cell,outputs", [("rnn", "all"), ("lstm", "all"), ("gru", "all"), ("lstm", "last")])
@pytest.mark.parametrize("block_rows,small_memory", [(None, False), (7, False), (None, True)])
def test_lag_norms_are_the_norms_of_the_lag_gradients_and_their_share_is_a_fraction(
        cell, outputs, block_rows, small_memory, monkeypatch):
    """lag_norm[τ] = ‖G_τ‖ of the G_τ themselves (one pass, blocks of 2 steps, or windows of
    lags in further passes), lag_share() rises from ‖G_0‖/Σ to exactly 1, long_lag_share is
    Σ_{τ≥10}‖G_τ‖ / Σ_τ‖G_τ‖; the signed profile still sums to ‖G‖."""
    module = sys.modules["bptt.diagnostics.flow"]
    m = make_model(cell, layers=2, D=3, H=4, O=2, outputs=outputs)
    T, B = 23, 3
    x, y, s0 = _data(m, T, B, seed=8)
    mask = ragged_mask(T, [23, 17, 20])
    ref = flow(m, x, y, s0, mask, lag_grads=True)
    G = m.gradients(x, y, s0, mask).params["layer0.W_h"]
    norms = np.linalg.norm(ref.lag_grads.reshape(T, -1), axis=1)
    if block_rows is not None:
        monkeypatch.setattr(module, "LAG_BLOCK_ROWS", block_rows)          # 2 steps a block, the last one short
    if small_memory:
        per_lag = 8 * G.shape[0] * (G.shape[1] + (module.LAG_BLOCK_ROWS // B) * B)
        monkeypatch.setattr(module, "LAG_MEMORY", 4 * per_lag)             # 4 lags a pass: 6 passes
    r = flow(m, x, y, s0, mask, lag_grads=block_rows is not None)
    if r.lag_grads is not None:
        assert np.abs(r.lag_grads.sum(axis=0) - G).max() <= 1e-12 * np.abs(G).max()      # (D3)
    assert np.allclose(r.lag_norm, norms, rtol=1e-12, atol=1e-15 * norms.max())
    assert np.all(norms > 0)                                     # every lag, the longest included, contributes
    assert r.lag_profile.sum() == pytest.approx(np.linalg.norm(G), rel=1e-12)
    share = r.lag_share()
    assert np.all(np.diff(share) >= 0) and np.all((share >= 0) & (share <= 1))
    assert abs(share[-1] - 1) <= 1e-12 and share[0] == pytest.approx(norms[0] / norms.sum(), rel=1e-12)
    s = r.summary()
    assert s["long_lag_share"] == pytest.approx(norms[10:].sum() / norms.sum(), rel=1e-12)
    assert 0 < s["long_lag_share"] < 1
    assert s["long_lag_signed_projection"] == pytest.approx(np.vdot(ref.lag_grads[10:].sum(axis=0), G) / np.vdot(G, G),
                                                            rel=1e-9, abs=1e-15)


def test_the_signed_profile_can_leave_zero_one_where_the_magnitude_share_cannot():
    """The report's case: lags pulling against the total make the signed long-lag share
    negative; the magnitude share stays a fraction."""
    m = bptt.Model("rnn", 3, 5, 2, num_layers=2, dtype="float64", seed=1)
    rng = np.random.default_rng(0)
    T, B = 23, 3
    r = flow(m, rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2)), lag_grads=True)
    s = r.summary()
    assert s["long_lag_signed_projection"] < 0 < s["long_lag_share"] < 1
    signed = np.cumsum(r.lag_profile) / r.lag_profile.sum()
    assert signed.max() > 1                                      # the old panel (c) passed 1
    assert r.lag_share().max() == 1.0


def test_outputs_last_has_one_loss_row_and_float32_models_are_measured_in_float64():
    m32 = bptt.Model("lstm", 2, 8, 1, outputs="last", dtype="float32", seed=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 2, 2)).astype(np.float32)
    y = rng.standard_normal((2, 1)).astype(np.float32)
    r = flow(m32, x, y)
    assert np.all(r.credit[:-1] == 0)
    assert np.allclose(r.credit[-1], r.grad_norm[:, 0], rtol=1e-12)
    assert r.cell_grad_norm.shape == (30, 1) and np.all(r.cell_grad_norm[:-1] > 0)
    assert r.cell_grad_norm[-1, 0] == 0               # the head reads h_T alone
    r64 = flow(m32.astype("float64"), x.astype(np.float64), y.astype(np.float64))
    assert np.array_equal(r.credit, r64.credit)
    assert np.array_equal(r.jacobian_norm, r64.jacobian_norm, equal_nan=True)


def test_long_sequences_sample_pairs_and_keep_the_shapes():
    m = bptt.Model("rnn", 2, 8, 1, outputs="last", seed=0)
    rng = np.random.default_rng(6)
    T = 200
    r = flow(m, rng.standard_normal((T, 1, 2)).astype(np.float32), np.zeros((1, 1), np.float32))
    assert r.credit.shape == r.jacobian_norm.shape == (T, T) and r.lag_profile.shape == (T,)
    t, k, _ = r.measured_pairs()
    assert 100 < t.size < T * (T - 1) // 2
    assert (t - k).max() == T - 1                                # the longest lag is measured
    assert (T - 1) in set(t.tolist())


def test_flow_names_bad_arguments():
    m = make_model("rnn", D=2, H=3, O=1)
    x, y, _ = _data(m, 5, 2)
    with pytest.raises(ValueError, match="targets"):
        flow(m, x, None)
    with pytest.raises(ValueError, match="sequence"):
        flow(m, x, y, sequence=2)
    with pytest.raises(ValueError, match="jacobian_steps"):
        flow(m, x, y, jacobian_steps=[5])
    with pytest.raises(ValueError, match="jacobian_lags"):
        flow(m, x, y, jacobian_lags=[-1])
    with pytest.raises(ValueError, match=r"jacobian_lags: expected 'all' or integer lags in \[0, 5\)"):
        flow(m, x, y, jacobian_lags=[2, 5])                 # a lag of 5 steps never fits in 5 steps
    with pytest.raises(ValueError, match="n_singular"):
        flow(m, x, y, n_singular=0)
    with pytest.raises(ValueError, match="x"):
        flow(m, x[:, :, :1], y)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lag_grads="yes"), "lag_grads: expected True or False, got 'yes'"),
    (dict(lag_grads=1), "lag_grads: expected True or False, got 1"),
])
def test_flow_refuses_a_lag_grads_that_is_not_a_bool(kwargs, message):
    m = make_model("rnn", D=2, H=3, O=1)
    x, y, _ = _data(m, 5, 2)
    with pytest.raises(ValueError, match=f"^{message}$"):
        flow(m, x, y, **kwargs)


@pytest.mark.parametrize("long_lag", ["a", -1, 2.5, True, None])
def test_summary_refuses_a_long_lag_that_is_not_a_lag(long_lag):
    m = make_model("rnn", D=2, H=3, O=1)
    x, y, _ = _data(m, 5, 2)
    report = flow(m, x, y)
    with pytest.raises(ValueError, match=rf"^long_lag: expected a lag in steps, an integer >= 0, got {long_lag!r}$"):
        report.summary(long_lag=long_lag)
    assert report.summary(long_lag=0)["long_lag_share"] == 1.0


@pytest.mark.parametrize("kwargs", [dict(jacobian_steps=[]), dict(jacobian_lags=[]), dict(jacobian_steps=())])
def test_flow_with_no_jacobian_steps_or_lags_measures_no_products_and_the_rest_as_before(kwargs):
    m = make_model("lstm", D=2, H=3, O=1, dtype="float64")
    x, y, _ = _data(m, 6, 2)
    report, whole = flow(m, x, y, **kwargs), flow(m, x, y)
    assert np.isnan(report.jacobian_norm).all() and report.summary()["jacobian_rate"] is None
    assert np.array_equal(report.grad_norm, whole.grad_norm) and np.array_equal(report.lag_norm, whole.lag_norm)
    assert np.array_equal(report.credit, whole.credit) and np.isfinite(whole.jacobian_norm).any()


def test_clipping_keeps_an_exploding_network_trainable(tmp_path):
    study = clipping_study(cell="rnn", seq_len=50, hidden=32, gain=3.0, clip=1.0, updates=120, lr=0.05)
    plain, clipped = study.summary()
    assert plain["max_norm"] > 1e4 * clipped["median_norm"]           # unclipped: it explodes
    assert clipped["final_loss"] < 3 * study.baseline                # clipped: near the task's baseline
    assert plain["diverged_at"] is not None or plain["final_loss"] > 100 * clipped["final_loss"]
    path = plot_clipping(study, tmp_path / "clip.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs,message", [
    (dict(gain="3"), "gain: expected a positive number, got '3'"),
    (dict(clip=None), "clip: expected a positive number, got None"),
    (dict(gain=float("inf")), "gain: expected a positive number, got inf"),
    (dict(batch=0), "batch: expected a positive integer, got 0")])
def test_clipping_study_names_a_bad_argument(kwargs, message):
    """A gain or clip that is not a number raised numpy's TypeError (np.isfinite of a str or
    None), and batch=0 a shape error about x."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        clipping_study(updates=1, **kwargs)


def test_a_diverged_run_is_named_by_the_update_the_figure_would_draw_next():
    """The figure draws update u at x = u, from 1; the run diverged at the first update
    not drawn (the table printed one less, an update the figure shows as finite)."""
    study = clipping_study(seq_len=30, updates=120, lr=0.5)
    drawn = np.flatnonzero(np.isfinite(study.grad_norm[0])) + 1                # x of each point
    assert study.diverged_at[0] is not None and study.diverged_at[0] == drawn[-1] + 1 == drawn.size + 1
    assert study.summary()[0]["diverged_at"] == study.diverged_at[0]


def test_plot_flow_draws_mixed_reports(tmp_path):
    rng = np.random.default_rng(7)
    reports = {}
    for cell, outputs in (("rnn", "all"), ("lstm", "last")):
        m = bptt.Model(cell, 2, 6, 1, outputs=outputs, seed=0)
        y = np.zeros((12, 2, 1) if outputs == "all" else (2, 1), np.float32)
        reports[cell] = flow(m, rng.standard_normal((12, 2, 2)).astype(np.float32), y)
    path = plot_flow(reports, tmp_path / "flow.png", title="test")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="reports"):
        plot_flow({}, tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"^reports: expected a dict \{label: FlowReport\}, got list$"):
        plot_flow(list(reports.values()), tmp_path / "list.png")
    with pytest.raises(ValueError, match=r"^reports: expected a dict \{label: FlowReport\}, got "
                                         r"\{'rnn': FlowReport, 'lstm': dict\}$"):
        plot_flow({"rnn": reports["rnn"], "lstm": reports["lstm"].summary()}, tmp_path / "dict.png")
    assert not list(tmp_path.glob("list.png")) + list(tmp_path.glob("dict.png"))


@pytest.mark.parametrize("gain,x0", [(0.3, 1.0), (2.5, 1e-300)])
def test_gradient_norms_whose_squares_leave_the_float64_range_are_measured(gain, x0):
    """‖∂L/∂h_0‖ ≈ 0.3^399 ≈ 1e-209 (vanishing) and 2.5^399 ≈ 1e159 (exploding) are float64
    numbers, their squares are not: the report gave 0 and inf (np.linalg.norm squares as it
    goes), and ‖g₁‖/‖g_T‖ 0 at T = 1000 in `bptt flow`. Reference: math.hypot of the model's
    own ∂L/∂h_k, from s_k over the steps after k."""
    import math
    m = bptt.Model("rnn", 1, 3, 1, nonlinearity="identity", outputs="last", dtype="float64", seed=0)
    m.params["layer0.W_h"][:] = gain * np.eye(3)
    m.params["layer0.b_h"][:] = 0                    # h_t = gain^t W_x x_0: the state stays small
    T = 400
    x = np.zeros((T, 2, 1))
    x[0] = x0
    y = np.ones((2, 1))
    r = flow(m, x, y, jacobian_steps=[])
    for k in (0, 1, T // 2):
        dh = m.gradients(x[k + 1:], y, m.advance(x[:k + 1])).state0
        want = math.hypot(*dh.ravel())
        if k < T // 2:
            assert 0 < want < np.inf and not 1e-150 < want < 1e150      # its square leaves float64
        assert r.grad_norm[k, 0] == pytest.approx(want, rel=1e-12, abs=0)
        assert r.credit[T - 1, k] == pytest.approx(want, rel=1e-12, abs=0)


def test_a_jacobian_product_past_the_float64_range_is_inf_not_a_failed_svd(tmp_path):
    """W_h = 10·I: ∂h_t/∂h_k = 10^(t−k) I overflows past lag 308, and LAPACK's SVD of it
    raised LinAlgError ("SVD did not converge"), losing the whole report."""
    m = bptt.Model("rnn", 1, 3, 1, nonlinearity="identity", outputs="last", dtype="float64", seed=0)
    m.params["layer0.W_h"][:] = 10 * np.eye(3)
    m.params["layer0.b_h"][:] = 0
    T = 400
    x = np.zeros((T, 1, 1))
    x[0] = 1e-300                                     # h_T = 10^399 W_x x_0: finite
    with np.errstate(over="ignore", invalid="ignore"):   # ∂L/∂h_k overflows too, as it should
        r = flow(m, x, np.ones((1, 1)), jacobian_steps=[T - 1], jacobian_lags=[1, 100, 350])
    assert r.jacobian_norm[T - 1, [T - 2, T - 101]] == pytest.approx([10, 1e100], rel=1e-12)
    assert r.jacobian_norm[T - 1, T - 351] == np.inf and np.isnan(r.jacobian_singular[T - 1, T - 351, 1:]).all()
    t, k, _ = r.measured_pairs()
    assert sorted(t - k) == [1, 100] and r.summary()["jacobian_rate"] == pytest.approx(10, rel=1e-12)
    assert plot_flow({"exploding": r}, tmp_path / "flow.png").exists()


def test_plot_flow_draws_norms_up_to_the_float64_maximum(tmp_path):
    """W_h = 10·I over 300 steps: Jacobian products up to 1e290 and credit up to 1e298, all
    finite; matplotlib's log-axis ticks overflow past about 1e280, and flow.png (and with it
    `bptt flow`, before flow.json) failed with OverflowError."""
    m = bptt.Model("rnn", 1, 3, 1, nonlinearity="identity", dtype="float64", seed=0)
    m.params["layer0.W_h"][:] = 10 * np.eye(3)
    m.params["layer0.b_h"][:] = 0
    T = 300
    x = np.zeros((T, 1, 1))
    x[0] = 1e-300
    r = flow(m, x, np.ones((T, 1, 1)), jacobian_steps=[T - 1], jacobian_lags=[1, 290])
    assert r.jacobian_norm[T - 1, T - 291] == pytest.approx(1e290, rel=1e-12)
    assert np.isfinite(r.credit).all() and r.credit.max() > 1e280
    path = plot_flow({"exploding": r}, tmp_path / "flow.png")
    assert path.stat().st_size > 10_000


def test_a_cell_objects_report_names_it_and_its_summary_is_json():
    """FlowReport.cell held the Cell object itself, so json.dumps(report.summary()) raised
    TypeError; it is the cell's name."""
    import json
    from test_cell_protocol import GRUCell
    m = bptt.Model(GRUCell(), 2, 3, 1, dtype="float64", seed=0)
    x, y, _ = _data(m, 4, 2)
    r = flow(m, x, y)
    assert r.cell == m.cell_name == GRUCell.name and json.loads(json.dumps(r.summary()))["cell"] == GRUCell.name


def test_plot_flow_draws_every_report_past_the_colour_cycle(tmp_path, monkeypatch):
    """12 reports (e.g. 12 --run folders): the panels zipped them with matplotlib's 10
    colours, and the last two were not drawn."""
    import matplotlib.pyplot as plt
    m = make_model("rnn", D=2, H=3, O=1, outputs="last")
    x, y, _ = _data(m, 5, 2)
    report = flow(m, x, y)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_flow({f"run {i}": report for i in range(12)}, tmp_path / "flow.png")
    a, b, c = figures[0].axes[:3]
    assert len(a.get_lines()) == 12 and len(b.collections) == 12 and len(c.get_lines()) == 12 + 1   # + the line at 1
    assert len({tuple(line.get_color()) for line in a.get_lines()}) == 12


def test_plot_estimator_error_draws_errors_by_label_and_names_a_dict_by_method(tmp_path):
    from bptt.diagnostics.estimators import estimator_error
    from bptt.diagnostics.plots import plot_estimator_error
    m = bptt.Model("rnn", 2, 3, 1, dtype="float64", seed=0)
    errors = estimator_error(m, np.random.default_rng(0).standard_normal((6, 1, 2)), ["snap1", "uoro"], rng=0)
    path = plot_estimator_error({"rnn": errors}, tmp_path / "estimators.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"^errors: expected a dict \{label: \{method: \(T,\) errors\}\}, got "
                                         r"\{'snap1': ndarray, 'uoro': ndarray\}; hint: put estimator_error's dict "
                                         r"under a label, \{'model': errors\}$"):
        plot_estimator_error(errors, tmp_path / "flat.png")
    assert not (tmp_path / "flat.png").exists()


@pytest.mark.parametrize("cell,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
def test_jacobian_products_match_torch_autograd(cell, nonlinearity):
    """Every singular value of ∂s_t/∂s_k against torch.autograd.functional.jacobian of the
    same layer (interop.to_torch), s = (h, c) for the LSTM."""
    torch = pytest.importorskip("torch")
    from bptt.interop.torch import to_torch
    m = make_model(cell, nonlinearity, D=3, H=4, O=2)
    T = 7
    x, y, s0 = _data(m, T, 1, seed=5)
    S = (2 if cell == "lstm" else 1) * m.hidden_size
    r = flow(m, x, y, s0, n_singular=S, jacobian_steps="all", jacobian_lags="all")
    rnn, _ = to_torch(m)
    rnn = rnn.double()
    H = m.hidden_size
    xt = torch.tensor(x)
    for k in range(T - 1):
        s_k = m.advance(x[:k + 1], s0)
        start = np.concatenate([p[0, 0] for p in (s_k if cell == "lstm" else (s_k,))])
        for t in range(k + 1, T):
            def step(v, t=t, k=k):
                state = (v[:H].reshape(1, 1, H), v[H:].reshape(1, 1, H)) if cell == "lstm" else v.reshape(1, 1, H)
                _, end = rnn(xt[k + 1:t + 1], state)
                return torch.cat([e.reshape(-1) for e in end]) if cell == "lstm" else end.reshape(-1)

            J = torch.autograd.functional.jacobian(step, torch.tensor(start)).numpy()
            assert np.allclose(r.jacobian_singular[t, k], np.linalg.svd(J, compute_uv=False),
                               rtol=1e-10, atol=1e-12), (t, k)
