"""Bad input raises ValueError naming the argument, what came and what was expected."""
import warnings

import numpy as np
import pytest

import bptt
from bptt.train.trainer import sample
from helpers import make_model


@pytest.fixture
def model():
    return make_model("lstm", layers=2, D=3, H=4, O=2, dtype="float64")


@pytest.fixture
def ce_model():
    return make_model("gru", D=3, H=4, O=5, head="softmax", loss="cross_entropy", dtype="float64")


X = np.zeros((4, 2, 3))
Y = np.zeros((4, 2, 2))


@pytest.mark.parametrize("x,pattern", [
    (np.zeros((4, 3)), r"x: expected shape \(T, B, 3\), got shape \(4, 3\)"),
    (np.zeros((4, 2, 5)), r"x: expected shape \(T, B, 3\), got shape \(4, 2, 5\)"),
    (np.zeros((0, 2, 3)), r"x: .*no empty dimension, got shape \(0, 2, 3\)"),
    (np.zeros((4, 2, 3), np.float32), r"x: expected dtype float64 .*got float32"),
    (np.zeros((4, 2, 3), int), r"x: expected dtype float64 .*got int64"),
    (np.full((4, 2, 3), np.nan), r"x: expected finite numbers, got nan at index \(0, 0, 0\)"),
    ("abc", r"x: expected an array of numbers"),
])
def test_bad_inputs(model, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(x, Y)


@pytest.mark.parametrize("targets,pattern", [
    (np.zeros((4, 2, 3)), r"targets: expected shape \(4, 2, 2\), got shape \(4, 2, 3\)"),
    (np.zeros((3, 2, 2)), r"targets: expected shape \(4, 2, 2\)"),
    (np.full((4, 2, 2), np.inf), r"targets: expected finite numbers, got inf"),
])
def test_bad_float_targets(model, targets, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(X, targets)


@pytest.mark.parametrize("targets,pattern", [
    (np.full((4, 2), 5), r"targets .*: expected class indices in \[0, 4\], got values in \[5, 5\]"),
    (np.full((4, 2), -1), r"expected class indices in \[0, 4\], got values in \[-1, -1\]"),
    (np.zeros((4, 2)), r"expected integer class indices, got dtype float64; convert with \.astype\(int\)"),
    (np.full((4, 2), 0.5), r"expected integer class indices, got dtype float64"),
    (np.zeros((4, 3), int), r"targets .*: expected shape \(4, 2\), got shape \(4, 3\)"),
])
def test_bad_class_targets(ce_model, targets, pattern):
    with pytest.raises(ValueError, match=pattern):
        ce_model.loss_and_grads(X, targets)


@pytest.mark.parametrize("mask,pattern", [
    (np.ones((4, 2)), r"mask: expected a boolean array .*got dtype float64"),
    (np.ones((4, 3), bool), r"mask: expected shape \(4, 2\), got shape \(4, 3\)"),
    (np.zeros((4, 2), bool), r"mask: expected at least one valid step, got none"),
])
def test_bad_masks(model, mask, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(X, Y, mask=mask)


def test_last_output_needs_a_valid_step_per_sequence():
    m = make_model("rnn", outputs="last", O=2)
    mask = np.ones((4, 2), bool)
    mask[:, 1] = False
    with pytest.raises(ValueError, match="mask: sequence 1 has no valid step"):
        m.loss_and_grads(X, np.zeros((2, 2)), mask=mask)


@pytest.mark.parametrize("state,pattern", [
    (np.zeros((2, 2, 4)), r"state0: expected a tuple \(h0, c0\) of arrays \(2, 2, 4\)"),
    ((np.zeros((2, 2, 4)), np.zeros((1, 2, 4))), r"state0\[1\]: expected shape \(2, 2, 4\), got shape \(1, 2, 4\)"),
    ((np.zeros((2, 2, 4)), np.full((2, 2, 4), np.nan)), r"state0\[1\]: expected finite numbers"),
])
def test_bad_states(model, state, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(X, Y, state0=state)


def test_bad_dstate_is_named(model):
    with pytest.raises(ValueError, match=r"dstate\[0\]: expected shape \(2, 2, 4\)"):
        model.gradients(X, Y, dstate=(np.zeros((2, 3, 4)), np.zeros((2, 2, 4))))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"cell": "transformer"}, r"cell: expected one of 'rnn', 'lstm', 'gru' or 'package.module:ClassName', got 'transformer'"),
    ({"hidden_size": 0}, r"hidden_size: expected a positive integer, got 0"),
    ({"num_layers": 1.5}, r"num_layers: expected a positive integer, got 1.5"),
    ({"nonlinearity": "gelu"}, r"nonlinearity: expected one of"),
    ({"cell": "lstm", "nonlinearity": "relu"}, r"nonlinearity: applies to cell='rnn' only"),
    ({"loss": "cross_entropy"}, r"head: loss='cross_entropy' expects head in \('softmax',\), got 'identity'"),
    ({"head": "softmax", "loss": "bce"}, r"head: loss='bce' expects head in \('sigmoid',\)"),
    ({"dtype": "float16"}, r"dtype: expected 'float32' or 'float64', got 'float16'"),
    ({"outputs": "first"}, r"outputs: expected one of 'all', 'last', got 'first'"),
    ({"reduction": "max"}, r"reduction: expected one of 'mean', 'sum'"),
    ({"init": "xavier"}, r"init: expected one of 'default', 'orthogonal'"),
    ({"dtype": None}, r"dtype: expected 'float32' or 'float64', got None"),
    ({"cell": "lstm", "forget_bias": "1"}, r"forget_bias: expected a finite number, got '1'"),
    ({"seed": "a"}, r"seed: expected a seed \(an integer >= 0, or None\) or a numpy Generator, got 'a'"),
    ({"cell": bptt.Cell}, r"cell: expected a Cell instance, got the class Cell; build it: cell=Cell\(\)"),
])
def test_bad_model_arguments(kwargs, pattern):
    args = {"cell": "rnn", "input_size": 3, "hidden_size": 4, "output_size": 2} | kwargs
    with pytest.raises(ValueError, match=pattern):
        bptt.Model(**args)


def test_errors_leave_the_model_unchanged(model):
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError):
        model.loss_and_grads(np.full((4, 2, 3), np.nan), Y)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


@pytest.mark.parametrize("kwargs,name", [({"eps": -1.0}, "eps"), ({"eps": float("nan")}, "eps"),
                                         ({"eps": 0}, "eps"), ({"floor": -1e-3}, "floor"), ({"eps": "1e-3"}, "eps")])
def test_gradcheck_names_a_bad_step_or_floor(kwargs, name):
    m = bptt.Model("gru", 2, 3, 2, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=f"^{name}: expected a positive finite number"):
        bptt.gradcheck(m, np.zeros((4, 2, 2)), np.zeros((4, 2, 2)), **kwargs)


def test_gradcheck_names_what_came_for_the_state_and_the_targets():
    """An array state0 of an LSTM was said to be a tuple (gradcheck split it first), and
    targets=None was reported as a shape ()."""
    m = bptt.Model("lstm", 3, 4, 2, dtype="float64", seed=1)
    x = np.zeros((6, 2, 3))
    with pytest.raises(ValueError, match=r"state0: expected a tuple \(h0, c0\) .* got ndarray"):
        bptt.gradcheck(m, x, np.zeros((6, 2, 2)), state0=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"targets: expected the targets of x .*, got None"):
        bptt.gradcheck(m, x, None)


@pytest.mark.parametrize("loss_count", [0, -3, 7, 2.5, "a", True])
def test_loss_count_is_a_count_no_smaller_than_the_calls_own(model, loss_count):
    """X, Y have 4 · 2 = 8 loss positions: the whole objective counts at least those."""
    with pytest.raises(ValueError, match=rf"loss_count: expected an integer .* at least this call's own 8, "
                                         rf"got {loss_count!r}"):
        model.gradients(X, Y, loss_count=loss_count)
    with pytest.raises(ValueError, match="loss_count"):
        model.loss_value(X, Y, loss_count=loss_count)
    assert model.gradients(X, Y, loss_count=16).loss == pytest.approx(model.gradients(X, Y).loss / 2, rel=1e-14)


def test_bce_targets_are_probabilities():
    m = bptt.Model("rnn", 3, 4, 2, head="sigmoid", loss="bce", dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"targets: expected probabilities in \[0, 1\] for loss='bce', "
                                         r"got values from -0.5 to 5"):
        m.loss_value(X, np.where(np.arange(2) == 0, -0.5, 5.0) * np.ones((4, 2, 2)))


@pytest.mark.parametrize("name,value,pattern", [
    ("layer0.b_h", np.zeros(1), r"params\['layer0.b_h'\]: expected shape \(16,\) and dtype float64, got shape \(1,\)"),
    ("layer1.W_h", np.zeros((16, 4), np.float32), r"params\['layer1.W_h'\]: .*got shape \(16, 4\) and dtype float32"),
    ("head.W_y", [[0.0] * 4] * 2, r"params\['head.W_y'\]: expected an array of shape \(2, 4\) \(float64\), got list"),
    ("head.b_y", None, r"params\['head.b_y'\]: expected an array .*got NoneType"),
])
def test_edited_parameters_are_checked_at_the_next_call(model, name, value, pattern):
    if value is None:
        del model.params[name]
    else:
        model.params[name] = value
    for call in (lambda: model.gradients(X, Y), lambda: model.forward(X), lambda: model.loss_value(X, Y)):
        with pytest.raises(ValueError, match=pattern):
            call()


@pytest.mark.parametrize("kwargs,pattern", [
    ({"top_k": 2.5}, r"top_k: expected a positive integer, got 2.5"),
    ({"temperature": "hot"}, r"temperature: expected a positive number, got 'hot'"),
    ({"temperature": 0}, r"temperature: expected a positive number, got 0"),
    ({"seed": "a"}, r"seed: expected a seed"),
    ({"prime": 5}, r"prime: expected a string of the model's characters, got int 5"),   # a TypeError before
])
def test_bad_generation_arguments(kwargs, pattern):
    m = bptt.Model("lstm", 3, 4, 3, head="softmax", loss="cross_entropy", seed=0)
    m.vocabulary = "abc"
    with pytest.raises(ValueError, match=pattern):
        bptt.generate(m, 5, **kwargs)


def test_a_tiny_temperature_draws_the_likeliest_character_without_a_warning():
    """Log-probabilities less their largest, then / T: T = 1e-320 is greedy, with no overflow
    and no NaN (it overflowed to -inf/-inf = NaN before)."""
    import warnings
    from bptt.generate import one_hot
    m = bptt.Model("lstm", 3, 4, 3, head="softmax", loss="cross_entropy", seed=0)
    codes, (y, state) = [], m.forward(one_hot(np.array([[2]]), 3, m.dtype))      # the prime: "\n"
    for _ in range(8):
        codes.append(int(np.argmax(y[-1, 0])))
        y, state = m.forward(one_hot(np.array([[codes[-1]]]), 3, m.dtype), state)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for seed in (0, 1):
            assert bptt.generate(m, length=8, temperature=1e-320, vocabulary="ab\n", seed=seed) == \
                "".join("ab\n"[c] for c in codes)
        assert set(bptt.generate(m, length=8, temperature=1e300, vocabulary="ab\n", seed=0)) <= set("ab\n")


@pytest.mark.parametrize("vocabulary,pattern", [
    (5, r"^vocabulary: expected a string or a sequence of single characters \(one per output\), got int 5$"),
    ([1, 2, 3], r"^vocabulary: expected a string or a sequence of single characters \(one per output\), "
                r"got list \[1, 2, 3\]$"),
    (["ab", "c", "d"], r"^vocabulary: expected a string or a sequence of single characters .*got list"),
    ({"a", "b", "c"}, r"^vocabulary: expected a string or a sequence of single characters .*got set"),
    ("abcd", r"^vocabulary: expected 3 characters \(one per output of the model\), got 4: 'abcd'$"),
    (list("ab"), r"^vocabulary: expected 3 characters \(one per output of the model\), got 2: \['a', 'b'\]$"),
])
def test_a_vocabulary_of_the_wrong_kind_or_size_is_named(vocabulary, pattern):
    m = bptt.Model("lstm", 3, 4, 3, head="softmax", loss="cross_entropy", seed=0)
    with pytest.raises(ValueError, match=pattern):
        bptt.generate(m, length=5, vocabulary=vocabulary, seed=0)
    m.vocabulary = vocabulary
    with pytest.raises(ValueError, match=pattern.replace("^vocabulary", "^model\\.vocabulary")):
        bptt.generate(m, length=5, seed=0)
    m.vocabulary = ("a", "b", "c")              # a tuple of characters is a vocabulary too
    assert set(bptt.generate(m, length=5, seed=0)) <= set("abc")
    m.vocabulary = vocabulary                   # the trainer's sampler (bptt sample) too
    with pytest.raises(ValueError, match=pattern.replace("^vocabulary", "^model\\.vocabulary")):
        sample(m, "a", 5)


def _entry_points_taking_a_model():
    """Every public function of through_time/, diagnostics/ and interop/ whose first argument
    is the model, called with the other arguments it needs."""
    from bptt import diagnostics, through_time as tt
    from bptt.diagnostics.estimators import estimator_error
    from bptt.diagnostics.nonfinite import first_nonfinite
    from bptt.interop.onnx import check_exportable, to_onnx
    from bptt.interop.torch import to_torch
    from bptt.through_time import online
    return {
        "full": lambda m: tt.full(m, X, Y), "truncated": lambda m: tt.truncated(m, X, Y, 2),
        "checkpointed": lambda m: tt.checkpointed(m, X, Y), "rtrl": lambda m: tt.rtrl(m, X, Y),
        "ExactInfluence": lambda m: tt.ExactInfluence(m, 2),
        "truncation_bias": lambda m: tt.truncation_bias(m, X, Y, [2]),
        "snap": lambda m: online.snap(m, X, Y), "uoro": lambda m: online.uoro(m, X, Y),
        "eprop": lambda m: online.eprop(m, X, Y), "rflo": lambda m: online.rflo(m, X, Y),
        "kf_rtrl": lambda m: online.kf_rtrl(m, X, Y), "SnAp": lambda m: online.SnAp(m, 2),
        "UORO": lambda m: online.UORO(m, 2), "Eligibility": lambda m: online.Eligibility(m, 2),
        "KFRTRL": lambda m: online.KFRTRL(m, 2), "estimate": lambda m: online.estimate("uoro", m, X, Y),
        "flow": lambda m: diagnostics.flow(m, X, Y), "estimator_error": lambda m: estimator_error(m, X),
        "first_nonfinite": lambda m: first_nonfinite(m, X, Y),
        "to_torch": lambda m: to_torch(m), "to_onnx": lambda m: to_onnx(m, "m.onnx"),
        "check_exportable": lambda m: check_exportable(m),
    }


@pytest.mark.parametrize("name", list(_entry_points_taking_a_model()))
@pytest.mark.parametrize("given,kind", [(None, "NoneType"), ("runs/x", "str"), ({"cell": "rnn"}, "dict")])
def test_every_entry_point_that_takes_a_model_names_what_came(tmp_path, monkeypatch, name, given, kind):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"^model: expected a bptt.Model, got {kind}$"):
        _entry_points_taking_a_model()[name](given)
    assert list(tmp_path.iterdir()) == []


def test_bad_estimator_generator_is_named():
    from bptt.through_time.online import uoro
    m = bptt.Model("rnn", 3, 4, 2, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"rng: expected a seed .* got 'a'"):
        uoro(m, X, Y, rng="a")


def test_load_names_its_own_argument(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"^path: .* has no checkpoint .*; expected a saved model \(model.json\) "
                                         r"or a run folder$"):
        bptt.load(tmp_path)
    with pytest.raises(ValueError, match=r"^best: .* has no best model .*; it is written at the first evaluation$"):
        bptt.load(tmp_path, best=True)
    (tmp_path / "best.safetensors").write_bytes(b"")    # written first: its .json never came
    with pytest.raises(ValueError, match=r"^best: .* has no best model .*; its best.safetensors is alone, a best "
                                         r"model cut short$"):
        bptt.load(tmp_path, best=True)
    (tmp_path / "best.safetensors").rename(tmp_path / "best.json")
    with pytest.raises(ValueError, match=r"^best: .* has no best model .*; its best.safetensors is missing$"):
        bptt.load(tmp_path, best=True)


@pytest.mark.parametrize("call,pattern", [
    (lambda m, tmp: bptt.Trainer({"task": "adding"}), r"^config: expected a bptt.Config, got dict; build one"),
    (lambda m, tmp: bptt.Trainer(None), r"^config: expected a bptt.Config, got NoneType$"),
    (lambda m, tmp: bptt.gradcheck(None, X, Y), r"^model: expected a bptt.Model, got NoneType$"),
    (lambda m, tmp: bptt.generate("model", length=3), r"^model: expected a bptt.Model, got str$"),
    (lambda m, tmp: bptt.generate(m, length=3, vocabulary=""), r"^vocabulary: expected each of .* once, .*, got ''$"),
    (lambda m, tmp: m.save(None), r"^path: expected the path of a folder .*, got None$"),
    (lambda m, tmp: bptt.generate(m, length=3, vocabulary="aab"), r"^vocabulary: .* characters once, .*'aab'$"),
    (lambda m, tmp: bptt.load(None), r"^path: expected the folder of a saved model .*, got None$"),
    (lambda m, tmp: bptt.load(tmp / "file.txt"), r"^path: .*file.txt is a file; expected a saved model's folder"),
])
def test_the_api_names_an_argument_of_the_wrong_kind(model, tmp_path, call, pattern):
    (tmp_path / "file.txt").write_text("not a model")
    with pytest.raises(ValueError, match=pattern):
        call(model, tmp_path)


@pytest.mark.parametrize("call", ["forward", "advance", "gradients", "loss_and_grads", "loss_value"])
def test_a_key_added_to_params_is_named_by_every_call(model, call):
    """It was a bare KeyError from gradients, and forward and loss_value ran without it."""
    model.params["my_scale"] = np.ones(1)
    args = (X,) if call in ("forward", "advance") else (X, Y)
    with pytest.raises(ValueError, match=r"^params: unexpected key 'my_scale'; expected the keys layer0.W_x, "
                                         r"layer0.W_h, layer0.b_h, layer1.W_x, .*, head.W_y, head.b_y$"):
        getattr(model, call)(*args)


@pytest.mark.parametrize("value", [None, [], ("layer0.W_x",)])
def test_params_replaced_by_something_other_than_a_dict_is_named(model, value, tmp_path):
    """It was a TypeError ('NoneType' object is not iterable) or an AttributeError ('list'
    object has no attribute 'get') from inside the check."""
    model.params = value
    pattern = (rf"^params: expected a dict of arrays with the keys layer0.W_x, layer0.W_h, .*, head.b_y, "
               rf"got {type(value).__name__}$")
    for call in (lambda: model.gradients(X, Y), lambda: model.forward(X), lambda: model.save(tmp_path / "m")):
        with pytest.raises(ValueError, match=pattern):
            call()


MASKED = r"expected a plain array, got a numpy.ma.MaskedArray, whose mask would be ignored; hint: pass mask= " \
         r"for padded steps, or .filled\(\) for the values$"


@pytest.mark.parametrize("name,kwargs", [
    ("x", {"x": np.ma.masked_array(X, mask=X > 0)}),
    ("targets", {"targets": np.ma.masked_array(Y)}),
    (r"state0\[0\]", {"state0": (np.ma.masked_array(np.zeros((2, 2, 4))), np.zeros((2, 2, 4)))}),
    ("mask", {"mask": np.ma.masked_array(np.ones((4, 2), bool))}),
    ("resets", {"resets": np.ma.masked_array(np.zeros((4, 2), bool))}),
    (r"dstate\[1\]", {"dstate": (np.zeros((2, 2, 4)), np.ma.masked_array(np.zeros((2, 2, 4))))}),
])
def test_a_masked_array_is_refused_by_name(model, name, kwargs):
    """x was a NumbaTypeError (or a broadcast error), and a masked mask, resets or target lost its mask."""
    kwargs = {"x": X, "targets": Y} | kwargs
    with pytest.raises(ValueError, match=rf"^{name}: {MASKED}"):
        model.gradients(**kwargs)


def test_a_masked_array_of_class_targets_is_refused_by_name(ce_model):
    with pytest.raises(ValueError, match=rf"^targets \(class indices \(T, B\)\): {MASKED}"):
        ce_model.gradients(X, np.ma.masked_array(np.zeros((4, 2), int)))


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")         # np.matrix's
def test_other_array_subclasses_are_read_as_plain_arrays(model, tmp_path):
    """np.memmap (an ndarray subclass) reaches the compiled loop as the plain array of its numbers."""
    on_disk = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=X.shape)
    on_disk[:] = np.random.default_rng(0).standard_normal(X.shape)
    np.testing.assert_array_equal(model.gradients(on_disk, Y).params["layer0.W_x"],
                                  model.gradients(np.array(on_disk), Y).params["layer0.W_x"])
    with pytest.raises(ValueError, match=r"^x: expected shape \(T, B, 3\), got shape \(4, 3\)"):
        model.forward(np.asmatrix(np.zeros((4, 3))))


def test_the_other_byte_order_is_the_same_numbers():
    """A big-endian dtype made a model whose every call failed with "expected dtype float32
    (the model's dtype), got float32"; a big-endian input was refused the same way."""
    m = bptt.Model("lstm", 3, 4, 2, dtype=np.dtype(">f4"), seed=0)
    assert m.dtype == np.float32 and m.dtype.isnative
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 2))
    m64 = bptt.Model("gru", 3, 4, 2, dtype="float64", seed=0)
    swapped = m64.gradients(x.astype(">f8"), y.astype(">f8"), state0=np.ones((1, 2, 4), ">f8"))
    native = m64.gradients(x, y, state0=np.ones((1, 2, 4)))
    assert swapped.loss == native.loss and all(np.array_equal(swapped.params[k], v) for k, v in native.params.items())
    assert m.loss_value(x.astype(">f4"), y.astype(">f4")) == m.loss_value(x.astype(np.float32), y.astype(np.float32))
    with pytest.raises(ValueError, match=r"^x: expected dtype float32 \(the model's dtype\), got float64"):
        m.forward(x.astype(">f8"))
    from bptt import _checks
    with pytest.raises(ValueError, match=r"^x: expected dtype >f4 \(the model's dtype\), got <f4"):
        _checks.float_array("x", x.astype("<f4"), np.dtype(">f4"), ("T", "B", 3))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"threads": True}, r"^threads: expected 1 or 2, got True$"),
    ({"threads": np.True_}, r"^threads: expected 1 or 2, got np.True_$"),
    ({"threads": 2.0}, r"^threads: expected 1 or 2, got 2.0$"),
    ({"input_grad": "no"}, r"^input_grad: expected True or False, got 'no'$"),
    ({"input_grad": 0}, r"^input_grad: expected True or False, got 0$"),
])
def test_gradients_take_threads_and_input_grad_only_as_they_say(model, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.gradients(X, Y, **kwargs)
    assert model.gradients(X, Y, threads=np.int64(1), input_grad=np.False_).x is None


@pytest.mark.parametrize("seed", [True, False, np.True_])
def test_a_bool_is_not_a_seed(seed):
    with pytest.raises(ValueError, match=rf"^seed: expected a seed \(an integer >= 0, or None\) or a numpy "
                                         rf"Generator, got {seed!r}$"):
        bptt.Model("gru", 3, 4, 2, seed=seed)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"x": np.zeros((4, 2, 3), complex)}, r"^x: expected dtype float64 \(the model's dtype\), got complex128"),
    ({"x": [[[1.0, 2.0, 3.0]], [[1.0, 2.0]]]}, r"^x: expected an array of numbers, got list$"),
    ({"x": "abc"}, r"^x: expected an array of numbers, got str$"),
    ({"x": np.ma.masked_array(X)}, rf"^x: {MASKED}"),
    ({"targets": np.zeros((4, 2, 2), complex)}, r"^targets: expected dtype float64 .*, got complex128"),
    ({"state0": "h"}, r"^state0: expected a tuple \(h0, c0\) .* got str$"),
    ({"state0": ([[0.0]], np.zeros((2, 2, 4)))}, r"^state0\[0\]: expected shape \(2, 2, 4\), got shape \(1, 1\)"),
    ({"mask": np.ones((4, 2))}, r"^mask: expected a boolean array .*got dtype float64$"),
])
def test_gradcheck_runs_the_models_checks_before_it_casts(model, kwargs, pattern):
    """gradcheck cast with np.array(..., float64) first: a complex x lost its imaginary part
    with only a ComplexWarning, a ragged list or a string gave NumPy's message unnamed."""
    kwargs = {"x": X, "targets": Y} | kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # a ComplexWarning is no answer
        with pytest.raises(ValueError, match=pattern):
            bptt.gradcheck(model, **kwargs)


def test_gradcheck_takes_float32_inputs_and_leaves_the_callers_arrays_alone(model):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 2))
    kept = x.copy()
    assert bptt.gradcheck(model, x.astype(np.float32), y.astype(np.float32)).worst() < 1e-6
    assert bptt.gradcheck(model, x, y).worst() < 1e-6
    np.testing.assert_array_equal(x, kept)


def test_a_masked_array_among_dropout_masks_is_refused_by_name():
    m = bptt.Model("gru", 3, 4, 2, dtype="float64", seed=0, recurrent_dropout=0.5)
    masks = m.draw_masks(4, 2, np.random.default_rng(0))
    masks = masks._replace(recurrent=[np.ma.masked_array(masks.recurrent[0], mask=masks.recurrent[0] == 0)])
    with pytest.raises(ValueError, match=r"^masks.recurrent\[0\]: expected shape \(2, 4\) and dtype float64 "
                                         r"\(this model's draw_masks\), got MaskedArray$"):
        m.gradients(X, Y, masks=masks)


@pytest.mark.parametrize("option", ["dstate", "input_grad", "threads", "loss_weights"])
def test_gradcheck_names_an_option_it_does_not_pass_on(model, option):
    """An option other than resets, loss_mask, loss_count or masks ran Model.gradients, then
    failed with "Model.loss_value() got an unexpected keyword argument", a call never made."""
    with pytest.raises(ValueError, match=rf"^{option}: expected an option gradcheck passes on to Model.gradients "
                                         rf"and Model.loss_value \(resets, loss_mask, loss_count, masks\), "
                                         rf"got {option}$"):
        bptt.gradcheck(model, X, Y, **{option: 2})


@pytest.mark.parametrize("call,pattern", [
    (lambda m: m.forward(None), r"^x: expected an array of shape \(T, B, 3\), got None$"),
    (lambda m: m.gradients(X, Y, (None, np.zeros((2, 2, 4)))), r"^state0\[0\]: expected an array of shape \(2, 2, 4\), got None$"),
    (lambda m: m.gradients(X, Y, dstate=(np.zeros((2, 2, 4)), None)), r"^dstate\[1\]: expected an array of shape \(2, 2, 4\), got None$"),
    (lambda m: bptt.gradcheck(m, None, Y), r"^x: expected an array of shape \(T, B, 3\), got None$"),
])
def test_none_for_an_array_is_named_as_none(model, call, pattern):
    """None for x or for one array of a state was reported as "got shape ()"."""
    with pytest.raises(ValueError, match=pattern):
        call(model)


@pytest.mark.parametrize("method", ["forward", "advance", "loss_value", "gradients"])
@pytest.mark.parametrize("value", ["no", None, 0])
def test_carried_state_takes_true_or_false_only(model, method, value):
    """carried_state="no" (a true string) or None was taken as it tests, silently letting a
    non-finite state0 through or refusing one, with no word about the option."""
    args = (X,) if method in ("forward", "advance") else (X, Y)
    with pytest.raises(ValueError, match=rf"^carried_state: expected True or False, got {value!r}$"):
        getattr(model, method)(*args, carried_state=value)


@pytest.mark.parametrize("kwargs,option", [
    (dict(forget_bias=1.0), "forget_bias: applies to cell='lstm' only"),
    (dict(layer_norm=True), "layer_norm: applies to cell='lstm' or 'gru'"),
    (dict(init="chrono", chrono_t_max=10), "init: 'chrono' sets gate biases of cell='lstm' or 'gru'"),
    (dict(proj_size=2), r"proj_size: projects the output of cell='lstm' \(without layer_norm\), as PyTorch's"),
])
def test_a_built_in_cell_given_as_an_instance_is_named_as_one(kwargs, option):
    """bptt.cells.LSTM() runs as a cell of one's own; the options of cell='lstm' said
    "applies to cell='lstm' only, got cell='lstm'", refusing what they named."""
    with pytest.raises(ValueError, match=rf"^{option}, got cell=LSTM\(\), a Cell instance \(a cell of one's own; "
                                         rf"the built-in cells go by name\)$"):
        bptt.Model(bptt.cells.LSTM(), 3, 4, 2, **kwargs)
