"""model.save and bptt.load: the same parameters, outputs and vocabulary come back, from a
saved folder or a run; a folder that holds other things is refused and left as it was; a
changed tensor file is refused by its digest; and text generation from Python."""
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bptt
from bptt.train.trainer import sample


@pytest.mark.parametrize("kwargs", [
    dict(cell="lstm", num_layers=2, proj_size=3, dtype="float64"),
    dict(cell="gru", bidirectional=True, layer_norm=True, outputs="last"),
    dict(cell="rnn", nonlinearity="relu", dropout=0.2, num_layers=2, head="sigmoid", loss="bce"),
])
def test_save_then_load_gives_the_same_model(tmp_path, kwargs):
    model = bptt.Model(input_size=4, hidden_size=6, output_size=3, seed=5, **kwargs)
    for v in model.params.values():                       # not the initialisation a fresh Model would draw
        v += 0.01
    model.save(tmp_path / "m")
    loaded = bptt.load(tmp_path / "m")
    assert loaded.config == model.config and loaded.vocabulary is None
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(model.dtype)
    np.testing.assert_array_equal(loaded.forward(x)[0], model.forward(x)[0])


def test_saving_again_replaces_the_model_and_refuses_a_folder_with_other_files(tmp_path):
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    model.save(tmp_path / "m")
    model.params["head.b_y"][:] = 7.0
    model.save(tmp_path / "m")
    assert bptt.load(tmp_path / "m").params["head.b_y"][0] == 7.0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"path: .*notes holds other files \(thesis.tex\)"):
        model.save(other)
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("edit,pattern", [
    (lambda p: p["layer0.W_h"].astype(np.float64), r"^params\['layer0.W_h'\]: expected shape \(9, 3\) and dtype "
                                                   r"float32, got shape \(9, 3\) and dtype float64$"),
    (lambda p: p["layer0.W_h"][:, :2], r"^params\['layer0.W_h'\]: expected shape \(9, 3\) .*got shape \(9, 2\)"),
    (lambda p: p["layer0.W_h"].astype(">f4"), r"^params\['layer0.W_h'\]: .*got shape \(9, 3\) and dtype >f4$"),
    ("extra", r"^params: unexpected key 'my_scale'; expected the keys layer0.W_x, layer0.W_h, layer0.b_h, "
              r"layer0.b_hn, head.W_y, head.b_y$"),
])
def test_save_refuses_parameters_load_would_refuse_and_writes_nothing(tmp_path, edit, pattern):
    """They were written, and bptt.load refused the folder."""
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    if edit == "extra":
        model.params["my_scale"] = np.ones(1, np.float32)
    else:
        model.params["layer0.W_h"] = edit(model.params)
    for folder in (tmp_path / "m", tmp_path / "new"):
        with pytest.raises(ValueError, match=pattern):
            model.save(folder)
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert bptt.load(tmp_path / "m").loss_value(np.zeros((2, 1, 2), np.float32), np.zeros((2, 1, 1), np.float32)) >= 0


def test_a_changed_tensor_file_is_refused_by_its_digest(tmp_path):
    bptt.Model("lstm", 2, 3, 1).save(tmp_path / "m")
    data = bytearray((tmp_path / "m" / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        bptt.load(tmp_path / "m")
    with pytest.raises(ValueError, match="path: no such folder"):
        bptt.load(tmp_path / "absent")


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m.pop("config"), r'expected a "config" holding the arguments of bptt.Model \(a JSON object\), '
                                r'got no "config"$'),
    (lambda m: m.update(config="abc"), r'expected a "config" holding the arguments of bptt.Model \(a JSON object\), '
                                       r"got str 'abc'$"),
    (lambda m: m.update(config=[["cell", "gru"]]), r'expected a "config" .*, got list \[\[\'cell\', \'gru\'\]\]$'),
    (lambda m: m["config"].update(bogus=1), r"config: unknown key 'bogus'; expected arguments of bptt.Model "
                                            r"\(cell, input_size, .*\)$"),
    (lambda m: m["config"].pop("hidden_size"), r"config: expected the arguments bptt.Model needs \(cell, input_size, "
                                               r"hidden_size, output_size\), got none for 'hidden_size'$"),
    (lambda m: m["config"].update(hidden_size="3"), r"hidden_size: expected a positive integer, got '3'$"),
    (lambda m: m["config"].update(cell="my_module:NoSuchCell"), r"cell: cannot import 'my_module'"),
    (lambda m: m["config"].update(cell={"class": 5}), r"cell expected \{'class': 'module:ClassName', "),
    (lambda m: m.update(vocabulary=5), r"vocabulary: expected a string or a sequence of single characters "
                                       r"\(one per output\), got int 5$"),
    (lambda m: m.update(vocabulary=["a", 1]), r"vocabulary: expected a string or a sequence of single characters"),
])
def test_a_hand_edited_model_json_is_refused_naming_the_file(tmp_path, edit, pattern):
    bptt.Model("gru", 2, 3, 2, seed=0).save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    edit(meta)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^path: " + re.escape(str(meta_path)) + ": " + pattern):
        bptt.load(tmp_path / "m")


def test_a_tensor_file_that_is_not_safetensors_is_refused_naming_it(tmp_path):
    import hashlib
    bptt.Model("gru", 2, 3, 2, seed=0).save(tmp_path / "m")
    meta_path, tensors = tmp_path / "m" / "model.json", tmp_path / "m" / "model.safetensors"
    tensors.write_bytes(b"not a safetensors file")        # and its digest recorded: both files replaced
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["sha256"] = hashlib.sha256(tensors.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^path: .*model.safetensors is not a readable safetensors file: "):
        bptt.load(tmp_path / "m")


def test_a_model_whose_vocabulary_loading_would_refuse_is_not_saved(tmp_path):
    from bptt.saved import save
    model = bptt.Model("gru", 2, 3, 2, seed=0)
    model.vocabulary = 5
    with pytest.raises(ValueError, match=r"^model.vocabulary: expected a string or a sequence of single characters"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match=r"^model: expected a bptt.Model, got str$"):
        save("m", tmp_path / "m")


def test_a_vocabulary_of_another_size_than_the_outputs_is_neither_saved_nor_loaded(tmp_path):
    """One character per output: a vocabulary one short would load and export, and only
    bptt.generate would find it, without naming the file."""
    model = bptt.Model("gru", 3, 4, 3, head="softmax", loss="cross_entropy", seed=0)
    model.vocabulary = "ab"
    with pytest.raises(ValueError, match=r"^model.vocabulary: expected 3 characters \(one per output of the model\), "
                                         r"got 2: 'ab'$"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    model.vocabulary = "abc"
    model.save(tmp_path / "m")
    assert bptt.load(tmp_path / "m").vocabulary == "abc"
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["vocabulary"] = ["a", "b"]
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^path: .*model.json: vocabulary: expected 3 characters \(one per output "
                                         r"of the model\), got 2: \['a', 'b'\]$"):
        bptt.load(tmp_path / "m")

def test_a_cell_class_loading_cannot_import_is_refused_on_save(tmp_path):
    from bptt.cells import GRU

    class Local(GRU):
        name = "local"
    with pytest.raises(ValueError, match="cell: .*Local.*define it in a module"):
        bptt.Model(Local(), 2, 3, 1).save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


LEAKY = '''
import numpy as np
import bptt


class Leaky(bptt.Cell):
    """h = (1 - rate) h_prev + rate tanh(u + v), with rate its constructor's argument."""
    name = "leaky"

    def __init__(self, rate=0.5):
        self.rate = rate

    def step(self, p, u, v, state):
        n = np.tanh(u + v)
        return ((1 - self.rate) * state[0] + self.rate * n,), (n,)

    def step_backward(self, p, dstate, cache):
        da = dstate[0] * self.rate * (1 - cache[0] ** 2)
        return da, da, (dstate[0] * (1 - self.rate),), {}


class LeakyConfig(Leaky):
    def config(self):
        return {"rate": self.rate}


class LeakyGain(LeakyConfig):
    """Leaky with a gain inside the tanh, which config() leaves out."""
    def __init__(self, rate=0.5, gain=1.0):
        super().__init__(rate)
        self.gain = gain

    def step(self, p, u, v, state):
        n = np.tanh(self.gain * (u + v))
        return ((1 - self.rate) * state[0] + self.rate * n,), (n,)

    def step_backward(self, p, dstate, cache):
        da = dstate[0] * self.rate * self.gain * (1 - cache[0] ** 2)
        return da, da, (dstate[0] * (1 - self.rate),), {}


class Gain(bptt.Cell):
    """h = tanh(s (u + v)), s one learned scalar of shape ()."""
    name = "gain"

    def extra_shapes(self, H):
        return {"s": ()}

    def step(self, p, u, v, state):
        a = u + v
        h = np.tanh(p["s"] * a)
        return (h,), (a, h)

    def step_backward(self, p, dstate, cache):
        a, h = cache
        d = dstate[0] * (1 - h * h)
        return d * p["s"], d * p["s"], (0 * h,), {"s": np.asarray((d * a).sum())}
'''


def test_a_cells_constructor_arguments_are_saved_or_saving_is_refused(tmp_path, monkeypatch):
    """A cell built with arguments came back built with its defaults, computing something
    else (loss 0.1975 saved, 0.1683 loaded): its config() is recorded, or saving refuses."""
    (tmp_path / "leaky_cells.py").write_text(LEAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from leaky_cells import Gain, Leaky, LeakyConfig
    x = np.random.default_rng(0).standard_normal((10, 3, 2))
    y = np.random.default_rng(1).standard_normal((10, 3, 1))
    with pytest.raises(ValueError, match=r"cell: Leaky takes arguments \(rate\) that the saved model would not "
                                         r"record; give the class config\(\)"):
        bptt.Model(Leaky(rate=0.9), 2, 4, 1, dtype="float64", seed=0).save(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    for cell in (LeakyConfig(rate=0.9), bptt.cells.RNN("relu"), Gain()):
        model = bptt.Model(cell, 2, 4, 1, dtype="float64", seed=0)
        model.save(tmp_path / cell.name)
        loaded = bptt.load(tmp_path / cell.name)
        assert type(loaded.layer.cell) is type(cell) and vars(loaded.layer.cell) == vars(cell)
        assert loaded.loss_value(x, y) == model.loss_value(x, y)
    assert json.loads((tmp_path / "leaky" / "model.json").read_text())["config"]["cell"] == \
        {"class": "leaky_cells:LeakyConfig", "arguments": {"rate": 0.9}}
    gain = bptt.Model(Gain(), 2, 4, 1, dtype="float64", seed=0)
    assert gain.params["layer0.s"].shape == ()                   # as extra_shapes declares (it was (1,))
    report = bptt.gradcheck(gain, x, y)
    assert "layer0.s" in report and report.worst() < 1e-6


def test_a_config_that_leaves_out_an_argument_is_refused_on_save(tmp_path, monkeypatch):
    """config() {"rate": 0.9} of LeakyGain(rate=0.9, gain=2.0) was saved, and bptt.load built
    LeakyGain(rate=0.9) with gain 1.0: outputs 0.2 off, without a word."""
    (tmp_path / "leaky_cells.py").write_text(LEAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from leaky_cells import LeakyGain
    model = bptt.Model(LeakyGain(rate=0.9, gain=2.0), 2, 4, 1, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"^cell: LeakyGain.config\(\) gives \{'rate': 0.9\}, but "
                                         r"LeakyGain\(\*\*\{'rate': 0.9\}\) computes another step: new state differs "
                                         r"by 0.\d+ on one row of random numbers; expected config\(\) to give every "
                                         r"constructor argument that changes what the cell computes"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    model = bptt.Model(LeakyGain(rate=0.9), 2, 4, 1, dtype="float32", seed=0)     # its defaults: saved
    model.save(tmp_path / "m")
    x = np.random.default_rng(0).standard_normal((5, 3, 2)).astype(np.float32)
    assert np.array_equal(bptt.load(tmp_path / "m").forward(x)[0], model.forward(x)[0])


def test_train_save_load_generate_from_python(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 200, encoding="utf-8")
    trainer = bptt.Trainer(bptt.Config(text=str(corpus), hidden=16, seq_len=16, batch=4, steps=20, eval_every=10,
                                       out=str(tmp_path / "run")))
    trainer.train(progress=False)
    trainer.model.save(tmp_path / "saved")
    for model in (bptt.load(tmp_path / "saved"), bptt.load(tmp_path / "run"), bptt.load(tmp_path / "run", best=True)):
        assert model.vocabulary == trainer.task.chars
    from_run = bptt.load(tmp_path / "run")
    assert all(np.array_equal(from_run.params[k], trainer.model.params[k]) for k in trainer.model.params)
    text = bptt.generate(bptt.load(tmp_path / "saved"), 60, prime="to ", temperature=0.8, seed=1)
    assert len(text) == 60 and set(text) <= set(trainer.task.chars)
    assert text == sample(trainer.model, trainer.task.first, 60, 0.8, prime="to ", rng=np.random.default_rng(1))
    meta = json.loads((tmp_path / "saved" / "model.json").read_text(encoding="utf-8"))
    assert meta["config"]["cell"] == "lstm" and meta["vocabulary"] == trainer.task.chars


def test_generate_refuses_what_is_not_a_character_model():
    with pytest.raises(ValueError, match="vocabulary: the model has none"):
        bptt.generate(bptt.Model("rnn", 3, 4, 3, head="softmax", loss="cross_entropy"))
    with pytest.raises(ValueError, match="softmax over the 3 characters"):
        bptt.generate(bptt.Model("rnn", 3, 4, 3), vocabulary="abc")
    with pytest.raises(ValueError, match="prime: characters not in"):
        bptt.generate(bptt.Model("rnn", 3, 4, 3, head="softmax", loss="cross_entropy"), vocabulary="abc", prime="z")


def test_a_save_that_fails_keeps_the_model_saved_there_before(tmp_path, monkeypatch):
    """The new model.safetensors was renamed in before model.json was written: a full disk
    then left new tensors beside the old JSON, a folder bptt.load refused by its digest."""
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    write_bytes = Path.write_bytes

    def full_disk(self, data):
        if self.name == "model.json.tmp":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    model.params["head.b_y"][:] = 7.0
    with pytest.raises(OSError, match=r"^\[Errno 28\] path: could not write .*m/model\.json \(No space left on "
                                      r"device\); expected a folder this process may create and write, with room"):
        model.save(tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    monkeypatch.undo()
    assert bptt.load(tmp_path / "m").params["head.b_y"][0] != 7.0


def test_a_path_save_cannot_write_is_named(tmp_path, monkeypatch):
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    (tmp_path / "notes.txt").write_text("mine")
    for path in (tmp_path / "notes.txt" / "m", tmp_path / "notes.txt" / "a" / "m"):
        with pytest.raises(ValueError, match=rf"^path: {path} is inside {tmp_path / 'notes.txt'}, a file; expected "
                                             r"a folder to hold model\.safetensors and model\.json$"):
            model.save(path)
    (tmp_path / "m" / "model.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^path: .*m holds other files \(model\.json/\); expected a new folder"):
        model.save(tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.json"]

    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(PermissionError, match=r"^\[Errno 13\] path: could not write .*new \(Permission denied\); "
                                              r"expected a folder this process may create and write"):
        model.save(tmp_path / "new")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_vocabulary_utf8_cannot_encode_is_refused_and_long_ones_shown_short(tmp_path):
    """A lone surrogate was a UnicodeEncodeError from json's encoding in model.save; a
    vocabulary of the wrong size or with a character twice was shown whole."""
    model = bptt.Model("gru", 3, 4, 3, head="softmax", loss="cross_entropy")
    model.vocabulary = ["\ud800", "a", "b"]
    with pytest.raises(ValueError, match=r"^model\.vocabulary: expected characters UTF-8 can encode, got "
                                         r"'\\ud800' \(a lone surrogate\)$"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    long = [chr(c) for c in range(32, 132)]
    shown = re.escape(repr(long)[:57]) + r"\.\.\."
    for vocabulary, pattern in ((long, rf"^vocabulary: expected 3 characters \(one per output of the model\), got "
                                       rf"100: {shown}$"),
                                (long + ["a"], rf"^vocabulary: expected each of the model's characters once, in the "
                                               rf"order of its inputs, got {shown}$")):
        with pytest.raises(ValueError, match=pattern):
            bptt.generate(model, 3, vocabulary=vocabulary)


def test_a_rename_that_fails_after_the_tensors_are_in_keeps_the_model_before(tmp_path, monkeypatch):
    """The new model.safetensors was renamed in and model.json's rename then failed (an I/O
    error): the new tensors stood beside the old JSON, whose digest bptt.load refused; the
    same befell best.safetensors and best.json of a run."""
    from bptt.train import runs
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    model.save(tmp_path / "m")
    runs.save_checkpoint(tmp_path, 5, {"param.w": np.zeros(2)}, {"config": {}}, name=runs.BEST)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    replace = os.replace

    def failing_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.EIO, "Input/output error", str(src))
        return replace(src, dst)
    monkeypatch.setattr(os, "replace", failing_json)
    model.params["head.b_y"][:] = 7.0
    with pytest.raises(OSError, match=r"could not write .*m/model\.json \(Input/output error\)"):
        model.save(tmp_path / "m")
    with pytest.raises(OSError, match=r"best\.json"):
        runs.save_checkpoint(tmp_path, 9, {"param.w": np.ones(2)}, {"config": {}}, name=runs.BEST)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert bptt.load(tmp_path / "m").params["head.b_y"][0] != 7.0


def test_a_save_killed_midway_leaves_files_the_next_save_takes_over(tmp_path):
    """The temporary files of a save killed midway (SIGKILL, a power cut) were "other
    files": every later save into the folder was refused until they were deleted by hand."""
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    model.save(tmp_path / "m")
    for name in ("model.safetensors.tmp", "model.json.tmp", "model.safetensors.old.tmp"):
        (tmp_path / "m" / name).write_bytes(b"cut short")
    model.params["head.b_y"][:] = 7.0
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    assert bptt.load(tmp_path / "m").params["head.b_y"][0] == 7.0


KILLED_SAVE = """
import os, signal, sys
import numpy as np
import bptt
model = bptt.load(sys.argv[1])
model.params["head.b_y"][:] = 7.0
replace = os.replace
def killed_before_the_json(src, dst):
    if str(dst).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)
os.replace = killed_before_the_json
model.save(sys.argv[1])
"""


def test_a_save_killed_between_its_two_renames_loads_the_model_saved_before(tmp_path):
    """The new model.safetensors was in and model.json still the old one: bptt.load refused
    the folder by its digest, and the model saved before was gone. The file it replaced is
    kept as model.safetensors.old.tmp until both are renamed, and loading reads it there."""
    model = bptt.Model("gru", 2, 3, 1, seed=0)
    model.save(tmp_path / "m")
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path / "m")], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    loaded = bptt.load(tmp_path / "m")
    assert np.array_equal(loaded.params["head.b_y"], model.params["head.b_y"]) and loaded.params["head.b_y"][0] != 7
    loaded.save(tmp_path / "m")                       # the next save takes the folder over
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
