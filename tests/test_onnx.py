"""ONNX export: onnxruntime's outputs equal bptt's forward (float32 < 1e-5), ONNX's reference
evaluator equals it in float64 (< 1e-12: onnxruntime has no float64 RNN kernels), the file
passes onnx.checker's full check, and what no ONNX operator computes is refused by name."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bptt
from bptt.interop.onnx import to_onnx
from helpers import EDITED_PARAMS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
T, B, D, H, O = 6, 4, 3, 5, 4
LENGTHS = np.array([6, 3, 1, 5], np.int32)
MASK = np.arange(T)[:, None] < LENGTHS[None, :]


def zero_state(model, state):
    states = state if isinstance(state, tuple) else (state,)
    return {name: np.zeros_like(s) for name, s in zip(("h0", "c0"), states)}, states


def check(outputs, y, states, mask=None):
    y_onnx, *states_onnx = outputs
    if mask is not None and y.ndim == 3:            # padded steps: ONNX's g(b_y), bptt's state carried
        y_onnx, y = y_onnx * mask[..., None], y * mask[..., None]
    return max(np.abs(y_onnx - y).max(), *(np.abs(a - b).max() for a, b in zip(states_onnx, states)))


@pytest.mark.parametrize("outputs", ["all", "last"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("cell", ["rnn-tanh", "rnn-relu", "rnn-identity", "lstm", "gru"])
def test_onnxruntime_equals_forward_float32_with_lengths(tmp_path, cell, layers, bidirectional, outputs):
    cell, _, nonlinearity = cell.partition("-")
    head, loss = ("softmax", "cross_entropy") if cell != "rnn" else ("identity", "mse")
    model = bptt.Model(cell, D, H, O, num_layers=layers, nonlinearity=nonlinearity or "tanh", head=head,
                       loss=loss, bidirectional=bidirectional, outputs=outputs, seed=3)
    x = np.random.default_rng(1).standard_normal((T, B, D)).astype(np.float32)
    y, state = model.forward(x, mask=MASK)
    path = tmp_path / "m.onnx"
    to_onnx(model, path, lengths=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    feeds, states = zero_state(model, state)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert check(session.run(None, {"x": x, "lengths": LENGTHS} | feeds), y, states, MASK) < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_reference_evaluator_equals_forward_float64_with_carried_state(tmp_path, cell, bidirectional):
    from onnx.reference import ReferenceEvaluator
    model = bptt.Model(cell, D, H, O, num_layers=2, bidirectional=bidirectional, dtype="float64", seed=4)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, D))
    _, state0 = model.forward(rng.standard_normal((3, B, D)))          # a state carried from before
    y, state = model.forward(x, state0)
    proto = to_onnx(model, tmp_path / "m.onnx")
    states0 = state0 if isinstance(state0, tuple) else (state0,)
    feeds = dict(zip(("h0", "c0"), states0))
    _, states = zero_state(model, state)
    assert check(ReferenceEvaluator(proto).run(None, {"x": x} | feeds), y, states) < 1e-12


def test_graph_inputs_outputs_and_vocabulary(tmp_path):
    model = bptt.Model("lstm", 3, 8, 3, num_layers=2, head="softmax", loss="cross_entropy")
    model.vocabulary = ["a", "é", "\n"]
    proto = to_onnx(model, tmp_path / "m.onnx")
    assert [i.name for i in proto.graph.input] == ["x", "h0", "c0"]
    assert [o.name for o in proto.graph.output] == ["y", "h_n", "c_n"]
    assert {n.op_type for n in proto.graph.node} >= {"LSTM", "MatMul", "Softmax"}
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["bptt.vocabulary"]) == model.vocabulary


@pytest.mark.parametrize("kwargs, named", [
    (dict(cell="lstm", layer_norm=True), "layer_norm"),
    (dict(cell="lstm", proj_size=2), "proj_size"),
    (dict(cell="gru", zoneout=0.1), "zoneout"),
])
def test_what_no_operator_computes_is_refused_by_name(tmp_path, kwargs, named):
    model = bptt.Model(input_size=3, hidden_size=4, output_size=2, **kwargs)
    with pytest.raises(ValueError, match=named):
        to_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_user_cell_is_refused(tmp_path):
    from bptt.cells import GRU

    class MyGRU(GRU):
        name = "my_gru"
    model = bptt.Model(MyGRU(), 3, 4, 2)
    with pytest.raises(ValueError, match="cell='rnn', 'lstm' or 'gru'"):
        to_onnx(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("path,pattern", [
    (None, r"^path: expected a file name ending in \.onnx, got None$"),
    (".", r"^path: expected a file name ending in \.onnx, got '\.'$"),
    ("m.txt", r"^path: expected a file name ending in \.onnx, got 'm\.txt'$"),
    (".onnx", r"^path: expected a file name ending in \.onnx, got '\.onnx'$"),
    ("folder.onnx", r"^path: expected a file name, got 'folder\.onnx' \(a folder\)$"),
    ("no/such/dir/m.onnx", r"^path: expected a file in an existing folder, got 'no/such/dir/m\.onnx' "
                           r"\(.*no/such/dir does not exist\)$"),
    ("file.txt/m.onnx", r"^path: expected a file in an existing folder, got 'file\.txt/m\.onnx' "
                        r"\(.*file\.txt is a file\)$"),
])
def test_a_path_that_cannot_be_written_is_named(tmp_path, monkeypatch, path, pattern):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(ValueError, match=pattern):
        to_onnx(bptt.Model("gru", 3, 4, 2), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.onnx"]


@pytest.mark.parametrize("kwargs,pattern", [
    ({"lengths": "yes"}, r"^lengths: expected True or False, got 'yes'$"),
    ({"lengths": 1}, r"^lengths: expected True or False, got 1$"),
    ({"opset": 99}, r"^opset: expected an integer from 14 \(.*\) to \d+ \(the newest this onnx .* knows\), got 99$"),
    ({"opset": 13}, r"^opset: expected an integer from 14 .*, got 13$"),
    ({"opset": 17.0}, r"^opset: expected an integer from 14 .*, got 17\.0$"),
    ({"opset": True}, r"^opset: expected an integer from 14 .*, got True$"),
])
def test_lengths_is_a_flag_and_opset_one_the_exporter_knows(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        to_onnx(bptt.Model("gru", 3, 4, 2), tmp_path / "m.onnx", **kwargs)
    assert not (tmp_path / "m.onnx").exists()
    newest = onnx.defs.onnx_opset_version()
    proto = to_onnx(bptt.Model("gru", 3, 4, 2), str(tmp_path / "m.onnx"), lengths=np.bool_(True),
                    opset=np.int64(newest))
    assert proto.opset_import[0].version == newest and [i.name for i in proto.graph.input][-1] == "lengths"


def test_bptt_export_and_the_onnxruntime_sampler(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat.\n" * 300, encoding="utf-8")
    run = tmp_path / "run"
    bptt_cli = [sys.executable, "-m", "bptt"]
    subprocess.run(bptt_cli + ["train", "--text", str(corpus), "--hidden", "16", "--seq-len", "16", "--batch", "4",
                               "--steps", "3", "--out", str(run), "--quiet"], check=True, capture_output=True)
    done = subprocess.run(bptt_cli + ["export", str(run), "--onnx", str(tmp_path / "m.onnx")],
                          check=True, capture_output=True, text=True)
    assert "wrote" in done.stdout and (tmp_path / "m.onnx").exists()
    example = Path(__file__).parents[1] / "examples" / "sample_onnx.py"
    out = subprocess.run([sys.executable, str(example), str(tmp_path / "m.onnx"), "--length", "40", "--prime", "the "],
                         check=True, capture_output=True, text=True).stdout
    assert out.startswith("the ") and len(out.rstrip("\n")) >= 30 and set(out) <= set("the cat sat on the mat.\n")
    for args, message in ((["--prime", "é"], "--prime: characters not in the model's vocabulary: 'é'"),
                          (["--temperature", "0"], "--temperature: expected a positive number"),
                          (["--temperature", "inf"], "--temperature: expected a positive number"),
                          (["--temperature", "1e-320"], None),        # greedy: no overflow, no NaN
                          (["--prime", ""], None)):                      # empty: a newline, as bptt sample
        done = subprocess.run([sys.executable, str(example), str(tmp_path / "m.onnx"), "--length", "5", *args],
                              capture_output=True, text=True)
        assert (done.returncode, message is None or message in done.stderr) == (2 if message else 0, True), done.stderr
    to_onnx(bptt.Model("lstm", 3, 4, 2), tmp_path / "plain.onnx")      # no vocabulary: one line
    done = subprocess.run([sys.executable, str(example), str(tmp_path / "plain.onnx")], capture_output=True, text=True)
    assert done.returncode == 2 and "has no vocabulary" in done.stderr and "Traceback" not in done.stderr
    bad = subprocess.run(bptt_cli + ["export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "n.onnx")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere" in bad.stderr and not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("edit,pattern", EDITED_PARAMS)
def test_params_a_call_refuses_are_refused_and_nothing_is_written(tmp_path, edit, pattern):
    """They were written into a graph of the wrong shapes, or failed in onnx's checker."""
    model = bptt.Model("gru", 2, 3, 1, dtype="float64", seed=0)
    edit(model.params)
    with pytest.raises(ValueError, match=pattern):
        to_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("head,loss", [("identity", "mse"), ("softmax", "cross_entropy"), ("sigmoid", "bce")])
def test_y_on_padded_steps_is_the_head_of_zero(tmp_path, head, loss):
    """ONNX's layers output zeros on padded steps; y there is g(b_y), as docs/saving.md says."""
    model = bptt.Model("gru", D, H, O, head=head, loss=loss, bidirectional=True, seed=5)
    to_onnx(model, tmp_path / "m.onnx", lengths=True)
    x = np.random.default_rng(3).standard_normal((T, B, D)).astype(np.float32)
    feeds = {"x": x, "h0": np.zeros((2, B, H), np.float32), "lengths": LENGTHS}
    y = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b_y = model.params["head.b_y"].astype(np.float64)
    g = {"identity": b_y, "softmax": np.exp(b_y) / np.exp(b_y).sum(), "sigmoid": 1 / (1 + np.exp(-b_y))}[head]
    assert np.abs(y[~MASK] - g).max() < 1e-6 and np.abs(g).min() > 1e-3      # not zero
    assert np.abs(y[MASK] - model.forward(x, mask=MASK)[0][MASK]).max() < 1e-5


@pytest.mark.parametrize("outputs", ["all", "last"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_sequence_of_no_steps_keeps_its_carried_state(tmp_path, cell, outputs):
    """A later chunk where a sequence has ended (lengths 0, its state0 carried): ONNX's
    layers returned a zero state there, bptt the carried one (M1)."""
    model = bptt.Model(cell, D, H, O, num_layers=2, bidirectional=True, outputs=outputs, seed=6)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    _, state0 = model.forward(rng.standard_normal((3, B, D)).astype(np.float32))
    lengths = np.array([0, 3, 6, 0], np.int32)
    mask = np.arange(T)[:, None] < lengths[None, :]
    y, state = model.forward(x, state0, mask=mask)
    to_onnx(model, tmp_path / "m.onnx", lengths=True)
    states0 = state0 if isinstance(state0, tuple) else (state0,)
    feeds = {"x": x, "lengths": lengths} | dict(zip(("h0", "c0"), states0))
    outputs_onnx = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    _, states = zero_state(model, state)
    assert np.abs(outputs_onnx[1][:, 0] - states0[0][:, 0]).max() == 0
    assert check(outputs_onnx, y, states, mask) < 1e-5

def test_the_onnxruntime_sampler_reads_an_export_with_lengths(tmp_path):
    """It fed x and the state alone: onnxruntime's "Required inputs (['lengths']) are missing"."""
    model = bptt.Model("lstm", 3, 4, 3, head="softmax", loss="cross_entropy", seed=0)
    model.vocabulary = ["a", "b", "\n"]
    example = Path(__file__).parents[1] / "examples" / "sample_onnx.py"
    out = {}
    for lengths in (False, True):
        to_onnx(model, tmp_path / f"{lengths}.onnx", lengths=lengths)
        done = subprocess.run([sys.executable, str(example), str(tmp_path / f"{lengths}.onnx"), "--length", "30",
                               "--prime", "ab", "--seed", "1"], capture_output=True, text=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        out[lengths] = done.stdout
    assert out[True] == out[False] and out[True].startswith("ab") and len(out[True]) == 33


def test_the_onnxruntime_sampler_without_prime_on_a_text_without_newline(tmp_path, capsys):
    """Its default prime was a newline, refused where the vocabulary has none; bptt sample
    starts from the first character there, and prints no default prime."""
    from bptt.train.trainer import sample
    model = bptt.Model("gru", 3, 4, 3, head="softmax", loss="cross_entropy", seed=0)
    model.vocabulary = ["a", "b", "c"]
    to_onnx(model, tmp_path / "m.onnx")
    example = Path(__file__).parents[1] / "examples" / "sample_onnx.py"
    done = subprocess.run([sys.executable, str(example), str(tmp_path / "m.onnx"), "--length", "30", "--seed", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == sample(model, "a", 30, 0.8, rng=np.random.default_rng(1)) + "\n"
    done = subprocess.run([sys.executable, str(example), str(tmp_path / "m.onnx"), "--prime", "ad"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == (
        "sample_onnx.py: error: --prime: characters not in the model's vocabulary: 'd'; expected a text of its 3 "
        "characters")
