"""A Model, gradcheck, save and the exports run on NumPy arrays (docs/gpu.md): an array on
a GPU (CuPy's, or any with __cuda_array_interface__) given to them is a ValueError naming
the argument, not a traceback from inside a loop or a writer. No GPU needed: the stand-in
below behaves as a cupy.ndarray does when NumPy is asked for its numbers."""
import numpy as np
import pytest

import bptt
from bptt.interop.onnx import to_onnx
from bptt.interop.torch import to_torch


class ndarray:                                                # what CuPy's array shows NumPy
    def __init__(self, a):
        self._a = np.asarray(a)
        self.shape, self.dtype, self.ndim = self._a.shape, self._a.dtype, self._a.ndim

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0, False), "version": 3}

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")


ndarray.__module__ = "cupy"


def _refusal(name):
    return (f"{name}: expected a NumPy array (a Model runs on the CPU; only the layers of bptt.cells take CuPy "
            f"arrays), got a cupy.ndarray on the GPU; copy it to the host first (cupy.asnumpy(a), or "
            f"a.cpu().numpy() for a torch tensor)")


def _model(**options):
    return bptt.Model("lstm", 3, 4, 2, seed=0, dtype="float64", **options)


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 2))


@pytest.mark.parametrize("what", ["x", "targets", "state0", "mask", "resets"])
def test_gpu_inputs_are_refused_by_name(what):
    m, (x, y) = _model(), _data()
    args = {"x": x, "targets": y}
    if what in ("x", "targets"):
        args[what] = ndarray(args[what])
        name = what
    elif what == "state0":
        args["state0"] = (ndarray(np.zeros((1, 2, 4))), np.zeros((1, 2, 4)))
        name = "state0[0]"
    else:
        args[what] = ndarray(np.ones((5, 2), bool))
        name = what
    with pytest.raises(ValueError) as err:
        m.gradients(**args)
    assert str(err.value) == _refusal(name)
    if what != "targets":
        with pytest.raises(ValueError) as err:
            m.forward(**{k: v for k, v in args.items() if k != "targets"})
        assert str(err.value) == _refusal(name)


@pytest.mark.parametrize("use", ["forward", "gradients", "gradcheck", "save", "to_torch", "to_onnx"])
def test_a_gpu_parameter_is_refused_by_name(use, tmp_path):
    m, (x, y) = _model(), _data()
    m.params["layer0.W_x"] = ndarray(m.params["layer0.W_x"])
    call = {"forward": lambda: m.forward(x), "gradients": lambda: m.gradients(x, y),
            "gradcheck": lambda: bptt.gradcheck(m, x, y), "save": lambda: m.save(tmp_path / "m"),
            "to_torch": lambda: to_torch(m), "to_onnx": lambda: to_onnx(m, tmp_path / "m.onnx")}[use]
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == _refusal("params['layer0.W_x']")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.onnx").exists()


def test_gpu_dropout_masks_are_refused_by_name():
    m, (x, y) = _model(recurrent_dropout=0.5), _data()
    masks = m.draw_masks(5, 2, np.random.default_rng(1))
    masks.recurrent[0] = ndarray(masks.recurrent[0])
    with pytest.raises(ValueError) as err:
        m.gradients(x, y, masks=masks)
    assert str(err.value) == _refusal("masks.recurrent[0]")
