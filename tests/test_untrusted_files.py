"""Checkpoints and configs are untrusted input: every damaged or foreign file is refused with
an error that names what is wrong, and nothing in the project can unpickle."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import bptt
from bptt.cli import main
from bptt.train import folder, runs
from bptt.train.config import Config
from bptt.train.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "bptt"


@pytest.fixture()
def run_dir(tmp_path):
    c = Config(task="adding", cell="gru", hidden=8, seq_len=10, batch=4, steps=4, checkpoint_every=2,
               eval_every=2, dtype="float64", out=str(tmp_path / "run"))
    Trainer(c).train(progress=False)
    return tmp_path / "run"


def newest(run_dir):
    return runs.checkpoints(run_dir)[-1]


def refused(run_dir, pattern):
    with pytest.raises(ValueError, match=pattern):
        Trainer.resume(run_dir)


def test_a_truncated_tensor_file_is_refused_and_the_previous_checkpoint_named(run_dir):
    tensors = newest(run_dir).with_suffix(".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-100])
    refused(run_dir, r"ckpt-00000004.safetensors does not match the SHA-256 .* truncated, corrupted "
                     r"or was changed; the previous checkpoint ckpt-00000002.json may be intact")


def test_one_flipped_bit_in_a_weight_is_refused(run_dir):
    tensors = newest(run_dir).with_suffix(".safetensors")
    data = bytearray(tensors.read_bytes())
    data[-9] ^= 0x01                                  # inside the last tensor's values
    tensors.write_bytes(bytes(data))
    refused(run_dir, "does not match the SHA-256")


def test_a_parameter_that_is_not_finite_with_its_digest_recorded_is_refused(run_dir):
    """Training never saves one (NonFiniteParameters); bptt.load gave a model of NaN outputs
    and resume a first update whose loss was NaN."""
    import hashlib
    from safetensors.numpy import load, save
    latest = newest(run_dir)
    arrays = load(latest.with_suffix(".safetensors").read_bytes())
    arrays["param.head.b_y"][0] = np.nan
    data = save(arrays)
    latest.with_suffix(".safetensors").write_bytes(data)
    latest.write_text(json.dumps(json.loads(latest.read_text()) | {"sha256": hashlib.sha256(data).hexdigest()}))
    refused(run_dir, r"^RUN: checkpoint head\.b_y holds nan, which training never saves: the tensor file was altered$")
    with pytest.raises(ValueError, match=r"^path: checkpoint head\.b_y holds nan"):
        bptt.load(run_dir)


def test_a_tensor_file_swapped_for_another_is_refused(run_dir):
    older, latest = runs.checkpoints(run_dir)
    latest.with_suffix(".safetensors").write_bytes(older.with_suffix(".safetensors").read_bytes())
    refused(run_dir, "does not match the SHA-256")


def test_the_intact_previous_checkpoint_resumes_once_the_broken_one_is_moved(run_dir):
    latest = newest(run_dir)
    latest.with_suffix(".safetensors").write_bytes(b"\x00" * 10)
    refused(run_dir, "may be intact")
    latest.unlink()                                   # the user moves the broken one away
    assert Trainer.resume(run_dir).step == 2


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m["config"].update(hidden="8"), r"config: hidden expected an integer, got '8'"),
    (lambda m: m["config"].update(hidden=16), r"checkpoint layer0.W_x is \(24, 2\) float64, the model expects "
                                              r"\(48, 2\) float64"),
    (lambda m: m["config"].update(dtype="float32"), r"float64, the model expects .* float32"),
    (lambda m: m["config"].update(cell="lstm"), r"RUN: the checkpoint's parameters do not match the model of its "
                                                r"config \(missing \[\], unexpected \['layer0.b_hn'\]\)"),
    (lambda m: m["config"].update(colour="red"), r"config: unknown key 'colour'"),
    (lambda m: m.update(step="4"), r'expected "step" \(4, the update in its name\), got "4"'),
    (lambda m: m.update(step=-1), r'expected "step" \(4, the update in its name\), got -1'),
    (lambda m: m.update(format=99), r"has format 99, expected 2"),
    (lambda m: m.pop("sha256"), r"checkpoint ckpt-00000004.json records no SHA-256 of ckpt-00000004.safetensors"),
    (lambda m: m["rng"].update(bit_generator="MT19937"), r'ckpt-00000004.json: expected "rng" \(the state of a PCG64 '
                                                          r'random generator\), got \{"bit_generator": "MT19937"'),
    (lambda m: m.pop("rng"), r'ckpt-00000004.json: expected "rng" \(the state of a PCG64 random generator\), got none'),
])
def test_a_json_with_wrong_types_or_another_model_is_refused(run_dir, edit, pattern):
    meta_path = newest(run_dir)
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    refused(run_dir, pattern)


def test_a_json_that_is_not_json_is_refused(run_dir):
    newest(run_dir).write_text("{not json")
    refused(run_dir, "ckpt-00000004.json is unreadable")


def test_a_json_nested_past_pythons_stack_is_refused_naming_the_file(run_dir, tmp_path):
    """json.loads raises RecursionError there, which bptt.load, resume and a saved model let
    through as it came."""
    nested = "[" * 100_000 + "]" * 100_000
    newest(run_dir).write_text(nested)
    refused(run_dir, r"^RUN: checkpoint ckpt-00000004\.json is unreadable: maximum recursion depth")
    (run_dir / "config.json").write_text(nested)
    with pytest.raises(ValueError, match=r"^RUN: .*config\.json is unreadable: maximum recursion depth"):
        folder.saved_config(run_dir, {})
    bptt.Model("rnn", 1, 2, 1).save(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(nested)
    with pytest.raises(ValueError, match=r"^path: .*m is not a readable saved model: maximum recursion depth"):
        bptt.load(tmp_path / "m")


def test_a_file_that_is_a_device_is_refused_unread(run_dir, tmp_path):
    """A link to /dev/zero was read until memory ran out, a FIFO waited for ever; /dev/null,
    read whole at once, stands in for them here."""
    for tensors in (newest(run_dir).with_suffix(".safetensors"), run_dir / "best.safetensors"):
        tensors.unlink()
        tensors.symlink_to("/dev/null")
    refused(run_dir, r"^RUN: checkpoint ckpt-00000004\.json is unreadable: \[Errno 22\] expected a regular file, "
                     r"got a device, FIFO or socket: '.*ckpt-00000004\.safetensors'")
    with pytest.raises(ValueError, match=r"^path: checkpoint best\.json is unreadable: .*expected a regular file"):
        bptt.load(run_dir, best=True)
    bptt.Model("rnn", 1, 2, 1).save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    (tmp_path / "m" / "model.safetensors").symlink_to("/dev/null")
    with pytest.raises(ValueError, match=r"^path: .*m is not a readable saved model: .*expected a regular file"):
        bptt.load(tmp_path / "m")


def test_the_command_reports_a_broken_checkpoint_in_one_line(run_dir, capsys):
    newest(run_dir).with_suffix(".safetensors").write_bytes(b"garbage")
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "SHA-256" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A text run of 4 updates: ckpt-00000002, ckpt-00000004 and best.json."""
    where = tmp_path_factory.mktemp("text")
    corpus = where / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 60, encoding="utf-8")
    c = Config(task="text", text=str(corpus), cell="gru", hidden=8, seq_len=8, batch=4, steps=4, checkpoint_every=2,
               eval_every=2, dtype="float64", out=str(where / "run"))
    Trainer(c).train(progress=False)
    return where / "run"


def files_of(run_dir) -> dict:
    """Every file of the folder with its bytes (the lock file's pid aside)."""
    return {p.name: b"" if p.name == ".lock" else p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def edited(text_run, tmp_path, name, edit) -> Path:
    """A copy of the text run whose ``name`` (a checkpoint JSON) is edited by ``edit``."""
    run_dir = shutil.copytree(text_run, tmp_path / "run")
    path = run_dir / name
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return run_dir


KEYS = [      # an edit of a checkpoint's JSON, and the key the refusal names
    (lambda m: m.pop("config"), '"config"'),
    (lambda m: m.update(config=5), '"config"'),
    (lambda m: m.pop("position"), '"position"'),
    (lambda m: m.update(position=None), '"position"'),
    (lambda m: m["position"].update(start=-5), '"start" of "position"'),
    (lambda m: m["position"].update(epoch="0"), '"epoch" of "position"'),
    (lambda m: m.update(text=5), '"text"'),
    (lambda m: m["text"].update(vocabulary=5), '"vocabulary" of "text"'),
    (lambda m: m["text"].update(vocabulary=m["text"]["vocabulary"][:-1]),      # one short of the model's inputs
     '"vocabulary" of "text" (28 characters, one per input of the model in '),
    (lambda m: m["text"].update(first=""), '"first" of "text"'),
    (lambda m: m["text"].pop("sha256"), '"sha256" of "text"'),
    (lambda m: m.update(best=5), '"best"'),
    (lambda m: m.update(best={"step": "a"}), '"step" of "best"'),
    (lambda m: m["best"].update(val_loss="x"), '"val_loss" of "best"'),
    (lambda m: m.update(step=m["step"] + 1), '"step'),       # not its file's update (best.json: its "best"'s)
    (lambda m: m.pop("rng"), '"rng"'),
    (lambda m: m.update(skipped=-1), '"skipped"'),
    (lambda m: m.update(stale="0"), '"stale"'),
    (lambda m: m.update(row_losses="x"), '"row_losses"'),
    (lambda m: m["config"].update(hidden="8"), "config: hidden expected an integer"),
    (lambda m: m["config"].update(steps=0), "steps: expected a positive integer, got 0"),    # named no file
]
COMMANDS = {"eval": [], "sample": ["--length", "5"], "resume": ["--steps", "8", "--quiet"],
            "export": ["--onnx", "{tmp}/m.onnx"]}


def refused_in_one_line(capsys, run_dir, name, command, key):
    """``command`` on the run exits 2 with one line naming the checkpoint and the key, and
    leaves every file of the folder as it was."""
    before = files_of(run_dir)
    best = ["--best"] if name == "best.json" else []
    options = [o.format(tmp=run_dir.parent) for o in COMMANDS[command]]
    assert main([command, str(run_dir), *best, *options]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"bptt: error: RUN: checkpoint {name}: ") and key in err, err
    assert ("the previous checkpoint ckpt-00000002.json may be intact" in err) == (name != "best.json"), err
    assert files_of(run_dir) == before and not (run_dir.parent / "m.onnx").exists()


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", ["ckpt-00000004.json", "best.json"])
@pytest.mark.parametrize("edit,key", KEYS)
def test_a_checkpoint_json_with_a_key_missing_or_of_another_type_is_refused_by_every_command(
        text_run, tmp_path, capsys, edit, key, name, command):
    refused_in_one_line(capsys, edited(text_run, tmp_path, name, edit), name, command, key)


@pytest.mark.parametrize("command", ["eval", "resume"])
@pytest.mark.parametrize("name", ["ckpt-00000004.json", "best.json"])
def test_a_data_position_past_the_end_of_the_streams_is_refused(text_run, tmp_path, capsys, name, command):
    """eval and resume read the text again: the position must lie within its streams."""
    run_dir = edited(text_run, tmp_path, name, lambda m: m["position"].update(start=10 ** 6))
    refused_in_one_line(capsys, run_dir, name, command, '"start" of "position" (an integer from 0 to ')


@pytest.mark.parametrize("state", [np.zeros(3), np.zeros((1, 3, 8))])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_carried_stream_state_of_another_shape_is_refused_naming_the_file(text_run, tmp_path, capsys, command,
                                                                            state):
    """One of another number of dimensions was an IndexError traceback; another batch made
    resume fail with the model's state0 error, naming no file, and eval took it."""
    import hashlib
    from safetensors.numpy import load, save
    run_dir = shutil.copytree(text_run, tmp_path / "run")
    latest = newest(run_dir)
    arrays = load(latest.with_suffix(".safetensors").read_bytes()) | {"window_state.0": state}
    data = save(arrays)
    latest.with_suffix(".safetensors").write_bytes(data)
    latest.write_text(json.dumps(json.loads(latest.read_text()) | {"sha256": hashlib.sha256(data).hexdigest()}))
    assert main([command, str(run_dir), *COMMANDS[command]]) == 2
    assert capsys.readouterr().err == (f"bptt: error: RUN: ckpt-00000004.safetensors: expected the streams' carried "
                                       f"state as 1 array(s) (1, 4, 8) float64, got window_state.0 {state.shape} "
                                       f"float64\n")


def test_a_carried_influence_missing_or_of_another_shape_is_refused_naming_the_file(tmp_path, capsys):
    """restore raised KeyError for an array missing (a traceback from eval and resume) and
    took one of another shape, which failed at the next update with NumPy's broadcast error."""
    import hashlib
    from safetensors.numpy import load, save
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 60, encoding="utf-8")
    c = Config(task="text", text=str(corpus), cell="gru", hidden=4, seq_len=8, batch=2, steps=2, checkpoint_every=2,
               eval_every=2, through_time="uoro", dtype="float64", out=str(tmp_path / "run"))
    Trainer(c).train(progress=False)
    latest = newest(tmp_path / "run")
    arrays = load(latest.with_suffix(".safetensors").read_bytes())
    for edit, said in [(lambda a: a.pop("influence.u"), "influence.u is none; --through-time uoro carries (2, 4) "
                                                        "float64 there"),
                       (lambda a: a.update({"influence.theta": np.zeros(3)}), "influence.theta is (3,) float64; "
                                                                              "--through-time uoro carries (2, ")]:
        changed = dict(arrays)
        edit(changed)
        data = save(changed)
        latest.with_suffix(".safetensors").write_bytes(data)
        latest.write_text(json.dumps(json.loads(latest.read_text()) | {"sha256": hashlib.sha256(data).hexdigest()}))
        for command in ("eval", "resume"):
            assert main([command, str(tmp_path / "run"), *COMMANDS[command]]) == 2
            assert capsys.readouterr().err.startswith(f"bptt: error: RUN: ckpt-00000002.safetensors: {said}")


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_vocabulary_other_than_the_texts_is_refused(text_run, tmp_path, capsys, command):
    """eval and resume read the text again: the checkpoint's characters must be the text's."""
    run_dir = edited(text_run, tmp_path, "ckpt-00000004.json",
                     lambda m: m["text"].update(vocabulary=m["text"]["vocabulary"][:-1] + "Q"))
    refused_in_one_line(capsys, run_dir, "ckpt-00000004.json", command,
                        '"vocabulary" of "text" (the characters of the text it records the SHA-256 of, in their order)')


@pytest.mark.parametrize("best", [False, True])
@pytest.mark.parametrize("load", [bptt.load, Trainer.load, Trainer.resume])
@pytest.mark.parametrize("edit,key", [KEYS[0], KEYS[3], KEYS[6], KEYS[11], KEYS[13]])
def test_the_python_api_refuses_it_with_the_same_error(text_run, tmp_path, edit, key, load, best):
    name = "best.json" if best else "ckpt-00000004.json"
    run_dir = edited(text_run, tmp_path, name, edit)
    before = files_of(run_dir)
    prefix = "path" if load is bptt.load else "RUN"
    with pytest.raises(ValueError, match=rf"^{prefix}: checkpoint {re.escape(name)}: expected {re.escape(key)}"):
        load(run_dir, best=best)
    assert files_of(run_dir) == before


def test_the_previous_checkpoint_resumes_once_a_json_missing_a_key_is_moved(text_run, tmp_path):
    run_dir = edited(text_run, tmp_path, "ckpt-00000004.json", lambda m: m.pop("config"))
    with pytest.raises(ValueError, match=r'expected "config" .* ckpt-00000002.json may be intact'):
        Trainer.resume(run_dir, steps=6)
    (run_dir / "ckpt-00000004.json").unlink()            # the user moves the broken one away
    assert Trainer.resume(run_dir, steps=6).step == 2


def test_nothing_in_the_project_can_unpickle():
    risky = re.compile(r"\bimport pickle\b|\bpickle\.load|allow_pickle\s*=\s*True|torch\.load|\bdill\b|"
                       r"\bjoblib\b|\bshelve\b|\bmarshal\.load")
    hits = [f"{p.relative_to(SRC)}:{i + 1}" for p in SRC.rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if risky.search(line)]
    assert hits == []


def test_a_snap_checkpoint_written_before_the_pattern_was_carried_resumes(tmp_path, capsys):
    """SnAp carries its pattern since checkpoints hold it; one written before has no
    influence.pattern, which the check of the carried arrays must not take for damage:
    resume probes the pattern again, as it did when that checkpoint was written."""
    import hashlib
    from safetensors.numpy import load, save
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 60, encoding="utf-8")
    c = Config(task="text", text=str(corpus), cell="rnn", hidden=4, seq_len=8, batch=2, steps=4, checkpoint_every=2,
               eval_every=4, through_time="snap2", dtype="float64", out=str(tmp_path / "run"))
    Trainer(c).train(progress=False, stop_at=2)
    latest = newest(tmp_path / "run")
    arrays = load(latest.with_suffix(".safetensors").read_bytes())
    assert arrays.pop("influence.pattern").dtype == bool
    data = save(arrays)
    latest.with_suffix(".safetensors").write_bytes(data)
    latest.write_text(json.dumps(json.loads(latest.read_text()) | {"sha256": hashlib.sha256(data).hexdigest()}))
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.step == 2 and resumed.influence.pattern.dtype == bool
    resumed.train(progress=False)
    assert resumed.step == 4
