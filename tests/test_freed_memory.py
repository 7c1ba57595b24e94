"""settings.keep_freed_memory(): glibc's malloc keeps the freed large arrays of a training
step for the next, so a warm step makes no page faults; a kept tape is never reused."""
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from bptt.backends import settings
from bptt.cells import layer as cell_layer


def _case(cell, T, B, D, H, scale):
    """A layer, its float32 parameters, x, dh and a zero state0."""
    layer = cell_layer(cell)
    rng = np.random.default_rng(0)
    params = {name: (scale * rng.standard_normal(shape)).astype(np.float32)
              for name, shape in layer.param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    return layer, params, x, dh, tuple(np.zeros((B, H), np.float32) for _ in layer.STATE)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_kept_tape_is_untouched_by_later_steps(cell):
    """Later steps must not write into a tape still held."""
    layer, params, x, dh, state0 = _case(cell, 40, 16, 24, 128, 0.2)
    h1, _, tape1 = layer.forward(params, x, state0)
    kept = {k: v.copy() for k, v in tape1._asdict().items() if isinstance(v, np.ndarray)}
    h1_copy = h1.copy()
    dx1, _, grads1 = layer.backward(params, dh, None, tape1)
    for _ in range(3):                                           # new steps on other inputs
        h2, _, tape2 = layer.forward(params, 2 * x, state0)
        layer.backward(params, dh, None, tape2)
        del h2, tape2
    np.testing.assert_array_equal(h1, h1_copy)
    for k, v in kept.items():
        np.testing.assert_array_equal(getattr(tape1, k), v, err_msg=k)
    dx1b, _, grads1b = layer.backward(params, dh, None, tape1)
    np.testing.assert_array_equal(dx1, dx1b)
    for k in grads1:
        np.testing.assert_array_equal(grads1[k], grads1b[k], err_msg=k)


def test_a_training_step_makes_no_page_faults_once_warm():
    """The reason for the setting: about 2,300 faults a step for this LSTM under glibc's
    defaults (BPTT_WORKSPACE_MB=0)."""
    if not settings.keep_freed_memory():
        pytest.skip("not glibc's malloc")
    layer, params, x, dh, state0 = _case("lstm", 100, 32, 64, 128, 0.1)

    def step():
        _, _, tape = layer.forward(params, x, state0)
        layer.backward(params, dh, None, tape)
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    assert faults < 100, f"{faults:.0f} page faults a step"


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_limit_from_the_environment():
    on = _run("from bptt.backends import settings as s; print(s.workspace_bytes(), s.keep_freed_memory())")
    assert on.stdout.split() == [str(512 << 20)] * 2, on.stderr
    off = _run("from bptt.backends import settings as s; print(s.workspace_bytes(), s.keep_freed_memory())",
               BPTT_WORKSPACE_MB="0")
    assert off.stdout.split() == ["0", "0"], off.stderr
    for value in ("lots", "-1", "inf", "nan", "4096"):
        bad = _run("from bptt.backends import settings; settings.keep_freed_memory()", BPTT_WORKSPACE_MB=value)
        assert bad.returncode != 0 and "BPTT_WORKSPACE_MB" in bad.stderr and repr(value) in bad.stderr, value
