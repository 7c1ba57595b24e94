"""`bptt flow` and `bptt explain` as a user meets them."""
import json
import re

import numpy as np
import pytest

from bptt.cli import main
from bptt.cli_flow import BAD_VALUES
from bptt.diagnostics.explain import _model, X, Y_STAR, explain

EQUATIONS = {"rnn": ["R1", "R2", "R3", "R4", "R9", "H7", "C2"],
             "lstm": ["L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9"],
             "gru": ["G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8", "G9"]}


def run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as stop:             # argparse's own refusals (a value that is not a number)
        code = stop.code
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



def test_explain_writes_to_a_file_object_and_names_a_path_given_as_out(tmp_path):
    import io
    text = io.StringIO()
    explain("gru", out=text)
    assert text.getvalue().startswith("bptt explain: a GRU, gates r, z, n (PyTorch's form)\n")
    with pytest.raises(ValueError, match=r"^out: expected a text file object \(with a write method\) or None for "
                                         r"stdout, got str '.*x.txt'; hint: open\(path, 'w'\) for a file$"):
        explain("rnn", out=str(tmp_path / "x.txt"))
    assert not (tmp_path / "x.txt").exists()

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
    (["flow", "--run", "r", "--hidden", "4"], "--hidden: describes the models flow builds; --run measures the "
                                              "run's own model on its own task"),
    (["flow", "--run", "r", "--task", "copy"], "--task: describes the models flow builds"),
    (["flow", "--run", "r", "--lr", "0.1", "--explode"], "--lr: describes the models flow builds"),
    (["flow", "--task", "digits"], "--seq-len: --task digits reads an 8x8 image row by row (--seq-len 8) or "
                                   "pixel by pixel (--seq-len 64), got 200"),
    (["flow", "--run", ""], "bptt: error: --run: expected a run folder's name, got ''\n"),
])
def test_flow_and_explain_errors_are_one_line(argv, message, tmp_path, capsys):
    code, out, err = run(capsys, argv + (["--out", str(tmp_path / "x")] if argv[0] == "flow" else []))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()                                     # nothing written


def _flow_parser():
    from bptt.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["flow"]


def test_every_flow_option_has_help_and_bad_values():
    options = {a.option_strings[0]: a for a in _flow_parser()._actions if a.option_strings and a.dest != "help"}
    assert all(a.help and a.help.strip() for a in options.values()), [o for o, a in options.items() if not a.help]
    takes_a_value = {o for o, a in options.items() if a.nargs != 0}
    assert set(BAD_VALUES) == takes_a_value
    assert all(BAD_VALUES.values())


@pytest.mark.parametrize("option,value", [(o, v) for o, values in BAD_VALUES.items() for v in values])
def test_a_bad_flow_option_is_one_line_before_anything_is_written(option, value, tmp_path, monkeypatch, capsys):
    """exit 2, one line on stderr that names the option, the value and what was expected;
    no --out folder, no default runs/flow-… folder, nothing trained."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)                  # the default --out would land in work/runs
    out_dir = tmp_path / "out"
    argv = ["flow", option, value, "--quiet"] + ([] if option == "--out" else ["--out", str(out_dir)])
    code, out, err = run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and option in lines[0] and "Traceback" not in err, err
    assert "expected" in lines[0] and value in lines[0], lines[0]
    assert out == "" and not out_dir.exists() and list(work.iterdir()) == []


def test_flow_refuses_an_out_that_holds_a_run_before_writing(tmp_path, capsys):
    """flow trains into OUT/<cell>: a folder there with files in it is refused at the door,
    and nothing in OUT changes (no flow.png, flow.json, or the other cell's folder)."""
    out_dir = tmp_path / "f"
    (out_dir / "lstm").mkdir(parents=True)
    (out_dir / "lstm" / "metrics.jsonl").write_text("{}\n")
    code, _, err = run(capsys, ["flow", "--seq-len", "8", "--hidden", "4", "--cell", "rnn,lstm", "--quiet",
                                "--out", str(out_dir)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err and "lstm" in err
    assert "choose another --out" in err and "--fresh" not in err and "resume" not in err    # flow has neither
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")) == ["lstm", "lstm/metrics.jsonl"]


def test_flow_stopped_by_a_signal_continues_where_it_stopped(tmp_path, capsys, monkeypatch):
    """SIGINT while flow trains: the update in flight is saved, the line says the same
    command continues it; that command resumes OUT/<cell> from its checkpoint, measures
    the initial model again from the seed, and writes the report an uninterrupted flow
    writes (the same figures). Another command's run there is still refused."""
    import os
    import signal
    from bptt.train import runs
    from bptt.train.trainer import Trainer
    argv = ["flow", "--cell", "gru", "--seq-len", "10", "--hidden", "6", "--train", "40", "--quiet", "--out"]
    assert run(capsys, argv + [str(tmp_path / "whole")])[0] == 0
    update = Trainer.update
    def signalled(self):
        if self.step == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return update(self)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "update", signalled)
        code, _, err = run(capsys, argv + [str(tmp_path / "cut")])
    saved = runs.checkpoints(tmp_path / "cut" / "gru")
    assert code == 130 and [runs.step_of(c) for c in saved] == [21], err
    assert err.strip() == (f"bptt: SIGINT: stopped after update 21, saved as {saved[-1]}; the flow report was not "
                           f"written; `bptt flow` with the same options and --out {tmp_path / 'cut'} continues it")
    assert not (tmp_path / "cut" / "flow.json").exists()
    code, out, err = run(capsys, argv + [str(tmp_path / "cut")])
    assert code == 0 and err == f"bptt: continuing {tmp_path / 'cut' / 'gru'} from update 21\n", err
    figures = [{label: {k: v for k, v in row.items() if k != "seconds"}
                for label, row in json.loads((tmp_path / name / "flow.json").read_text()).items()}
               for name in ("whole", "cut")]
    assert list(figures[0]) == ["gru, init", "gru, 40 updates"] and figures[1] == figures[0]
    code, _, err = run(capsys, argv[:-2] + ["--hidden", "7", "--out", str(tmp_path / "cut"), "--overwrite"])
    assert code == 2 and "cut/gru holds a run (at update 40)" in err, err      # another command's run
    assert "or goes on with the run flow with the same options left there" in err


def test_flow_continued_after_a_stop_in_a_later_cell_keeps_the_finished_cells_trained_row(tmp_path, capsys,
                                                                                            monkeypatch):
    """Stopped while the second cell trains, the first cell's run is complete: the command
    that continues measures its trained model too, and writes the report an uninterrupted
    flow writes (it had left out the first cell's "40 updates" row)."""
    import os
    import signal
    from bptt.train.trainer import Trainer
    argv = ["flow", "--cell", "rnn,gru", "--seq-len", "10", "--hidden", "6", "--train", "40", "--quiet", "--out"]
    assert run(capsys, argv + [str(tmp_path / "whole")])[0] == 0
    update = Trainer.update
    def signalled(self):
        if self.config.cell == "gru" and self.step == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return update(self)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "update", signalled)
        assert run(capsys, argv + [str(tmp_path / "cut")])[0] == 130
    assert run(capsys, argv + [str(tmp_path / "cut")])[0] == 0
    figures = [{label: {k: v for k, v in row.items() if k != "seconds"}
                for label, row in json.loads((tmp_path / name / "flow.json").read_text()).items()}
               for name in ("whole", "cut")]
    assert list(figures[1]) == ["rnn-tanh, init", "rnn-tanh, 40 updates", "gru, init", "gru, 40 updates"]
    assert figures[1] == figures[0]


def test_flow_help_says_out_may_hold_the_run_a_stopped_flow_left(capsys):
    """--help's --out says what the command does: OUT/<cell> new or empty, or holding
    the run this same command left when a signal stopped it, which it continues."""
    code, out, _ = run(capsys, ["flow", "--help"])
    text = " ".join(out.split())
    assert code == 0 and "which must be new or empty, or hold the run that flow with the same options left " \
        "there when stopped (it goes on from its checkpoint)" in text, text


def _hashes(path):
    import hashlib
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def test_flow_refuses_an_out_that_holds_its_report_unless_told_to_overwrite(tmp_path, capsys, monkeypatch):
    """An --out holding a file the report would write (flow.json, flow.png; clipping.png
    with --explode, estimators.png with --estimators) is refused before anything is
    measured, every file as it was; --overwrite replaces them, a folder in their place and
    a run in OUT/<cell> are refused all the same."""
    from bptt import cli_flow
    small = ["flow", "--seq-len", "8", "--hidden", "4", "--cell", "rnn", "--batch", "2", "--quiet"]
    out_dir = tmp_path / "f"
    assert run(capsys, small + ["--out", str(out_dir)])[0] == 0
    report, first = _hashes(out_dir), json.loads((out_dir / "flow.json").read_text())
    assert sorted(report) == ["flow.json", "flow.png"]
    measured = cli_flow.flow
    monkeypatch.setattr(cli_flow, "flow", lambda *a, **k: pytest.fail("measured before the refusal"))
    code, out, err = run(capsys, small + ["--seq-len", "12", "--out", str(out_dir)])
    assert (code, out) == (2, "") and err == (
        f"bptt: error: --out: {out_dir / 'flow.json'}, {out_dir / 'flow.png'} exist; expected a folder without a "
        f"flow report, got {out_dir}; choose another --out, remove them, or pass --overwrite to replace them\n"), err
    mine = tmp_path / "mine"                             # a user's own flow.json
    mine.mkdir()
    (mine / "flow.json").write_text("my notes")
    (mine / "clipping.png").write_bytes(b"my figure")
    code, _, err = run(capsys, small + ["--out", str(mine)])
    assert code == 2 and err == (f"bptt: error: --out: {mine / 'flow.json'} exists; expected a folder without a "
                                 f"flow report, got {mine}; choose another --out, remove it, or pass --overwrite "
                                 f"to replace it\n"), err
    (mine / "flow.json").unlink()
    code, _, err = run(capsys, small + ["--explode", "--out", str(mine)])
    assert code == 2 and err.startswith(f"bptt: error: --out: {mine / 'clipping.png'} exists; "), err
    (mine / "flow.json").mkdir()                         # a folder where flow.json goes: --overwrite cannot replace it
    code, _, err = run(capsys, small + ["--overwrite", "--out", str(mine)])
    assert code == 2 and err == (f"bptt: error: --out: {mine / 'flow.json'} is a folder; expected a file that "
                                 f"--overwrite replaces, got a folder: choose another --out, or move it away\n"), err
    (out_dir / "rnn").mkdir()                            # OUT/<cell> holding files: refused with --overwrite too
    (out_dir / "rnn" / "metrics.jsonl").write_text("{}\n")
    code, _, err = run(capsys, small + ["--overwrite", "--out", str(out_dir)])
    assert code == 2 and "choose another --out" in err and f"{out_dir / 'rnn'}" in err, err
    assert _hashes(out_dir) == report | {"rnn": "dir", "rnn/metrics.jsonl": _hashes(out_dir)["rnn/metrics.jsonl"]}
    assert _hashes(mine) == {"clipping.png": _hashes(mine)["clipping.png"], "flow.json": "dir"}
    assert (mine / "clipping.png").read_bytes() == b"my figure"
    (out_dir / "rnn" / "metrics.jsonl").unlink()
    (out_dir / "rnn").rmdir()
    monkeypatch.setattr(cli_flow, "flow", measured)
    code, out, err = run(capsys, small + ["--seq-len", "12", "--overwrite", "--out", str(out_dir)])
    assert code == 0 and err == "" and "rnn-tanh, init" in out
    again = json.loads((out_dir / "flow.json").read_text())
    assert list(again) == ["rnn-tanh, init"] and again["rnn-tanh, init"]["loss"] != first["rnn-tanh, init"]["loss"]
    assert _hashes(out_dir)["flow.png"] != report["flow.png"]


def test_flow_refuses_to_write_its_report_into_a_training_run(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"task": "adding", "cell": "rnn", "hidden": 8, "steps": 20}')
    before = sorted(p.name for p in run_dir.iterdir())
    code, _, err = run(capsys, ["flow", "--seq-len", "8", "--hidden", "4", "--quiet", "--out", str(run_dir)])
    assert code == 2 and f"--out: {run_dir} is a training run's folder" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_flow_stopped_before_it_writes_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Ctrl-C while flow measures: the --out folder it made (or its runs/flow-… folder) is
    removed while still empty; a folder that was there before stays."""
    from bptt import cli_flow

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_flow, "flow", stopped)
    monkeypatch.chdir(tmp_path)
    for out in (["--out", str(tmp_path / "new")], []):
        code, _, err = run(capsys, ["flow", "--seq-len", "20", "--hidden", "8", *out])
        assert code == 130 and err.strip() == "bptt: interrupted", err
    assert not (tmp_path / "new").exists() and list((tmp_path / "runs").iterdir()) == []
    (tmp_path / "mine").mkdir()
    assert run(capsys, ["flow", "--seq-len", "20", "--hidden", "8", "--out", str(tmp_path / "mine")])[0] == 130
    assert (tmp_path / "mine").is_dir()


def test_flow_and_train_check_their_out_folder_alike(tmp_path, capsys, monkeypatch):
    """One check of --out for both commands (as another user meets it: root may write
    anywhere), each naming who writes there; nothing is created."""
    from pathlib import Path
    from bptt.train import folder
    afile, locked = tmp_path / "afile", tmp_path / "locked"
    afile.write_text("x")
    locked.mkdir()
    monkeypatch.setattr(folder.os, "access", lambda p, mode: Path(p) != locked)
    cases = [(afile, "expected a folder for {}, got " + f"{afile} (a file)"),
             (afile / "sub", "expected a folder for {}, got " + f"{afile / 'sub'} ({afile} is a file)"),
             (locked, "expected a folder {} can write in, got " + f"{locked} (not writable)"),
             (locked / "new", "expected a folder {} can create, got " + f"{locked / 'new'} ({locked} is not writable)")]
    for out, message in cases:
        for argv, writer in ((["flow", "--seq-len", "8", "--hidden", "4", "--quiet"], "bptt flow"),
                             (["train", "--task", "adding", "--seq-len", "8", "--hidden", "4", "--steps", "1",
                               "--quiet"], "the run")):
            code, _, err = run(capsys, argv + ["--out", str(out)])
            assert code == 2 and err == f"bptt: error: --out: {message.format(writer)}\n", err
    assert afile.read_text() == "x" and list(locked.iterdir()) == []


def test_flow_run_that_cannot_be_read_is_one_line_naming_run(tmp_path, capsys):
    run_dir = tmp_path / "broken"
    run_dir.mkdir()
    (run_dir / "ckpt-00000001.json").write_text("not json")
    (run_dir / "ckpt-00000001.safetensors").write_bytes(b"\0")
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, ["flow", "--run", str(run_dir), "--out", str(out_dir)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bptt: error: --run: ") and "RUN:" not in err
    assert not out_dir.exists()


def test_flow_reports_a_share_in_zero_one_and_the_signed_projection(tmp_path, capsys):
    out_dir = tmp_path / "f"
    code, out, _ = run(capsys, ["flow", "--task", "copy", "--seq-len", "24", "--hidden", "6", "--batch", "2",
                                "--cell", "rnn,gru", "--out", str(out_dir)])
    assert code == 0 and "τ≥10: Σ_{τ≥10}‖G_τ‖ / Σ_τ‖G_τ‖, a share in [0, 1]" in out and "is signed" in out
    summary = json.loads((out_dir / "flow.json").read_text())
    assert sorted(p.name for p in out_dir.iterdir()) == ["flow.json", "flow.png"]   # nothing trained: no run folders
    for s in summary.values():
        assert 0 < s["long_lag_share"] < 1 and s["long_lag_signed_projection"] != s["long_lag_share"]
        row = next(line for line in out.splitlines() if line.startswith(f"{s['cell']}, init"))
        assert float(row.split()[-2]) == pytest.approx(s["long_lag_share"], abs=5e-4)    # the column is the share


def test_one_step_has_no_rate_and_flow_json_is_strict(tmp_path, capsys):
    """T = 1 leaves no pair of steps to fit a rate to: the column says so, and flow.json
    (strict JSON, no NaN) holds null."""
    out_dir = tmp_path / "f"
    code, out, _ = run(capsys, ["flow", "--task", "sine", "--seq-len", "1", "--hidden", "4", "--batch", "2",
                                "--out", str(out_dir)])
    assert code == 0
    summary = json.loads((out_dir / "flow.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert [s["jacobian_rate"] for s in summary.values()] == [None, None]
    rows = [line.split() for line in out.splitlines() if ", init" in line]
    assert len(rows) == 2 and all(row[5] == "—" for row in rows)


def test_flow_takes_a_users_cell_as_train_does(tmp_path, capsys):
    """--cell package.module:ClassName as `bptt train --cell` takes it (flow refused all but
    rnn, lstm and gru): the loss it prints is that user cell's model's on flow's batch."""
    from bptt.cli_flow import _batch
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    out_dir = tmp_path / "f"
    code, out, _ = run(capsys, ["flow", "--task", "copy", "--seq-len", "12", "--hidden", "6", "--batch", "2",
                                "--cell", "bptt.cells.gru:GRU,gru", "--train", "3", "--quiet", "--out", str(out_dir)])
    assert code == 0
    rows = {m[1]: m[2].split() for m in re.finditer(r"^((?:gru|bptt\S*), (?:init|\d+ updates))\s+(.*)$", out, re.M)}
    assert set(rows) == {f"{c}, {when}" for c in ("bptt.cells.gru:GRU", "gru") for when in ("init", "3 updates")}
    config = Config(task="copy", cell="bptt.cells.gru:GRU", hidden=6, seq_len=12, steps=1, seed=0).check()
    model = Trainer(config, run_dir=tmp_path / "unused", _claim="read").model
    x, y = _batch(Trainer(config, run_dir=tmp_path / "unused", _claim="read"), 2, 0, "--batch")
    assert float(rows["bptt.cells.gru:GRU, init"][0]) == pytest.approx(model.loss_value(x, y), abs=5e-5)
    assert rows["bptt.cells.gru:GRU, init"][0] != rows["gru, init"][0]         # its own initialisation
    assert sorted(p.name for p in out_dir.iterdir()) == ["bptt.cells.gru.GRU", "flow.json", "flow.png", "gru"]
    code, _, err = run(capsys, ["flow", "--cell", "no_such_module_xyz:Cell", "--out", str(tmp_path / "g")])
    assert code == 2 and "--cell: cannot import 'no_such_module_xyz'" in err


def test_flow_run_estimators_are_printed_at_the_runs_own_steps(tmp_path, capsys):
    """--run measures the run's sequences (here 16 steps): the table named steps 50, 100 and
    200 of the default --seq-len and printed the error at step 16 three times."""
    from bptt.cli_flow import _batch
    from bptt.diagnostics.estimators import estimator_error
    from bptt.train.trainer import Trainer
    assert run(capsys, ["train", "--task", "adding", "--seq-len", "16", "--hidden", "8", "--cell", "rnn",
                        "--steps", "2", "--quiet", "--out", str(tmp_path / "r")])[0] == 0
    code, out, _ = run(capsys, ["flow", "--run", str(tmp_path / "r"), "--estimators", "snap1", "--batch", "2",
                                "--quiet", "--out", str(tmp_path / "f")])
    trainer = Trainer.load(tmp_path / "r")
    x, _ = _batch(trainer, 2, 0, "--batch")
    e = estimator_error(trainer.model.astype("float64"), x[:, :1].astype(np.float64), ["snap1"], rng=0)["snap1"]
    assert code == 0 and "first sequence, at steps 4, 8, 16\n" in out
    assert f"snap1    {e[3]:>9.3g} {e[7]:>9.3g} {e[15]:>9.3g}\n" in out


def test_explode_on_digits_trains_at_the_images_length(tmp_path, capsys, monkeypatch):
    """--task digits --seq-len 64 --explode: the study took T = min(64, 50) = 50, a length
    digits does not have, and failed after the report was measured and written."""
    from bptt import cli_flow
    from bptt.train.explosion import clipping_study
    lengths = []

    def short_study(**kwargs):
        lengths.append((kwargs["task"], kwargs["seq_len"]))
        return clipping_study(**{**kwargs, "updates": 2})

    monkeypatch.setattr(cli_flow, "clipping_study", short_study)
    code, out, err = run(capsys, ["flow", "--task", "digits", "--seq-len", "64", "--cell", "rnn", "--hidden", "4",
                                  "--batch", "1", "--explode", "--quiet", "--out", str(tmp_path / "f")])
    assert (code, err) == (0, "") and lengths == [("digits", 64)]
    assert "no clipping" in out and (tmp_path / "f" / "clipping.png").exists()


def test_nonlinearity_is_the_elman_rnns_and_the_other_cells_keep_tanh(tmp_path, capsys):
    """--cell rnn,gru --nonlinearity relu trained the RNN, then failed building the GRU
    (nonlinearity applies to cell='rnn' only); without the RNN among the cells it is refused."""
    out_dir = tmp_path / "f"
    code, _, err = run(capsys, ["flow", "--task", "sine", "--seq-len", "6", "--cell", "rnn,gru", "--nonlinearity",
                                "relu", "--hidden", "4", "--batch", "1", "--train", "2", "--quiet",
                                "--out", str(out_dir)])
    assert (code, err) == (0, "")
    assert list(json.loads((out_dir / "flow.json").read_text())) == [
        "rnn-relu, init", "rnn-relu, 2 updates", "gru, init", "gru, 2 updates"]
    assert [json.loads((out_dir / c / "config.json").read_text())["nonlinearity"] for c in ("rnn", "gru")] == \
        ["relu", "tanh"]
    code, _, err = run(capsys, ["flow", "--cell", "gru", "--nonlinearity", "relu", "--out", str(tmp_path / "g")])
    assert code == 2 and err == ("bptt: error: --nonlinearity: the f of the Elman RNN, which --cell gru does not "
                                 "include; expected tanh (the default) or --cell rnn among the cells, got 'relu'\n")
    assert not (tmp_path / "g").exists()
