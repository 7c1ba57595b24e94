"""The CUDA step kernels, compiled for the CPU (tests/cuda_emulation.py), inside the very
loop the GPU runs (cells/loop.py with backends/cuda.py's DeviceSteps): the same numbers as
the NumPy reference steps (float64 to 1e-12).

This checks the GPU's arithmetic on any machine with g++; tests/test_gpu.py checks the
rest (CuPy, cuBLAS, CUDA graphs) where a GPU is present."""
import numpy as np
import pytest

import cuda_emulation
from bptt.backends.cuda import DeviceSteps
from bptt.cells import CellLayer, layer
from helpers import KINDS, ragged_mask


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    kernels = cuda_emulation.build(tmp_path_factory.mktemp("cuda"))
    if kernels is None:
        pytest.skip("no C++ compiler")
    return kernels


def _run(lay, params, x, state0, dh, dstateT, mask, resets):
    h, stateT, tape = lay.forward(params, x, state0, mask, resets)
    dx, dstate0, grads = lay.backward(params, dh, dstateT, tape)
    return [h, *stateT, dx, *dstate0] + [grads[k] for k in sorted(grads)]


def _case(cell, nonlinearity, dtype, T=9, B=4, D=4, H=6, seed=21):
    rng = np.random.default_rng(seed)
    cell = layer(cell, nonlinearity).cell
    params = {k: rng.uniform(-0.6, 0.6, s).astype(dtype) for k, s in CellLayer(cell).param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state0 = tuple((0.5 * rng.standard_normal((B, H))).astype(dtype) for _ in cell.state)
    dstateT = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in cell.state)
    dh = rng.standard_normal((T, B, H)).astype(dtype)
    resets = np.zeros((T, B), bool)
    resets[[2, 6], [0, 3]] = True
    return cell, params, x, state0, dh, dstateT, ragged_mask(T, [9, 5, 8, 2]), resets


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_cuda_kernels_give_the_reference_numbers(cell, nonlinearity, emulated):
    cell, *case = _case(cell, nonlinearity, np.float64)
    ref = _run(CellLayer(cell), *case)
    emulated.calls.clear()
    out = _run(CellLayer(cell, steps=DeviceSteps(cell, launch=emulated)), *case)
    assert emulated.calls.count(f"{cell.name}_step") == 9                     # the CUDA kernels ran
    assert emulated.calls.count(f"{cell.name}_step_backward") == 9
    for a, b in zip(out, ref):
        assert a.dtype == b.dtype and np.abs(a - b).max() < 1e-12 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_cuda_kernels_in_float32(cell, nonlinearity, emulated):
    cell, *case = _case(cell, nonlinearity, np.float64, H=16, seed=22)
    ref = _run(CellLayer(cell), *case)
    f32 = [{k: v.astype(np.float32) for k, v in case[0].items()}, case[1].astype(np.float32),
           tuple(s.astype(np.float32) for s in case[2]), case[3].astype(np.float32),
           tuple(s.astype(np.float32) for s in case[4]), case[5], case[6]]
    out = _run(CellLayer(cell, steps=DeviceSteps(cell, launch=emulated)), *f32)
    for a, b in zip(out, ref):
        assert a.dtype == np.float32 and np.abs(a - b).max() <= 2e-5 * max(1.0, np.abs(b).max())
