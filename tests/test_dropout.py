"""Dropout (between layers, variational on inputs and on h_{t-1}) and zoneout: exact
gradients for the masks drawn, the compiled loop equal to the Python reference, the
masks' statistics and invariants, chunks equal to the whole, and training with them."""

import numpy as np
import pytest

import bptt
from bptt.cells import Cell
from bptt.dropout import drawn_rate
from bptt.through_time import checkpointed
from helpers import make_model, make_state, make_targets, python_loop, ragged_mask

TOL = 1e-6
FEATURES = {"dropout": dict(dropout=0.4), "input_dropout": dict(input_dropout=0.3),
            "recurrent_dropout": dict(recurrent_dropout=0.4), "zoneout": dict(zoneout=0.3),
            "all": dict(dropout=0.3, input_dropout=0.2, recurrent_dropout=0.3, zoneout=0.25)}
CELLS = ["rnn", "lstm", "gru"]


def model_with(cell, layers, feature, **kw):
    rates = dict(FEATURES[feature])
    if layers == 1:
        rates.pop("dropout", None)
        if not rates:
            pytest.skip("dropout acts between layers")
    return make_model(cell, layers=layers, seed=layers, **rates, **kw)


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_for_the_masks_drawn_match_finite_differences(feature, cell, layers):
    model = model_with(cell, layers, feature)
    rng = np.random.default_rng(3)
    T, B = 5, 3
    x = rng.standard_normal((T, B, model.input_size))
    masks = model.draw_masks(T, B, np.random.default_rng(11))
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng),
                            ragged_mask(T, [5, 3, 4]), masks=masks)
    assert report.worst() < TOL, str(report)


@pytest.mark.parametrize("cell", CELLS)
def test_zoneout_without_masks_is_its_expectation_and_exact(cell):
    """In evaluation, s_t = p s_{t-1} + (1 − p) s̃_t (N3 with d_t = p): a deterministic
    model whose gradient finite differences confirm."""
    model = make_model(cell, layers=2, seed=4, zoneout=0.3)
    rng = np.random.default_rng(4)
    T, B = 6, 2
    x = rng.standard_normal((T, B, model.input_size))
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng))
    assert report.worst() < TOL, str(report)
    plain = make_model(cell, layers=2, seed=4)
    y, _ = model.forward(x)
    y0, _ = plain.forward(x)
    assert np.abs(y - y0).max() > 1e-3          # the mixing is there


@pytest.mark.parametrize("cell", CELLS)
def test_compiled_loop_equals_the_python_reference_with_noise_masks_and_resets(cell):
    model = make_model(cell, layers=2, seed=5, **FEATURES["all"])
    rng = np.random.default_rng(5)
    T, B = 7, 4
    x = rng.standard_normal((T, B, model.input_size))
    targets, state0 = make_targets(model, T, B, rng), make_state(model, B, rng)
    mask = ragged_mask(T, [7, 5, 6, 2])
    resets = np.zeros((T, B), bool)
    resets[3, 1] = resets[4, 2] = True
    masks = model.draw_masks(T, B, np.random.default_rng(6))

    def run():
        return model.gradients(x, targets, state0, mask, resets=resets, masks=masks)
    compiled, reference = run(), python_loop(run)
    assert abs(compiled.loss - reference.loss) < 1e-12
    for k in model.params:
        np.testing.assert_allclose(compiled.params[k], reference.params[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(compiled.x, reference.x, rtol=0, atol=1e-12)
    for a, b in zip(np.atleast_3d(compiled.state), np.atleast_3d(reference.state)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_masks_have_the_rates_asked_and_keep_the_expected_value():
    model = bptt.Model("lstm", 6, 32, 2, num_layers=2, seed=0, **FEATURES["all"])
    masks = model.draw_masks(50, 400, np.random.default_rng(0))
    assert masks.between[0].shape == (50, 400, 32) and len(masks.between) == 1
    assert [m.shape for m in masks.inputs] == [(400, 6), (400, 32)]
    assert masks.zone[0].shape == (50, 400, 2, 32)
    for arrays, p in ((masks.between, 0.3), (masks.inputs, 0.2), (masks.recurrent, 0.3)):
        for m in arrays:
            assert abs(drawn_rate(p) - p) <= 2 ** -17
            assert set(np.unique(m)) <= {0.0, np.float32(1 / (1 - drawn_rate(p)))}
            assert abs((m == 0).mean() - p) < 0.03                # 2,400 draws or more: σ < 0.01
            assert abs(m.mean() - 1) < 0.05                  # E[m / (1 − p)] = 1
    assert abs(masks.zone[1].mean() - 0.25) < 0.01
    assert bptt.Model("gru", 3, 4, 2).draw_masks(5, 2, np.random.default_rng(0)) is None


@pytest.mark.parametrize("cell", CELLS)
def test_masks_that_keep_everything_change_nothing_and_full_zoneout_freezes_the_state(cell):
    model = make_model(cell, layers=2, seed=6, **FEATURES["all"])
    plain = make_model(cell, layers=2, seed=6)
    rng = np.random.default_rng(6)
    T, B = 5, 3
    x = rng.standard_normal((T, B, model.input_size))
    targets, state0 = make_targets(model, T, B, rng), make_state(model, B, rng)
    masks = model.draw_masks(T, B, rng)
    ones = masks._replace(between=[np.ones_like(a) for a in masks.between],
                          inputs=[np.ones_like(a) for a in masks.inputs],
                          recurrent=[np.ones_like(a) for a in masks.recurrent],
                          zone=[np.zeros_like(a) for a in masks.zone])
    g, g0 = model.gradients(x, targets, state0, masks=ones), plain.gradients(x, targets, state0)
    assert abs(g.loss - g0.loss) < 1e-12
    for k in model.params:
        np.testing.assert_allclose(g.params[k], g0.params[k], rtol=0, atol=1e-12)
    frozen = ones._replace(zone=[np.ones_like(a) for a in masks.zone])
    _, state = model.forward(x, state0, masks=frozen)
    for a, b in zip(np.atleast_3d(state), np.atleast_3d(state0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_checkpointed_bptt_with_masks_equals_full_bptt(cell):
    model = make_model(cell, layers=2, seed=7, **FEATURES["all"])
    rng = np.random.default_rng(7)
    T, B = 12, 3
    x = rng.standard_normal((T, B, model.input_size))
    targets = make_targets(model, T, B, rng)
    masks = model.draw_masks(T, B, rng)
    full = model.gradients(x, targets, masks=masks)
    for budget in (None, 2, 5):
        loss, grads, state = checkpointed(model, x, targets, budget=budget, masks=masks)
        assert abs(loss - full.loss) < 1e-12
        for k in model.params:
            np.testing.assert_allclose(grads[k], full.params[k], rtol=0, atol=1e-12, err_msg=k)


def test_two_halves_of_the_batch_give_the_whole_batch_gradient():
    model = make_model("lstm", layers=2, seed=8, **FEATURES["all"])
    rng = np.random.default_rng(8)
    T, B = 6, 6
    x = rng.standard_normal((T, B, model.input_size))
    targets = make_targets(model, T, B, rng)
    masks = model.draw_masks(T, B, rng)
    one, two = (model.gradients(x, targets, masks=masks, threads=n) for n in (1, 2))
    assert abs(one.loss - two.loss) < 1e-12
    for k in model.params:
        np.testing.assert_allclose(one.params[k], two.params[k], rtol=0, atol=1e-12)


class MinimalGated(Cell):
    """A user cell with no kernels (the Python loop): h_t = (1 − f) ⊙ h_{t-1} + f ⊙ tanh(a)."""
    name = "mgu-lite"
    gates = 2

    def step(self, p, u, v, state):
        H = state[0].shape[1]
        z = u + v
        f = 0.5 * np.tanh(0.5 * z[:, :H]) + 0.5
        n = np.tanh(z[:, H:])
        return (state[0] + f * (n - state[0]),), (f, n, state[0])

    def step_backward(self, p, dstate, cache):
        f, n, h_prev = cache
        dh = dstate[0]
        dz = np.concatenate([dh * (n - h_prev) * f * (1 - f), dh * f * (1 - n * n)], axis=1)
        return dz, dz, (dh * (1 - f),), {}


def test_a_user_cell_takes_every_kind_of_noise():
    model = make_model(MinimalGated(), layers=2, seed=9, **FEATURES["all"])
    rng = np.random.default_rng(9)
    T, B = 5, 3
    x = rng.standard_normal((T, B, model.input_size))
    masks = model.draw_masks(T, B, rng)
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), masks=masks)
    assert report.worst() < TOL, str(report)


def test_gradcheck_takes_the_masks_of_a_float32_model():
    """gradcheck runs on a float64 copy of the model: the masks drawn by the float32 model
    are cast with it (their values are exact in both), zoneout's draws stay bool."""
    model = bptt.Model("gru", 2, 3, 2, num_layers=2, seed=0, dropout=0.2, input_dropout=0.2,
                       recurrent_dropout=0.2, zoneout=0.2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 2)).astype("float32"), rng.standard_normal((4, 3, 2)).astype("float32")
    masks = model.draw_masks(4, 3, np.random.default_rng(1))
    report = bptt.gradcheck(model, x, y, masks=masks)
    assert report.worst() < TOL, str(report)
    cast = masks.astype("float64")
    assert cast.between[0].dtype == np.float64 and cast.zone[0].dtype == np.bool_
    assert np.array_equal(cast.recurrent[1], masks.recurrent[1]) and cast.zone[1] is masks.zone[1]
    with pytest.raises(ValueError, match=r"masks.between\[0\]: expected shape \(4, 3, 3\) and dtype float64 "
                                         r"\(this model's draw_masks\), got \(4, 3, 3\) float32; "
                                         r"masks.astype\('float64'\) casts them"):
        model.astype("float64").gradients(x.astype("float64"), y.astype("float64"), masks=masks)


@pytest.mark.parametrize("options,message", [
    (dict(dropout=1.0, num_layers=2), "dropout: expected a probability in [0, 1), got 1.0"),
    (dict(zoneout=-0.1), "zoneout: expected a probability in [0, 1), got -0.1"),
    (dict(recurrent_dropout="0.2"), "recurrent_dropout: expected a probability"),
    (dict(dropout=0.2), "dropout: acts between stacked layers and num_layers=1 has none"),
])
def test_bad_rates_are_refused_by_name(options, message):
    with pytest.raises(ValueError) as err:
        bptt.Model("lstm", 3, 4, 2, **options)
    assert message in str(err.value)


def test_masks_of_another_shape_are_refused():
    model = bptt.Model("gru", 3, 4, 2, recurrent_dropout=0.2)
    masks = model.draw_masks(5, 2, np.random.default_rng(0))
    model.gradients(np.zeros((7, 2, 3), np.float32), np.zeros((7, 2, 2), np.float32), masks=masks)  # per sequence
    with pytest.raises(ValueError, match=r"masks: drawn for T=None, B=2; the inputs have T=7, B=3"):
        model.forward(np.zeros((7, 3, 3), np.float32), masks=masks)
    zoned = bptt.Model("gru", 3, 4, 2, zoneout=0.2).draw_masks(5, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"masks: drawn for T=5, B=2; the inputs have T=7, B=2"):
        bptt.Model("gru", 3, 4, 2, zoneout=0.2).forward(np.zeros((7, 2, 3), np.float32), masks=zoned)


@pytest.mark.parametrize("other,pattern", [
    (dict(cell="gru"), r"masks.zone\[0\]: expected shape \(5, 2, 2, 4\) and dtype bool .*got \(5, 2, 1, 4\) bool"),
    (dict(hidden_size=8), r"masks.zone\[0\]: expected shape \(5, 2, 2, 4\) .*got \(5, 2, 2, 8\) bool"),
    (dict(num_layers=2), r"masks: expected the Masks of this model \(model.draw_masks\), got Masks"),
    (dict(zoneout=0.0, recurrent_dropout=0.3), r"masks.recurrent\[0\]: expected none \(recurrent rate 0.0"),
])
def test_masks_of_another_model_are_refused_before_a_kernel_reads_them(other, pattern):
    """A zone mask for (S, H) = (1, 4) or (2, 8) read as the LSTM's (2, 4) went past the
    array's end in the compiled loop (no error); now every mask's shape, dtype and
    presence is checked against what this model's draw_masks gives."""
    model = bptt.Model("lstm", 3, 4, 2, dtype="float64", seed=0, zoneout=0.3)
    options = dict(cell="lstm", input_size=3, hidden_size=4, output_size=2, dtype="float64", zoneout=0.3) | other
    masks = bptt.Model(**options).draw_masks(5, 2, np.random.default_rng(1))
    with pytest.raises(ValueError, match=pattern):
        model.gradients(np.zeros((5, 2, 3)), np.zeros((5, 2, 2)), masks=masks)


def test_masks_in_another_dtype_and_a_seed_for_a_generator_are_refused():
    model = bptt.Model("lstm", 3, 4, 2, num_layers=2, dtype="float64", seed=0, dropout=0.2, input_dropout=0.1)
    masks = model.draw_masks(5, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"masks.between\[0\]: expected shape \(5, 2, 4\) and dtype float32 "
                                         r".*got \(5, 2, 4\) float64"):
        model.astype("float32").gradients(np.zeros((5, 2, 3), np.float32), np.zeros((5, 2, 2), np.float32),
                                          masks=masks)
    with pytest.raises(ValueError, match=r"rng: expected a numpy Generator .*got 0"):
        model.draw_masks(5, 2, 0)


def test_training_with_dropout_resumes_bit_for_bit(tmp_path):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    options = dict(steps=8, layers=2, hidden=16, seq_len=16, batch=4, eval_every=4, checkpoint_every=4,
                   dropout=0.2, input_dropout=0.1, recurrent_dropout=0.2, zoneout=0.1, init="chrono")
    Trainer(Config(**options, out=str(tmp_path / "whole"))).train(progress=False)
    Trainer(Config(**options, out=str(tmp_path / "split"))).train(progress=False, stop_at=4)
    Trainer.resume(tmp_path / "split").train(progress=False)
    from safetensors.numpy import load_file
    whole = load_file(tmp_path / "whole" / "ckpt-00000008.safetensors")
    split = load_file(tmp_path / "split" / "ckpt-00000008.safetensors")
    assert whole.keys() == split.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], split[k])
    plain = Trainer(Config(**(options | dict(dropout=0.0, input_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0)),
                           out=str(tmp_path / "plain")))
    plain.train(progress=False)
    other = load_file(tmp_path / "plain" / "ckpt-00000008.safetensors")
    assert np.abs(other["param.layer0.W_h"] - whole["param.layer0.W_h"]).max() > 1e-4   # the noise acted
