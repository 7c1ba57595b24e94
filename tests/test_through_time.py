"""Schedules of BPTT: truncated(k1, k2) is the exact gradient of the truncated objective,
checkpointed equals full, RTRL equals BPTT, and the truncation bias vanishes at k = T."""
import numpy as np
import pytest

import bptt
from bptt import through_time as tt
from helpers import HEAD_LOSSES, KINDS, make_model, make_state, make_targets, ragged_mask


def rel_err(a, b):
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a).max())


def assert_grads_equal(g, ref, tol):
    for k in ref:
        assert rel_err(g[k], ref[k]) < tol, (k, rel_err(g[k], ref[k]))


# ---- truncated BPTT ------------------------------------------------------------------------

@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_truncated_with_k1_equal_k2_equal_T_is_full_bptt(cell, nonlinearity):
    rng = np.random.default_rng(0)
    model = make_model(cell, nonlinearity, 2)
    T, B = 9, 3
    x, targets, s0 = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng), make_state(model, B, rng)
    (loss, grads, state), = list(tt.truncated(model, x, targets, T, T, s0))
    L, G, S = tt.full(model, x, targets, s0)
    assert loss == pytest.approx(L, rel=1e-14)
    assert_grads_equal(grads, G, 1e-14)


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_chunked_truncated_equals_full_bptt_on_each_chunk_with_carried_state(cell, nonlinearity):
    rng = np.random.default_rng(1)
    model = make_model(cell, nonlinearity, 2)
    T, B, k = 11, 3, 4                                # chunks of 4, 4 and 3 steps
    x, targets, s0 = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng), make_state(model, B, rng)
    resets = np.zeros((T, B), bool)
    resets[6, 1] = True                               # a document boundary in stream 1
    updates = list(tt.truncated(model, x, targets, k, state0=s0, resets=resets))
    assert len(updates) == 3
    state = s0
    for (loss, grads, out_state), a in zip(updates, range(0, T, k)):
        L, G, state = tt.full(model, x[a:a + k], targets[a:a + k], state, resets=resets[a:a + k])
        assert loss == pytest.approx(L, rel=1e-14)
        assert_grads_equal(grads, G, 1e-14)
        for u, v in zip(*(s if cell == "lstm" else (s,) for s in (out_state, state))):
            np.testing.assert_array_equal(u, v)


def truncated_objective(model, x, targets, s_w, w, a, e):
    """J = mean squared error over the block [a, e), from the state at w held constant,
    computed from the model's predictions alone (no loss code of the library)."""
    y, _ = model.forward(x[w:e], s_w)
    return float(((y[a - w:] - targets[a:e]) ** 2).mean())


def finite_difference(f, p, eps=1e-4):
    num = np.empty_like(p)
    for i in np.ndindex(p.shape):
        keep = p[i]
        vals = []
        for step in (2, 1, -1, -2):
            p[i] = keep + step * eps
            vals.append(f())
        p[i] = keep
        num[i] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * eps)
    return num


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k1,k2", [(3, 3), (2, 5), (3, 4)])
def test_truncated_gradient_is_finite_differences_of_the_truncated_objective(cell, k1, k2):
    rng = np.random.default_rng(2)
    model = make_model(cell, layers=1, H=3, O=2, seed=3)
    T, B = 10, 2
    x, targets = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))
    s0 = make_state(model, B, rng)
    for u, (loss, grads, _) in enumerate(tt.truncated(model, x, targets, k1, k2, s0)):
        a, e = u * k1, min(u * k1 + k1, T)
        w = max(0, a - (k2 - k1))
        s_w = s0 if w == 0 else model.forward(x[:w], s0)[1]       # the stream's state at w
        assert loss == pytest.approx(truncated_objective(model, x, targets, s_w, w, a, e), rel=1e-12)
        for name, p in model.params.items():
            num = finite_difference(lambda: truncated_objective(model, x, targets, s_w, w, a, e), p)
            assert rel_err(grads[name], num) < 1e-6, (u, name)


def test_truncated_uses_the_parameters_as_they_are_at_each_update():
    rng = np.random.default_rng(4)
    model = make_model("gru", layers=2)
    T, B, k = 8, 2, 4
    x, targets = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng)
    updates = tt.truncated(model, x, targets, k)
    _, _, state = next(updates)
    for p in model.params.values():                   # an "optimizer step"
        p *= 0.9
    loss, grads, _ = next(updates)
    L, G, _ = tt.full(model, x[k:], targets[k:], state)
    assert loss == pytest.approx(L, rel=1e-14)
    assert_grads_equal(grads, G, 1e-14)


# ---- checkpointed BPTT -------------------------------------------------------------------

@pytest.mark.parametrize("cell,nonlinearity", KINDS)
@pytest.mark.parametrize("T", [1, 2, 5, 16, 17, 100, 257])
def test_checkpointed_equals_full_for_every_budget(cell, nonlinearity, T):
    rng = np.random.default_rng(T)
    model = make_model(cell, nonlinearity, 2, H=3, seed=5)
    B = 2
    x, targets, s0 = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng), make_state(model, B, rng)
    mask = ragged_mask(T, [T, max(1, T - 2)])
    L, G, S = tt.full(model, x, targets, s0, mask)
    budgets = [None, 2, 3, 7, 16, 1000] + ([1] if T <= 17 else [])
    for budget in budgets:
        loss, grads, state = tt.checkpointed(model, x, targets, s0, mask, budget=budget)
        assert loss == pytest.approx(L, rel=1e-12), budget
        assert_grads_equal(grads, G, 1e-12)
        for u, v in zip(*(s if model.cell == "lstm" else (s,) for s in (state, S))):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("outputs", ["all", "last"])
def test_segments_of_padding_alone_carry_the_state(outputs):
    """Sequences of lengths 10 and 3 (outputs="last") or padding from step 3 on for both
    (outputs="all"): checkpointed segments and truncated blocks after step 3 hold padding
    only, which carries the state, as in full BPTT."""
    rng = np.random.default_rng(8)
    model = make_model("gru", layers=2, H=3, outputs=outputs, seed=3)
    T, B = 10, 2
    x, targets = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng)
    mask = ragged_mask(T, [T, 3] if outputs == "last" else [3, 3])
    L, G, S = tt.full(model, x, targets, mask=mask)
    for budget in (None, 2, 5):
        loss, grads, state = tt.checkpointed(model, x, targets, mask=mask, budget=budget)
        assert loss == pytest.approx(L, rel=1e-12), budget
        assert_grads_equal(grads, G, 1e-12)
        np.testing.assert_array_equal(state, S)
    if outputs == "all":
        blocks = list(tt.truncated(model, x, targets, 4, mask=mask))
        assert [b[0] for b in blocks[1:]] == [0.0, 0.0]           # no valid step, no loss
        assert all(not np.any(g) for b in blocks[1:] for g in b[1].values())
        np.testing.assert_array_equal(blocks[-1][2], S)
        assert str(tt.truncation_bias(model, x, targets, [4], mask=mask)).split()[-2:] == ["0.000e+00", "1.00000"]


def test_a_call_from_the_zero_state_still_needs_a_valid_step():
    """Without a state0 to carry, padding alone computes nothing: still refused."""
    model = make_model("lstm", H=3, outputs="last", seed=0)
    x = np.zeros((4, 2, 3))
    mask = ragged_mask(4, [4, 0])
    with pytest.raises(ValueError, match="mask: sequence 1 has no valid step.*or a state0 it carries"):
        model.forward(x, mask=mask)
    rng = np.random.default_rng(0)
    s0 = make_state(model, 2, rng)
    y, state = model.forward(x, s0, mask=mask)         # carried: sequence 1 keeps s0 and predicts from it
    for got, given in zip(state, s0):
        np.testing.assert_array_equal(got[:, 1], given[:, 1])
    other = x.copy()
    other[:, 1] = rng.standard_normal((4, 3))            # its padded inputs are never read
    np.testing.assert_array_equal(model.forward(other, s0, mask=mask)[0], y)
    with pytest.raises(ValueError, match="mask: expected at least one valid step, got none"):
        tt.checkpointed(make_model("rnn", H=3), x, np.zeros((4, 2, 2)), mask=np.zeros((4, 2), bool))


def test_truncated_and_checkpointed_take_no_targets_as_full_does():
    rng = np.random.default_rng(2)
    model = make_model("lstm", H=3, seed=1)
    x = rng.standard_normal((6, 2, 3))
    L, G, _ = tt.full(model, x, None)
    assert L == 0.0 and not any(np.any(g) for g in G.values())
    assert [b[0] for b in tt.truncated(model, x, None, 4)] == [0.0, 0.0]
    loss, grads, _ = tt.checkpointed(model, x, None, budget=2)
    assert loss == 0.0 and not any(np.any(g) for g in grads.values())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_checkpointed_many_to_one_with_resets(cell):
    rng = np.random.default_rng(6)
    model = make_model(cell, layers=2, outputs="last", head="softmax", loss="cross_entropy", seed=2)
    T, B = 23, 3
    x, targets = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng)
    resets = np.zeros((T, B), bool)
    resets[9, 2] = True
    L, G, _ = tt.full(model, x, targets, resets=resets)
    for budget in (None, 4):
        loss, grads, _ = tt.checkpointed(model, x, targets, budget=budget, resets=resets)
        assert loss == pytest.approx(L, rel=1e-12)
        assert_grads_equal(grads, G, 1e-12)


def test_checkpoint_plan_follows_gruslys_recursion():
    """C(t, m): t when it fits, t(t+1)/2 with one slot, and never worse than √T segments."""
    plan = tt.checkpoint_plan(30, 1)
    assert plan.forward_steps() == 30 * 31 // 2
    assert tt.checkpoint_plan(30, 30).forward_steps() == 30
    plan = tt.checkpoint_plan(1000, 64)
    assert 1000 < plan.forward_steps() <= 2000          # the √T scheme costs 2 forward passes
    assert tt.checkpoint_plan(1000, 100).forward_steps() < plan.forward_steps()


def optimal_forward_steps(n, M):
    """Gruslys et al.'s C(n, M), written out step by step (docs/through_time.md)."""
    t = np.arange(n + 1.0)
    C = np.zeros((M + 1, n + 1))
    C[1] = t * (t + 1) / 2
    for m in range(2, M + 1):
        C[m, :m + 1] = t[:m + 1]
        for s in range(m + 1, n + 1):
            y = np.arange(1, s)
            C[m, s] = (y + C[m - 1, s - y] + C[m, y]).min()
    return int(C[M, n])


@pytest.mark.parametrize("T,budget", [(999, 4), (1001, 4), (2500, 7)])
def test_the_plan_counts_the_steps_the_run_computes_and_they_are_optimal(T, budget):
    """forward_steps() is what checkpointed runs (a run past 1,000 steps ran 31,651 steps
    at (1001, 4) where the plan said 21,150, against the optimum's 8,970)."""
    model = bptt.Model("rnn", 1, 2, 1, dtype="float64", seed=0)
    steps = []
    gradients, advance = model.gradients, model.advance
    model.gradients = lambda x, *a, **k: (steps.append(x.shape[0]), gradients(x, *a, **k))[1]
    model.advance = lambda x, *a, **k: (steps.append(x.shape[0]), advance(x, *a, **k))[1]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((T, 1, 1)), rng.standard_normal((T, 1, 1))
    loss, grads, _ = tt.checkpointed(model, x, y, budget=budget)
    plan = tt.checkpoint_plan(T, budget)
    assert sum(steps) == plan.forward_steps() == optimal_forward_steps(T, budget)
    model.gradients, model.advance = gradients, advance
    L, G, _ = tt.full(model, x, y)
    assert loss == pytest.approx(L, rel=1e-12)
    assert_grads_equal(grads, G, 1e-10)


def peak_slots(plan):
    """The most slots the plan's run holds: a taped segment's steps (its first state among
    them) and the states kept for later segments."""
    kept, peak = set(), 0
    for kind, a, b, _ in plan.operations():
        if kind == "advance":
            kept.add(b)
        else:
            kept.discard(a)
            peak = max(peak, b - a + len(kept))
    return peak


@pytest.mark.parametrize("T,budget", [(7100, 4), (7100, 7)])
def test_a_long_plan_keeps_its_slots_and_is_optimal(T, budget):
    """Past the programme's work limit the plan kept its optimal cost (it ran 5.5× the
    optimum's steps at (7100, 4) when it divided the slots among units of steps)."""
    plan = tt.checkpoint_plan(T, budget)
    assert plan.forward_steps() == optimal_forward_steps(T, budget)
    assert peak_slots(plan) <= budget
    segments = sorted((a, b) for kind, a, b, _ in plan.operations() if kind == "segment")
    assert segments[0][0] == 0 and segments[-1][1] == T
    assert all(b == a2 for (_, b), (a2, _) in zip(segments, segments[1:]))


@pytest.mark.parametrize("T,budget", [(100000, 4), (100000, 300), (100000, 50000)])
def test_a_coarse_plan_stays_within_budget_and_covers_every_step(T, budget):
    """Where the plan splits at units of several steps it still holds at most ``budget``
    slots and backpropagates every step once."""
    plan = tt.checkpoint_plan(T, budget)
    assert plan.unit > 1
    assert peak_slots(plan) <= budget
    segments = sorted((a, b) for kind, a, b, _ in plan.operations() if kind == "segment")
    assert segments[0][0] == 0 and segments[-1][1] == T
    assert all(b == a2 for (_, b), (a2, _) in zip(segments, segments[1:]))


# ---- RTRL --------------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("head,loss", HEAD_LOSSES)
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_rtrl_equals_bptt(nonlinearity, head, loss, outputs):
    rng = np.random.default_rng(9)
    model = make_model("rnn", nonlinearity, 1, D=3, H=5, head=head, loss=loss, outputs=outputs, seed=4)
    T, B = 12, 3
    x, targets, s0 = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng), make_state(model, B, rng)
    loss_r, grads_r, state_r = tt.rtrl(model, x, targets, s0)
    L, G, state = tt.full(model, x, targets, s0)
    assert loss_r == pytest.approx(L, rel=1e-12)
    assert_grads_equal(grads_r, G, 1e-9)
    np.testing.assert_allclose(state_r, state, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "layer_norm_lstm", "layer_norm_gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_rtrl_equals_bptt_for_every_cell_with_masks_and_resets(cell, layers):
    rng = np.random.default_rng(11)
    layer_norm = cell.startswith("layer_norm")
    model = bptt.Model(cell.rsplit("_", 1)[-1], 3, 4, 2, num_layers=layers, layer_norm=layer_norm,
                       dtype="float64", seed=5)
    T, B = 9, 3
    x, targets, s0 = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng), make_state(model, B, rng)
    mask = np.ones((T, B), bool)
    mask[6:, 1] = False                                  # sequence 1 ends after 6 steps
    resets = np.zeros((T, B), bool)
    resets[4, 2] = True                                  # sequence 2 starts anew at step 4
    loss_r, grads_r, _ = tt.rtrl(model, x, targets, s0, mask=mask, resets=resets)
    L, G, _ = tt.full(model, x, targets, s0, mask=mask, resets=resets)
    assert loss_r == pytest.approx(L, rel=1e-12)
    assert_grads_equal(grads_r, G, 1e-9)


def test_rtrl_of_a_user_cell_and_of_zoneout_in_evaluation():
    from bptt.cells import GRU

    class MyGRU(GRU):                                     # through the protocol, no kernels
        name, kernels = "my_gru", None
    rng = np.random.default_rng(12)
    for model in (bptt.Model(MyGRU(), 3, 4, 2, num_layers=2, outputs="last", dtype="float64", seed=6),
                  bptt.Model("lstm", 3, 4, 2, zoneout=0.3, dtype="float64", seed=7)):
        T, B = 7, 2
        x, targets = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng)
        loss_r, grads_r, _ = tt.rtrl(model, x, targets)
        L, G, _ = tt.full(model, x, targets)
        assert loss_r == pytest.approx(L, rel=1e-12)
        assert_grads_equal(grads_r, G, 1e-9)


# ---- truncation bias ---------------------------------------------------------------------

def test_truncation_bias_vanishes_at_full_length_and_is_positive_below():
    rng = np.random.default_rng(10)
    model = make_model("lstm", layers=1, H=6, seed=1)
    T, B = 16, 2
    x, targets = rng.standard_normal((T, B, 3)), make_targets(model, T, B, rng)
    report = tt.truncation_bias(model, x, targets, [1, 4, 16, 32])
    assert list(report.ks) == [1, 4, 16, 32]
    assert report.relative_error["all"][2] < 1e-13 and report.cosine["all"][2] == pytest.approx(1, abs=1e-13)
    assert report.relative_error["all"][3] < 1e-13
    assert report.relative_error["all"][0] > 1e-3 and report.cosine["all"][0] < 1
    assert set(report.relative_error) == set(model.params) | {"all"}
    assert "relative error" in str(report)


def test_truncation_bias_refuses_no_targets_instead_of_reporting_an_exact_gradient():
    model = make_model("rnn")
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    with pytest.raises(ValueError, match=r"^targets: the truncation bias compares gradients of a loss, which "
                                         r"needs targets; got None$"):
        tt.truncation_bias(model, x, None, [1, 2])


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,pattern", [
    ({"k1": 0}, r"k1: expected a positive integer, got 0"),
    ({"k1": 4, "k2": 3}, r"k2: expected k2 >= k1 = 4 .*got 3"),
    ({"k1": 2, "resets": np.zeros((5, 3), bool)}, r"resets: expected shape \(6, 2\), got shape \(5, 3\)"),
    ({"k1": 2, "state0": np.zeros((1, 3, 4))}, r"state0: expected shape \(1, 2, 4\)"),
])
def test_truncated_rejects_bad_input_at_the_call(kwargs, pattern):
    model = make_model("rnn")
    with pytest.raises(ValueError, match=pattern):
        tt.truncated(model, np.zeros((6, 2, 3)), np.zeros((6, 2, 3)), **kwargs)


def test_schedule_errors_are_named():
    model = make_model("rnn")
    x, y = np.zeros((6, 2, 3)), np.zeros((6, 2, 3))
    with pytest.raises(ValueError, match=r"budget: expected at least 1 step of tape .*got 0"):
        tt.checkpointed(model, x, y, budget=0)
    with pytest.raises(ValueError, match=r"budget: expected an integer number of steps of tape, got 2.5"):
        tt.checkpointed(model, x, y, budget=2.5)
    with pytest.raises(ValueError, match=r"truncated BPTT needs outputs='all'"):
        tt.truncated(make_model("rnn", outputs="last"), x, np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match=r"ExactInfluence \(forward mode\) carries one direction's unprojected "
                                         r"state .*bidirectional=True"):
        tt.rtrl(bptt.Model("lstm", 3, 4, 3, bidirectional=True, dtype="float64"), x, y)
    for ks in ([0, 2], [2.5, 4], 4, ["a"], [np.nan], []):      # 2.5 was truncated to 2, silently
        with pytest.raises(ValueError, match=r"ks: expected a list of positive integer truncation lengths, got "):
            tt.truncation_bias(model, x, y, ks)
    with pytest.raises(ValueError, match=r"resets: expected a boolean array \(True = the state is zeroed "
                                         r"before the step\), got dtype float64"):
        tt.rtrl(model, x, y, resets=np.zeros(x.shape[:2]))


def test_the_step_api_names_what_it_was_given():
    """ExactInfluence, SnAp, UORO, e-prop and KF-RTRL advanced a step at a time by hand:
    a step or a collect that does not fit the influence is named, not a NumPy error."""
    from bptt.through_time.online import KFRTRL, UORO, Eligibility, SnAp
    model = bptt.Model("rnn", 2, 3, 2, dtype="float64", seed=0)
    makers = [tt.ExactInfluence, lambda m, B: SnAp(m, B, n=2), UORO, Eligibility, KFRTRL]
    for make in makers:
        cases = [(lambda e: e.step(np.ones((2, 3))), r"x_t: expected shape \(2, 2\), got shape \(2, 3\)"),
                 (lambda e: e.step(np.ones((4, 2))), r"x_t: expected shape \(2, 2\), got shape \(4, 2\)"),
                 (lambda e: e.step(np.ones((2, 2), np.float32)), r"x_t: expected dtype float64"),
                 (lambda e: e.step(np.ones((2, 2)), mask_t=np.ones(2)),
                  r"mask_t: expected a boolean array \(True = a valid step\), got dtype float64"),
                 (lambda e: e.step(np.ones((2, 2)), reset_t=np.ones(3, bool)), r"reset_t: expected shape \(2,\)"),
                 (lambda e: (e.step(np.ones((2, 2))), e.collect(np.ones((2, 4)))),
                  r"dh: expected shape \(2, 3\), got shape \(2, 4\)")]
        for call, message in cases:
            with pytest.raises(ValueError, match=message):
                call(make(model, 2))
    for B in (0, -1, 2.5):
        with pytest.raises(ValueError, match=r"B: expected a positive integer, got "):
            tt.ExactInfluence(model, B)


def test_truncated_takes_a_seed_for_its_masks_as_uoro_does():
    """rng=0 draws the same dropout masks as rng=np.random.default_rng(0): the same losses
    and gradients, bit for bit; a bool is refused by name."""
    model = bptt.Model("lstm", 3, 5, 2, dropout=0.3, num_layers=2, dtype="float64", seed=1)
    rng = np.random.default_rng(9)
    x, targets = rng.standard_normal((12, 2, 3)), rng.standard_normal((12, 2, 2))
    seeded = list(tt.truncated(model, x, targets, 4, 6, rng=0))
    generated = list(tt.truncated(model, x, targets, 4, 6, rng=np.random.default_rng(0)))
    plain = list(tt.truncated(model, x, targets, 4, 6))
    assert len(seeded) == 3 and [u[0] for u in seeded] == [u[0] for u in generated]
    assert all(np.array_equal(a[1][k], b[1][k]) for a, b in zip(seeded, generated) for k in a[1])
    assert seeded[0][0] != plain[0][0]                        # the masks do drop units
    with pytest.raises(ValueError, match="rng"):
        list(tt.truncated(model, x, targets, 4, 6, rng=True))


@pytest.mark.parametrize("method", ["checkpointed", "truncated"])
def test_an_overflow_inside_the_sequence_is_a_non_finite_loss_as_in_full_bptt(method):
    """A state that overflows inside the sequence reaches the loss, as in one whole pass;
    it is not refused as if it were a state0 the caller gave."""
    model = make_model("rnn", "relu", D=3, H=4, O=3, seed=1)
    model.params["layer0.W_h"][...] = 1e200 * np.eye(4)
    rng = np.random.default_rng(0)
    x, targets = np.abs(rng.standard_normal((9, 2, 3))), make_targets(model, 9, 2, rng)
    with np.errstate(over="ignore", invalid="ignore"):
        full = tt.full(model, x, targets)[0]
        if method == "checkpointed":
            losses = [tt.checkpointed(model, x, targets, budget=2)[0]]
        else:
            losses = [u[0] for u in tt.truncated(model, x, targets, k1=3)]
    assert not np.isfinite(full) and not np.isfinite(losses[-1])
    with pytest.raises(ValueError, match=r"^state0: expected finite numbers"):     # a given state0 still is
        tt.checkpointed(model, x, targets, state0=np.full((1, 2, 4), np.inf), budget=2)
