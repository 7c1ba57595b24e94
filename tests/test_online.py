"""Online approximations of RTRL: SnAp-n equals RTRL where n steps reach all of the
influence (and is biased where they do not), UORO is unbiased with an error of the mean of
N estimates that shrinks like 1/√N."""
import numpy as np
import pytest

import bptt
from bptt import through_time as tt
from bptt.through_time.online import eprop, kf_rtrl, rflo, snap, uoro


def relative(g, ref):
    keys = [k for k in ref if not k.startswith("head.")]
    num = np.sqrt(sum(np.sum((g[k] - ref[k]) ** 2) for k in keys))
    return num / np.sqrt(sum(np.sum(ref[k] ** 2) for k in keys))


def data(model, T, B, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, model.input_size))
    y = rng.standard_normal((T, B, model.output_size))
    return x, y


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_snap1_is_rtrl_on_a_diagonal_recurrence(cell):
    model = bptt.Model(cell, 3, 5, 2, dtype="float64", seed=1)
    H = 5
    W_h = model.params["layer0.W_h"]
    for g in range(W_h.shape[0] // H):                  # every gate block diagonal: J_t is unit by unit
        block = W_h[g * H:(g + 1) * H]
        block[...] = np.diag(np.diag(block) + 0.5)
    x, y = data(model, 8, 3)
    mask = np.ones((8, 3), bool)
    mask[5:, 0] = False
    loss, grads, _ = snap(model, x, y, n=1, mask=mask)
    loss_r, grads_r, _ = tt.rtrl(model, x, y, mask=mask)
    assert loss == pytest.approx(loss_r, rel=1e-14)
    assert relative(grads, grads_r) < 1e-12


def test_snap_n_reaches_rtrl_when_n_covers_the_recurrence_and_is_biased_below():
    model = bptt.Model("rnn", 3, 5, 2, dtype="float64", seed=2)         # a dense W_h
    x, y = data(model, 10, 2)
    _, exact, _ = tt.rtrl(model, x, y)
    _, snap1, _ = snap(model, x, y, n=1)
    _, snap2, _ = snap(model, x, y, n=2)
    assert relative(snap2, exact) < 1e-12              # two steps of a dense W_h reach every unit
    assert relative(snap1, exact) > 1e-3               # one step does not: SnAp-1 is biased here
    assert all(np.array_equal(snap1[k], exact[k]) for k in ("head.W_y", "head.b_y"))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bias", [0.0, -0.7])
def test_snap2_is_rtrl_on_a_dense_relu_layer(seed, bias):
    """A ReLU unit that one random probe finds inactive has zero derivatives there; the
    pattern must still keep it (seed 2 kept 25% of M's entries, relative error 0.18), also
    where a negative bias holds units inactive at small inputs."""
    model = bptt.Model("rnn", 2, 8, 2, nonlinearity="relu", dtype="float64", seed=seed)
    model.params["layer0.b_h"][:] = bias
    x, y = data(model, 10, 3, seed)
    _, exact, _ = tt.rtrl(model, x, y)
    _, snap2, _ = snap(model, x, y, n=2)
    assert relative(snap2, exact) < 1e-12


def test_a_restored_snap_keeps_the_pattern_its_influence_was_carried_under():
    from bptt.through_time.online import SnAp
    model = bptt.Model("rnn", 2, 4, 1, nonlinearity="relu", init="identity", dtype="float64", seed=0)
    x, _ = data(model, 6, 2)
    first = SnAp(model, 2, n=2)                  # W_h = I: two steps reach a unit's own entries only
    for t in range(3):
        first.step(x[t])
    model.params["layer0.W_h"] += 0.1            # an update fills W_h; a checkpoint is resumed now
    resumed = SnAp(model, 2, n=2)
    resumed.restore(first.carried())
    for t in range(3, 6):
        first.step(x[t])
        resumed.step(x[t])
    assert np.array_equal(resumed.pattern, first.pattern)
    assert np.array_equal(resumed.influence(), first.influence())
    older = {k: v for k, v in first.carried().items() if k != "pattern"}     # a checkpoint without it
    SnAp(model, 2, n=2).restore(older)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_uoro_is_unbiased_its_error_shrinks_like_one_over_root_n(cell):
    model = bptt.Model(cell, 2, 3, 1, dtype="float64", seed=3)
    x1, y1 = data(model, 6, 1, seed=4)
    _, exact, _ = tt.rtrl(model, x1, y1)
    errors = {}
    for N in (100, 400, 1600):           # N copies of one sequence: the batch mean of N independent estimates
        x, y = np.repeat(x1, N, axis=1), np.repeat(y1, N, axis=1)
        runs = [relative(uoro(model, x, y, rng=seed)[1], exact) for seed in range(8)]
        errors[N] = float(np.sqrt(np.mean(np.square(runs))))
    assert 0.25 < errors[400] / errors[100] < 1.0       # 1/√4 = 0.5
    assert 0.1 < errors[1600] / errors[100] < 0.5       # 1/√16 = 0.25
    assert errors[1600] < 0.3                           # the mean of 1600 is near the exact gradient


def test_online_estimators_refuse_stacked_layers_and_bad_n():
    model = bptt.Model("lstm", 2, 3, 1, num_layers=2, dtype="float64")
    x, y = data(model, 3, 1)
    with pytest.raises(ValueError, match="UORO is defined here for one recurrent layer, got num_layers=2"):
        uoro(model, x, y)
    with pytest.raises(ValueError, match=r"n: expected a positive integer \(SnAp-n\), got 0"):
        snap(bptt.Model("lstm", 2, 3, 1, dtype="float64"), x, y, n=0)


def test_kf_rtrl_is_unbiased_its_error_shrinks_like_one_over_root_n():
    model = bptt.Model("rnn", 2, 3, 1, dtype="float64", seed=3)
    x1, y1 = data(model, 6, 1, seed=5)
    _, exact, _ = tt.rtrl(model, x1, y1)
    errors = {}
    for N in (100, 400, 1600):
        x, y = np.repeat(x1, N, axis=1), np.repeat(y1, N, axis=1)
        runs = [relative(kf_rtrl(model, x, y, rng=seed)[1], exact) for seed in range(8)]
        errors[N] = float(np.sqrt(np.mean(np.square(runs))))
    assert 0.25 < errors[400] / errors[100] < 1.0
    assert 0.1 < errors[1600] / errors[100] < 0.5
    assert errors[1600] < 0.3


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_eprop_of_an_lstm_is_bellec_et_al_s_eligibility_traces():
    """By hand: ε_t = f_t ⊙ ε_{t−1} + ∂c_t/∂θ (the cell state's eligibility vector), e_t =
    o_t tanh′(c_t) ε_t + ∂h_t/∂θ (the output gate's own), ∂L/∂θ ≈ Σ_t dh_t e_t."""
    model = bptt.Model("lstm", 2, 3, 1, reduction="sum", dtype="float64", seed=8)
    x, y = data(model, 7, 1, seed=6)
    p = {k.split(".")[1]: v for k, v in model.params.items()}
    H = 3
    h, c = np.zeros(H), np.zeros(H)
    eps = {g: np.zeros((H, 2 + H + 1)) for g in "ifgo"}      # per gate: rows by unit, columns x̂ = [x, h, 1]
    grad = {g: np.zeros((H, 2 + H + 1)) for g in "ifgo"}
    for t in range(7):
        x_hat = np.concatenate([x[t, 0], h, [1.0]])
        z = p["W_x"] @ x[t, 0] + p["W_h"] @ h + p["b_h"]
        zi, zf, zg, zo = np.split(z, 4)
        i, f, g, o = sigmoid(zi), sigmoid(zf), np.tanh(zg), sigmoid(zo)
        c_prev, c = c, f * c + i * g
        h = o * np.tanh(c)
        direct_c = {"i": g * i * (1 - i), "f": c_prev * f * (1 - f), "g": i * (1 - g ** 2), "o": np.zeros(H)}
        dh = 2 * (p["W_y"] @ h + p["b_y"] - y[t, 0]) @ p["W_y"]
        for gate in "ifgo":
            eps[gate] = f[:, None] * eps[gate] + direct_c[gate][:, None] * x_hat[None, :]
            e = (o * (1 - np.tanh(c) ** 2))[:, None] * eps[gate]
            if gate == "o":
                e = e + (np.tanh(c) * o * (1 - o))[:, None] * x_hat[None, :]
            grad[gate] += dh[:, None] * e
    whole = np.concatenate([grad[gate] for gate in "ifgo"])          # rows i, f, g, o as W_x's
    _, estimate, _ = eprop(model, x, y)
    np.testing.assert_allclose(estimate["layer0.W_x"], whole[:, :2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(estimate["layer0.W_h"], whole[:, 2:2 + H], rtol=0, atol=1e-12)
    np.testing.assert_allclose(estimate["layer0.b_h"], whole[:, -1], rtol=0, atol=1e-12)
    _, exact, _ = tt.rtrl(model, x, y)
    assert relative(estimate, exact) > 1e-3                          # e-prop drops the path through W_h


def test_rflo_of_a_leaky_elman_layer_is_murray_s_formula():
    """Zoneout p at evaluation makes h_t = (1 − α) h_{t−1} + α tanh(a_t), α = 1 − p; by hand,
    e_t = (1 − α) e_{t−1} + α tanh′(a_t) x̂_tᵀ per unit and ∂L/∂W ≈ Σ_t dh_t ⊙ e_t."""
    p_keep = 0.25
    model = bptt.Model("rnn", 2, 3, 1, zoneout=p_keep, reduction="sum", dtype="float64", seed=9)
    alpha = 1 - bptt.dropout.drawn_rate(p_keep)
    x, y = data(model, 6, 1, seed=7)
    p = {k.split(".")[1]: v for k, v in model.params.items()}
    h, e, grad = np.zeros(3), np.zeros((3, 6)), np.zeros((3, 6))
    for t in range(6):
        x_hat = np.concatenate([x[t, 0], h, [1.0]])
        a = p["W_x"] @ x[t, 0] + p["W_h"] @ h + p["b_h"]
        h = (1 - alpha) * h + alpha * np.tanh(a)
        e = (1 - alpha) * e + alpha * (1 - np.tanh(a) ** 2)[:, None] * x_hat[None, :]
        dh = 2 * (p["W_y"] @ h + p["b_y"] - y[t, 0]) @ p["W_y"]
        grad += dh[:, None] * e
    _, estimate, _ = rflo(model, x, y)
    np.testing.assert_allclose(estimate["layer0.W_x"], grad[:, :2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(estimate["layer0.W_h"], grad[:, 2:5], rtol=0, atol=1e-12)
    np.testing.assert_allclose(estimate["layer0.b_h"], grad[:, 5], rtol=0, atol=1e-12)


def test_training_with_rtrl_equals_training_with_bptt(tmp_path):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    base = dict(task="adding", cell="gru", hidden=6, seq_len=8, batch=4, steps=15, lr=1e-2, dtype="float64",
                eval_every=100, checkpoint_every=100, schedule="constant", seed=2)
    by_bptt = Trainer(Config(**base, out=str(tmp_path / "bptt")))
    by_bptt.train(progress=False)
    by_rtrl = Trainer(Config(**base, through_time="rtrl", out=str(tmp_path / "rtrl")))
    by_rtrl.train(progress=False)
    for k, v in by_bptt.model.params.items():
        np.testing.assert_allclose(by_rtrl.model.params[k], v, rtol=0, atol=1e-10)


def test_online_training_resumes_bit_for_bit_and_refuses_what_it_cannot_run(tmp_path):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    base = dict(task="adding", cell="lstm", hidden=5, seq_len=6, batch=3, steps=12, through_time="uoro",
                eval_every=100, checkpoint_every=4, schedule="constant", seed=3)
    whole = Trainer(Config(**base, out=str(tmp_path / "whole")))
    whole.train(progress=False)
    stopped = Trainer(Config(**base, out=str(tmp_path / "stopped")))
    stopped.train(progress=False, stop_at=5)
    resumed = Trainer.resume(tmp_path / "stopped")
    resumed.train(progress=False)
    for k, v in whole.model.params.items():
        assert np.array_equal(resumed.model.params[k], v), k
    for kwargs, message in ((dict(task="text", k1=4, k2=8), "k2: uoro carries the influence forward"),
                            (dict(layers=2), "one recurrent layer, got --layers 2"),
                            (dict(recurrent_dropout=0.1), "cannot run with --recurrent-dropout"),
                            (dict(through_time="rflo"), "Elman layer \\(--cell rnn\\), got --cell lstm"),
                            (dict(through_time="backprop"), "through-time: expected one of")):
        with pytest.raises(ValueError, match=message):
            Config(**(base | kwargs)).check()


@pytest.mark.parametrize("methods,shown", [("uoro", "'uoro'"), (None, "None"), ([], r"\[\]"),
                                           ([["uoro"]], r"\[\['uoro'\]\]"), (("snap1", "rtlr"), r"\('snap1', 'rtlr'\)"),
                                           (["uoro", "uoro"], r"\['uoro', 'uoro'\]")])
def test_estimator_error_names_methods_that_are_not_a_list_of_names(methods, shown):
    from bptt.diagnostics.estimators import estimator_error
    model = bptt.Model("rnn", 2, 3, 1, seed=4)
    x = np.zeros((4, 1, 2), np.float32)
    with pytest.raises(ValueError, match=rf"^methods: expected a list of names from rtrl, snap1, snap2, uoro, "
                                         rf"kf-rtrl, eprop, rflo, each once, got {shown}$"):
        estimator_error(model, x, methods)


def test_estimator_error_is_zero_where_a_method_is_exact_and_the_flow_command_draws_it(tmp_path):
    from bptt.cli import main
    from bptt.diagnostics.estimators import estimator_error
    model = bptt.Model("lstm", 2, 4, 1, seed=4)
    x = np.random.default_rng(5).standard_normal((12, 2, 2)).astype(np.float32)
    errors = estimator_error(model, x, ("rtrl", "snap2", "snap1", "uoro", "eprop"), rng=0)
    assert np.nanmax(errors["rtrl"]) < 1e-12 and np.nanmax(errors["snap2"]) < 1e-12
    assert errors["snap1"][0] < 1e-12 < errors["snap1"][-1]             # exact at the first step only
    assert errors["uoro"][0] > 0.1                                      # one draw of a rank-one estimate
    assert errors["snap1"][-1] < errors["uoro"][-1]
    code = main(["flow", "--cell", "rnn", "--hidden", "4", "--seq-len", "10", "--batch", "2",
                 "--estimators", "snap1,kf-rtrl,rflo", "--quiet", "--out", str(tmp_path / "flow")])
    assert code == 0 and (tmp_path / "flow" / "estimators.png").stat().st_size > 10_000
    refused = main(["flow", "--cell", "rnn,lstm", "--estimators", "kf-rtrl", "--quiet", "--out", str(tmp_path / "no")])
    assert refused == 2 and not (tmp_path / "no").exists()


@pytest.mark.parametrize("method", ["uoro", "snap1"])
def test_online_training_over_text_streams_learns_and_resumes_bit_for_bit(tmp_path, method):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 40, encoding="utf-8")
    # 1,728 training characters in 4 streams: the 40 updates of 16 steps pass an epoch's end
    base = dict(text=str(corpus), cell="lstm", hidden=8, batch=4, seq_len=16, steps=40, lr=1e-2, through_time=method,
                eval_every=1000, checkpoint_every=7, schedule="constant", seed=4)
    whole = Trainer(Config(**base, out=str(tmp_path / "whole")))
    final = whole.train(progress=False)
    assert final["val_loss"] < whole.task.baselines["unigram"]          # it learns without a backward pass
    stopped = Trainer(Config(**base, out=str(tmp_path / "stopped")))
    stopped.train(progress=False, stop_at=30)
    resumed = Trainer.resume(tmp_path / "stopped")
    resumed.train(progress=False)
    assert whole.position["epoch"] == resumed.position["epoch"] == 1
    for k, v in whole.model.params.items():
        assert np.array_equal(resumed.model.params[k], v), k


def test_influence_balancing_truncation_shorter_than_the_dependency_diverges_and_unbiased_methods_converge():
    from bptt.through_time.balancing import influence_balancing, problem
    model, sigma, theta_star = problem()
    A = model.params["layer0.W_h"]
    fixed = np.linalg.solve(np.eye(23) - A, sigma)[0]                    # s⁰ = c θ at the fixed point
    assert theta_star == pytest.approx(1 / fixed, rel=1e-12) and theta_star == pytest.approx(-1 / 6)
    # the short-horizon effect of θ on s⁰ is positive, the long-run one negative
    reach = [sum(np.linalg.matrix_power(A, i) @ sigma for i in range(k))[0] for k in (1, 10, 30, 200)]
    assert reach[0] > 0 and reach[1] > 0 and fixed < 0 and reach[3] == pytest.approx(fixed, rel=1e-6)
    exact = influence_balancing("rtrl", 3000, 5e-5)
    assert exact.diverged_at is None and abs(exact.theta[-1] - theta_star) < 1e-6
    short = influence_balancing("tbptt", 3000, 5e-5, window=10)
    assert short.diverged_at is not None and short.theta[short.diverged_at] > 1e3      # the wrong way
    long = influence_balancing("tbptt", 3000, 5e-5, window=100)
    assert long.diverged_at is None and abs(long.theta[-1] - theta_star) < 1e-4
    biased = influence_balancing("snap1", 3000, 5e-5)
    assert biased.theta[-1] > 5                                         # SnAp-1 sees one step: truncation's sign
    unbiased = influence_balancing("uoro", 10_000, 1e-5, rng=0)
    assert unbiased.diverged_at is None and abs(unbiased.theta[-1] - theta_star) < 0.01
    with pytest.raises(ValueError, match="window: applies to method='tbptt' only, got window=5"):
        influence_balancing("rtrl", 10, 1e-5, window=5)
    with pytest.raises(ValueError, match="window: expected a positive integer"):
        influence_balancing("tbptt", 10, 1e-5)
    with pytest.raises(ValueError, match="positive: with positive = n/2 = 2"):
        problem(n=4, positive=2)
    with pytest.raises(ValueError, match=r"^n: expected an integer of at least 2 .*got 1$"):
        problem(n=1)
    with pytest.raises(ValueError, match="lr: expected a positive number, got -0.1"):
        influence_balancing("rtrl", 10, -0.1)
    with pytest.raises(ValueError, match="method: .*'bptt'"):
        influence_balancing("bptt", 10, 1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=True), "lr: expected a positive number, got True"),
    (dict(lr="1e-5"), "lr: expected a positive number, got '1e-5'"),
    (dict(lr=np.nan), "lr: expected a positive number, got nan"),
    (dict(theta0=np.nan), "theta0: expected a finite number, got nan"),
    (dict(theta0="0.5"), "theta0: expected a finite number, got '0.5'"),
    (dict(limit=-1.0), r"limit: expected a positive number \(the \|θ\| that stops the run\), got -1.0"),
    (dict(limit=np.nan), r"limit: expected a positive number .*, got nan"),
    (dict(limit="big"), r"limit: expected a positive number .*, got 'big'"),
])
def test_influence_balancing_refuses_a_bad_number_by_name(kwargs, message):
    from bptt.through_time.balancing import influence_balancing
    with pytest.raises(ValueError, match=f"^{message}$"):
        influence_balancing("rtrl", 2, **{"lr": 1e-5, **kwargs})


def test_influence_balancing_takes_numpy_numbers_and_problem_refuses_a_bad_theta():
    from bptt.through_time.balancing import influence_balancing, problem
    plain = influence_balancing("rtrl", 3, 1e-5, theta0=0.5, limit=1e3)
    numpy = influence_balancing("rtrl", 3, np.float32(1e-5), theta0=np.float32(0.5), limit=np.int64(1000))
    assert np.allclose(numpy.theta, plain.theta, rtol=1e-7, atol=0)        # float32's 1e-5 is 1e-5 to 3e-8
    assert numpy.diverged_at is None and numpy.theta[0] < 0.5
    with pytest.raises(ValueError, match="^theta: expected a finite number, got 'a'$"):
        problem(theta="a")


@pytest.mark.parametrize("kwargs", [dict(cell="rnn"), dict(cell="lstm"), dict(cell="gru"),
                                    dict(cell="lstm", layer_norm=True), dict(cell="gru", zoneout=0.3)])
def test_immediate_vjp_is_the_contraction_of_the_immediate_influence(kwargs):
    """UORO's νᵀ I_t by one step_backward of ν equals the sum over the K unit vectors' rows."""
    model = bptt.Model(input_size=3, hidden_size=4, output_size=2, dtype="float64", seed=5, **kwargs)
    influence = tt.ExactInfluence(model, 3)
    rng = np.random.default_rng(6)
    influence.local(0, rng.standard_normal((3, 3)))                     # a state that is not zero
    influence.state = [influence.local(0, rng.standard_normal((3, 3))).new]
    local = influence.local(0, rng.standard_normal((3, 3)))
    c = rng.standard_normal((3, influence.K))
    contracted = np.einsum("bk,bkn->bn", c, local.I)
    vjp = influence.immediate_vjp(0, local, c)
    assert np.abs(vjp - contracted).max() < 1e-12 * max(1, np.abs(contracted).max())
    # and by central differences: d/dε Σ_b c_bᵀ s_t(θ + ε δ) with s_{t−1} held, along a random δ
    params = model.layer_params(0)
    delta = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    flat_delta = np.concatenate([delta[k].ravel() for k in params])     # the blocks' order of I_t

    def probe(eps):
        for k in params:
            params[k] += eps * delta[k]
        new = influence.local(0, local.inputs, immediate=False).new
        for k in params:
            params[k] -= eps * delta[k]
        return float((c * np.concatenate(new, axis=1)).sum())
    numeric = (probe(1e-6) - probe(-1e-6)) / 2e-6
    assert numeric == pytest.approx(float(vjp.sum(axis=0) @ flat_delta), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method, cell", [("uoro", "gru"), ("kf-rtrl", "rnn")])
def test_random_signs_drawn_for_the_whole_batch_give_each_half_its_rows(method, cell):
    """What an MPI rank computes: the signs of all B sequences drawn, its rows kept; two
    halves' mean gradient is the whole batch's, and the generators end alike."""
    from bptt.through_time.online import estimate
    model = bptt.Model(cell, 3, 5, 2, dtype="float64", seed=1)
    x, y = data(model, 6, 4)
    whole_rng = np.random.default_rng(7)
    _, whole, _ = estimate(method, model, x, y, whole_rng)
    halves, rngs = [], []
    for rows in (slice(0, 2), slice(2, 4)):
        rngs.append(np.random.default_rng(7))
        halves.append(estimate(method, model, x[:, rows], y[:, rows], rngs[-1], draw_rows=(4, rows))[1])
    for k in whole:
        assert np.abs((halves[0][k] + halves[1][k]) / 2 - whole[k]).max() < 1e-12, k
    assert all(r.bit_generator.state == whole_rng.bit_generator.state for r in rngs)


@pytest.mark.parametrize("method", ["rtrl", "snap1", "uoro", "kf-rtrl", "eprop"])
def test_gradients_kept_from_a_window_stay_as_they_were(method):
    """window() over a stream: the gradient dict of one window is not changed by the next
    window (each is its own arrays, not a view of the running sum)."""
    from bptt.through_time.online import ESTIMATORS
    from bptt.through_time.rtrl import window
    model = bptt.Model("rnn", 3, 4, 3, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    influence = ESTIMATORS[method](model, 2, np.random.default_rng(1))
    x, targets = rng.standard_normal((6, 2, 3)), rng.integers(0, 3, (6, 2))
    _, first = window(influence, model, x[:3], targets[:3])
    kept = {k: v.copy() for k, v in first.items()}
    window(influence, model, x[3:], targets[3:])
    for k in kept:
        assert np.array_equal(first[k], kept[k]), k
