"""Bidirectional stacks (stack.py): PyTorch's packed sequences to 1e-9 for every cell,
finite differences with noise, padding that changes nothing, a user cell, the
schedules that refuse it, and a short run that learns."""
import numpy as np
import pytest
import torch

import bptt
from bptt.interop.torch import from_torch, to_torch
from bptt.through_time import checkpointed, truncated
from helpers import make_model, make_state, make_targets, ragged_mask
from test_dropout import MinimalGated

LENGTHS = [7, 3, 5, 6]


def rel(a, b):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_a_padded_batch_matches_torch_packed_sequences(kind, outputs):
    """Outputs, h_n (c_n), the loss and every gradient of a 2-layer bidirectional stack,
    padded batch against PyTorch's packed sequences, float64."""
    torch.manual_seed(len(kind) + len(outputs))
    T, B, D, H, O = 7, 4, 3, 5, 2
    rnn = getattr(torch.nn, kind)(D, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    linear = torch.nn.Linear(2 * H, O, dtype=torch.float64)
    model = from_torch(rnn, linear, reduction="sum", outputs=outputs)
    assert model.bidirectional and model.params["head.W_y"].shape == (O, 2 * H)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, D))
    mask = ragged_mask(T, LENGTHS)
    targets = rng.standard_normal((T, B, O) if outputs == "all" else (B, O))
    g = model.gradients(x, targets, mask=mask)

    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, LENGTHS, enforce_sorted=False)
    out, final = rnn(packed)
    h_n = final[0] if kind == "LSTM" else final
    if outputs == "all":
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
        weight = torch.tensor(mask, dtype=torch.float64)[:, :, None]
        loss = (((linear(out) - torch.tensor(targets)) ** 2) * weight).sum()
        y, _ = model.forward(x, mask=mask)
        with torch.no_grad():
            assert rel(y[mask], linear(out).numpy()[mask]) < 1e-12
    else:
        loss = ((linear(torch.cat([h_n[-2], h_n[-1]], dim=1)) - torch.tensor(targets)) ** 2).sum()
    loss.backward()
    assert abs(g.loss - loss.item()) < 1e-10 * abs(loss.item())
    state = g.state if kind != "LSTM" else g.state[0]
    assert rel(state, h_n) < 1e-12
    if kind == "LSTM":
        assert rel(g.state[1], final[1]) < 1e-12
    assert rel(g.x, xt.grad) < 1e-9
    for l in range(2):
        for ours, theirs in ((f"layer{l}", f"l{l}"), (f"layer{l}_reverse", f"l{l}_reverse")):
            assert rel(g.params[f"{ours}.W_x"], getattr(rnn, f"weight_ih_{theirs}").grad) < 1e-9
            assert rel(g.params[f"{ours}.W_h"], getattr(rnn, f"weight_hh_{theirs}").grad) < 1e-9
            # b_h is b_ih + b_hh (the GRU's n block: b_in alone), so ∂L/∂b_h = ∂L/∂b_ih
            assert rel(g.params[f"{ours}.b_h"], getattr(rnn, f"bias_ih_{theirs}").grad) < 1e-9
            if kind == "GRU":
                assert rel(g.params[f"{ours}.b_hn"], getattr(rnn, f"bias_hh_{theirs}").grad.numpy()[2 * H:]) < 1e-9
    assert rel(g.params["head.W_y"], linear.weight.grad) < 1e-9


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_export_round_trip(kind):
    model = bptt.Model(kind, 3, 4, 2, num_layers=2, bidirectional=True, dtype="float64", seed=1)
    rnn, linear = to_torch(model)
    assert rnn.bidirectional
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with torch.no_grad():
        theirs = linear(rnn(torch.tensor(x))[0]).numpy()
    assert rel(model.forward(x)[0], theirs) < 1e-12
    back = from_torch(rnn, linear)
    for name, value in model.params.items():
        np.testing.assert_allclose(back.params[name], value, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_export_with_outputs_last_reads_both_directions_h_n(kind):
    """As to_torch's docstring says: the head reads h_n of the top layer's two directions,
    not the last step of rnn(x)[0], whose reverse half has read one step only."""
    model = bptt.Model(kind, 3, 4, 2, num_layers=2, bidirectional=True, outputs="last", dtype="float64", seed=1)
    rnn, linear = to_torch(model)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with torch.no_grad():
        out, h_n = rnn(torch.tensor(x))
        h_n = h_n[0] if kind == "lstm" else h_n
        from_h_n = linear(torch.cat([h_n[-2], h_n[-1]], dim=1)).numpy()
        last_step = linear(out[-1]).numpy()
    assert rel(model.forward(x)[0], from_h_n) < 1e-12
    assert rel(model.forward(x)[0], last_step) > 1e-3


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_gradients_with_noise_match_finite_differences(cell, layers, outputs):
    noise = dict(input_dropout=0.2, recurrent_dropout=0.3, zoneout=0.2) | ({"dropout": 0.3} if layers > 1 else {})
    model = make_model(cell, layers=layers, seed=layers, bidirectional=True, outputs=outputs, **noise)
    rng = np.random.default_rng(layers)
    T, B = 5, 3
    x = rng.standard_normal((T, B, model.input_size))
    masks = model.draw_masks(T, B, rng)
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng), ragged_mask(T, [5, 2, 4]),
                            masks=masks)
    assert report.worst() < 1e-6, str(report)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_changes_nothing(cell):
    """A sequence padded with anything gives the outputs, final state and gradients it
    gives alone: the reverse direction starts at its own last valid step."""
    model = make_model(cell, layers=2, seed=3, bidirectional=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 1, model.input_size))
    targets = make_targets(model, 4, 1, rng)
    alone = model.gradients(x, targets)
    padded_x = np.concatenate([x, 100 * rng.standard_normal((3, 1, model.input_size))])
    padded_t = np.concatenate([targets, make_targets(model, 3, 1, rng)])
    mask = ragged_mask(7, [4])
    padded = model.gradients(padded_x, padded_t, mask=mask)
    assert abs(alone.loss - padded.loss) < 1e-12
    for k in model.params:
        np.testing.assert_allclose(padded.params[k], alone.params[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(padded.x[:4], alone.x, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(padded.x[4:], 0)
    for a, b in zip(np.atleast_3d(padded.state), np.atleast_3d(alone.state)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_a_user_cell_runs_in_both_directions():
    model = make_model(MinimalGated(), layers=2, seed=4, bidirectional=True)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 2, model.input_size))
    assert {"layer1_reverse.W_x", "layer1_reverse.W_h"} <= set(model.params)
    assert model.params["layer1.W_x"].shape == (2 * model.hidden_size, 2 * model.hidden_size)
    report = bptt.gradcheck(model, x, make_targets(model, 5, 2, rng), mask=ragged_mask(5, [5, 3]))
    assert report.worst() < 1e-6, str(report)


def test_the_state_has_pytorchs_layout_and_two_halves_give_the_whole_batch():
    model = make_model("lstm", layers=2, seed=5, bidirectional=True, dtype="float64")
    h0, c0 = model.init_state(4)
    assert h0.shape == (4, 4, model.hidden_size)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4, model.input_size))
    targets = make_targets(model, 6, 4, rng)
    state0 = tuple(0.3 * rng.standard_normal(h0.shape) for _ in range(2))
    one, two = (model.gradients(x, targets, state0, ragged_mask(6, [6, 4, 5, 2]), threads=n) for n in (1, 2))
    for k in model.params:
        np.testing.assert_allclose(one.params[k], two.params[k], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"state0\[0\]: expected shape \(4, 4, 4\)"):
        model.forward(x, (h0[:2], c0[:2]))


def test_schedules_that_cut_the_sequence_refuse_it():
    model = bptt.Model("gru", 3, 4, 2, bidirectional=True)
    x, y = np.zeros((8, 2, 3), np.float32), np.zeros((8, 2, 2), np.float32)
    with pytest.raises(ValueError, match="truncated BPTT runs the sequence in pieces.*bidirectional=True"):
        next(truncated(model, x, y, k1=4))
    with pytest.raises(ValueError, match="checkpointed BPTT runs the sequence in pieces"):
        checkpointed(model, x, y, budget=2)
    resets = np.zeros((8, 2), bool)
    resets[3, 0] = True
    with pytest.raises(ValueError, match="resets: .* a bidirectional model reads whole sequences"):
        model.forward(x, resets=resets)
    with pytest.raises(ValueError, match="bidirectional: expected True or False"):
        bptt.Model("gru", 3, 4, 2, bidirectional="yes")


def test_training_a_bidirectional_classifier(tmp_path):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    with pytest.raises(ValueError, match="bidirectional: --task text trains on streams"):
        Config(bidirectional=True).check()
    trainer = Trainer(Config(task="digits", seq_len=8, steps=200, batch=16, hidden=16, bidirectional=True,
                             dropout=0.1, layers=2, eval_every=200, out=str(tmp_path / "run")))
    final = trainer.train(progress=False)
    assert trainer.model.bidirectional and "layer1_reverse.W_h" in trainer.model.params
    assert final["val_acc"] > 0.5                                          # 10 classes: 0.1
