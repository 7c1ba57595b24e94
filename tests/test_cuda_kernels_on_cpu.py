"""The CUDA step kernels, compiled for the CPU (tests/cuda_emulation.py), inside the very
loop the GPU runs: the same numbers as the NumPy reference path (float64 to 1e-12).

This checks the GPU's arithmetic on any machine with g++; tests/test_gpu.py checks the
rest (CuPy, cuBLAS, CUDA graphs) where a GPU is present."""
import numpy as np
import pytest

import cuda_emulation
from bptt.backends import cpu_loops, fused
from bptt.cells import gru, lstm, rnn
from helpers import make_model, make_state, make_targets, ragged_mask


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    kernels = cuda_emulation.build(tmp_path_factory.mktemp("cuda"))
    if kernels is None:
        pytest.skip("no C++ compiler")
    return kernels


KINDS = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"), ("rnn", "identity"), ("lstm", "tanh"),
         ("gru", "tanh")]


def _gradients(model, x, targets, state0, mask, resets):
    g = model.gradients(x, targets, state0, mask, resets=resets)
    y, _ = model.forward(x, state0, mask, resets=resets)
    return g, y


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_cuda_kernels_give_the_reference_numbers(cell, nonlinearity, outputs, emulated, monkeypatch):
    rng = np.random.default_rng(21)
    model = make_model(cell, nonlinearity, layers=2, D=4, H=6, O=3, outputs=outputs, seed=9)
    T, B = 9, 4
    x = rng.standard_normal((T, B, 4))
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    mask = ragged_mask(T, [9, 5, 8, 2])
    resets = np.zeros((T, B), bool)
    resets[[2, 6], [0, 3]] = True
    monkeypatch.setattr(fused, "ENABLED", False)
    ref, y_ref = _gradients(model, x, targets, state0, mask, resets)          # the NumPy reference path
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setattr(cpu_loops, "ENABLED", False)       # the GPU runs the Python loop
    monkeypatch.setattr(fused, "FLOAT64", True)
    for module in (rnn, lstm, gru):
        monkeypatch.setattr(module, "kernels_for", lambda xp: emulated)
    calls = []
    name = f"{cell}_forward_step"
    launch = getattr(emulated, name)
    monkeypatch.setattr(emulated, name, lambda *a: (calls.append(1), launch(*a)))
    out, y = _gradients(model, x, targets, state0, mask, resets)
    assert len(calls) == 2 * 2 * T                                            # the CUDA kernels ran
    assert np.abs(y - y_ref).max() < 1e-12
    assert abs(out.loss - ref.loss) < 1e-12 * max(1.0, abs(ref.loss))
    for k in ref.params:
        assert np.abs(out.params[k] - ref.params[k]).max() < 1e-12 * max(1.0, np.abs(ref.params[k]).max()), k
    assert np.abs(out.x - ref.x).max() < 1e-12


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cuda_kernels_in_float32(cell, emulated, monkeypatch):
    rng = np.random.default_rng(22)
    model = make_model(cell, layers=1, D=3, H=16, O=2, dtype="float32", seed=2)
    T, B = 12, 3
    x = rng.standard_normal((T, B, 3)).astype(np.float32)
    targets = make_targets(model, T, B, rng)
    monkeypatch.setattr(fused, "ENABLED", False)
    ref, _ = _gradients(model, x, targets, None, None, None)
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setattr(cpu_loops, "ENABLED", False)       # the GPU runs the Python loop
    for module in (rnn, lstm, gru):
        monkeypatch.setattr(module, "kernels_for", lambda xp: emulated)
    out, _ = _gradients(model, x, targets, None, None, None)
    for k in ref.params:
        assert np.abs(out.params[k] - ref.params[k]).max() <= 2e-5 * np.abs(ref.params[k]).max(), k
