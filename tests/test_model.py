"""The model's parameters: names, shapes, dtypes and PyTorch's default initialisation."""
import numpy as np
import pytest

import bptt


@pytest.mark.parametrize("cell,G", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_parameter_names_shapes_and_dtype(cell, G):
    m = bptt.Model(cell, 3, 5, 2, num_layers=2, seed=0)
    expected = {"layer0.W_x": (G * 5, 3), "layer0.W_h": (G * 5, 5), "layer0.b_h": (G * 5,),
                "layer1.W_x": (G * 5, 5), "layer1.W_h": (G * 5, 5), "layer1.b_h": (G * 5,),
                "head.W_y": (2, 5), "head.b_y": (2,)}
    if cell == "gru":
        expected |= {"layer0.b_hn": (5,), "layer1.b_hn": (5,)}
    assert {k: v.shape for k, v in m.params.items()} == expected
    assert list(m.params)[-2:] == ["head.W_y", "head.b_y"]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in m.params.values())
    _, grads, _ = m.loss_and_grads(np.zeros((2, 1, 3), np.float32), np.zeros((2, 1, 2), np.float32))
    assert list(grads) == list(m.params)
    assert all(grads[k].shape == m.params[k].shape and grads[k].dtype == np.float32 for k in grads)


def test_default_init_follows_pytorch():
    """Weights U(±1/√H); b_h is the sum of PyTorch's two U(±1/√H) biases."""
    H = 64
    m = bptt.Model("lstm", 10, H, 3, seed=1, dtype="float64")
    k = 1 / np.sqrt(H)
    for name in ("layer0.W_x", "layer0.W_h", "head.W_y"):
        w = m.params[name]
        assert np.abs(w).max() <= k and np.abs(w).max() > 0.95 * k
        assert w.std() == pytest.approx(k / np.sqrt(3), rel=0.05)
    b = m.params["layer0.b_h"]
    assert np.abs(b).max() <= 2 * k and b.std() == pytest.approx(k * np.sqrt(2 / 3), rel=0.1)


def test_seed_makes_initialisation_reproducible():
    a, b = bptt.Model("gru", 3, 4, 2, seed=7), bptt.Model("gru", 3, 4, 2, seed=7)
    c = bptt.Model("gru", 3, 4, 2, seed=8)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["layer0.W_h"], c.params["layer0.W_h"])


@pytest.mark.parametrize("cell,G", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_orthogonal_recurrent_blocks(cell, G):
    H = 16
    m = bptt.Model(cell, 3, H, 2, init="orthogonal", seed=2, dtype="float64")
    W = m.params["layer0.W_h"].reshape(G, H, H)
    for block in W:
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-12)
        assert np.linalg.svd(block, compute_uv=False).max() == pytest.approx(1.0, abs=1e-12)


def test_astype_copies_and_converts():
    m = bptt.Model("rnn", 3, 4, 2, seed=0)
    m64 = m.astype("float64")
    assert m64.dtype == np.float64 and m64.config == m.config | {"dtype": "float64"}
    m64.params["layer0.W_h"][0, 0] = 42.0
    assert m.params["layer0.W_h"][0, 0] != 42.0


def test_cross_entropy_and_bce_are_stable_for_huge_logits():
    m = bptt.Model("rnn", 1, 2, 2, head="softmax", loss="cross_entropy", dtype="float64", seed=0)
    m.params["head.W_y"][:] = [[1e4, 0], [-1e4, 0]]
    x = np.ones((3, 1, 1))
    loss, grads, _ = m.loss_and_grads(x, np.ones((3, 1), int))
    assert np.isfinite(loss) and loss > 100 and all(np.isfinite(g).all() for g in grads.values())
    b = bptt.Model("rnn", 1, 2, 1, head="sigmoid", loss="bce", dtype="float64", seed=0)
    b.params["head.W_y"][:] = 1e4
    loss, grads, _ = b.loss_and_grads(x, np.zeros((3, 1, 1)))
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


def test_irnn_and_forget_bias_initialisations():
    m = bptt.Model("rnn", 2, 6, 1, nonlinearity="relu", init="identity", num_layers=2, seed=0)
    for l in range(2):
        assert np.array_equal(m.params[f"layer{l}.W_h"], np.eye(6, dtype=np.float32))
        assert not m.params[f"layer{l}.b_h"].any()
    plain = bptt.Model("lstm", 2, 5, 1, seed=3)
    biased = bptt.Model("lstm", 2, 5, 1, seed=3, forget_bias=1.0)
    diff = biased.params["layer0.b_h"] - plain.params["layer0.b_h"]
    np.testing.assert_allclose(diff, np.r_[np.zeros(5), np.ones(5), np.zeros(10)], atol=1e-6)
    with pytest.raises(ValueError, match="forget_bias: applies to cell='lstm' only"):
        bptt.Model("gru", 2, 5, 1, forget_bias=1.0)
    with pytest.raises(ValueError, match="init: 'identity' \\(IRNN\\) applies to cell='rnn' only"):
        bptt.Model("lstm", 2, 5, 1, init="identity")


def test_numpy_numbers_are_taken_for_proj_size_and_the_rates_and_saved_as_python_numbers(tmp_path):
    """proj_size=np.int64(2) was taken but kept, so model.save failed with "Object of type
    int64 is not JSON serializable"; a rate given as np.float32(0.25) was refused as not a
    probability in [0, 1)."""
    m = bptt.Model("lstm", 3, 4, 2, num_layers=2, proj_size=np.int64(2), dropout=np.float32(0.25),
                   input_dropout=np.int64(0), seed=0)
    assert type(m.proj_size) is int and m.proj_size == 2
    assert type(m.dropout) is float and m.dropout == 0.25 and m.input_dropout == 0.0
    loaded = bptt.load(m.save(tmp_path / "m"))
    assert loaded.config == m.config
    for k in m.params:
        np.testing.assert_array_equal(loaded.params[k], m.params[k])


def test_astype_keeps_how_the_parameters_were_initialised():
    """A float64 copy of a chrono LSTM says init='chrono' and its chrono_t_max, as the
    model it copies does (it said 'default' and None), with the same parameters."""
    model = bptt.Model("lstm", 3, 4, 2, init="chrono", chrono_t_max=10, seed=1)
    copy = model.astype("float64")
    assert (copy.init, copy.chrono_t_max) == ("chrono", 10)
    assert all(np.array_equal(copy.params[k], model.params[k].astype(np.float64)) for k in model.params)


@pytest.mark.parametrize("cell,layers", [("rnn", 1), ("gru", 1), ("gru", 2), ("lstm", 1)])
def test_a_state_of_nested_lists_is_the_array_it_spells(cell, layers):
    """A one-layer RNN's or GRU's state0 or dstate given as nested lists of shape (1, B, H)
    was taken for a one-element tuple around the state and refused as shape (B, H)."""
    m = bptt.Model(cell, 3, 4, 2, num_layers=layers, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 2))
    zero = m.init_state(2)
    state = tuple(a + 0.3 for a in zero) if m.tuple_state else zero + 0.3
    as_lists = tuple(a.tolist() for a in state) if m.tuple_state else state.tolist()
    want = m.gradients(x, y, state0=state, dstate=state)
    got = m.gradients(x, y, state0=as_lists, dstate=as_lists)
    assert got.loss == want.loss
    assert all(np.array_equal(got.params[k], want.params[k]) for k in m.params)
    if not m.tuple_state:                    # (s,) around the array is the array too
        assert m.gradients(x, y, state0=(state,), dstate=[state]).loss == want.loss
