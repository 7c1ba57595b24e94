"""Mistakes in a cell of one's own are refused by name when the Model is built or saved:
a wrong derivative, a write into a parameter, extra_shapes or initialize out of the
protocol, a constructor's own error, a config() that does not build the cell again."""
import numpy as np
import pytest

import bptt
from bptt.cells import build


class _IndRNN(bptt.Cell):
    """h = act(u + w ⊙ h_prev): a diagonal recurrence in the extra w; W_h kept at zero."""
    name, gates, state = "indrnn", 1, ("h",)

    def __init__(self, activation="tanh"):
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation: expected 'tanh' or 'relu', got {activation!r}")
        self.activation = activation

    def config(self):
        return {"activation": self.activation}

    def extra_shapes(self, H):
        return {"w": (H,)}

    def initialize(self, params, rng, H):
        params["W_h"][...] = 0
        params["w"][...] = rng.uniform(0, 1, H)

    def step(self, p, u, v, state):
        a = u + p["w"] * state[0]
        h = np.tanh(a) if self.activation == "tanh" else np.maximum(a, 0)
        return (h,), (h, state[0])

    def step_backward(self, p, dstate, cache):
        (dh,), (h, h_prev) = dstate, cache
        da = dh * (1 - h * h) if self.activation == "tanh" else dh * (h > 0)
        return da, np.zeros_like(da), (da * p["w"],), {"w": (da * h_prev).sum(axis=0)}


class _OffByOnePercent(_IndRNN):
    def step_backward(self, p, dstate, cache):
        du, dv, back, dextra = super().step_backward(p, dstate, cache)
        return du, dv, back, {"w": 1.01 * dextra["w"]}


class _Surrogate(_OffByOnePercent):
    exact_backward = False


class _ReluForgetsItsMask(_IndRNN):
    def step_backward(self, p, dstate, cache):
        if self.activation == "tanh":
            return super().step_backward(p, dstate, cache)
        (dh,), (_, h_prev) = dstate, cache
        return dh, np.zeros_like(dh), (dh * p["w"],), {"w": (dh * h_prev).sum(axis=0)}


class _ClipsItsWeight(_IndRNN):
    def step(self, p, u, v, state):
        np.clip(p["w"], -0.5, 0.5, out=p["w"])                  # IndRNN's constraint, in the wrong place
        return super().step(p, u, v, state)


class _NeedsRelu(_IndRNN):
    def __init__(self, activation="sigmoid"):
        super().__init__(activation)


class _ConfigMisnamed(_IndRNN):
    def config(self):
        return {"act": self.activation}


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 3, 3)), rng.standard_normal((6, 3, 2))


def test_the_indrnn_builds_and_its_gradient_is_exact():
    for activation in ("tanh", "relu"):
        model = bptt.Model(_IndRNN(activation), 3, 8, 2, dtype="float64", seed=0)
        assert np.all(model.params["layer0.W_h"] == 0)
        assert bptt.gradcheck(model, *_data()).worst() < 1e-6


def test_a_wrong_derivative_in_step_backward_is_named_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"^cell: _OffByOnePercent.step_backward's dextra\['w'\] disagrees with "
                                         r"central differences of _OffByOnePercent.step: dextra\['w'\]\[\d\] is "
                                         r"\S+ against \S+ \(H = 8, float64, two rows of random numbers\); expected "
                                         r"step_backward to give the derivative of step .* sets exact_backward = "
                                         r"False$"):
        bptt.Model(_OffByOnePercent(), 3, 8, 2, seed=0)          # float32: the check runs in float64
    model = bptt.Model(_Surrogate(), 3, 8, 2, dtype="float64", seed=0)     # on purpose: built
    assert bptt.gradcheck(model, *_data()).worst() > 1e-3


def test_a_cell_built_with_other_arguments_is_checked_again():
    bptt.Model(_ReluForgetsItsMask("tanh"), 3, 8, 2, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"^cell: _ReluForgetsItsMask.step_backward's du disagrees with central "
                                         r"differences"):
        bptt.Model(_ReluForgetsItsMask("relu"), 3, 8, 2, dtype="float64", seed=0)


class _NoConfigReluForgetsItsMask(_ReluForgetsItsMask):
    config = None                                  # the arguments live only in the attributes


def test_a_cell_without_config_built_with_other_arguments_is_checked_again():
    """The verdict was kept per config(): without one, the relu cell built after the tanh one
    was taken unchecked, and its gradient was off (gradcheck's worst relative error 1.8)."""
    bptt.Model(_NoConfigReluForgetsItsMask("tanh"), 3, 8, 2, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"^cell: _NoConfigReluForgetsItsMask.step_backward's du disagrees with "
                                         r"central differences"):
        bptt.Model(_NoConfigReluForgetsItsMask("relu"), 3, 8, 2, dtype="float64", seed=0)


def test_a_step_writing_into_a_parameter_is_named():
    with pytest.raises(ValueError, match=r"^cell: _ClipsItsWeight.step writes into p\['w'\], which it may only "
                                         r"read \(.*read-only\); return new arrays; the model's parameters change "
                                         r"only by the optimizer's update$"):
        bptt.Model(_ClipsItsWeight(), 3, 8, 2, dtype="float64", seed=0)


@pytest.mark.parametrize("shapes,shown", [(lambda H: {"w": H}, "{'w': 8}"),
                                          (lambda H: [("w", (H,))], "[('w', (8,))]"),
                                          (lambda H: {"w": (H, -1)}, "{'w': (8, -1)}"),
                                          (lambda H: {"w": [H]}, "{'w': [8]}")])
def test_extra_shapes_out_of_the_protocol_are_named(shapes, shown):
    kind = type("Shaped", (_IndRNN,), {"extra_shapes": lambda self, H: shapes(H)})
    with pytest.raises(ValueError) as caught:
        bptt.Model(kind(), 3, 8, 2, seed=0)
    assert str(caught.value) == (f"cell: Shaped.extra_shapes(8) expected {{name: shape}}, each shape a tuple of "
                                 f"whole numbers >= 1 (say (H,) or (H, H); () for a scalar), got {shown}")


def test_a_scalar_extra_parameter_is_taken():
    class Shared(_IndRNN):
        def extra_shapes(self, H):
            return {"w": ()}

        def initialize(self, params, rng, H):
            params["w"][...] = 0.5

        def step_backward(self, p, dstate, cache):
            du, dv, back, dextra = super().step_backward(p, dstate, cache)
            return du, dv, back, {"w": dextra["w"].sum()}

    model = bptt.Model(Shared(), 3, 8, 2, dtype="float64", seed=0)
    assert model.params["layer0.w"].shape == () and bptt.gradcheck(model, *_data()).worst() < 1e-6


def test_a_wrong_derivative_of_a_scalar_parameter_is_named():
    """A scalar's gradient summed over the batch is a NumPy scalar, not an array: the
    derivative check skipped the whole cell for it, and a gradient off by a factor 2 was built."""
    class Doubled(_IndRNN):
        def extra_shapes(self, H):
            return {"w": ()}

        def step_backward(self, p, dstate, cache):
            du, dv, back, dextra = super().step_backward(p, dstate, cache)
            return du, dv, back, {"w": 2 * dextra["w"].sum()}

    with pytest.raises(ValueError, match=r"^cell: Doubled.step_backward's dextra\['w'\] disagrees with central "
                                         r"differences of Doubled.step: dextra\['w'\] is \S+ against \S+ \(H = 8,"):
        bptt.Model(Doubled(), 3, 8, 2, dtype="float64", seed=0)


def test_an_extra_gradient_averaged_over_the_batch_is_named():
    """On one row a mean over the batch equals the sum: such a cell was built, and its
    gradient of w was 1/B of the true one (gradcheck's relative error 0.75 at B = 4)."""
    class Averaged(_IndRNN):
        def step_backward(self, p, dstate, cache):
            du, dv, back, _ = super().step_backward(p, dstate, cache)
            return du, dv, back, {"w": (du * cache[1]).mean(axis=0)}

    with pytest.raises(ValueError, match=r"^cell: Averaged.step_backward's dextra\['w'\] disagrees with central "
                                         r"differences of Averaged.step: .* two rows of random numbers"):
        bptt.Model(Averaged(), 3, 8, 2, dtype="float64", seed=0)


class _Gain(bptt.Cell):
    """h = √g ⊙ tanh(u + v): a gain the cell keeps positive (initialised to 1)."""
    name = "gain"

    def extra_shapes(self, H):
        return {"g": (H,)}

    def initialize(self, params, rng, H):
        params["g"][...] = 1.0

    def step(self, p, u, v, state):
        t = np.tanh(u + v)
        return (np.sqrt(p["g"]) * t,), (t,)

    def step_backward(self, p, dstate, cache):
        (dh,), (t,) = dstate, cache
        da = dh * np.sqrt(p["g"]) * (1 - t * t)
        return da, da, (np.zeros_like(da),), {"g": (dh * t * 0.5 / np.sqrt(p["g"])).sum(axis=0)}


def test_a_parameter_kept_in_its_domain_is_checked_where_it_is_defined():
    """The check drew g from N(0, 1/H), where √g is NaN, and refused the correct cell with
    'du[0, 0] is nan against nan'; it takes the parameters as initialize gives them there."""
    model = bptt.Model(_Gain(), 3, 8, 2, dtype="float64", seed=0)
    assert bptt.gradcheck(model, *_data()).worst() < 1e-6

    class HalfForgotten(_Gain):
        def step_backward(self, p, dstate, cache):
            du, dv, back, dextra = super().step_backward(p, dstate, cache)
            return du, dv, back, {"g": 2 * dextra["g"]}             # without the ½ of d√g/dg

    with pytest.raises(ValueError, match=r"^cell: HalfForgotten.step_backward's dextra\['g'\] disagrees with "
                                         r"central differences"):
        bptt.Model(HalfForgotten(), 3, 8, 2, dtype="float64", seed=0)


def test_a_step_that_returns_the_state_alone_is_named():
    """It was Python's own 'not enough values to unpack (expected 2, got 1)'."""
    class StateAlone(_IndRNN):
        def step(self, p, u, v, state):
            return super().step(p, u, v, state)[0]

    with pytest.raises(ValueError) as caught:
        bptt.Model(StateAlone(), 3, 8, 2, seed=0)
    assert str(caught.value) == ("cell: StateAlone.step must return (state, cache), a pair of tuples, got tuple "
                                 "of length 1")


def test_an_initialize_that_replaces_or_drops_a_parameter_is_named():
    def replaces(self, params, rng, H):
        params["w"] = np.ones(H + 1)

    def drops(self, params, rng, H):
        del params["w"]

    with pytest.raises(ValueError) as caught:
        bptt.Model(type("Replaces", (_IndRNN,), {"initialize": replaces})(), 3, 8, 2)
    assert str(caught.value) == ("cell: Replaces.initialize(params, rng, 8) expected params['w'] of shape (8,), "
                                 "got (9,); change its values in place (params['w'][...] = …)")
    with pytest.raises(ValueError) as caught:
        bptt.Model(type("Drops", (_IndRNN,), {"initialize": drops})(), 3, 8, 2)
    assert str(caught.value) == ("cell: Drops.initialize(params, rng, 8) expected to keep the parameters "
                                 "['W_h', 'W_x', 'b_h', 'w'], got ['W_h', 'W_x', 'b_h']; change their values in "
                                 "place (params[name][...] = …)")


def test_an_initialize_that_writes_a_nan_is_named():
    """The model was built, and training stopped at update 0 blaming the optimizer's step
    and the learning rate."""
    def minus_infinity(self, params, rng, H):
        params["w"][...] = -np.inf
        params["w"][1:] = 0.5

    with pytest.raises(ValueError) as caught:
        bptt.Model(type("Infinite", (_IndRNN,), {"initialize": minus_infinity})(), 3, 8, 2)
    assert str(caught.value) == ("cell: Infinite.initialize(params, rng, 8) expected finite values in params['w'], "
                                 "got 1 of 8 not finite (NaN or ±inf)")


def test_a_cell_that_does_not_subclass_cell_is_named():
    """It has every method a cell writes but not the defaults Cell gives: the model failed
    with AttributeError: 'Duck' object has no attribute 'extra_shapes'."""
    class Duck:
        name, gates, state = "duck", 1, ("h",)
        param_shapes, initialize = bptt.Cell.param_shapes, bptt.Cell.initialize
        step, step_backward = _IndRNN.step, _IndRNN.step_backward

    with pytest.raises(ValueError) as caught:
        bptt.Model(Duck(), 3, 8, 2)
    assert str(caught.value) == ("cell: expected 'rnn', 'lstm', 'gru', 'module:Class' or a bptt.Cell, got Duck, "
                                 "which does not subclass bptt.Cell")


def test_a_constructors_own_error_names_the_cell():
    with pytest.raises(ValueError) as caught:
        build("test_user_cell_mistakes:_NeedsRelu")
    assert str(caught.value) == ("cell: test_user_cell_mistakes:_NeedsRelu cannot be built with no arguments: "
                                 "activation: expected 'tanh' or 'relu', got 'sigmoid'")


def test_save_refuses_a_config_that_does_not_build_the_cell_again(tmp_path):
    with pytest.raises(ValueError, match=r"^cell: _ConfigMisnamed.config\(\) expected its constructor's keyword "
                                         r"arguments, from which bptt.load builds the cell again as "
                                         r"_ConfigMisnamed\(\*\*config\(\)\), got \{'act': 'tanh'\}, and "
                                         r"_ConfigMisnamed\(\*\*\{'act': 'tanh'\}\) gives TypeError: .*'act'$"):
        bptt.Model(_ConfigMisnamed(), 3, 8, 2, seed=0).save(tmp_path / "m")
    assert not (tmp_path / "m" / "model.json").exists()
    model = bptt.Model(_IndRNN("relu"), 3, 8, 2, seed=0)
    assert bptt.load(model.save(tmp_path / "ok")).layer.cell.config() == {"activation": "relu"}


@pytest.mark.parametrize("command", [["train", "--task", "adding", "--steps", "1"], ["flow"]])
def test_train_and_flow_name_a_cell_that_fails_its_check_as_the_option(command, tmp_path, capsys):
    """Both commands say --cell, the option the cell came from (flow said cell:)."""
    from bptt.cli import main
    code = main([*command, "--cell", "test_user_cell_mistakes:_OffByOnePercent", "--hidden", "4", "--seq-len", "5",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bptt: error: --cell: _OffByOnePercent.step_backward's dextra['w'] "), err
    assert not (tmp_path / "o").exists()


def test_a_cells_repr_shows_the_arguments_it_was_built_with():
    """repr(Model(_IndRNN("relu"), …)) said cell=_IndRNN(), the repr of another cell."""
    model = bptt.Model(_IndRNN("relu"), 3, 8, 2, seed=0)
    assert repr(model.layer.cell) == "_IndRNN(activation='relu')"
    assert repr(model).startswith("Model(cell=_IndRNN(activation='relu'), input_size=3,")
    assert repr(bptt.cells.RNN("relu")) == "RNN(nonlinearity='relu')" and repr(bptt.cells.GRU()) == "GRU()"
