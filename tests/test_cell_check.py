"""A user cell's kernels are checked against its NumPy step when a Model is built
(cell_check.py): indexing outside the rows, a different formula and a value never
written are ValueErrors before the compiled loop (which checks no index) runs them."""
import numpy as np
import pytest
from numba import njit
from numba.extending import overload

import bptt
from bptt import cell_check
from bptt.cells import GRU, LSTM, RNN, Cell, CellLayer, CompiledLayer
from bptt.cells.layer_norm import LayerNormGRU, LayerNormLSTM
from test_compiled_loop import _minimal_gated_unit


def _with_kernels(forward=None, backward=None, **attributes):
    """The minimal gated unit of test_compiled_loop with one kernel or attribute replaced."""
    cell = _minimal_gated_unit()
    kind = type(cell)
    kind.kernels = (forward or kind.kernels[0], backward or kind.kernels[1])
    for name, value in attributes.items():
        setattr(kind, name, value)
    return cell


def test_the_minimal_gated_unit_passes_and_builds():
    model = bptt.Model(_minimal_gated_unit(), 3, 16, 2, dtype="float64")
    assert isinstance(model.layer, CompiledLayer)


@pytest.mark.parametrize("cell", [RNN("tanh"), RNN("relu"), LSTM(), GRU(), LayerNormLSTM(), LayerNormGRU()],
                         ids=lambda c: f"{type(c).__name__}-{c.option}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_built_in_cell_passes_the_check(cell, dtype):
    """No false alarms: the built-in kernels agree with their steps within the tolerance."""
    cell_check.check_on_one_row(cell, 24, dtype)


def test_a_tape_narrower_than_the_kernel_writes_names_the_line():
    cell = _with_kernels(tape_width=lambda self, H: H - 1)
    with pytest.raises(ValueError, match=r"^cell: MGU's forward_kernel indexes outside the rows it is given at "
                                         r".*test_compiled_loop.py:\d+ \(z\[j\], z\[H \+ j\], aux\[j\] = .*\): "
                                         r"IndexError: index 7 is out of bounds .* aux of tape_width\(8\) = 7"):
        bptt.Model(cell, 3, 8, 2)


def test_too_few_gates_is_an_index_error_naming_the_gates():
    cell = _with_kernels(gates=1)
    with pytest.raises(ValueError, match=r"forward_kernel indexes outside .* rows of G·H = 8 \(gates = 1\)"):
        bptt.Model(cell, 3, 8, 2)


@njit
def _backward_reading_one_state_too_many(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
    H = prev.shape[1]
    for j in range(H):
        du[j] = dv[j] = du[H + j] = dv[H + j] = ds[1, j]       # a second state the cell does not carry
        ds_prev[0, j] = 0


def test_a_backward_kernel_reading_a_state_the_cell_lacks_is_named():
    cell = _with_kernels(backward=_backward_reading_one_state_too_many)
    with pytest.raises(ValueError, match=r"^cell: MGU's backward_kernel indexes outside .* \(S, H\) = \(1, 8\) "
                                         r"blocks \(state = \('h',\)\)"):
        bptt.Model(cell, 3, 8, 2, dtype="float64")


@njit
def _forward_without_the_gate(z, rec, bias, extra, prev, new, aux, option):
    H = prev.shape[1]
    for j in range(H):
        n = np.tanh(z[H + j] + bias[H + j] + rec[H + j])
        z[j], z[H + j], aux[j] = 1.0, n, rec[H + j]
        new[0, j] = n                                          # the gate f left out


def test_a_forward_kernel_with_another_formula_is_named_with_the_value():
    cell = _with_kernels(forward=_forward_without_the_gate)
    with pytest.raises(ValueError, match=r"^cell: MGU's forward_kernel disagrees with MGU.step: new state 'h'\[0\] "
                                         r"is \S+ against \S+ \(H = 8, float32, one row of random numbers\)"):
        bptt.Model(cell, 3, 8, 2)


def test_a_value_the_kernel_never_writes_is_named():
    cell = _minimal_gated_unit()
    backward = type(cell).kernels[1]

    @njit
    def backward_leaving_the_last_unwritten(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
        back = np.empty_like(ds_prev)
        backward(ds, z, aux, extra, prev, new, du, dv, back, dextra, option)
        ds_prev[0, :-1] = back[0, :-1]

    cell = _with_kernels(backward=backward_leaving_the_last_unwritten)
    with pytest.raises(ValueError, match=r"backward_kernel disagrees with MGU.step_backward: ds_prev of state "
                                         r"'h'\[7\] is nan .*NaN: the kernel never writes it"):
        bptt.Model(cell, 3, 8, 2, dtype="float64")


def _compiled_only(x):
    raise NotImplementedError("compiled code only")


@overload(_compiled_only)
def _compiled_only_for(x):
    return lambda x: x


@njit
def _forward_python_cannot_run(z, rec, bias, extra, prev, new, aux, option):
    H = prev.shape[1]
    for j in range(H):
        f = 0.5 * np.tanh(0.5 * (z[j] + rec[j] + bias[j])) + 0.5
        n = np.tanh(z[H + j] + bias[H + j] + f * rec[H + j])
        z[j], z[H + j], aux[j] = f, n, _compiled_only(rec[H + j])
        new[0, j] = prev[0, j] + f * (n - prev[0, j])


def test_a_kernel_only_numba_can_run_is_left_to_the_loop():
    """An overload with no Python body: the check steps aside and the compiled loop runs it,
    equal to the Python loop."""
    cell = _with_kernels(forward=_forward_python_cannot_run)
    model = bptt.Model(cell, 3, 5, 2, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 3))
    params = {k.split(".", 1)[1]: v for k, v in model.params.items() if k.startswith("layer0.")}
    state0 = (np.zeros((4, 5)),)
    h, _, tape = model.layer.forward(params, x, state0)
    assert type(tape).__name__ == "CompiledTape"
    assert np.abs(h - CellLayer(cell).forward(params, x, state0)[0]).max() < 1e-12


class _ScaledTanh(Cell):
    """h_t = a ⊙ tanh(u_t + v_t), with an extra parameter a (H,)."""
    name, gates, state, dv_is_du = "scaled", 1, ("h",), True

    def extra_shapes(self, H):
        return {"a": (H,)}

    def step(self, p, u, v, state):
        t = np.tanh(u + v)
        return (p["a"] * t,), (t,)

    def step_backward(self, p, dstate, cache):
        (dh,), (t,) = dstate, cache
        d = dh * p["a"] * (1 - t * t)
        return d, d, (np.zeros_like(dh),), {"a": (dh * t).sum(axis=0)}


@njit
def _scaled_forward(z, rec, bias, extra, prev, new, aux, option):
    for j in range(prev.shape[1]):
        t = np.tanh(z[j] + rec[j] + bias[j])
        z[j] = t
        new[0, j] = extra[j] * t


def _scaled_backward(dextra_adds):
    @njit
    def backward(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
        for j in range(prev.shape[1]):
            t, dh = z[j], ds[0, j]
            du[j] = dh * extra[j] * (1 - t * t)
            ds_prev[0, j] = 0
            if dextra_adds:
                dextra[j] += dh * t
            else:
                dextra[j] = dh * t                              # sets the row's sum instead of adding to it
    return backward


def test_a_kernel_that_sets_dextra_instead_of_adding_to_it_is_named():
    adds, sets = type("Adds", (_ScaledTanh,), {}), type("Sets", (_ScaledTanh,), {})
    adds.kernels, sets.kernels = (_scaled_forward, _scaled_backward(True)), (_scaled_forward, _scaled_backward(False))
    bptt.Model(adds(), 3, 6, 2, dtype="float64")
    with pytest.raises(ValueError, match=r"^cell: Sets's backward_kernel disagrees with Sets.step_backward: "
                                         r"dextra \(what it adds\)\[0\] is "):
        bptt.Model(sets(), 3, 6, 2, dtype="float64")


def test_an_error_of_the_cells_own_step_names_the_cell_and_the_sizes():
    cell = _with_kernels(state=("h", "c"))                      # the MGU's step unpacks one state
    with pytest.raises(ValueError, match=r"^cell: MGU.step fails on one row: ValueError: too many values to "
                                         r"unpack .*\(S, H\) = \(2, 8\) blocks \(state = \('h', 'c'\)\)"):
        bptt.Model(cell, 3, 8, 2)


def test_a_numpy_cell_whose_gates_disagree_with_its_step_is_named_when_the_model_is_built():
    cell = _with_kernels(kernels=None, gates=3)
    with pytest.raises(ValueError, match=r"^cell: MGU.step fails on one row: ValueError: operands could not be "
                                         r"broadcast .*; with H = 8 it gets rows of G·H = 24 \(gates = 3\), "
                                         r"\(S, H\) = \(1, 8\) blocks \(state = \('h',\)\); expected gates"):
        bptt.Model(cell, 3, 8, 2)


@njit
def _forward_without_option(z, rec, bias, extra, prev, new, aux):
    for j in range(prev.shape[1]):
        new[0, j] = z[j]


def test_a_kernel_that_does_not_take_the_protocols_arguments_is_named():
    """Python could not call it, so the check stepped aside, and the loop's first pass
    named Numba's internal variables instead ('Cannot bind args=[Var($826binary_subscr…')."""
    cell = _with_kernels(forward=_forward_without_option)
    with pytest.raises(ValueError) as caught:
        bptt.Model(cell, 3, 8, 2)
    assert str(caught.value) == (
        "cell: MGU's forward_kernel takes _forward_without_option(z, rec, bias, extra, prev, new, aux), which "
        "cannot take the 8 arguments the loop hands it (too many positional arguments); expected "
        "forward_kernel(z, rec, bias, extra, prev, new, aux, option) (bptt.cells.protocol)")
