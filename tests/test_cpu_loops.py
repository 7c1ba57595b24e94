"""The compiled time loops (backends/cpu_loops.py) and their BLAS (backends/cblas.py)."""
import numpy as np
import pytest
from numba import njit
from threadpoolctl import threadpool_info

from bptt.backends import cblas, cpu_loops, fused, recurrent_gemm
from helpers import make_model, make_state, make_targets, ragged_mask

OPENBLAS = any(lib["internal_api"] == "openblas" for lib in threadpool_info())
needs_loops = pytest.mark.skipif(not cpu_loops.AVAILABLE, reason="NumPy's BLAS is not OpenBLAS here")


def test_numpys_openblas_is_found_where_numpy_has_it():
    assert cblas.AVAILABLE is OPENBLAS
    assert cpu_loops.AVAILABLE is (OPENBLAS and fused.AVAILABLE)


if cblas.AVAILABLE:
    @njit
    def _gemm(trans_a, trans_b, a, b, out):
        cblas.gemm(trans_a, trans_b, a, b, out)

    @njit
    def _gemv(trans, w, x, y):
        cblas.gemv(trans, w, x, y)


@needs_loops
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_from_compiled_code_equals_numpy(dtype, tol, trans_a, trans_b):
    rng = np.random.default_rng(0)
    M, N, K = 5, 7, 3
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    out = np.full((M, N), np.nan, dtype=dtype)
    _gemm(trans_a, trans_b, a, b, out)
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    assert np.abs(out - want).max() < tol * np.abs(want).max()
    from_python = np.full((M, N), np.nan, dtype=dtype)
    cblas.gemm(trans_a, trans_b, a, b, from_python)          # the NumPy body, outside Numba
    assert np.abs(from_python - out).max() < tol * np.abs(want).max()


@needs_loops
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("trans", [False, True])
def test_gemv_from_compiled_code_equals_numpy(dtype, tol, trans):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4)).astype(dtype)
    x = rng.standard_normal(6 if trans else 4).astype(dtype)
    y = np.full(4 if trans else 6, np.nan, dtype=dtype)
    _gemv(trans, w, x, y)
    want = (w.T if trans else w) @ x
    assert np.abs(y - want).max() < tol * np.abs(want).max()
    from_python = np.full_like(y, np.nan)
    cblas.gemv(trans, w, x, from_python)                     # the NumPy body, outside Numba
    assert np.abs(from_python - y).max() < tol * np.abs(want).max()


@needs_loops
@pytest.mark.parametrize("B,N", [(1, 5), (3, 16), (3, 37), (32, 512), (7, 1000)])
def test_flipped_products_transpose_copy_is_exact(B, N):
    """The copy back of the flipped GEMM's outᵀ, bands of 16 plus the remainder columns."""
    src = np.random.default_rng(2).standard_normal((N, B)).astype(np.float32)
    dst = np.full((B, N), np.nan, dtype=np.float32)
    cpu_loops._transpose_into(src, dst)
    assert np.array_equal(dst, src.T)


@needs_loops
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("B,step_gemm,mode,in_loop", [
    (1, "packed", "auto", True), (3, "packed", "auto", True), (3, "packed", "auto", False),
    (1, "blas", "auto", True), (3, "blas", "plain", True), (3, "blas", "transposed", True)])
def test_compiled_loop_equals_the_numpy_path_in_float64(cell, B, step_gemm, mode, in_loop, monkeypatch):
    """One stream and three, with padding and a reset, the packed GEMM (the input
    projection in the loop, and in one GEMM before it as for large weights) and BLAS's
    (gemv for one stream, both GEMM orientations): gradients, ∂L/∂x, ∂L/∂state0 and outputs
    to 1e-12 of the plain NumPy path."""
    monkeypatch.setattr(cpu_loops, "IN_LOOP_PROJECTION_BYTES", 2 ** 21 if in_loop else 0)
    rng = np.random.default_rng(5)
    model = make_model(cell, layers=2, D=3, H=5, O=2, outputs="all", seed=2)
    T = 9
    x = rng.standard_normal((T, B, 3))
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    mask = ragged_mask(T, [9, 4, 7][:B])
    resets = np.zeros((T, B), bool)
    resets[5, 0] = True
    monkeypatch.setattr(recurrent_gemm, "MODE", mode)
    monkeypatch.setattr(cpu_loops, "STEP_GEMM", step_gemm)
    monkeypatch.setattr(fused, "FLOAT64", True)
    ref = None
    for enabled in (False, True):
        monkeypatch.setattr(fused, "ENABLED", enabled)
        out = model.gradients(x, targets, state0=state0, mask=mask, resets=resets)
        y = model.forward(x, state0=state0, mask=mask, resets=resets)[0]
        if ref is None:
            ref, y_ref = out, y
    assert np.abs(y - y_ref).max() < 1e-12
    for k, g in ref.params.items():
        assert np.abs(out.params[k] - g).max() < 1e-12 * max(1.0, np.abs(g).max()), k
    assert np.abs(out.x - ref.x).max() < 1e-12


@needs_loops
def test_the_float32_layers_take_the_compiled_loop(monkeypatch):
    calls = []
    loop = cpu_loops.lstm_forward
    monkeypatch.setattr(cpu_loops, "lstm_forward", lambda *a: (calls.append(1), loop(*a)))
    model = make_model("lstm", dtype="float32")
    model.forward(np.zeros((3, 2, 3), np.float32))
    assert calls == [1]
    monkeypatch.setattr(cpu_loops, "ENABLED", False)
    model.forward(np.zeros((3, 2, 3), np.float32))
    assert calls == [1]


@needs_loops
def test_a_layer_called_with_mixed_dtypes_takes_the_python_loop(monkeypatch):
    """The BLAS entry point goes by dtype: a float64 W_h beside float32 inputs must not reach
    sgemm (it would read the float64 bytes as float32), so that call loops in Python."""
    from bptt.cells import lstm
    calls = []
    loop = cpu_loops.lstm_forward
    monkeypatch.setattr(cpu_loops, "lstm_forward", lambda *a: (calls.append(1), loop(*a)))
    rng = np.random.default_rng(3)
    T, B, D, H = 6, 3, 2, 4
    params = {"W_x": rng.standard_normal((4 * H, D)).astype(np.float32), "W_h": 0.5 * rng.standard_normal((4 * H, H)),
              "b_h": np.zeros(4 * H, np.float32)}
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    state0 = (np.zeros((B, H), np.float32), np.zeros((B, H), np.float32))
    h_mixed = lstm.forward(params, x, state0)[0]
    assert calls == []
    h_32 = lstm.forward(dict(params, W_h=params["W_h"].astype(np.float32)), x, state0)[0]
    assert calls == [1]
    assert np.abs(h_mixed - h_32).max() < 1e-6


@needs_loops
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_two_threads_running_halves_of_a_batch_give_the_whole_batchs_gradients(cell):
    """The compiled loops release the GIL, so two threads run at once, each a half of the
    batch: per stream everything is independent, so the two halves' outputs are the whole
    batch's rows and their weight gradients sum to the whole batch's (float32 rounding)."""
    from concurrent.futures import ThreadPoolExecutor
    from bptt.cells import CELLS
    layer = CELLS[cell]
    rng = np.random.default_rng(7)
    T, B, D, H = 12, 8, 5, 16
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    params = {"W_x": (rng.standard_normal((G * H, D)) / 3).astype(np.float32),
              "W_h": (rng.standard_normal((G * H, H)) / 4).astype(np.float32),
              "b_h": (0.1 * rng.standard_normal(G * H)).astype(np.float32)}
    if cell == "gru":
        params["b_hn"] = (0.1 * rng.standard_normal(H)).astype(np.float32)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)

    def state(b):
        h0 = (0.5 * rng.standard_normal((b, H))).astype(np.float32)
        return (h0, h0.copy()) if cell == "lstm" else (h0,)

    state0 = state(B)

    def run(rows):
        s0 = tuple(s[rows] for s in state0)
        h, _, tape = layer.forward(params, np.ascontiguousarray(x[:, rows]), s0)
        _, _, grads = layer.backward(params, np.ascontiguousarray(dh[:, rows]), None, tape, need_dx=False)
        return h, grads

    h_whole, g_whole = run(slice(None))
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):                          # several rounds, so the threads overlap
            (h0, g0), (h1, g1) = pool.map(run, (slice(0, B // 2), slice(B // 2, B)))
            assert np.abs(np.concatenate([h0, h1], axis=1) - h_whole).max() < 1e-5
            for k, g in g_whole.items():
                assert np.abs(g0[k] + g1[k] - g).max() < 1e-4 * max(1.0, np.abs(g).max()), k
