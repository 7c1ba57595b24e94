"""`bptt flow` and `bptt explain` as a user meets them."""
import json
import re

import numpy as np
import pytest

from bptt.cli import main
from bptt.diagnostics.explain import _model, X, Y_STAR, explain

EQUATIONS = {"rnn": ["R1", "R2", "R3", "R4", "R9", "H7", "C2"],
             "lstm": ["L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9"],
             "gru": ["G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8", "G9"]}


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_explain_prints_the_recursion_and_its_gradients_agree(cell, capsys):
    code, out, _ = run(capsys, ["explain", "--cell", cell])
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    for label in EQUATIONS[cell]:
        assert f"({label})" in out
    fd = float(re.search(r"recursion − finite difference\| = (\S+)", out).group(1))
    lib = float(re.search(r"recursion − Model.gradients\|   = (\S+)", out).group(1))
    assert fd < 1e-8 and lib < 1e-13
    m = _model(cell)
    rows = [line for line in lines if re.match(r"  (W_|b_)\S*\[", line)]
    assert len(rows) == sum(p.size for p in m.params.values())     # every entry beside its estimate


def test_explain_returns_the_library_gradients():
    m = _model("lstm")
    ours = explain("lstm", out=open("/dev/null", "w"))
    ref = m.gradients(X.reshape(3, 1, 1), Y_STAR.reshape(3, 1, 1)).params
    for k in ref:
        assert np.allclose(ours[k], ref[k], rtol=0, atol=1e-14)


def test_flow_before_and_after_training_then_on_the_saved_runs(tmp_path, capsys):
    out_dir = tmp_path / "f"
    code, out, _ = run(capsys, ["flow", "--seq-len", "20", "--cell", "rnn,gru", "--hidden", "8", "--batch", "2",
                                "--train", "5", "--explode", "--quiet", "--out", str(out_dir)])
    assert code == 0
    summary = json.loads((out_dir / "flow.json").read_text())
    assert list(summary) == ["rnn-tanh, init", "rnn-tanh, 5 updates", "gru, init", "gru, 5 updates"]
    assert all(s["seconds"] < 60 and s["sigma_max"] > 0 for s in summary.values())
    assert summary["rnn-tanh, init"]["loss"] != summary["rnn-tanh, 5 updates"]["loss"]
    assert (out_dir / "flow.png").stat().st_size > 10_000 and (out_dir / "clipping.png").exists()
    assert "rnn-tanh, 5 updates" in out and "no clipping" in out and "clip at 1" in out
    code, out, _ = run(capsys, ["flow", "--run", str(out_dir / "rnn"), "--batch", "2", "--out", str(tmp_path / "g")])
    assert code == 0 and "rnn @ 5 (rnn)" in out


@pytest.mark.parametrize("argv,message", [
    (["flow", "--cell", "rnn,foo"], "--cell"),
    (["flow", "--batch", "0"], "--batch"),
    (["flow", "--train", "-1"], "--train"),
    (["flow", "--task", "nope"], "task"),
    (["explain", "--cell", "elman"], "cell"),
])
def test_flow_and_explain_errors_are_one_line(argv, message, tmp_path, capsys):
    code, out, err = run(capsys, argv + (["--out", str(tmp_path / "x")] if argv[0] == "flow" else []))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
