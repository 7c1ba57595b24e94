"""Invariants of backpropagation through time: chunks with carried state and carried
state gradient equal the whole sequence; stepping one step at a time equals the whole."""
import numpy as np
import pytest

import bptt

from helpers import KINDS, make_model, make_state, make_targets



@pytest.mark.parametrize("cell,nonlinearity", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
def test_chunks_with_carried_state_and_gradient_equal_full_sequence(cell, nonlinearity, layers):
    rng = np.random.default_rng(11)
    model = make_model(cell, nonlinearity, layers, H=5, reduction="sum", seed=2)
    T, B = 12, 3
    x = rng.standard_normal((T, B, model.input_size))
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    full = model.gradients(x, targets, state0)

    bounds = [0, 5, 6, 12]              # chunks of 5, 1 and 6 steps
    states = [state0]
    for a, b in zip(bounds, bounds[1:]):
        _, s = model.forward(x[a:b], states[-1])
        states.append(s)
    dstate, grads, dxs, loss = None, None, [], 0.0
    for i in range(len(bounds) - 2, -1, -1):
        a, b = bounds[i], bounds[i + 1]
        g = model.gradients(x[a:b], targets[a:b], states[i], dstate=dstate)
        dstate = g.state0
        loss += g.loss
        dxs.insert(0, g.x)
        grads = g.params if grads is None else {k: grads[k] + g.params[k] for k in grads}
    assert loss == pytest.approx(full.loss, rel=1e-13)
    for k in full.params:
        np.testing.assert_allclose(grads[k], full.params[k], rtol=1e-11, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(np.concatenate(dxs), full.x, rtol=1e-11, atol=1e-13)
    for ours, ref in zip(np.atleast_1d(dstate) if cell != "lstm" else dstate,
                         np.atleast_1d(full.state0) if cell != "lstm" else full.state0):
        np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_stepping_one_step_at_a_time_equals_whole_sequence(cell, nonlinearity):
    rng = np.random.default_rng(3)
    model = make_model(cell, nonlinearity, 2, H=6, seed=5)
    T, B = 10, 2
    x = rng.standard_normal((T, B, model.input_size))
    state = make_state(model, B, rng)
    whole, whole_state = model.forward(x, state)
    steps = []
    for t in range(T):
        y, state = model.forward(x[t:t + 1], state)
        steps.append(y)
    np.testing.assert_allclose(np.concatenate(steps), whole, rtol=1e-13, atol=1e-14)
    for a, b in zip(state if cell == "lstm" else (state,), whole_state if cell == "lstm" else (whole_state,)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_gradient_into_final_state_is_the_dstate_argument():
    """dstate enters exactly like a loss term linear in the final state."""
    rng = np.random.default_rng(4)
    model = make_model("lstm", layers=2)
    T, B = 5, 2
    x = rng.standard_normal((T, B, 3))
    targets = make_targets(model, T, B, rng)
    w = tuple(rng.standard_normal((2, B, 4)) for _ in range(2))
    g = model.gradients(x, targets, dstate=w)
    eps = 1e-6
    k = (5, 2)      # one entry of W_h of layer 1
    p = model.params["layer1.W_h"]
    vals = []
    for s in (eps, -eps):
        p[k] += s
        gg = model.gradients(x, targets)
        vals.append(gg.loss + sum((a * b).sum() for a, b in zip(w, gg.state)))
        p[k] -= s
    assert (vals[0] - vals[1]) / (2 * eps) == pytest.approx(g.params["layer1.W_h"][k], rel=1e-6)


def test_float32_gradients_are_close_to_float64():
    rng = np.random.default_rng(8)
    m64 = make_model("gru", layers=2, H=8)
    m32 = m64.astype("float32")
    x = rng.standard_normal((20, 4, 3))
    targets = make_targets(m64, 20, 4, rng)
    g64 = m64.gradients(x, targets)
    g32 = m32.gradients(x.astype(np.float32), targets.astype(np.float32))
    assert g32.params["layer0.W_h"].dtype == np.float32 and g32.x.dtype == np.float32
    for k in g64.params:
        err = np.abs(g32.params[k] - g64.params[k]).max() / np.abs(g64.params[k]).max()
        assert err < 1e-4, k


def test_skipping_the_input_gradient_changes_nothing_else():
    rng = np.random.default_rng(12)
    model = make_model("gru", layers=2)
    x = rng.standard_normal((6, 2, 3))
    targets = make_targets(model, 6, 2, rng)
    full = model.gradients(x, targets)
    lean = model.gradients(x, targets, input_grad=False)
    assert lean.x is None and full.x.shape == x.shape
    for k in full.params:
        np.testing.assert_array_equal(lean.params[k], full.params[k])
    loss, grads, _ = model.loss_and_grads(x, targets)
    assert loss == full.loss and all(np.array_equal(grads[k], full.params[k]) for k in grads)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_column_sums_equal_numpy_sums_on_strided_column_blocks(dtype, tol):
    """Bias gradients are Σ over rows taken as ones @ a (backends/arrays.py), also on the
    GRU's column slices of d2, which are not contiguous."""
    from bptt.backends.arrays import column_sums
    a = np.random.default_rng(3).standard_normal((300, 96)).astype(dtype)
    for block in (a, a[:, :64], a[:, 64:]):
        want = block.astype(np.float64).sum(axis=0)
        assert np.abs(column_sums(block) - want).max() < tol * np.abs(block).sum(axis=0).max()


@pytest.mark.parametrize("cell,kw", [("rnn", {}), ("lstm", {}), ("gru", {"bidirectional": True}),
                                     ("lstm", {"layer_norm": True})])
def test_a_fortran_ordered_state0_gives_the_numbers_of_a_c_ordered_one(cell, kw):
    """The compiled loop read a Fortran-ordered state0 (np.asfortranarray) as if it were
    C-ordered: outputs, loss and gradients differed by up to 1e1."""
    rng = np.random.default_rng(3)
    model = make_model(cell, layers=2, **kw)
    x, state0 = rng.standard_normal((5, 3, 3)), make_state(model, 3, rng)
    targets = make_targets(model, 5, 3, rng)
    fortran = tuple(map(np.asfortranarray, state0)) if cell == "lstm" else np.asfortranarray(state0)
    ref, got = model.gradients(x, targets, state0), model.gradients(x, targets, fortran)
    np.testing.assert_array_equal(model.forward(x, fortran)[0], model.forward(x, state0)[0])
    assert got.loss == ref.loss
    for k in ref.params:
        np.testing.assert_array_equal(got.params[k], ref.params[k])
    np.testing.assert_array_equal(got.x, ref.x)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_layer_reads_fortran_ordered_states_as_c_ordered_ones(cell):
    """A layer's forward and backward, called directly (as a stack or a user's own loop
    does), with Fortran-ordered state0 and dstate: the numbers of C-ordered ones, bit for bit."""
    rng = np.random.default_rng(4)
    model = bptt.Model(cell, 3, 5, 2, dtype="float64", seed=0)
    layer, p = model.layer, model.layer_params(0)
    x = rng.standard_normal((6, 4, 3))
    state0 = tuple(rng.standard_normal((4, 5)) for _ in layer.STATE)
    dstate = tuple(rng.standard_normal((4, 5)) for _ in layer.STATE)
    h, _, tape = layer.forward(p, x, state0)
    h_f, _, tape_f = layer.forward(p, x, tuple(map(np.asfortranarray, state0)))
    np.testing.assert_array_equal(h_f, h)
    dh = rng.standard_normal(h.shape)
    ref, got = layer.backward(p, dh, dstate, tape), layer.backward(p, dh, tuple(map(np.asfortranarray, dstate)), tape_f)
    np.testing.assert_array_equal(got[0], ref[0])
    for k in ref[2]:
        np.testing.assert_array_equal(got[2][k], ref[2][k])
