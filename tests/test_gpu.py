"""The CuPy backend against the CPU: same layer code, CUDA step kernels, CUDA graphs.

Runs wherever CuPy sees an NVIDIA GPU; skips cleanly elsewhere. The loop around the
kernels is the Python loop (cells/loop.py), which tests/test_cuda_kernels_on_cpu.py runs
with the same kernels built for the CPU."""
import numpy as np
import pytest

from bptt.backends import cuda
from bptt.cells import layer

pytestmark = pytest.mark.skipif(not cuda.AVAILABLE, reason="needs CuPy and an NVIDIA GPU")

KINDS = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"), ("rnn", "identity"), ("lstm", None), ("gru", None)]


def _setup(cell, dtype, T=9, B=4, D=5, H=7, seed=0, masked=True):
    rng = np.random.default_rng(seed)
    G = layer(cell).GATES
    params = {"W_x": rng.uniform(-0.5, 0.5, (G * H, D)), "W_h": rng.uniform(-0.5, 0.5, (G * H, H)),
              "b_h": rng.uniform(-0.5, 0.5, G * H)}
    if cell == "gru":
        params["b_hn"] = rng.uniform(-0.5, 0.5, H)
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.standard_normal((T, B, D)).astype(dtype)
    dh = rng.standard_normal((T, B, H)).astype(dtype)
    state0 = tuple(0.5 * rng.standard_normal((B, H)).astype(dtype) for _ in layer(cell).STATE)
    mask = (np.arange(T)[:, None] < np.array([T, 3, 6, 1][:B])[None, :]) if masked else None
    return params, x, dh, state0, mask


def _run(cell, nl, params, x, dh, state0, mask, xp):
    lay = layer(cell, nl or "tanh")
    put = (lambda a: a) if xp is np else (lambda a: None if a is None else xp.asarray(a))
    h, sT, tape = lay.forward({k: put(v) for k, v in params.items()}, put(x), tuple(put(s) for s in state0),
                              put(mask))
    dx, ds0, grads = lay.backward({k: put(v) for k, v in params.items()}, put(dh), None, tape)
    get = (lambda a: a) if xp is np else (lambda a: xp.asnumpy(a))
    return {"h": get(h), "dx": get(dx), **{f"state{i}": get(s) for i, s in enumerate(sT)},
            **{f"dstate{i}": get(s) for i, s in enumerate(ds0)}, **{k: get(v) for k, v in grads.items()}}


@pytest.mark.parametrize("cell,nl", KINDS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_gpu_layers_match_the_cpu_reference(cell, nl, dtype, tol):
    import cupy
    params, x, dh, state0, mask = _setup(cell, dtype)
    f64 = {k: v.astype(np.float64) for k, v in params.items()}
    ref = _run(cell, nl, f64, x.astype(np.float64), dh.astype(np.float64),
               tuple(s.astype(np.float64) for s in state0), mask, np)
    out = _run(cell, nl, params, x, dh, state0, mask, cupy)
    for k, v in ref.items():
        assert out[k].dtype == dtype, k
        assert np.abs(out[k] - v).max() <= tol * max(1.0, np.abs(v).max()), k


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_graph_replay_equals_the_eager_pass_and_follows_new_inputs(cell):
    import cupy
    from bptt.backends.graphs import GraphedLayer
    params, x, dh, state0, _ = _setup(cell, np.float32, T=20, B=8, D=6, H=16, masked=False)
    gp = {k: cupy.asarray(v) for k, v in params.items()}
    graphed = GraphedLayer(layer(cell), gp, cupy.asarray(x), tuple(cupy.asarray(s) for s in state0),
                           cupy.asarray(dh), need_dx=True)
    for seed in (1, 2):
        _, x2, dh2, s2, _ = _setup(cell, np.float32, T=20, B=8, D=6, H=16, seed=seed, masked=False)
        h, _, dx, _, grads = graphed(cupy.asarray(x2), tuple(cupy.asarray(s) for s in s2), cupy.asarray(dh2))
        cupy.cuda.Device().synchronize()
        eager = _run(cell, "tanh", params, x2, dh2, s2, None, cupy)
        assert np.array_equal(cupy.asnumpy(h), eager["h"])
        assert np.array_equal(cupy.asnumpy(dx), eager["dx"])
        for k, g in grads.items():
            assert np.allclose(cupy.asnumpy(g), eager[k], rtol=1e-6, atol=1e-6), k
