"""Outputs and every gradient agree with PyTorch autograd after loading the same weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bptt  # noqa: E402
from bptt.interop.torch import from_torch, to_torch  # noqa: E402
from helpers import EDITED_PARAMS  # noqa: E402

TORCH_KINDS = [("RNN", "tanh"), ("RNN", "relu"), ("LSTM", None), ("GRU", None)]
TOL = {"float64": 1e-9, "float32": 1e-4}


def rel(ours, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def torch_pair(kind, nonlinearity, D, H, O, layers, dtype, seed):
    torch.manual_seed(seed)
    kw = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
    rnn = getattr(torch.nn, kind)(D, H, num_layers=layers, dtype=getattr(torch, dtype), **kw)
    linear = torch.nn.Linear(H, O, dtype=getattr(torch, dtype))
    return rnn, linear


def torch_grad_of(rnn, kind, l, name, H):
    """Our parameter's gradient, read off PyTorch's two-bias parametrisation."""
    g = {"W_x": f"weight_ih_l{l}", "W_h": f"weight_hh_l{l}"}
    if name in g:
        return getattr(rnn, g[name]).grad
    b_ih, b_hh = getattr(rnn, f"bias_ih_l{l}").grad, getattr(rnn, f"bias_hh_l{l}").grad
    if name == "b_hn":
        return b_hh[2 * H:]
    return b_ih          # b_h = b_ih + b_hh: ∂L/∂b_h = ∂L/∂b_ih


@pytest.mark.parametrize("kind,nonlinearity", TORCH_KINDS)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("inputs", ["dense", "one-hot"])
def test_outputs_and_gradients_match_torch(kind, nonlinearity, layers, dtype, loss, inputs):
    """One-hot inputs take the compiled layers' gather and per-code sums (backends/bulk.py)."""
    T, B, D, H, O = 7, 3, 5, 6, 4
    rnn, linear = torch_pair(kind, nonlinearity, D, H, O, layers, dtype, seed=layers)
    head = "softmax" if loss == "cross_entropy" else "identity"
    model = from_torch(rnn, linear, head=head, loss=loss, reduction="mean")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    if inputs == "one-hot":
        x = np.eye(D, dtype=dtype)[rng.integers(0, D, (T, B))]
    h0 = rng.standard_normal((layers, B, H)).astype(dtype)
    c0 = rng.standard_normal((layers, B, H)).astype(dtype)
    if loss == "mse":
        targets = rng.standard_normal((T, B, O)).astype(dtype)
    else:
        targets = rng.integers(0, O, size=(T, B))
    state0 = (h0, c0) if kind == "LSTM" else h0

    g = model.gradients(x, targets, state0)

    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    out, state = rnn(xt, (h0t, c0t) if kind == "LSTM" else h0t)
    logits = linear(out)
    if loss == "mse":
        L = torch.nn.functional.mse_loss(logits, torch.tensor(targets))
    else:
        L = torch.nn.functional.cross_entropy(logits.reshape(T * B, O), torch.tensor(targets).reshape(-1))
    L.backward()

    tol = TOL[dtype]
    assert abs(g.loss - L.item()) <= tol * abs(L.item())
    y, _ = model.forward(x, state0)
    ref_y = logits if loss == "mse" else torch.softmax(logits, -1)
    assert rel(y, ref_y.detach()) < tol
    ref_states = state if kind == "LSTM" else (state,)
    ours_states = g.state if kind == "LSTM" else (g.state,)
    for ours, ref in zip(ours_states, ref_states):
        assert rel(ours, ref.detach()) < tol
    for name, grad in g.params.items():
        if name.startswith("head."):
            ref = (linear.weight if name == "head.W_y" else linear.bias).grad
        else:
            layer, local = name.split(".")
            ref = torch_grad_of(rnn, kind, int(layer[5:]), local, H)
        assert rel(grad, ref) < tol, name
    assert rel(g.x, xt.grad) < tol
    if kind == "LSTM":
        assert rel(g.state0[0], h0t.grad) < tol and rel(g.state0[1], c0t.grad) < tol
    else:
        assert rel(g.state0, h0t.grad) < tol


@pytest.mark.parametrize("kind,nonlinearity", TORCH_KINDS)
def test_export_round_trip_reproduces_outputs(kind, nonlinearity):
    cell = kind.lower()
    model = bptt.Model(cell, 3, 5, 2, num_layers=2, nonlinearity=nonlinearity or "tanh",
                       dtype="float64", seed=4)
    model.params["layer1.b_h"] += 0.3
    rnn, linear = to_torch(model)
    x = np.random.default_rng(2).standard_normal((6, 2, 3))
    ours, _ = model.forward(x)
    with torch.no_grad():
        ref = linear(rnn(torch.tensor(x))[0]).numpy()
    assert rel(ours, ref) < 1e-12
    back = from_torch(rnn, linear)
    for name in model.params:
        np.testing.assert_allclose(back.params[name], model.params[name], rtol=0, atol=1e-15)


def test_masked_batch_matches_torch_packed_sequences():
    """A mask gives PyTorch's packed-sequence results: the final state of each sequence
    and the gradients of a loss over its valid steps only."""
    T, B, D, H, O = 6, 3, 2, 4, 2
    lengths = [6, 3, 4]
    rnn, linear = torch_pair("LSTM", None, D, H, O, 2, "float64", seed=9)
    model = from_torch(rnn, linear, reduction="sum")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, D))
    targets = rng.standard_normal((T, B, O))
    mask = np.arange(T)[:, None] < np.array(lengths)[None, :]
    g = model.gradients(x, targets, mask=mask)

    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, enforce_sorted=False)
    out, (hT, cT) = rnn(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    m = torch.tensor(mask, dtype=torch.float64)[:, :, None]
    L = (((linear(out) - torch.tensor(targets)) ** 2) * m).sum()
    L.backward()
    assert abs(g.loss - L.item()) < 1e-10 * abs(L.item())
    assert rel(g.state[0], hT.detach()) < 1e-12 and rel(g.state[1], cT.detach()) < 1e-12
    assert rel(g.params["layer0.W_h"], rnn.weight_hh_l0.grad) < 1e-9
    assert rel(g.params["layer1.W_x"], rnn.weight_ih_l1.grad) < 1e-9
    assert rel(g.x, xt.grad) < 1e-9


def test_interop_rejects_what_it_cannot_represent():
    with pytest.raises(ValueError, match=r"in_features = 2 · rnn.hidden_size = 6, got 3"):
        from_torch(torch.nn.GRU(2, 3, bidirectional=True), torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="in_features"):
        from_torch(torch.nn.GRU(2, 3), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="nonlinearity"):
        to_torch(bptt.Model("rnn", 2, 3, 1, nonlinearity="sigmoid"))
    with pytest.raises(ValueError, match=r"model: zoneout=0.5 has no PyTorch layer .*nn.LSTM does not"):
        to_torch(bptt.Model("lstm", 2, 3, 1, zoneout=0.5))
    rnn, _ = to_torch(bptt.Model("lstm", 2, 3, 1, num_layers=2, dropout=0.5, recurrent_dropout=0.3))  # evaluation: no noise
    assert isinstance(rnn, torch.nn.LSTM)


@pytest.mark.parametrize("edit,pattern", EDITED_PARAMS)
def test_to_torch_checks_the_params_as_a_call_does(edit, pattern):
    model = bptt.Model("gru", 2, 3, 1, dtype="float64", seed=0)
    edit(model.params)
    with pytest.raises(ValueError, match=pattern):
        to_torch(model)
