"""Stream resets: a reset at step k makes the stream two independent sequences, the
second starting from the zero state; nothing, forward or backward, crosses a reset."""
import numpy as np
import pytest

import bptt
from bptt.backends import settings
from helpers import KINDS, make_model, make_state, make_targets, ragged_mask


def stream_slice(state, b, cell):
    return tuple(s[:, b:b + 1] for s in state) if cell == "lstm" else state[:, b:b + 1]


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_reset_splits_a_stream_into_independent_sequences(cell, nonlinearity):
    rng = np.random.default_rng(5)
    model = make_model(cell, nonlinearity, 2, reduction="sum", seed=9)
    T, B = 8, 2
    x = rng.standard_normal((T, B, model.input_size))
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    resets = np.zeros((T, B), bool)
    resets[3, 0] = True                      # stream 0: steps 0-2, then 3-7 from zero
    resets[0, 1] = True                      # stream 1: reset before its first step
    g = model.gradients(x, targets, state0, resets=resets)

    zero = model.init_state(1)
    pieces = [(0, 0, 3, stream_slice(state0, 0, model.cell)), (0, 3, 8, zero), (1, 0, 8, zero)]
    loss, grads = 0.0, {k: np.zeros_like(v) for k, v in model.params.items()}
    for b, a, e, s0 in pieces:
        gp = model.gradients(x[a:e, b:b + 1], targets[a:e, b:b + 1], s0)
        loss += gp.loss
        grads = {k: grads[k] + gp.params[k] for k in grads}
        np.testing.assert_allclose(g.x[a:e, b:b + 1], gp.x, rtol=1e-10, atol=1e-12)
    assert g.loss == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(g.params[k], grads[k], rtol=1e-10, atol=1e-12, err_msg=k)
    d0 = g.state0 if cell == "lstm" else (g.state0,)
    assert all(np.all(d[:, 1] == 0) for d in d0)     # stream 1 reset at once: no gradient to its h0


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_gradients_with_resets_and_masks_match_finite_differences(cell, nonlinearity):
    rng = np.random.default_rng(8)
    model = make_model(cell, nonlinearity, 2, seed=2)
    T, B = 6, 3
    x = rng.standard_normal((T, B, model.input_size))
    resets = np.zeros((T, B), bool)
    resets[2, 0] = resets[4, 2] = True
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng),
                            ragged_mask(T, [6, 4, 5]), eps=1e-4 if nonlinearity == "relu" else 1e-3,
                            resets=resets)
    assert report.worst() < 1e-6, str(report)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_compiled_and_python_loops_agree_with_resets_in_float32(cell, monkeypatch):
    rng = np.random.default_rng(3)
    model = make_model(cell, layers=2, D=4, H=8, dtype="float32", seed=1)
    T, B = 7, 3
    x = rng.standard_normal((T, B, 4)).astype(np.float32)
    targets = make_targets(model, T, B, rng)
    resets = np.zeros((T, B), bool)
    resets[[1, 4], [0, 2]] = True
    out = []
    for enabled in (False, True):
        monkeypatch.setattr(settings, "loops_enabled", lambda: enabled)
        out.append(model.gradients(x, targets, make_state(model, B, np.random.default_rng(0)),
                                   ragged_mask(T, [7, 5, 7]), resets=resets))
    for k in out[0].params:
        scale = np.abs(out[0].params[k]).max()
        assert np.abs(out[1].params[k] - out[0].params[k]).max() <= 1e-5 * scale, k


def test_bad_resets_are_named():
    model = make_model("rnn")
    with pytest.raises(ValueError, match=r"resets: expected shape \(4, 2\), got shape \(4, 3\)"):
        model.gradients(np.zeros((4, 2, 3)), np.zeros((4, 2, 3)), resets=np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match=r"resets: expected a boolean array"):
        model.gradients(np.zeros((4, 2, 3)), np.zeros((4, 2, 3)), resets=np.zeros((4, 2)))
