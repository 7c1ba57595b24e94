"""backends/workspace.py: large arrays reused across steps, never while any view lives."""
import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest

from bptt.backends import workspace
from bptt.backends import settings
from bptt.cells import layer as cell_layer

BIG = (300, 1024)                                 # 1.2 MB of float32: cached


@pytest.fixture(autouse=True)
def fresh_cache():
    workspace.release()
    yield
    workspace.release()


def test_empty_is_an_ordinary_aligned_array():
    a = workspace.empty(BIG, np.float32)
    assert a.shape == BIG and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % workspace.ALIGN == 0
    a[...] = 3.0
    assert float(a.sum()) == 3.0 * a.size
    small = workspace.empty((10, 10), np.float64)              # below MIN_BYTES: NumPy's own
    assert small.base is None and small.shape == (10, 10)
    assert workspace.empty(70000, np.float64).shape == (70000,)


def test_a_block_is_reused_only_when_every_view_is_gone():
    a = workspace.empty(BIG, np.float32)
    start = a.ctypes.data
    view = a[10:].T
    del a
    b = workspace.empty(BIG, np.float32)                       # the view keeps the first block
    assert not np.shares_memory(b, view)
    view[...] = 1.0
    b[...] = 2.0
    assert (view == 1.0).all()
    del view
    made = workspace.stats()["made"]
    c = workspace.empty((299, 1024), np.float32)               # the same size class
    assert c.ctypes.data == start
    assert workspace.stats()["made"] == made and workspace.stats()["reused"] >= 1
    assert not np.shares_memory(b, c)


def test_size_classes_waste_at_most_an_eighth():
    for n in [workspace.MIN_BYTES, 300_001, 1 << 20, (1 << 20) + 1, 12_345_678]:
        size = workspace.size_class(n)
        assert n <= size <= n * 1.125 + workspace.ALIGN and size % workspace.ALIGN == 0


def test_free_blocks_beyond_the_limit_go_back_oldest_first(monkeypatch):
    block = workspace.size_class(BIG[0] * BIG[1] * 4)
    monkeypatch.setattr(settings, "workspace_bytes", lambda: 2 * block)
    arrays = [workspace.empty(BIG, np.float32) for _ in range(4)]
    starts = [a.ctypes.data for a in arrays]
    for i in range(4):                                          # freed in this order
        arrays[i] = None
    stats = workspace.stats()
    assert stats["free_blocks"] == 2 and stats["free_bytes"] == 2 * block
    again = [workspace.empty(BIG, np.float32) for _ in range(2)]
    assert {a.ctypes.data for a in again} == set(starts[2:])   # the two freed last were kept
    monkeypatch.setattr(settings, "workspace_bytes", lambda: 0)
    assert workspace.empty(BIG, np.float32).base is None        # the cache is off


def test_a_larger_free_block_serves_a_smaller_request():
    made = workspace.stats()["made"]
    a = workspace.empty((350, 1024), np.float32)                # 1.4 MB
    start = a.ctypes.data
    del a
    b = workspace.empty(BIG, np.float32)                        # 1.2 MB: another class, within 2x
    assert b.ctypes.data == start and workspace.stats()["made"] == made + 1
    del b
    c = workspace.empty((100, 1024), np.float32)                # 0.4 MB: more than 2x smaller, a new block
    assert workspace.stats()["made"] == made + 2 and workspace.stats()["free_blocks"] == 0


def test_a_new_block_first_gives_back_as_many_free_bytes():
    """Sizes that never repeat (checkpointed BPTT's segments) must not pile up free blocks:
    the memory held stays what the arrays in use take, plus at most one block."""
    rng = np.random.default_rng(0)
    live, most_held, most_needed = [], 0, 0
    for _ in range(200):
        live.append(workspace.empty((int(rng.integers(64, 2048)), 1024), np.float32))
        if len(live) > 3:
            live.pop(int(rng.integers(0, len(live))))
        in_use = sum(workspace.size_class(a.nbytes) for a in live)
        most_held = max(most_held, in_use + workspace.stats()["free_bytes"])
        most_needed = max(most_needed, in_use)
    assert most_held <= most_needed + workspace.size_class(2048 * 1024 * 4)
    assert workspace.stats()["reused"] > 0


def test_release_gives_free_blocks_back():
    a = workspace.empty(BIG, np.float32)
    del a
    assert workspace.stats()["free_blocks"] == 1
    workspace.release()
    assert workspace.stats()["free_blocks"] == 0 and workspace.stats()["free_bytes"] == 0


def test_threads_never_share_a_live_block():
    errors = []

    def work(k):
        for i in range(300):
            a = workspace.empty((100 + i % 3, 1024), np.float32)
            a.fill(k)
            b = workspace.empty(BIG, np.float32)
            b.fill(-k)
            if not ((a == k).all() and (b == -k).all()):
                errors.append(k)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_kept_tape_is_untouched_by_later_steps(cell):
    """A layer's tape lives in cached blocks: later steps must not write into one still held."""
    layer = cell_layer(cell)
    T, B, D, H = 40, 16, 24, 128                                 # (T, B, H) is cached: 327 kB
    rng = np.random.default_rng(0)
    params = {name: (0.2 * rng.standard_normal(shape)).astype(np.float32)
              for name, shape in layer.param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    state0 = tuple(np.zeros((B, H), np.float32) for _ in layer.STATE)
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
    """The reason for the cache: about 1 900 faults a step for this LSTM without it."""
    layer = cell_layer("lstm")
    T, B, D, H = 100, 32, 64, 128
    rng = np.random.default_rng(0)
    params = {name: (0.1 * rng.standard_normal(shape)).astype(np.float32)
              for name, shape in layer.param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    state0 = (np.zeros((B, H), np.float32), np.zeros((B, H), np.float32))

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
    off = _run("from bptt.backends import workspace as w, settings as s; "
               "print(s.workspace_bytes(), w.empty((1000, 1000)).base is None)",
               BPTT_WORKSPACE_MB="0")
    assert off.stdout.split() == ["0", "True"], off.stderr
    for value in ("lots", "-1", "inf", "nan"):
        bad = _run("import numpy; from bptt.backends import workspace; workspace.empty((1000, 1000))",
                   BPTT_WORKSPACE_MB=value)
        assert bad.returncode != 0 and "BPTT_WORKSPACE_MB" in bad.stderr and repr(value) in bad.stderr, value
