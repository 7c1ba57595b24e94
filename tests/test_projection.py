"""LSTM projections (proj_size, cells/projection.py): PyTorch's nn.LSTM(proj_size=P) with
packed sequences and a given (h_0, c_0) to 1e-9, finite differences with resets and noise,
chunks equal to the whole, export both ways, and the combinations refused."""
import numpy as np
import pytest
import torch

import bptt
from bptt.interop.torch import from_torch, to_torch
from bptt.through_time import checkpointed
from helpers import make_targets, python_loop, ragged_mask

LENGTHS = [6, 3, 4]


def rel(a, b):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_a_padded_batch_matches_torch_lstm_with_proj_size(bidirectional, outputs):
    torch.manual_seed(int(bidirectional) + 2 * (outputs == "all"))
    T, B, D, H, P, O = 6, 3, 2, 5, 3, 2
    rnn = torch.nn.LSTM(D, H, num_layers=2, bidirectional=bidirectional, proj_size=P, dtype=torch.float64)
    linear = torch.nn.Linear((2 if bidirectional else 1) * P, O, dtype=torch.float64)
    model = from_torch(rnn, linear, reduction="sum", outputs=outputs)
    assert model.proj_size == P and model.params["layer1.W_x"].shape == (4 * H, (2 if bidirectional else 1) * P)
    rng = np.random.default_rng(1)
    K = 4 if bidirectional else 2
    x, h0, c0 = rng.standard_normal((T, B, D)), rng.standard_normal((K, B, P)), rng.standard_normal((K, B, H))
    mask = ragged_mask(T, LENGTHS)
    targets = rng.standard_normal((T, B, O) if outputs == "all" else (B, O))
    g = model.gradients(x, targets, (h0, c0), mask=mask)

    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    out, (h_n, c_n) = rnn(torch.nn.utils.rnn.pack_padded_sequence(xt, LENGTHS, enforce_sorted=False), (h0t, c0t))
    if outputs == "all":
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
        weight = torch.tensor(mask, dtype=torch.float64)[:, :, None]
        loss = (((linear(out) - torch.tensor(targets)) ** 2) * weight).sum()
    else:
        top = torch.cat([h_n[-2], h_n[-1]], dim=1) if bidirectional else h_n[-1]
        loss = ((linear(top) - torch.tensor(targets)) ** 2).sum()
    loss.backward()
    assert abs(g.loss - loss.item()) < 1e-10 * abs(loss.item())
    assert rel(g.state[0], h_n) < 1e-12 and rel(g.state[1], c_n) < 1e-12
    assert rel(g.x, xt.grad) < 1e-9
    assert rel(g.state0[0], h0t.grad) < 1e-9 and rel(g.state0[1], c0t.grad) < 1e-9
    for l in range(2):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            for ours, theirs in (("W_x", "weight_ih"), ("W_h", "weight_hh"), ("W_hr", "weight_hr"), ("b_h", "bias_ih")):
                assert rel(g.params[f"layer{l}{suffix}.{ours}"], getattr(rnn, f"{theirs}_l{l}{suffix}").grad) < 1e-9


def test_export_round_trip():
    model = bptt.Model("lstm", 3, 6, 2, num_layers=2, proj_size=4, dtype="float64", seed=2)
    rnn, linear = to_torch(model)
    assert rnn.proj_size == 4 and linear.in_features == 4
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with torch.no_grad():
        assert rel(model.forward(x)[0], linear(rnn(torch.tensor(x))[0]).numpy()) < 1e-12
    back = from_torch(rnn, linear)
    for name, value in model.params.items():
        np.testing.assert_allclose(back.params[name], value, rtol=0, atol=1e-15)


def model_p(layers=2, seed=3, **kw):
    model = bptt.Model("lstm", 3, 5, 2, num_layers=layers, proj_size=3, dtype="float64", seed=seed, **kw)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if name.endswith(("b_h", "b_y")):
            p += rng.uniform(-0.5, 0.5, p.shape)
    return model


def state(model, B, rng):
    return tuple(0.5 * rng.standard_normal((model.num_layers * model.directions, B, w)) for w in model.state_widths)


@pytest.mark.parametrize("outputs", ["all", "last"])
def test_gradients_with_masks_resets_and_dropout_match_finite_differences(outputs):
    model = model_p(outputs=outputs, dropout=0.3, input_dropout=0.2)
    rng = np.random.default_rng(4)
    T, B = 6, 3
    x = rng.standard_normal((T, B, 3))
    mask = np.ones((T, B), bool)
    mask[:2, 1] = False                             # a sequence whose first steps are padding
    mask[5:, 2] = False
    resets = np.zeros((T, B), bool)
    if outputs == "all":
        resets[1, 1] = True                          # a reset before sequence 1's first valid step
        resets[3, 0] = True
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), state(model, B, rng), mask,
                            resets=resets, masks=model.draw_masks(T, B, rng))
    assert report.worst() < 1e-6, str(report)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_chunk_of_padding_holds_the_projected_state_as_the_plain_lstm_does(layers):
    """A sequence with no valid step in a call given state0 (a later chunk of a sequence
    that ended) keeps h_0 and passes the gradient at h_T to h_0; one that starts late
    holds h_0 until it does. h_T came back 0 and ∂L/∂h_0 as 0: the projected layer feeds
    h_0 in at the first valid step, which such a sequence does not have."""
    T, B, P, H = 5, 3, 2, 4
    rng = np.random.default_rng(3)
    model = bptt.Model("lstm", 3, H, 2, proj_size=P, num_layers=layers, dtype="float64", seed=3)
    x, y = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))
    mask = np.ones((T, B), bool)
    mask[:, 1] = False                                  # padding only
    mask[:2, 2] = False                                 # starts at step 2
    h0, c0 = rng.standard_normal((layers, B, P)), rng.standard_normal((layers, B, H))
    dh, dc = rng.standard_normal((layers, B, P)), rng.standard_normal((layers, B, H))
    g = model.gradients(x, y, (h0, c0), mask, dstate=(dh, dc))
    np.testing.assert_array_equal(g.state[0][:, 1], h0[:, 1])
    np.testing.assert_array_equal(g.state[1][:, 1], c0[:, 1])
    np.testing.assert_allclose(g.state0[0][:, 1], dh[:, 1], rtol=1e-13)
    np.testing.assert_allclose(g.state0[1][:, 1], dc[:, 1], rtol=1e-13)
    y_all, _ = model.forward(x, (h0, c0), mask)                 # the head reads h_0, held until step 2
    np.testing.assert_allclose(y_all[:2, 2], np.broadcast_to(h0[-1, 2] @ model.params["head.W_y"].T
                                                             + model.params["head.b_y"], (2, 2)), rtol=1e-13)
    last = bptt.Model("lstm", 3, H, 2, proj_size=P, num_layers=layers, dtype="float64", seed=3, outputs="last")
    pred, _ = last.forward(x, (h0, c0), mask)
    np.testing.assert_allclose(pred[1], h0[-1, 1] @ last.params["head.W_y"].T + last.params["head.b_y"])
    report = bptt.gradcheck(last, x, y[-1], (h0, c0), mask)
    assert report.worst() < 1e-6, str(report)


def test_compiled_and_python_loops_agree_and_chunks_equal_the_whole():
    model = model_p()
    rng = np.random.default_rng(5)
    T, B = 10, 3
    x = rng.standard_normal((T, B, 3))
    targets, s0 = make_targets(model, T, B, rng), state(model, B, rng)
    full = model.gradients(x, targets, s0)
    reference = python_loop(lambda: model.gradients(x, targets, s0))
    for budget in (None, 3):
        loss, grads, final = checkpointed(model, x, targets, s0, budget=budget)
        assert abs(loss - full.loss) < 1e-12
        for k in model.params:
            np.testing.assert_allclose(grads[k], full.params[k], rtol=0, atol=1e-12, err_msg=k)
            np.testing.assert_allclose(reference.params[k], full.params[k], rtol=0, atol=1e-12, err_msg=k)
        for a, b in zip(final, full.state):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("options,message", [
    (dict(cell="gru", proj_size=2), "proj_size: projects the output of cell='lstm'"),
    (dict(cell="lstm", proj_size=4), "proj_size: expected an integer from 1 to hidden_size - 1 = 3"),
    (dict(cell="lstm", proj_size=2, recurrent_dropout=0.1), "recurrent_dropout: not defined with proj_size"),
    (dict(cell="lstm", proj_size=2, init="orthogonal"), "init: 'orthogonal' makes W_h square"),
    (dict(cell="lstm", proj_size=2, layer_norm=True), "proj_size: projects the output of cell='lstm' (without"),
])
def test_what_projections_refuse(options, message):
    cell = options.pop("cell")
    with pytest.raises(ValueError) as err:
        bptt.Model(cell, 3, 4, 2, **options)
    assert message in str(err.value)


def test_a_text_run_with_projections_trains_resumes_and_samples(tmp_path):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer, sample
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; " * 200, encoding="utf-8")
    options = dict(text=str(corpus), hidden=24, proj_size=12, layers=2, seq_len=16, batch=4, steps=120, lr=1e-2,
                   eval_every=60, checkpoint_every=60, dropout=0.1)
    whole = Trainer(Config(**options, out=str(tmp_path / "whole")))
    final = whole.train(progress=False)
    assert final["val_loss"] < whole.task.baselines["unigram"]
    Trainer(Config(**options, out=str(tmp_path / "split"))).train(progress=False, stop_at=60)
    resumed = Trainer.resume(tmp_path / "split")
    resumed.train(progress=False)
    for k, v in whole.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[k], v)
    assert resumed.model.params["layer0.W_hr"].shape == (12, 24)
    text = sample(resumed.model, resumed.task.first, length=20, rng=np.random.default_rng(0))
    assert len(text) == 20
