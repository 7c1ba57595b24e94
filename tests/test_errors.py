"""Bad input raises ValueError naming the argument, what came and what was expected."""
import numpy as np
import pytest

import bptt
from helpers import make_model


@pytest.fixture
def model():
    return make_model("lstm", layers=2, D=3, H=4, O=2, dtype="float64")


@pytest.fixture
def ce_model():
    return make_model("gru", D=3, H=4, O=5, head="softmax", loss="cross_entropy", dtype="float64")


X = np.zeros((4, 2, 3))
Y = np.zeros((4, 2, 2))


@pytest.mark.parametrize("x,pattern", [
    (np.zeros((4, 3)), r"x: expected shape \(T, B, 3\), got shape \(4, 3\)"),
    (np.zeros((4, 2, 5)), r"x: expected shape \(T, B, 3\), got shape \(4, 2, 5\)"),
    (np.zeros((0, 2, 3)), r"x: .*no empty dimension, got shape \(0, 2, 3\)"),
    (np.zeros((4, 2, 3), np.float32), r"x: expected dtype float64 .*got float32"),
    (np.zeros((4, 2, 3), int), r"x: expected dtype float64 .*got int64"),
    (np.full((4, 2, 3), np.nan), r"x: expected finite numbers, got nan at index \(0, 0, 0\)"),
    ("abc", r"x: expected an array of numbers"),
])
def test_bad_inputs(model, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(x, Y)


@pytest.mark.parametrize("targets,pattern", [
    (np.zeros((4, 2, 3)), r"targets: expected shape \(4, 2, 2\), got shape \(4, 2, 3\)"),
    (np.zeros((3, 2, 2)), r"targets: expected shape \(4, 2, 2\)"),
    (np.full((4, 2, 2), np.inf), r"targets: expected finite numbers, got inf"),
])
def test_bad_float_targets(model, targets, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(X, targets)


@pytest.mark.parametrize("targets,pattern", [
    (np.full((4, 2), 5), r"targets .*: expected class indices in \[0, 4\], got values in \[5, 5\]"),
    (np.full((4, 2), -1), r"expected class indices in \[0, 4\], got values in \[-1, -1\]"),
    (np.zeros((4, 2)), r"expected integer class indices, got dtype float64; convert with \.astype\(int\)"),
    (np.full((4, 2), 0.5), r"expected integer class indices, got dtype float64"),
    (np.zeros((4, 3), int), r"targets .*: expected shape \(4, 2\), got shape \(4, 3\)"),
])
def test_bad_class_targets(ce_model, targets, pattern):
    with pytest.raises(ValueError, match=pattern):
        ce_model.loss_and_grads(X, targets)


@pytest.mark.parametrize("mask,pattern", [
    (np.ones((4, 2)), r"mask: expected a boolean array .*got dtype float64"),
    (np.ones((4, 3), bool), r"mask: expected shape \(4, 2\), got shape \(4, 3\)"),
    (np.zeros((4, 2), bool), r"mask: expected at least one valid step, got none"),
])
def test_bad_masks(model, mask, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(X, Y, mask=mask)


def test_last_output_needs_a_valid_step_per_sequence():
    m = make_model("rnn", outputs="last", O=2)
    mask = np.ones((4, 2), bool)
    mask[:, 1] = False
    with pytest.raises(ValueError, match="mask: sequence 1 has no valid step"):
        m.loss_and_grads(X, np.zeros((2, 2)), mask=mask)


@pytest.mark.parametrize("state,pattern", [
    (np.zeros((2, 2, 4)), r"state0: expected a tuple \(h0, c0\) of arrays \(2, 2, 4\)"),
    ((np.zeros((2, 2, 4)), np.zeros((1, 2, 4))), r"state0\[1\]: expected shape \(2, 2, 4\), got shape \(1, 2, 4\)"),
    ((np.zeros((2, 2, 4)), np.full((2, 2, 4), np.nan)), r"state0\[1\]: expected finite numbers"),
])
def test_bad_states(model, state, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(X, Y, state0=state)


def test_bad_dstate_is_named(model):
    with pytest.raises(ValueError, match=r"dstate\[0\]: expected shape \(2, 2, 4\)"):
        model.gradients(X, Y, dstate=(np.zeros((2, 3, 4)), np.zeros((2, 2, 4))))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"cell": "transformer"}, r"cell: expected one of 'rnn', 'lstm', 'gru' or 'package.module:ClassName', got 'transformer'"),
    ({"hidden_size": 0}, r"hidden_size: expected a positive integer, got 0"),
    ({"num_layers": 1.5}, r"num_layers: expected a positive integer, got 1.5"),
    ({"nonlinearity": "gelu"}, r"nonlinearity: expected one of"),
    ({"cell": "lstm", "nonlinearity": "relu"}, r"nonlinearity: applies to cell='rnn' only"),
    ({"loss": "cross_entropy"}, r"head: loss='cross_entropy' expects head in \('softmax',\), got 'identity'"),
    ({"head": "softmax", "loss": "bce"}, r"head: loss='bce' expects head in \('sigmoid',\)"),
    ({"dtype": "float16"}, r"dtype: expected 'float32' or 'float64', got 'float16'"),
    ({"outputs": "first"}, r"outputs: expected one of 'all', 'last', got 'first'"),
    ({"reduction": "max"}, r"reduction: expected one of 'mean', 'sum'"),
    ({"init": "xavier"}, r"init: expected one of 'default', 'orthogonal'"),
])
def test_bad_model_arguments(kwargs, pattern):
    args = {"cell": "rnn", "input_size": 3, "hidden_size": 4, "output_size": 2} | kwargs
    with pytest.raises(ValueError, match=pattern):
        bptt.Model(**args)


def test_errors_leave_the_model_unchanged(model):
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError):
        model.loss_and_grads(np.full((4, 2, 3), np.nan), Y)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


@pytest.mark.parametrize("kwargs,name", [({"eps": -1.0}, "eps"), ({"eps": float("nan")}, "eps"),
                                         ({"eps": 0}, "eps"), ({"floor": -1e-3}, "floor"), ({"eps": "1e-3"}, "eps")])
def test_gradcheck_names_a_bad_step_or_floor(kwargs, name):
    m = bptt.Model("gru", 2, 3, 2, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=f"^{name}: expected a positive finite number"):
        bptt.gradcheck(m, np.zeros((4, 2, 2)), np.zeros((4, 2, 2)), **kwargs)
