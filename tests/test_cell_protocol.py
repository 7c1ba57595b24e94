"""Cells of one's own (cells/protocol.py) through the one time loop (cells/loop.py): the
built-in GRU written as a protocol cell gives the built-in layer's numbers, and every floor
(masks, resets, carried state, full, truncated and checkpointed BPTT, gradcheck, the
trainer and the `bptt` command) works with a cell the library does not ship."""
import sys
from pathlib import Path

import numpy as np
import pytest

import bptt
from bptt import through_time as tt
from bptt.cells import Cell, CellLayer
from bptt.cells.protocol import tape_width


def sigmoid(a):
    return 0.5 * np.tanh(0.5 * a) + 0.5


class GRUCell(Cell):
    """PyTorch's GRU (G1)-(G5) through the public protocol, as a user would write it."""
    name = "gru (protocol)"
    gates = 3
    state = ("h",)

    def extra_shapes(self, H):
        return {"b_hn": (H,)}

    def step(self, p, u, v, state):
        (h,) = state
        H = h.shape[1]
        r = sigmoid(u[:, :H] + v[:, :H])                                 # (G1)
        z = sigmoid(u[:, H:2 * H] + v[:, H:2 * H])                       # (G2)
        q = v[:, 2 * H:] + p["b_hn"]                                     # (G3)
        n = np.tanh(u[:, 2 * H:] + r * q)                                # (G4)
        return ((1 - z) * n + z * h,), (r, z, n, q, h)                   # (G5)

    def step_backward(self, p, dstate, cache):
        (dh,) = dstate
        r, z, n, q, h = cache
        dn = dh * (1 - z)
        da_n = dn * (1 - n * n)
        da_r = da_n * q * r * (1 - r)
        da_z = dh * (h - n) * z * (1 - z)
        du = np.concatenate([da_r, da_z, da_n], axis=1)
        dv = np.concatenate([da_r, da_z, da_n * r], axis=1)
        return du, dv, (dh * z,), {"b_hn": (da_n * r).sum(axis=0)}


class TwoStateCell(Cell):
    """An LSTM-like cell with a second carried array: exercises tuple states."""
    name = "two-state"
    gates = 2
    state = ("h", "c")

    def step(self, p, u, v, state):
        h, c = state
        H = h.shape[1]
        f = sigmoid(u[:, :H] + v[:, :H])
        g = np.tanh(u[:, H:] + v[:, H:])
        c_new = f * c + (1 - f) * g
        k = np.tanh(c_new)
        return (k, c_new), (f, g, c, k)

    def step_backward(self, p, dstate, cache):
        dh, dc = dstate
        f, g, c, k = cache
        dc = dc + dh * (1 - k * k)
        da_f = dc * (c - g) * f * (1 - f)
        da_g = dc * (1 - f) * (1 - g * g)
        d = np.concatenate([da_f, da_g], axis=1)
        return d, d, (np.zeros_like(dh), dc * f), {}


def pair(dtype="float64", layers=2, outputs="all", seed=3):
    builtin = bptt.Model("gru", 3, 5, 2, num_layers=layers, outputs=outputs, dtype=dtype, seed=seed)
    ours = bptt.Model(GRUCell(), 3, 5, 2, num_layers=layers, outputs=outputs, dtype=dtype, seed=seed)
    assert ours.params.keys() == builtin.params.keys()
    for k, v in builtin.params.items():
        ours.params[k][...] = v
    return builtin, ours


def data(T=7, B=4, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    y = rng.standard_normal((T, B, 2)).astype(dtype)
    mask = np.ones((T, B), bool)
    mask[5:, 1] = False
    mask[3:, B - 1] = False
    resets = np.zeros((T, B), bool)
    resets[4, 0] = resets[2, B - 1] = True
    h0 = 0.3 * rng.standard_normal((2, B, 5)).astype(dtype)
    return x, y, mask, resets, h0


@pytest.mark.parametrize("with_mask,with_resets", [(False, False), (True, False), (False, True), (True, True)])
def test_the_gru_as_a_protocol_cell_equals_the_builtin_gru(with_mask, with_resets):
    builtin, ours = pair()
    x, y, mask, resets, h0 = data()
    kw = dict(mask=mask if with_mask else None, resets=resets if with_resets else None)
    a, b = builtin.gradients(x, y, h0, **kw), ours.gradients(x, y, h0, **kw)
    assert abs(a.loss - b.loss) < 1e-12
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(b.x, a.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.state0, a.state0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.state, a.state, rtol=0, atol=1e-12)


def test_the_gru_as_a_protocol_cell_in_float32_and_outputs_last():
    builtin, ours = pair(dtype="float32", outputs="last")
    x, y, mask, _, h0 = data(dtype="float32")
    a, b = builtin.gradients(x, y[-1], h0, mask=mask), ours.gradients(x, y[-1], h0, mask=mask)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("cell", [GRUCell(), TwoStateCell()])
def test_gradcheck_of_user_cells_with_masks_resets_and_a_carried_state(cell):
    model = bptt.Model(cell, 3, 4, 2, num_layers=2, dtype="float64", seed=1)
    x, y, mask, resets, _ = data(T=6, B=3)
    state0 = model.init_state(3)
    rng = np.random.default_rng(5)
    state0 = tuple(0.5 * rng.standard_normal(s.shape) for s in state0) if model.tuple_state \
        else 0.5 * rng.standard_normal(state0.shape)
    report = bptt.gradcheck(model, x, y, state0=state0, mask=mask, resets=resets)
    assert report.worst() < 1e-6, report
    assert set(report) >= set(model.params) | {"x", "h0"}


@pytest.mark.parametrize("cell", [GRUCell(), TwoStateCell()])
def test_schedules_and_carried_state_with_user_cells(cell):
    model = bptt.Model(cell, 3, 4, 2, dtype="float64", seed=2)
    x, y, *_ = data(T=9, B=2)
    full = model.gradients(x, y)
    loss, grads, _ = tt.checkpointed(model, x, y, budget=3)
    assert abs(loss - full.loss) < 1e-12
    for k in grads:
        np.testing.assert_allclose(grads[k], full.params[k], rtol=0, atol=1e-12, err_msg=k)
    (_, whole, *_), = list(tt.truncated(model, x, y, 9, 9))
    for k in whole:
        np.testing.assert_allclose(whole[k], full.params[k], rtol=0, atol=1e-12, err_msg=k)
    y_all, state = model.forward(x)                  # step by step with the carried state
    s, steps = None, []
    for t in range(9):
        y_t, s = model.forward(x[t:t + 1], s)
        steps.append(y_t)
    np.testing.assert_allclose(np.concatenate(steps), y_all, rtol=0, atol=1e-13)
    np.testing.assert_allclose(s, state, rtol=0, atol=1e-13)


def test_a_cell_that_breaks_the_protocol_is_named():
    class NoState(Cell):
        name = "broken"

        def step(self, p, u, v, state):
            return state[0], ()                      # an array, not a tuple of them

        def step_backward(self, p, dstate, cache):
            return None

    class NoBackward(Cell):
        def step(self, p, u, v, state):
            return state, ()

    with pytest.raises(TypeError, match="step_backward"):
        NoBackward()

    with pytest.raises(ValueError, match=r"cell: NoState.step must return \(state, cache\) with state a tuple"):
        bptt.Model(NoState(), 2, 3, 1, dtype="float64")           # on one row, when the model is built
    params = {k: np.zeros(shape) for k, shape in NoState().param_shapes(2, 3).items()}
    with pytest.raises(ValueError, match=r"cell: NoState.step must return \(state, cache\) with state a tuple"):
        CellLayer(NoState()).forward(params, np.zeros((2, 1, 2)), (np.zeros((1, 3)),))   # and by the loop
    with pytest.raises(ValueError, match="cell: expected 'rnn', 'lstm', 'gru', 'module:Class' or a bptt.Cell"):
        bptt.Model(object(), 2, 3, 1)

    class TwiceH(NoState):
        state = ("h", "h")

    class OwnW_h(NoState):
        def extra_shapes(self, H):
            return {"gain": (H,), "W_h": (H, H)}

    with pytest.raises(ValueError, match=r"cell: TwiceH.state expected a tuple of distinct names, the output "
                                         r"first, got \('h', 'h'\)"):
        bptt.Model(TwiceH(), 2, 3, 1)
    with pytest.raises(ValueError, match=r"cell: OwnW_h.extra_shapes expected names other than W_x, W_h and b_h, "
                                         r"got \['W_h', 'gain'\]"):
        bptt.Model(OwnW_h(), 2, 3, 1)
    with pytest.raises(ValueError, match="cell: cannot import 'no_such_module_xyz'"):
        bptt.Model("no_such_module_xyz:Cell", 2, 3, 1)
    with pytest.raises(ValueError, match=r"cell: numpy:pi is a float, expected a Cell class"):
        bptt.Model("numpy:pi", 2, 3, 1)
    with pytest.raises(ValueError, match=r"cell: bptt:Model is the class Model, not a bptt.Cell, expected a Cell class"):
        bptt.Model("bptt:Model", 2, 3, 1)
    with pytest.raises(ValueError, match=r"cell: bptt.cells.protocol:Cell cannot be built with no arguments: "
                                         r"Can't instantiate abstract class"):
        bptt.Model("bptt.cells.protocol:Cell", 2, 3, 1)

    class Width(NoState):
        def __init__(self, width):
            self.width = width

        def tape_width(self, H):
            return self.width
    for width in (-1, 2.5, "4"):                       # np.empty's TypeError or "negative dimensions" before
        with pytest.raises(ValueError, match=rf"cell: Width.tape_width\(4\) expected a whole number of values, "
                                             rf"0 or more, got {width!r}"):
            tape_width(Width(width), 4)
    assert tape_width(Width(np.int64(3)), 4) == 3


class _Leak(Cell):
    """h_t = tanh(u + v + w ⊙ h_{t-1}), with a per-unit weight w of its own."""
    name = "leak"

    def extra_shapes(self, H):
        return {"w": (H,)}

    def step(self, p, u, v, state):
        h = np.tanh(u + v + p["w"] * state[0])
        return (h,), (h, state[0])

    def step_backward(self, p, dstate, cache):
        h, h_prev = cache
        d = dstate[0] * (1 - h * h)
        return d, d, (d * p["w"],), {"w": (d * h_prev).sum(axis=0)}


class _LeakCachingW(_Leak):
    """The same cell with w (no batch axis) kept in its cache: RTRL and the flow report
    take rows of the cache, so it is refused at the first step, everywhere."""

    def step(self, p, u, v, state):
        (h,), (_, h_prev) = super().step(p, u, v, state)
        return (h,), (h, h_prev, p["w"])

    def step_backward(self, p, dstate, cache):
        h, h_prev, w = cache
        d = dstate[0] * (1 - h * h)
        return d, d, (d * w,), {"w": (d * h_prev).sum(axis=0)}


class _LeakWritingItsState(_Leak):
    def step(self, p, u, v, state):
        state[0][...] *= 0.5                          # the protocol says: never
        return super().step(p, u, v, state)


class _LeakWritingItsGradient(_Leak):
    def step_backward(self, p, dstate, cache):
        dstate[0][...] *= 1.0                         # the protocol says: read only
        return super().step_backward(p, dstate, cache)


def test_a_step_backward_writing_into_dstate_is_named_in_forward_mode(monkeypatch):
    """Forward mode hands every step the same read-only unit rows: a cell that writes into
    them is named, not left to NumPy's bare "output array is read-only" (the model refuses
    it when it is built, cell_check.py; forward mode on its own too)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 1))
    with pytest.raises(ValueError, match=r"^cell: _LeakWritingItsGradient.step_backward writes into dstate, which "
                                         r"it may only read"):
        bptt.Model(_LeakWritingItsGradient(), 2, 4, 1, dtype="float64", seed=0)
    monkeypatch.setattr(bptt.model, "check_on_one_row", lambda *args, **options: None)
    writer = bptt.Model(_LeakWritingItsGradient(), 2, 4, 1, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"cell: _LeakWritingItsGradient.step_backward writes into dstate, "
                                         r"which it may only read"):
        tt.rtrl(writer, x, y)


def test_a_cache_without_the_batch_axis_and_a_step_writing_its_state_are_refused_by_name(monkeypatch):
    """When the model is built (cell_check.py, on one row), and by each loop on its own."""
    from bptt.diagnostics import flow
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 2)), rng.standard_normal((8, 3, 1))
    good = bptt.Model(_Leak(), 2, 4, 1, dtype="float64", seed=0)
    assert bptt.gradcheck(good, x, y).worst() < 1e-6
    np.testing.assert_allclose(tt.rtrl(good, x, y)[1]["layer0.w"], good.gradients(x, y).params["layer0.w"],
                               rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match=r"cell: _LeakCachingW.step's cache must be a tuple of arrays with the "
                                         r"batch \(1\) first"):
        bptt.Model(_LeakCachingW(), 2, 4, 1, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"^cell: _LeakWritingItsState.step writes into state, which it "
                                         r"may only read \(.*read-only\); return new arrays$"):
        bptt.Model(_LeakWritingItsState(), 2, 4, 1, dtype="float64", seed=0)
    monkeypatch.setattr(bptt.model, "check_on_one_row", lambda *args, **options: None)
    cached = bptt.Model(_LeakCachingW(), 2, 4, 1, dtype="float64", seed=0)
    message = r"cell: _LeakCachingW.step's cache must be a tuple of arrays with the batch \(3\) first .*, got " \
              r"cache\[2\] of shape \(4,\)"
    for run in (lambda: cached.forward(x), lambda: tt.rtrl(cached, x, y), lambda: flow(cached, x, y)):
        with pytest.raises(ValueError, match=message):
            run()
    writer = bptt.Model(_LeakWritingItsState(), 2, 4, 1, dtype="float64", seed=0)
    state0 = np.ones((1, 3, 4))
    named = r"^cell: _LeakWritingItsState.step writes into its state or u, which it may only read .*; return new " \
            r"arrays$"                                   # it was NumPy's bare "output array is read-only"
    for run in (lambda: writer.forward(x, state0), lambda: writer.gradients(x, y), lambda: writer.advance(x)):
        with pytest.raises(ValueError, match=named):
            run()
    assert np.array_equal(state0, np.ones((1, 3, 4)))            # the caller's state is untouched


def test_a_cell_module_that_fails_to_import_is_one_line_and_a_scripts_class_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_cell_syntax.py").write_text("import bptt\nclass X(bptt.Cell)\n    pass\n")
    (tmp_path / "broken_cell_raises.py").write_text("raise RuntimeError('config file missing')\n")
    with pytest.raises(ValueError, match=r"cell: importing 'broken_cell_syntax' for 'broken_cell_syntax:X' failed: "
                                         r"SyntaxError: expected ':' \(broken_cell_syntax.py, line 2\)"):
        bptt.Model("broken_cell_syntax:X", 2, 3, 1)
    with pytest.raises(ValueError, match=r"cell: importing 'broken_cell_raises' for 'broken_cell_raises:X' failed: "
                                         r"RuntimeError: config file missing"):
        bptt.Model("broken_cell_raises:X", 2, 3, 1)
    class Mine(_Leak):
        pass
    sys.modules["__main__"].Mine = Mine
    try:
        assert bptt.Config(task="adding", cell="__main__:Mine").check().cell == "__main__:Mine"   # a saved run loads
        with pytest.raises(ValueError, match=r"cell: __main__:Mine is a class of the script being run"):
            bptt.Config(task="adding", cell="__main__:Mine").check().refuse_unused()           # a new one is refused
    finally:
        del sys.modules["__main__"].Mine


class _BackwardReturns(Cell):
    """A two-block cell whose step_backward returns the right parts but those ``wrong`` names."""
    name, gates, state = "back", 2, ("h", "c")
    exact_backward = False                     # parts of the right shapes, not step's derivative

    def __init__(self, wrong):
        self.wrong = wrong

    def extra_shapes(self, H):
        return {"b_c": (H,)}

    def step(self, p, u, v, state):
        H = state[0].shape[1]
        a = np.tanh(u + v)
        return (a[:, :H], a[:, H:] + p["b_c"]), ()

    def step_backward(self, p, dstate, cache):
        dh, dc = dstate
        right = {"du": np.hstack([dh, dc]), "dv": np.hstack([dh, dc]), "back": (dh, dc),
                 "dextra": {"b_c": dc.sum(axis=0)}}
        return tuple(self.wrong.get(k, right[k]) for k in ("du", "dv", "back", "dextra"))


@pytest.mark.parametrize("wrong,message", [
    ({}, None),
    ({"du": np.zeros((4, 3))}, r"with du of shape \(4, 6\) \(B, G·H\), got \(4, 3\)"),
    ({"dv": None}, r"with dv of shape \(4, 6\) \(B, G·H\), got None"),
    ({"back": (np.zeros((4, 3)),)}, r"with dstate_prev a tuple of 2 arrays of shape \(4, 3\), got \[\(4, 3\)\]"),
    ({"dextra": {}}, r"with dextra \{name: gradient\} of shapes \{'b_c': \(3,\)\}, got \{\}"),
    ({"dextra": {"b_c": np.zeros(4)}}, r"with dextra .*, got \{'b_c': \(4,\)\}"),
    ({"du": np.zeros((4, 6), np.float32)}, r"in the model's dtype float64, got float32"),   # accepted, rounded
    ({"dextra": {"b_c": np.zeros(3, np.float32)}}, r"in the model's dtype float64, got float32"),
])
def test_what_a_cells_step_backward_returns_is_checked_and_named(wrong, message, monkeypatch):
    """The loop's own check at the first step (the one-row check at construction, which
    refuses these cells too, is set aside)."""
    monkeypatch.setattr(bptt.model, "check_on_one_row", lambda *args, **options: None)
    model = bptt.Model(_BackwardReturns(wrong), input_size=2, hidden_size=3, output_size=1, dtype="float64")
    x, y = np.ones((5, 4, 2)), np.ones((5, 4, 1))
    if message is None:
        assert np.isfinite(model.loss_and_grads(x, y)[0])
        return
    with pytest.raises(ValueError, match=r"cell: _BackwardReturns.step_backward must return "
                                         r"\(du, dv, dstate_prev, dextra\) " + message):
        model.loss_and_grads(x, y)


def test_the_trainer_runs_a_user_cell_in_one_pass_and_resumes_it(tmp_path, capsys):
    """A cell of one's own steps in Python under the GIL: the trainer does not split its
    batch over two threads; and a run of it resumes with the cell found again."""
    import json
    from bptt.cli import main
    module = tmp_path / "tests_cells.py"
    module.write_text((Path(__file__).read_text().split("def pair(")[0]))
    sys.path.insert(0, str(tmp_path))
    try:
        run = tmp_path / "run"
        assert main(["train", "--task", "adding", "--seq-len", "8", "--cell", "tests_cells:GRUCell", "--hidden", "6",
                     "--batch", "8", "--steps", "6", "--checkpoint-every", "3", "--threads", "2", "--quiet",
                     "--out", str(run)]) == 0
        assert json.loads((run / "config.json").read_text())["cell"] == "tests_cells:GRUCell"
        assert main(["resume", str(run), "--steps", "9", "--quiet"]) == 0
        assert main(["eval", str(run)]) == 0
        from bptt.train.trainer import Trainer
        assert Trainer.load(run).model.threads == 1 and Trainer.load(run).step == 9
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tests_cells", None)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2        # from where the cell's module is not found: how to find it
    assert capsys.readouterr().err.strip() == (
        "bptt: error: cell: cannot import 'tests_cells' for 'tests_cells:GRUCell': No module named 'tests_cells'; "
        "bptt imports it from the working directory and PYTHONPATH")


def test_the_protocol_gru_agrees_with_torch_nn_gru():
    """The protocol GRU against torch.nn.GRU's autograd, weights loaded from PyTorch."""
    torch = pytest.importorskip("torch")
    from bptt.interop.torch import from_torch
    torch.manual_seed(4)
    rnn = torch.nn.GRU(3, 5, num_layers=2, dtype=torch.float64)
    linear = torch.nn.Linear(5, 2, dtype=torch.float64)
    builtin = from_torch(rnn, linear, loss="mse", reduction="sum")
    ours = bptt.Model(GRUCell(), 3, 5, 2, num_layers=2, loss="mse", reduction="sum", dtype="float64")
    for k, v in builtin.params.items():
        ours.params[k][...] = v
    x, y, _, _, h0 = data()
    g = ours.gradients(x, y, h0)
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    out, _ = rnn(xt, h0t)
    loss = ((linear(out) - torch.tensor(y)) ** 2).sum()
    loss.backward()
    assert abs(g.loss - loss.item()) < 1e-10
    H = 5
    for l in range(2):
        np.testing.assert_allclose(g.params[f"layer{l}.W_x"], getattr(rnn, f"weight_ih_l{l}").grad, atol=1e-10)
        np.testing.assert_allclose(g.params[f"layer{l}.W_h"], getattr(rnn, f"weight_hh_l{l}").grad, atol=1e-10)
        np.testing.assert_allclose(g.params[f"layer{l}.b_h"], getattr(rnn, f"bias_ih_l{l}").grad, atol=1e-10)
        np.testing.assert_allclose(g.params[f"layer{l}.b_hn"], getattr(rnn, f"bias_hh_l{l}").grad[2 * H:],
                                   atol=1e-10)
    np.testing.assert_allclose(g.x, xt.grad, atol=1e-10)
    np.testing.assert_allclose(g.state0, h0t.grad, atol=1e-10)


def test_the_tutorial_mgu_agrees_with_torch_autograd_of_its_equations(tmp_path, monkeypatch):
    """docs/custom_cell.md's MGU: (U1)-(U4) written in PyTorch, differentiated by autograd."""
    torch = pytest.importorskip("torch")
    import re
    doc = (Path(__file__).resolve().parents[1] / "docs" / "custom_cell.md").read_text(encoding="utf-8")
    (tmp_path / "mgu.py").write_text(re.search(r"```python\n(# mgu\.py\n.*?)```", doc, re.S).group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mgu", None)
    from mgu import MGU
    model = bptt.Model(MGU(), 3, 4, 2, loss="mse", reduction="sum", dtype="float64", seed=7)
    x, y, mask, resets, h0 = data()
    h0 = h0[:1, :, :4]
    g = model.gradients(x, y, h0)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    xt, h = torch.tensor(x, requires_grad=True), torch.tensor(h0[0], requires_grad=True)
    h0t, H, loss = h, 4, 0.0
    for t in range(x.shape[0]):
        u = xt[t] @ p["layer0.W_x"].T + p["layer0.b_h"]
        v = h @ p["layer0.W_h"].T
        f = torch.sigmoid(u[:, :H] + v[:, :H])                                  # (U1)
        n = torch.tanh(u[:, H:] + f * (v[:, H:] + p["layer0.b_hn"]))           # (U2), (U3)
        h = (1 - f) * h + f * n                                                  # (U4)
        loss = loss + ((h @ p["head.W_y"].T + p["head.b_y"] - torch.tensor(y[t])) ** 2).sum()
    loss.backward()
    assert abs(g.loss - loss.item()) < 1e-10
    for k in model.params:
        np.testing.assert_allclose(g.params[k], p[k].grad, rtol=0, atol=1e-10, err_msg=k)
    np.testing.assert_allclose(g.x, xt.grad, rtol=0, atol=1e-10)
    np.testing.assert_allclose(g.state0[0], h0t.grad, rtol=0, atol=1e-10)
    sys.modules.pop("mgu", None)
