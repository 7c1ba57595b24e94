"""The fused (Numba) float32 kernels give the NumPy path's numbers, masks and all."""
import numpy as np
import pytest

from bptt.backends import fused
from helpers import make_model, make_state, make_targets, ragged_mask

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba is not installed")


def test_fast_tanh_is_within_a_few_float32_ulp():
    x = np.linspace(-20, 20, 400_001, dtype=np.float32)
    out = np.empty_like(x)
    fused.tanh(x, out)
    ref = np.tanh(x.astype(np.float64))
    assert np.abs(out - ref).max() < 4e-7
    assert out[0] == -1.0 and out[-1] == 1.0


def run(model, x, targets, state0, mask, enabled, monkeypatch):
    monkeypatch.setattr(fused, "ENABLED", enabled)
    g = model.gradients(x, targets, state0, mask)
    y, _ = model.forward(x, state0, mask)
    return g, y


@pytest.mark.parametrize("cell", ["lstm", "gru"])
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


def test_float64_never_takes_the_fused_path(monkeypatch):
    """float64 is the verification dtype: the exact NumPy path, whatever the switch says."""
    calls = []
    monkeypatch.setattr(fused, "lstm_forward_step", lambda *a: calls.append(a))
    model = make_model("lstm", dtype="float64")
    model.forward(np.zeros((3, 2, 3)))
    assert calls == [] and fused.use_for(np.float64) is False
