"""Masks: a padded batch gives the same loss, gradients and final states as running each
sequence on its own, unpadded; padded steps leave the state unchanged."""
import numpy as np
import pytest

from helpers import KINDS, make_model, make_state, make_targets, ragged_mask


def per_sequence(state, b, cell):
    if cell == "lstm":
        return tuple(s[:, b:b + 1] for s in state)
    return state[:, b:b + 1]


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_padded_batch_equals_unpadded_sequences(cell, nonlinearity, outputs):
    rng = np.random.default_rng(21)
    model = make_model(cell, nonlinearity, 2, reduction="sum", outputs=outputs, seed=6)
    lengths = [7, 3, 5, 1]
    T, B = max(lengths), len(lengths)
    x = rng.standard_normal((T, B, model.input_size))
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    mask = ragged_mask(T, lengths)
    x[~mask] = 1e3 * rng.standard_normal(x[~mask].shape)     # padding content must not matter
    g = model.gradients(x, targets, state0, mask)
    pred, _ = model.forward(x, state0, mask)

    loss, grads = 0.0, {k: np.zeros_like(v) for k, v in model.params.items()}
    for b, n in enumerate(lengths):
        tb = targets[:n, b:b + 1] if outputs == "all" else targets[b:b + 1]
        s0 = per_sequence(state0, b, cell)
        gb = model.gradients(x[:n, b:b + 1], tb, s0)
        yb, _ = model.forward(x[:n, b:b + 1], s0)
        loss += gb.loss
        grads = {k: grads[k] + gb.params[k] for k in grads}
        np.testing.assert_allclose(g.x[:n, b:b + 1], gb.x, rtol=1e-10, atol=1e-12)
        assert np.all(g.x[n:, b] == 0)
        for ours, ref in zip(*(s if cell == "lstm" else (s,) for s in (per_sequence(g.state, b, cell), gb.state))):
            np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
        for ours, ref in zip(*(s if cell == "lstm" else (s,) for s in (per_sequence(g.state0, b, cell), gb.state0))):
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
        if outputs == "last":
            np.testing.assert_allclose(pred[b], yb[0], rtol=1e-12)
        else:
            np.testing.assert_allclose(pred[:n, b], yb[:, 0], rtol=1e-12)
    assert g.loss == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(g.params[k], grads[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_mean_reduction_counts_valid_positions_only():
    rng = np.random.default_rng(2)
    model = make_model("gru", reduction="mean")
    total = make_model("gru", reduction="sum")
    mask = ragged_mask(5, [5, 2])
    x = rng.standard_normal((5, 2, 3))
    targets = make_targets(model, 5, 2, rng)
    mean = model.gradients(x, targets, mask=mask).loss
    summed = total.gradients(x, targets, mask=mask).loss
    assert mean == pytest.approx(summed / (7 * model.output_size), rel=1e-13)


def test_padded_steps_keep_the_state():
    rng = np.random.default_rng(0)
    model = make_model("lstm", layers=2)
    mask = np.ones((6, 2), bool)
    mask[2:4, 0] = False                                    # a hole in the middle, too
    x = rng.standard_normal((6, 2, 3))
    y_all = make_model("lstm", layers=2)                    # same weights: same seed
    _, s_masked = model.forward(x, mask=mask)
    _, s_ref = y_all.forward(np.delete(x[:, :1], [2, 3], axis=0))
    np.testing.assert_allclose(s_masked[0][:, 0], s_ref[0][:, 0], rtol=1e-13)
    np.testing.assert_allclose(s_masked[1][:, 0], s_ref[1][:, 0], rtol=1e-13)
