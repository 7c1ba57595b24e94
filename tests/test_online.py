"""Online approximations of RTRL: SnAp-n equals RTRL where n steps reach all of the
influence (and is biased where they do not), UORO is unbiased with an error of the mean of
N estimates that shrinks like 1/√N."""
import numpy as np
import pytest

import bptt
from bptt import through_time as tt
from bptt.through_time.online import snap, uoro


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
