"""The fused (Numba) kernels give the NumPy path's numbers, masks and all: within float32
rounding in float32, and to 1e-12 in float64 (BPTT_FUSED=all)."""
import numpy as np
import pytest

from bptt.backends import cpu_loops, fused
from helpers import make_model, make_state, make_targets, ragged_mask

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba is not installed")


def test_fast_tanh_is_within_a_few_float32_ulp():
    x = np.linspace(-20, 20, 400_001, dtype=np.float32)
    out = np.empty_like(x)
    fused.tanh(x, out)
    ref = np.tanh(x.astype(np.float64))
    assert np.abs(out - ref).max() < 4e-7
    assert out[0] == -1.0 and out[-1] == 1.0


def run(model, x, targets, state0, mask, enabled, monkeypatch, resets=None):
    monkeypatch.setattr(fused, "ENABLED", enabled)
    g = model.gradients(x, targets, state0, mask, resets=resets)
    y, _ = model.forward(x, state0, mask, resets=resets)
    return g, y


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("outputs", ["all", "last"])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_path_matches_numpy_path(cell, outputs, masked, monkeypatch):
    rng = np.random.default_rng(31)
    model = make_model(cell, layers=2, D=5, H=16, O=3, dtype="float32", outputs=outputs, seed=4)
    T, B = 9, 4
    x = rng.standard_normal((T, B, 5)).astype(np.float32)
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    mask = ragged_mask(T, [9, 4, 6, 1]) if masked else None
    ref, y_ref = run(model, x, targets, state0, mask, False, monkeypatch)
    out, y = run(model, x, targets, state0, mask, True, monkeypatch)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    assert out.loss == pytest.approx(ref.loss, rel=1e-5)
    for k in ref.params:
        scale = np.abs(ref.params[k]).max()
        assert np.abs(out.params[k] - ref.params[k]).max() <= 1e-5 * scale, k
    np.testing.assert_allclose(out.x, ref.x, rtol=1e-4, atol=1e-5 * np.abs(ref.x).max())
    for a, b in zip(*(s if cell == "lstm" else (s,) for s in (out.state0, ref.state0))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    if masked:
        assert np.all(out.x[~mask] == 0)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid", "identity"])
def test_fused_elman_step_matches_numpy_for_every_nonlinearity(nonlinearity, monkeypatch):
    rng = np.random.default_rng(5)
    model = make_model("rnn", nonlinearity, layers=2, D=4, H=12, O=2, dtype="float32", seed=2)
    T, B = 8, 3
    x = rng.standard_normal((T, B, 4)).astype(np.float32)
    targets = make_targets(model, T, B, rng)
    mask = ragged_mask(T, [8, 3, 5])
    ref, y_ref = run(model, x, targets, None, mask, False, monkeypatch)
    out, y = run(model, x, targets, None, mask, True, monkeypatch)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    for k in ref.params:
        assert np.abs(out.params[k] - ref.params[k]).max() <= 2e-5 * np.abs(ref.params[k]).max(), k


KINDS64 = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"), ("rnn", "identity"), ("lstm", "tanh"),
           ("gru", "tanh")]


@pytest.mark.parametrize("cell,nonlinearity", KINDS64)
@pytest.mark.parametrize("outputs", ["all", "last"])
@pytest.mark.parametrize("loop", ["compiled", "python"])
def test_fused_and_plain_paths_agree_in_float64(cell, nonlinearity, outputs, loop, monkeypatch):
    """The same numbers to 1e-12: every gradient, ∂L/∂x, ∂L/∂state0, the outputs; with
    the time loop compiled whole (backends/cpu_loops.py) and run from Python."""
    if loop == "compiled" and not cpu_loops.AVAILABLE:
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    monkeypatch.setattr(cpu_loops, "ENABLED", loop == "compiled")
    rng = np.random.default_rng(11)
    model = make_model(cell, nonlinearity, layers=2, D=4, H=6, O=3, outputs=outputs, seed=3)
    T, B = 10, 4
    x = rng.standard_normal((T, B, 4))
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    mask = ragged_mask(T, [10, 6, 9, 2])
    resets = np.zeros((T, B), bool)
    resets[[3, 7], [0, 2]] = True
    monkeypatch.setattr(fused, "FLOAT64", True)
    assert fused.use_for(np.float64)
    calls = []
    module, name, per_pass = (cpu_loops, f"{cell}_forward", 1) if loop == "compiled" else \
        (fused, f"{cell}_forward_step", T)
    kernel = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: (calls.append(1), kernel(*a)))
    ref, y_ref = run(model, x, targets, state0, mask, False, monkeypatch, resets)
    assert calls == []
    out, y = run(model, x, targets, state0, mask, True, monkeypatch, resets)
    assert len(calls) == 2 * 2 * per_pass                # two layers, gradients and forward
    assert np.abs(y - y_ref).max() < 1e-12
    assert abs(out.loss - ref.loss) < 1e-12 * max(1.0, abs(ref.loss))
    for k in ref.params:
        assert np.abs(out.params[k] - ref.params[k]).max() < 1e-12 * max(1.0, np.abs(ref.params[k]).max()), k
    assert np.abs(out.x - ref.x).max() < 1e-12
    for a, b in zip(*(s if cell == "lstm" else (s,) for s in (out.state0, ref.state0))):
        assert np.abs(a - b).max() < 1e-12


def test_float64_takes_the_fused_path_only_when_asked(monkeypatch):
    """float64 is the verification dtype: the exact NumPy path unless BPTT_FUSED=all."""
    calls = []
    monkeypatch.setattr(fused, "lstm_forward_step", lambda *a: calls.append(a))
    model = make_model("lstm", dtype="float64")
    model.forward(np.zeros((3, 2, 3)))
    assert calls == [] and fused.use_for(np.float64) is fused.FLOAT64 is False
    assert fused.use_for(np.float32) is True


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("loop", ["compiled", "python"])
def test_both_orientations_of_the_recurrent_gemm_give_the_same_numbers(cell, loop, monkeypatch):
    """W_h h_{t-1} as h W_hᵀ or as (W_h hᵀ)ᵀ (and W_hᵀ δ both ways in the compiled loop):
    the autotuner may pick either (float64 to 1e-12)."""
    from bptt.backends import recurrent_gemm
    monkeypatch.setattr(cpu_loops, "ENABLED", loop == "compiled" and cpu_loops.AVAILABLE)
    rng = np.random.default_rng(8)
    model = make_model(cell, layers=2, D=3, H=8, O=2, seed=6)
    T, B = 7, 5
    x = rng.standard_normal((T, B, 3))
    targets = make_targets(model, T, B, rng)
    monkeypatch.setattr(fused, "FLOAT64", True)
    out = {}
    for mode in ("plain", "transposed"):
        monkeypatch.setattr(recurrent_gemm, "MODE", mode)
        out[mode] = model.gradients(x, targets, mask=ragged_mask(T, [7, 2, 5, 6, 1]))
    for k, g in out["plain"].params.items():
        assert np.abs(out["transposed"].params[k] - g).max() < 1e-12 * max(1.0, np.abs(g).max()), k
    gemm = recurrent_gemm.RecurrentGEMM(rng.standard_normal((8, 24)), 5, transposed=True)
    h = rng.standard_normal((5, 8))
    assert np.allclose(gemm(h), h @ gemm.W_hT, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_both_orientations_of_the_weight_gradient_gemm_give_the_same_numbers(dtype, tol, monkeypatch):
    """δᵀ·u directly or as (uᵀ·δ)ᵀ copied back (backends/weight_gemm.py), for a δ that is a
    column block of a wider array, as the GRU passes it: C-contiguous either way."""
    from bptt.backends import recurrent_gemm
    from bptt.backends.weight_gemm import weight_gradient
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((600, 96)).astype(dtype)
    delta, inputs = wide[:, :64], rng.standard_normal((600, 40)).astype(dtype)
    ref = delta.astype(np.float64).T @ inputs.astype(np.float64)
    for mode in ("plain", "transposed"):
        monkeypatch.setattr(recurrent_gemm, "MODE", mode)
        dW = weight_gradient(delta, inputs)
        assert dW.shape == (64, 40) and dW.dtype == dtype and dW.flags.c_contiguous
        assert np.abs(dW - ref).max() < tol * np.abs(ref).max(), mode
    monkeypatch.setattr(recurrent_gemm, "MODE", "auto")
    assert weight_gradient(delta[:0], inputs[:0]).shape == (64, 40)
