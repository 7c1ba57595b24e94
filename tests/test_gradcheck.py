"""Finite differences agree with the hand-derived gradients: every layer kind, activation,
head/loss, 1 and 2 layers, outputs at every step or the last, with masks, nonzero biases
and states, and random targets weighting every output differently."""
import zlib

import numpy as np
import pytest
from numba import njit

import bptt
from bptt.cells import lstm
from helpers import HEAD_LOSSES, KINDS, make_model, make_state, make_targets, ragged_mask

TOL = 1e-6


def eps_for(nonlinearity):
    # relu has a kink at 0: keep the 4 probes (±ε, ±2ε) on one side of it.
    return 1e-4 if nonlinearity == "relu" else 1e-3


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
@pytest.mark.parametrize("head,loss", HEAD_LOSSES)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_gradients_match_finite_differences(cell, nonlinearity, head, loss, layers, outputs):
    seed = zlib.crc32(repr((cell, nonlinearity, head, loss, layers, outputs)).encode()) % 1000
    rng = np.random.default_rng(seed)
    model = make_model(cell, nonlinearity, layers, head=head, loss=loss, outputs=outputs, seed=seed)
    T, B = 4, 3
    x = rng.standard_normal((T, B, model.input_size))
    mask = ragged_mask(T, [4, 2, 3])
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng), mask,
                              eps=eps_for(nonlinearity))
    expected = set(model.params) | {"x", "h0"} | ({"c0"} if cell == "lstm" else set())
    assert set(report) == expected
    assert report.worst() < TOL, str(report)


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradients_without_mask_and_longer_sequence(cell, nonlinearity, reduction):
    rng = np.random.default_rng(7)
    model = make_model(cell, nonlinearity, 2, H=5, reduction=reduction, seed=3)
    T, B = 9, 2
    x = rng.standard_normal((T, B, model.input_size))
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng),
                            eps=eps_for(nonlinearity))
    assert report.worst() < TOL, str(report)


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_gradients_with_one_hot_inputs_match_finite_differences(cell, nonlinearity):
    """Unit-vector rows of x take the compiled layers' gather and per-code sums for (K1) and
    ∂L/∂W_x (backends/bulk.py); finite differences hold them to the same derivative."""
    from bptt.cells.compiled import CompiledTape
    rng = np.random.default_rng(5)
    model = make_model(cell, nonlinearity, 2, D=4, H=5, seed=2)
    T, B = 6, 3
    x = np.eye(model.input_size)[rng.integers(0, model.input_size, (T, B))]
    tape = model._forward(x, model._split_state(None, B), None).tapes[0]
    assert isinstance(tape, CompiledTape) and tape.codes is not None
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng),
                            ragged_mask(T, [6, 3, 5]), eps=eps_for(nonlinearity))
    assert report.worst() < TOL, str(report)


def test_gradcheck_detects_a_wrong_gradient(monkeypatch):
    """The checker itself can fail: break one derivative of the reference step (the Python
    loop runs it) and it must report it."""
    from bptt.backends import settings
    from bptt.ops import activations
    broken = activations.ACTIVATIONS["tanh"]._replace(derivative=lambda h: 1 - 0.9 * h * h)
    monkeypatch.setitem(activations.ACTIVATIONS, "tanh", broken)
    monkeypatch.setattr(settings, "loops_enabled", lambda: False)
    rng = np.random.default_rng(0)
    model = make_model("rnn", "tanh")
    x = rng.standard_normal((3, 2, 3))
    report = bptt.gradcheck(model, x, make_targets(model, 3, 2, rng))
    assert report["layer0.W_h"] > 1e-3


@njit
def _lstm_backward_off_by_a_tenth(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    lstm.backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option)
    du[:du.size // 4] *= 0.9                          # δz_i a tenth too small


class _BrokenLSTM(lstm.LSTM):
    kernels = (lstm.forward_kernel, _lstm_backward_off_by_a_tenth)


def test_gradcheck_detects_a_wrong_compiled_kernel(monkeypatch):
    """The Model refuses such a kernel when it is built (cell_check.py); with that check
    skipped, gradcheck finds it on its own."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"_BrokenLSTM's backward_kernel disagrees with _BrokenLSTM.step_backward"):
        bptt.Model(_BrokenLSTM(), 3, 4, 2, dtype="float64", seed=0)
    monkeypatch.setattr(bptt.model, "check_on_one_row", lambda *args, **options: None)
    model = bptt.Model(_BrokenLSTM(), 3, 4, 2, dtype="float64", seed=0)
    x = rng.standard_normal((4, 3, 3))
    report = bptt.gradcheck(model, x, rng.standard_normal((4, 3, 2)))
    assert report["layer0.W_x"] > 1e-3 and report["layer0.b_h"] > 1e-3
    assert bptt.gradcheck(bptt.Model("lstm", 3, 4, 2, dtype="float64", seed=0), x,
                          rng.standard_normal((4, 3, 2))).worst() < TOL


def test_gradcheck_leaves_model_and_float32_params_unchanged():
    rng = np.random.default_rng(1)
    model = make_model("lstm", dtype="float32")
    before = {k: v.copy() for k, v in model.params.items()}
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    report = bptt.gradcheck(model, x, make_targets(model, 3, 2, rng))
    assert report.worst() < TOL       # the check itself runs in float64
    for k, v in model.params.items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k])


def test_a_loss_curved_on_the_scale_of_the_step_is_measured_at_finer_steps():
    """Layer norm of h0 W_hᵀ at h0 = 0 normalises a zero vector: the loss bends within
    ε = 1e-3 of h0, where the difference at ε alone reported an error of 0.5 on a correct
    gradient. The entries that disagree are measured again at ε/10 and ε/100."""
    rng = np.random.default_rng(1)
    model = bptt.Model("lstm", 2, 4, 3, dtype="float64", seed=1, layer_norm=True, num_layers=2)
    x, y = rng.standard_normal((5, 2, 2)), rng.standard_normal((5, 2, 3))
    report = bptt.gradcheck(model, x, y)
    assert report.worst() < TOL, str(report)
    from bptt.gradcheck import _central_differences
    h0 = model.init_state(2)[0]
    analytic = model.gradients(x, y, (h0, np.zeros_like(h0))).state0[0].reshape(-1)
    loss = lambda: model.loss_value(x, y, (h0, np.zeros_like(h0)))        # noqa: E731
    at_eps = _central_differences(loss, h0, 1e-3, range(h0.size))
    assert np.abs(at_eps - analytic).max() > 1e-3 * np.abs(analytic).max()   # why the finer steps are needed


@pytest.mark.parametrize("seed", [2, 4])
def test_a_tiny_gradient_under_a_projection_is_measured_at_larger_steps(seed):
    """A 2-layer LSTM with proj_size: layer 0's W_h gradient is ~5e-5 at most, and some
    entries ~5e-9, next to a loss of ~1: at ε the loss's rounding reported 2.7e-6 (1.3e-6
    at seed 4, 2.4e-5 with dropout masks) on a gradient equal to torch's to 2e-15. The
    entries that disagree are measured again at 10ε and 100ε as well."""
    model = bptt.Model("lstm", 3, 4, 2, num_layers=2, proj_size=2, dtype="float64", seed=seed,
                       dropout=0.3, input_dropout=0.2)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 2))
    for masks in (None, model.draw_masks(5, 2, np.random.default_rng(5))):
        report = bptt.gradcheck(model, x, y, masks=masks)
        assert report.worst() < TOL, str(report)
