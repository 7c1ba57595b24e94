"""Model.gradients(threads=2): two halves of the batch on two threads, the same numbers."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bptt import batch_split
from helpers import make_model, make_state, make_targets, ragged_mask


def _same(a, b, tol):
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            _same(u, v, tol)
        return
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= tol * max(1.0, float(np.abs(np.asarray(b)).max()))


def _check(model, tol, **kw):
    whole = model.gradients(threads=1, **kw)
    split = model.gradients(threads=2, **kw)
    _same(split.loss, whole.loss, tol)
    for k, g in whole.params.items():
        _same(split.params[k], g, tol)
    if whole.x is not None:
        _same(split.x, whole.x, tol)
    _same(split.state0, whole.state0, tol)
    _same(split.state, whole.state, tol)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("outputs,loss,head", [("all", "cross_entropy", "softmax"), ("last", "mse", "identity")])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_halves_on_two_threads_equal_the_whole_batch_in_float64(cell, outputs, loss, head, reduction):
    """Padding, a reset, carried state and dstate, two layers: loss, every gradient, ∂L/∂x,
    ∂L/∂state0 and the final state to 1e-12 (a mean divides by the whole batch's count)."""
    rng = np.random.default_rng(11)
    model = make_model(cell, layers=2, D=3, H=5, O=4, outputs=outputs, loss=loss, head=head, reduction=reduction)
    T, B = 7, 5
    mask = ragged_mask(T, [7, 3, 6, 2, 5])
    resets = np.zeros((T, B), bool)
    resets[4, 1] = resets[2, 4] = True
    _check(model, 1e-12, x=rng.standard_normal((T, B, 3)), targets=make_targets(model, T, B, rng),
           state0=make_state(model, B, rng), mask=mask, dstate=make_state(model, B, rng), resets=resets)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_halves_in_float32_through_the_compiled_loops(cell):
    rng = np.random.default_rng(12)
    model = make_model(cell, D=4, H=16, O=6, loss="cross_entropy", head="softmax", dtype="float32")
    T, B = 10, 8
    _check(model, 1e-5, x=rng.standard_normal((T, B, 4)).astype(np.float32),
           targets=make_targets(model, T, B, rng), state0=make_state(model, B, rng), input_grad=False)


def test_loss_mask_and_loss_count_are_kept():
    rng = np.random.default_rng(13)
    model = make_model("lstm", D=3, H=4, O=3)
    T, B = 6, 4
    loss_mask = rng.uniform(size=(T, B)) < 0.6
    kw = dict(x=rng.standard_normal((T, B, 3)), targets=make_targets(model, T, B, rng), loss_mask=loss_mask)
    _check(model, 1e-12, **kw)
    _check(model, 1e-12, loss_count=40, **kw)


def test_a_half_without_valid_steps_is_not_split(monkeypatch):
    """Streams 2 and 3 have no valid step (allowed with outputs='all'): a split would hand
    one half an all-padding batch, so the call runs whole."""
    calls = []
    monkeypatch.setattr(batch_split, "gradients", lambda *a: calls.append(1))
    rng = np.random.default_rng(14)
    model = make_model("gru", D=2, H=3, O=2)
    T, B = 4, 4
    mask = ragged_mask(T, [3, 4, 0, 0])
    g = model.gradients(rng.standard_normal((T, B, 2)), make_targets(model, T, B, rng), mask=mask, threads=2)
    assert calls == [] and np.isfinite(g.loss)
    model.gradients(rng.standard_normal((T, B, 2)), make_targets(model, T, B, rng), threads=2)
    assert calls == [1]


def test_threads_is_checked():
    model = make_model("rnn")
    with pytest.raises(ValueError, match="threads: expected 1 or 2, got 3"):
        model.gradients(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), threads=3)


def test_the_callers_errstate_holds_in_both_halves():
    """np.errstate is a context variable: the halves run in copies of the caller's context,
    so an overflow is ignored, or raised, in them as in the caller."""
    import warnings
    rng = np.random.default_rng(15)
    model = make_model("lstm", D=3, H=4, O=3, dtype="float32")
    model.params["head.W_y"][:] = 1e30
    T, B = 3, 4
    kw = dict(x=rng.standard_normal((T, B, 3)).astype(np.float32), targets=make_targets(model, T, B, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            g = model.gradients(threads=2, **kw)
    assert not np.isfinite(g.loss)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        model.gradients(threads=2, **kw)


@pytest.mark.parametrize("cell,layers", [("gru", 2), ("lstm", 1)])
def test_states_given_as_lists_split_as_arrays(cell, layers):
    """state0 and dstate as nested lists, which the model takes, reached the halves as they
    came and failed with "list indices must be integers or slices, not tuple"."""
    model = make_model(cell, layers=layers, D=2, H=3, O=2, dtype="float64")
    rng = np.random.default_rng(0)
    state = make_state(model, 4, rng)
    as_lists = tuple(a.tolist() for a in state) if isinstance(state, tuple) else state.tolist()
    _check(model, 1e-13, x=rng.standard_normal((5, 4, 2)), targets=make_targets(model, 5, 4, rng),
           state0=as_lists, dstate=as_lists)


def test_a_forked_child_splits_the_batch_after_its_parent_did():
    """The child of a fork (multiprocessing's default on Linux) has none of the pool's
    threads: its halves must run on a pool of its own, not wait for ever."""
    code = textwrap.dedent("""
        import os, signal, sys, time, numpy as np, bptt
        m = bptt.Model("lstm", 3, 8, 2, seed=0)
        x, y = np.ones((4, 6, 3), np.float32), np.zeros((4, 6, 2), np.float32)
        loss = m.gradients(x, y, threads=2).loss
        pid = os.fork()
        if pid == 0:
            os._exit(0 if m.gradients(x, y, threads=2).loss == loss else 3)
        for _ in range(300):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                sys.exit(print(os.waitstatus_to_exitcode(status)))
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        print("the child hangs")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.split() == ["0"], run.stdout + run.stderr[-500:]
