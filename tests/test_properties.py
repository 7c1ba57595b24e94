"""Random shapes, masks, dtypes, NaN/inf and empty sequences thrown at the public API. The
only outcomes allowed: the documented ValueError, naming the argument, exactly when the
input is invalid; or, when it is valid, a finite loss and gradients that match the loss
(and, in float64, a central finite difference)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bptt

EXAMPLES = 200
HEAD_LOSS = [("identity", "mse"), ("sigmoid", "bce"), ("softmax", "cross_entropy")]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_gradients_give_a_correct_result_or_a_named_error(data):
    draw = data.draw
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    nonlinearity = draw(st.sampled_from(["tanh", "sigmoid", "identity"])) if cell == "rnn" else "tanh"
    head, loss = draw(st.sampled_from(HEAD_LOSS))
    outputs = draw(st.sampled_from(["all", "last"]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    D, H, O = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 3))
    model = bptt.Model(cell, D, H, O, num_layers=draw(st.integers(1, 2)), nonlinearity=nonlinearity, head=head,
                       loss=loss, outputs=outputs, dtype=dtype, seed=draw(st.integers(0, 99)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    invalid = []                                          # what the input breaks, by construction

    T, B = draw(st.integers(0, 5)), draw(st.integers(0, 3))
    Dx = draw(st.sampled_from([D, D, D, D + 1]))
    x_dtype = draw(st.sampled_from([dtype, dtype, dtype, "float32" if dtype == "float64" else "float64", "int64"]))
    x = rng.standard_normal((T, B, Dx)).astype(x_dtype)
    if T == 0 or B == 0:
        invalid.append("x")
    if Dx != D or x_dtype != dtype:
        invalid.append("x")
    poison = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf]))
    if poison is not None and x.size and x.dtype.kind == "f":
        x.flat[rng.integers(x.size)] = poison
        invalid.append("x")

    mask = None
    kind = draw(st.sampled_from(["none", "none", "random", "wrong shape"]))
    if kind == "random" and T and B:
        mask = rng.random((T, B)) < 0.7
        if not mask.any() or (outputs == "last" and not mask.any(axis=0).all()):
            invalid.append("mask")
    elif kind == "wrong shape":
        mask = np.ones((T + 1, B), dtype=bool)
        invalid.append("mask")

    lead = (T, B) if outputs == "all" else (B,)
    if loss == "cross_entropy":
        targets = rng.integers(0, O, size=lead)
        if draw(st.booleans()) and targets.size:
            targets.flat[0] = O                           # a class that does not exist
            invalid.append("targets")
    else:
        targets = rng.uniform(0, 1, size=lead + (O,)).astype(dtype)
        if draw(st.integers(0, 4)) == 0:
            targets = targets[..., :-1]                   # one output too few
            invalid.append("targets")

    try:
        g = model.gradients(x, targets, mask=mask)
    except ValueError as exc:
        message = str(exc)
        assert invalid, f"a valid input was refused: {message}"
        assert message.split(":")[0].split(" ")[0] in ("x", "mask", "targets"), message
        return
    assert not invalid, f"an invalid input ({invalid}) was accepted"
    assert np.isfinite(g.loss)
    assert g.loss == model.loss_value(x, targets, mask=mask)
    for name, p in model.params.items():
        assert g.params[name].shape == p.shape and g.params[name].dtype == p.dtype
        assert np.isfinite(g.params[name]).all(), name
    if dtype == "float64":                                # one coordinate against a central difference
        name = draw(st.sampled_from(sorted(model.params)))
        p = model.params[name]
        i = tuple(int(rng.integers(n)) for n in p.shape)
        keep, eps = p[i], 1e-6
        p[i] = keep + eps
        up = model.loss_value(x, targets, mask=mask)
        p[i] = keep - eps
        down = model.loss_value(x, targets, mask=mask)
        p[i] = keep
        fd = (up - down) / (2 * eps)
        assert abs(fd - g.params[name][i]) <= 1e-6 * max(1.0, abs(fd)), (name, i, fd, g.params[name][i])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_schedules_give_full_bptt_or_a_named_error(data):
    """truncated(k1, k2 = T) and checkpointed(budget) against full BPTT, or a named ValueError."""
    from bptt import through_time as tt
    draw = data.draw
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    model = bptt.Model(cell, 2, 3, 2, dtype="float64", seed=draw(st.integers(0, 9)))
    T, B = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    x = rng.standard_normal((T, B, 2))
    y = rng.standard_normal((T, B, 2))
    full = model.gradients(x, y, input_grad=False)
    k1 = draw(st.integers(-1, T + 2))
    try:
        updates = list(tt.truncated(model, x, y, k1, max(T, k1) if k1 >= 1 else None))
    except ValueError as exc:
        assert k1 < 1 and str(exc).startswith("k1"), str(exc)
    else:
        assert k1 >= 1
        if k1 >= T:                                      # one window: the whole sequence
            assert len(updates) == 1
            for name, g in updates[0][1].items():
                assert np.allclose(g, full.params[name], rtol=1e-10, atol=1e-12), name
    budget = draw(st.one_of(st.none(), st.integers(-2, 2 * T)))
    try:
        loss, grads, _ = tt.checkpointed(model, x, y, budget=budget)
    except ValueError as exc:
        assert budget is not None and budget < 1 and str(exc).startswith("budget"), str(exc)
    else:
        assert budget is None or budget >= 1
        assert abs(loss - full.loss) <= 1e-12 * max(1.0, abs(full.loss))
        for name, g in grads.items():
            assert np.allclose(g, full.params[name], rtol=1e-10, atol=1e-12), name


FLAG = ["=yes"]            # a flag given a value: argparse's "ignored explicit argument"
NO_RUN = "/no/such/run"
NO_RUN_NAME = ""           # RUN "" is not the working directory
MOVED_TEXT = ["/no/such/text.txt", "", __file__]   # none, no name, another text (its SHA-256 differs)
BAD = {
    "train": {"--hidden": ["0", "-3", "abc", "1.5"], "--layers": ["0", "x"], "--seq-len": ["0", "-1"],
              "--batch": ["0", "two"], "--steps": ["0", "-5"], "--lr": ["0", "-1", "nan?", "fast"],
              "--cell": ["elman", ""], "--task": ["nope"], "--optimizer": ["adamm"], "--dtype": ["float16"],
              "--schedule": ["linear"], "--k1": ["0"], "--k2": ["1"], "--clip-norm": ["x", "-1", "inf"],
              "--clip-value": ["-5", "nan"], "--warmup": ["-5"], "--forget-bias": ["nan", "inf"],
              "--eval-every": ["0"], "--checkpoint-every": ["-1"], "--checkpointing": ["0"],
              "--text": ["/no/such/file.txt"], "--nonlinearity": ["softplus"], "--init": ["zeros"],
              "--chrono-t-max": ["1", "inf", "x"], "--dropout": ["1", "-0.1", "x"], "--input-dropout": ["1.5"],
              "--recurrent-dropout": ["-1", "nan"], "--zoneout": ["1"], "--layer-norm": FLAG, "--bidirectional": FLAG, "--proj-size": ["-1", "x", "128"],
              "--on-nonfinite": ["ignore"], "--through-time": ["backprop", ""], "--seed": ["-1", "x"], "--threads": ["3", "0"], "--patience": ["0", "-2"],
              "--out": [""], "--config": ["/no/such/file.toml"], "--fresh": FLAG, "--quiet": FLAG},
    "resume": {"RUN": [NO_RUN, NO_RUN_NAME], "--steps": ["0", "x"], "--patience": ["0", "-1"], "--best": FLAG,
               "--quiet": FLAG, "--text": MOVED_TEXT},
    "sample": {"RUN": [NO_RUN, NO_RUN_NAME], "--length": ["-5", "0", "x"], "--temperature": ["0", "-1", "nan", "inf"],
               "--top-k": ["0", "-2"], "--prime": ["\u2603"], "--seed": ["-1", "x"], "--best": FLAG},
    "eval": {"RUN": [NO_RUN, NO_RUN_NAME], "--best": FLAG, "--text": MOVED_TEXT},
    "export": {"RUN": [NO_RUN, NO_RUN_NAME], "--onnx": ["", "model.txt"], "--lengths": FLAG, "--best": FLAG,
               "--overwrite": FLAG},
    "explain": {"--cell": ["cnn", ""]},
}


def _options_of_every_command():
    """{command: {option or 'RUN': its argparse action}} from the `bptt` parser itself."""
    import argparse
    from bptt.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, parser in sub.choices.items():
        found[name] = {}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            long = [o for o in action.option_strings if o.startswith("--")]
            found[name][long[0] if long else action.metavar or action.dest] = action
    return found


def _bad_values():
    from bptt.cli_flow import BAD_VALUES
    flags = {o: FLAG for o, a in _options_of_every_command()["flow"].items() if a.nargs == 0}
    return BAD | {"flow": dict(BAD_VALUES) | flags}


def test_every_option_of_every_command_has_help_and_bad_values():
    bad = _bad_values()
    for command, options in _options_of_every_command().items():
        assert set(options) == set(bad[command]), (command, set(options) ^ set(bad[command]))
        for option, action in options.items():
            assert action.help and len(action.help) > 8, (command, option)


@pytest.fixture(scope="session")
def text_run(tmp_path_factory):
    """A finished text run of 2 updates: what resume, sample and eval are given."""
    from bptt.cli import main
    root = tmp_path_factory.mktemp("text_run")
    corpus = root / "c.txt"
    corpus.write_text("abc def ghi. " * 40, encoding="utf-8")
    run = root / "run"
    assert main(["train", "--text", str(corpus), "--hidden", "4", "--seq-len", "8", "--batch", "2", "--steps", "2",
                 "--quiet", "--out", str(run)]) == 0
    return run


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bad_option_of_every_command_is_one_named_line(data, text_run, tmp_path_factory, capsys):
    from bptt.cli import main
    from bptt.train import folder
    bad = _bad_values()
    command = data.draw(st.sampled_from(sorted(bad)))
    option = data.draw(st.sampled_from(sorted(bad[command])))
    value = data.draw(st.sampled_from(bad[command][option]))
    out = tmp_path_factory.mktemp("bad") / "out"
    base = {"train": ["train", "--task", "adding", "--seq-len", "8", "--steps", "1", "--quiet", "--out", str(out)],
            "resume": ["resume", str(text_run), "--steps", "3", "--quiet"],
            "sample": ["sample", str(text_run), "--length", "5"],
            "eval": ["eval", str(text_run)],
            "export": ["export", str(text_run), "--onnx", str(out) + ".onnx"],
            "flow": ["flow", "--seq-len", "8", "--hidden", "4", "--cell", "rnn", "--quiet", "--out", str(out)],
            "explain": ["explain"]}[command]
    if option == "RUN":
        argv = [base[0], value] + base[2:]
    elif value == "=yes":
        argv = base + [option + value]
    else:
        argv = base + [option, value]
    if command == "train" and option == "--k2":
        argv += ["--k1", "4", "--task", "text", "--text", __file__]  # k2 < k1
    before = folder.run_step(text_run), sorted(p.name for p in text_run.iterdir())
    try:
        code = main(argv)
    except SystemExit as exc:                            # argparse's own type errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    name = option.lstrip("-").replace("-", "_")
    assert name in err.replace("-", "_") or (option == "RUN" and "RUN:" in err), (argv, err)
    assert not out.exists(), argv                         # a refusal makes no folder
    assert (folder.run_step(text_run), sorted(p.name for p in text_run.iterdir())) == before
