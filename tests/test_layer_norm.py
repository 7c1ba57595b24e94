"""Layer-normalised LSTM and GRU (cells/layer_norm.py): finite differences, the compiled
loop against the NumPy reference, the normalisation's invariance to scale, and the
options it refuses."""

import numpy as np
import pytest

import bptt
from helpers import make_model, make_state, make_targets, python_loop, ragged_mask

TOL = 1e-6
EPS = 1e-4       # (LN1) of a 4-unit pre-activation curves sharply: the 4th-order difference needs a small step


def ln_model(cell, layers, seed=0, **kw):
    model = make_model(cell, layers=layers, seed=seed, layer_norm=True, **kw)
    rng = np.random.default_rng(seed + 50)
    for name, p in model.params.items():            # gains and biases away from 1 and 0
        if ".ln_" in name or name.endswith("b_h"):
            p += rng.uniform(-0.3, 0.3, p.shape)
    return model


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_gradients_match_finite_differences(cell, layers, outputs):
    model = ln_model(cell, layers, seed=layers, outputs=outputs)
    rng = np.random.default_rng(layers)
    T, B = 5, 3
    x = rng.standard_normal((T, B, model.input_size))
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng),
                            ragged_mask(T, [5, 3, 4]), eps=EPS)
    expected = {"ln_gain_x", "ln_gain_h", "ln_bias"} | ({"ln_gain_c", "ln_bias_c"} if cell == "lstm" else {"b_hn"})
    assert {k.split(".")[1] for k in report if k.startswith("layer0.")} == {"W_x", "W_h", "b_h"} | expected
    assert report.worst() < TOL, str(report)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_with_noise_and_resets_match_finite_differences(cell):
    model = ln_model(cell, 2, seed=3, dropout=0.3, recurrent_dropout=0.3, zoneout=0.2)
    rng = np.random.default_rng(3)
    T, B = 6, 2
    x = rng.standard_normal((T, B, model.input_size))
    resets = np.zeros((T, B), bool)
    resets[3, 0] = True
    report = bptt.gradcheck(model, x, make_targets(model, T, B, rng), make_state(model, B, rng), eps=EPS,
                            resets=resets, masks=model.draw_masks(T, B, rng))
    assert report.worst() < TOL, str(report)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_compiled_loop_equals_the_numpy_reference(cell):
    model = ln_model(cell, 2, seed=4, recurrent_dropout=0.2, zoneout=0.2)
    rng = np.random.default_rng(4)
    T, B = 7, 4
    x = rng.standard_normal((T, B, model.input_size))
    targets, state0, mask = make_targets(model, T, B, rng), make_state(model, B, rng), ragged_mask(T, [7, 4, 6, 2])
    masks = model.draw_masks(T, B, rng)
    compiled = model.gradients(x, targets, state0, mask, masks=masks)
    reference = python_loop(lambda: model.gradients(x, targets, state0, mask, masks=masks))
    assert abs(compiled.loss - reference.loss) < 1e-12
    for k in model.params:
        np.testing.assert_allclose(compiled.params[k], reference.params[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(compiled.x, reference.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_scaling_the_recurrent_weights_changes_little_with_layer_norm_and_much_without(cell):
    """LN(α a) = LN(a) up to ε: W_h ten times larger leaves the layer-normalised model's
    outputs where they were; the plain cell's move."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3, 3))
    for layer_norm, check in ((True, lambda d: d < 1e-3), (False, lambda d: d > 3e-2)):
        model = make_model(cell, layers=1, seed=5, layer_norm=layer_norm)
        y, _ = model.forward(x)
        model.params["layer0.W_h"] *= 10
        y10, _ = model.forward(x)
        assert check(np.abs(y10 - y).max()), (layer_norm, np.abs(y10 - y).max())


def test_initialisation_gains_one_biases_zero_and_chrono_on_the_gate_bias():
    H = 6
    model = bptt.Model("lstm", 3, H, 2, layer_norm=True, init="chrono", chrono_t_max=50, seed=0)
    p = model.params
    for name in ("ln_gain_x", "ln_gain_h", "ln_gain_c"):
        np.testing.assert_array_equal(p[f"layer0.{name}"], 1)
    np.testing.assert_array_equal(p["layer0.b_h"], 0)
    np.testing.assert_array_equal(p["layer0.ln_bias_c"], 0)
    forget = p["layer0.ln_bias"][H:2 * H]
    assert (forget > 0).all() and (forget <= np.log(49)).all()
    np.testing.assert_array_equal(p["layer0.ln_bias"][:H], -forget)


@pytest.mark.parametrize("cell,message", [
    ("rnn", "layer_norm: applies to cell='lstm' or 'gru', got cell='rnn'"),
])
def test_cells_without_layer_norm_are_refused(cell, message):
    with pytest.raises(ValueError) as err:
        bptt.Model(cell, 3, 4, 2, layer_norm=True)
    assert message in str(err.value)
    with pytest.raises(ValueError, match="layer_norm: expected True or False"):
        bptt.Model("lstm", 3, 4, 2, layer_norm="yes")


def test_pytorch_export_refuses_a_layer_normalised_model():
    from bptt.interop.torch import to_torch
    with pytest.raises(ValueError, match="PyTorch has no layer-normalised LSTM or GRU layer"):
        to_torch(bptt.Model("gru", 3, 4, 2, layer_norm=True))


def test_training_with_layer_norm_from_the_command_options(tmp_path):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    with pytest.raises(ValueError, match="layer-norm: applies to --cell lstm or gru, got --cell rnn"):
        Config(cell="rnn", layer_norm=True).check()
    trainer = Trainer(Config(task="digits", seq_len=8, steps=200, batch=16, hidden=16, layer_norm=True,
                             eval_every=200, out=str(tmp_path / "run")))
    final = trainer.train(progress=False)
    assert "layer0.ln_gain_c" in trainer.model.params
    assert final["val_loss"] < 0.7 * trainer.task.baseline and final["val_acc"] > 0.5     # 10 classes: 0.1


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_checkpointed_bptt_equals_full_bptt(cell):
    """Segments with carried state and gradient give full BPTT's loss and gradients."""
    from bptt.through_time import checkpointed
    model = ln_model(cell, 2, seed=6, zoneout=0.1)
    rng = np.random.default_rng(6)
    T, B = 11, 3
    x = rng.standard_normal((T, B, model.input_size))
    targets, state0 = make_targets(model, T, B, rng), make_state(model, B, rng)
    masks = model.draw_masks(T, B, rng)
    full = model.gradients(x, targets, state0, masks=masks)
    loss, grads, _ = checkpointed(model, x, targets, state0, budget=3, masks=masks)
    assert abs(loss - full.loss) < 1e-12
    for k in model.params:
        np.testing.assert_allclose(grads[k], full.params[k], rtol=0, atol=1e-12, err_msg=k)


_BITS = ("import hashlib, numpy as np, bptt; m = bptt.Model('lstm', 3, 8, 2, layer_norm=True, dtype='float64', seed=0);"
         "x = np.random.default_rng(0).standard_normal((6, 4, 3)); grads = m.loss_and_grads(x, x[..., :2])[1];"
         "print(hashlib.sha256(b''.join(g.tobytes() for g in grads.values())).hexdigest())")


def test_a_process_that_compiles_the_loops_gives_the_bits_of_one_that_loads_them(tmp_path):
    """The normalisation helpers are inlined into each kernel: the process that compiles
    the time loops (a new BPTT_CACHE_DIR) and the next one, which loads them from the
    cache, run one copy of them and give the same gradient bits (float64, where the LSTM's
    two copies round differently)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "BPTT_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", _BITS], capture_output=True, text=True,
                           env=env, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1]


def test_every_compiled_function_a_built_in_kernel_calls_is_inlined():
    """A kernel's helper compiled as a function of its own has two copies, and which one the
    loop reaches depends on whether this process compiled the loop (cells/compiled.py
    _inlined): each helper is inlined instead."""
    from numba.core.registry import CPUDispatcher

    from bptt.cells.layer_norm import LayerNormGRU, LayerNormLSTM
    for cell in (bptt.cells.RNN, bptt.cells.LSTM, bptt.cells.GRU, LayerNormLSTM, LayerNormGRU):
        for kernel in cell.kernels:
            fn = kernel.py_func
            called = [fn.__globals__[n] for n in fn.__code__.co_names
                      if isinstance(fn.__globals__.get(n), CPUDispatcher)]
            for helper in called:
                assert helper.targetoptions.get("inline") == "always", (cell.__name__, helper.py_func.__name__)
