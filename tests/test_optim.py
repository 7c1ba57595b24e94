"""Optimizers match torch.optim step for step (float64); clipping matches torch.nn.utils;
optimizer state survives a save and restore; non-finite gradients are named."""
import re

import numpy as np
import pytest

from bptt.train import clip
from bptt.train.optim import OPTIMIZERS, make_optimizer
from bptt.train.schedules import learning_rate

torch = pytest.importorskip("torch")

CASES = [
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adagrad", {}), ("adagrad", {"weight_decay": 0.1}),
    ("rmsprop", {}), ("rmsprop", {"momentum": 0.5, "alpha": 0.9, "weight_decay": 0.01}),
    ("adam", {}), ("adam", {"betas": (0.8, 0.99), "weight_decay": 0.05}),
    ("adamw", {}), ("adamw", {"weight_decay": 0.3}),
]
TORCH = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}


def setup(name, kwargs, seed=0):
    rng = np.random.default_rng(seed)
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = make_optimizer(name, params, 0.05, **kwargs)
    theirs = getattr(torch.optim, TORCH[name])(list(tparams.values()), lr=0.05, **kwargs)
    return rng, params, tparams, ours, theirs


@pytest.mark.parametrize("name,kwargs", CASES)
def test_steps_match_torch_optim(name, kwargs):
    rng, params, tparams, ours, theirs = setup(name, kwargs)
    for _ in range(7):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        ours.step(grads)
        theirs.step()
        for k in params:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kwargs", [c for c in CASES if c[0].startswith("adam")])
def test_adams_one_pass_kernel_gives_the_bits_of_its_numpy_form(name, kwargs, dtype, split, monkeypatch):
    """C-ordered NumPy parameters take the compiled one-pass update, others (here the same
    values in Fortran order) the NumPy expressions: the same bits, float32 included, and
    with the pass in two halves on two threads (split: from 8 elements, so "a" splits)."""
    from bptt.backends import loop_threads
    from bptt.train import optim
    monkeypatch.setattr(optim, "SPLIT_FROM", 8 if split else optim.SPLIT_FROM)
    parts, run = [], loop_threads.run
    monkeypatch.setattr(loop_threads, "run", lambda loop, args, n: (parts.append(n), run(loop, args, n)))
    with loop_threads.use(2):
        _same_bits_both_ways(name, kwargs, dtype)
    assert (2 in parts) == split and 1 in parts


def _same_bits_both_ways(name, kwargs, dtype):
    rng = np.random.default_rng(1)
    fast = {"a": rng.standard_normal((6, 5)).astype(dtype), "b": rng.standard_normal(4).astype(dtype)}
    plain = {"a": np.asfortranarray(fast["a"]), "b": fast["b"][::-1].copy()[::-1]}   # b: a negative stride
    assert fast["a"].flags.c_contiguous and not plain["a"].flags.c_contiguous and not plain["b"].flags.c_contiguous
    opts = [make_optimizer(name, p, 0.05, **kwargs) for p in (fast, plain)]
    for _ in range(6):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in fast.items()}
        for o in opts:
            o.step(grads, 0.03)
    for k in fast:
        np.testing.assert_array_equal(fast[k], plain[k])


@pytest.mark.parametrize("name,kwargs", CASES)
def test_state_dict_round_trip_continues_identically(name, kwargs):
    rng, params, _, ours, _ = setup(name, kwargs)
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(6)]
    for g in grads[:3]:
        ours.step(g)
    saved_params = {k: v.copy() for k, v in params.items()}
    saved_state = {k: np.array(v, copy=True) for k, v in ours.state_dict().items()}
    for g in grads[3:]:
        ours.step(g)
    expected = {k: v.copy() for k, v in params.items()}
    fresh_params = {k: v.copy() for k, v in saved_params.items()}
    fresh = make_optimizer(name, fresh_params, 0.05, **kwargs)
    fresh.load_state_dict(saved_state)
    for g in grads[3:]:
        fresh.step(g)
    for k in expected:
        np.testing.assert_array_equal(fresh_params[k], expected[k])


def test_load_state_dict_rejects_another_optimizer():
    params = {"a": np.zeros(3)}
    with pytest.raises(ValueError, match="optimizer state: expected the keys of Adam"):
        make_optimizer("adam", params, 0.1).load_state_dict(make_optimizer("sgd", params, 0.1, momentum=0.9).state_dict())


@pytest.mark.parametrize("steps", [np.zeros(0, np.int64), np.array([-5]), np.array([np.nan]), np.zeros((2, 3), int)])
def test_load_state_dict_refuses_a_step_count_that_is_not_one_integer_from_0(steps):
    """An empty count was an IndexError; -5 was taken, and Adam's bias correction then gave
    NaN parameters at the next update; NaN was a ValueError of int(); (2, 3) was taken as 0."""
    params = {"a": np.zeros(3)}
    state = make_optimizer("adam", params, 0.1).state_dict() | {"steps": steps}
    with pytest.raises(ValueError, match=r"^optimizer state: steps expected one integer >= 0 \(the updates taken\), "
                                         + re.escape(f"got {steps.shape} {steps.dtype}")):
        make_optimizer("adam", params, 0.1).load_state_dict(state)


def test_clip_grad_norm_matches_torch_and_returns_the_norm_before():
    rng = np.random.default_rng(3)
    grads = {"a": 3 * rng.standard_normal((4, 4)), "b": rng.standard_normal(7)}
    tp = [torch.zeros(4, 4, dtype=torch.float64, requires_grad=True), torch.zeros(7, dtype=torch.float64, requires_grad=True)]
    tp[0].grad, tp[1].grad = torch.tensor(grads["a"]), torch.tensor(grads["b"])
    ref = torch.nn.utils.clip_grad_norm_(tp, 1.5)
    norm = clip.clip_grad_norm(grads, 1.5)
    assert norm == pytest.approx(float(ref), rel=1e-12)
    np.testing.assert_allclose(grads["a"], tp[0].grad.numpy(), rtol=1e-12)
    small = {"a": np.full(3, 0.1)}
    assert clip.clip_grad_norm(small, 10.0) == pytest.approx(np.sqrt(0.03)) and np.all(small["a"] == 0.1)


def test_clip_grad_value_and_non_finite_guard():
    grads = {"w": np.array([-9.0, 0.5, 7.0])}
    clip.clip_grad_value(grads, 5.0)
    assert grads["w"].tolist() == [-5.0, 0.5, 5.0]
    with pytest.raises(clip.NonFiniteGradient, match=r"gradient of layer0.W_h: not finite \(nan\)"):
        clip.check_finite(1.0, {"head.W_y": np.ones(2), "layer0.W_h": np.array([1.0, np.nan])})
    with pytest.raises(clip.NonFiniteGradient, match="the loss"):
        clip.check_finite(np.inf, {})


def test_learning_rate_schedules():
    assert learning_rate(5, 0.1) == 0.1
    assert learning_rate(1, 0.1, "step", step_size=10, gamma=0.5) == 0.1
    assert learning_rate(11, 0.1, "step", step_size=10, gamma=0.5) == pytest.approx(0.05)
    assert learning_rate(1, 0.1, "cosine", total=101) == pytest.approx(0.1)
    assert learning_rate(51, 0.1, "cosine", total=101) == pytest.approx(0.05)
    assert learning_rate(101, 0.1, "cosine", total=101, min_lr=0.01) == pytest.approx(0.01)
    assert learning_rate(2, 0.1, warmup=4) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="schedule: expected one of"):
        learning_rate(1, 0.1, "exponential")
    assert set(OPTIMIZERS) == {"sgd", "adagrad", "rmsprop", "adam", "adamw"}


def test_hyperparameters_of_the_wrong_kind_are_refused_by_name():
    """nesterov="False" ran Nesterov momentum (a true string); lr=True ran at 1.0 and
    lr="0.1" at 0.1; betas=None was a TypeError and betas=(0.9,) an unpacking error."""
    import re
    params = {"a": np.zeros(3)}
    for name, kwargs, message in [
            ("sgd", dict(momentum=0.9, nesterov="False"), "nesterov: expected True or False, got 'False'"),
            ("sgd", dict(lr=True), "lr: expected a positive number, got True"),
            ("sgd", dict(lr="0.1"), "lr: expected a positive number, got '0.1'"),
            ("sgd", dict(lr=float("nan")), "lr: expected a positive number, got nan"),
            ("sgd", dict(momentum=-0.5), "momentum: expected a non-negative number, got -0.5"),
            ("rmsprop", dict(alpha=np.True_), "alpha: expected a positive number, got np.True_"),
            ("adagrad", dict(eps="1e-10"), "eps: expected a positive number, got '1e-10'"),
            ("adamw", dict(weight_decay=None), "weight_decay: expected a non-negative number, got None"),
            ("adam", dict(betas=None), "betas: expected two numbers in [0, 1), got None"),
            ("adam", dict(betas=(0.9,)), "betas: expected two numbers in [0, 1), got (0.9,)"),
            ("adam", dict(betas=(0.9, True)), "betas: expected two numbers in [0, 1), got (0.9, True)"),
            ("adam", dict(betas=("0.9", 0.99)), "betas: expected two numbers in [0, 1), got ('0.9', 0.99)"),
            ("adam", dict(betas=(0.9, 1.0)), "betas: expected two numbers in [0, 1), got (0.9, 1.0)")]:
        kwargs = {"lr": 0.1} | kwargs
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            make_optimizer(name, params, kwargs.pop("lr"), **kwargs)
    opt = make_optimizer("adam", params, np.float32(0.5), betas=[np.float64(0.5), 0], weight_decay=np.int64(0))
    assert (opt.lr, opt.beta1, opt.beta2, opt.weight_decay) == (0.5, 0.5, 0.0, 0.0)
    assert make_optimizer("sgd", params, 0.1, momentum=0.9, nesterov=np.True_).nesterov is True


def test_schedules_at_their_boundaries_and_the_warm_up_message_says_what_it_does(tmp_path):
    """The refusal of --warmup >= --steps said the rate reaches --lr at the end of the
    warm-up; under cosine (the default) it reaches the cosine's rate there, below --lr."""
    import math
    import re

    from bptt import Config, Trainer
    cos = lambda s, total: 0.5 * (1 + math.cos(math.pi * (s - 1) / (total - 1)))
    assert learning_rate(1, 2.0, "cosine", total=10) == 2.0                        # the first update: --lr
    assert learning_rate(10, 2.0, "cosine", total=10) == 0.0                       # the last: min_lr
    assert learning_rate(11, 2.0, "cosine", total=10) == learning_rate(500, 2.0, "cosine", total=10) == 0.0
    assert learning_rate(1, 2.0, "cosine", total=1) == 2.0                         # one update: --lr
    assert learning_rate(4, 2.0, "cosine", total=10, warmup=4) == pytest.approx(2.0 * cos(4, 10), rel=1e-15)
    assert learning_rate(4, 2.0, "cosine", total=10, warmup=4) == pytest.approx(1.5, rel=1e-15)   # not 2.0
    assert learning_rate(1, 2.0, "cosine", total=10, warmup=4) == pytest.approx(0.5, rel=1e-15)
    assert learning_rate(5, 2.0, "cosine", total=10, warmup=4) == pytest.approx(2.0 * cos(5, 10), rel=1e-15)
    assert [learning_rate(s, 1.0, "step", step_size=3, gamma=0.1) for s in (1, 3, 4, 6, 7)] == \
        [1.0, 1.0, 0.1, 0.1, pytest.approx(0.01, rel=1e-15)]
    assert [learning_rate(s, 2.0, warmup=4) for s in (1, 4, 5, 10**6)] == [0.5, 2.0, 2.0, 2.0]
    message = ("--warmup: expected fewer updates than --steps 40 (the warm-up multiplies the schedule's rate of "
               "update s by s/50), got 50")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Trainer(Config(task="adding", warmup=50, steps=40, out=str(tmp_path / "r")))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_gradient_of_another_shape_or_missing_is_refused_before_any_state_changes(name):
    """Adam's compiled pass read 12 entries of a 5-entry gradient (values from past its end
    written into the parameter); the other optimizers broadcast a (1, 3) gradient over (4, 3)."""
    import re
    params = {"a": np.zeros((4, 3)), "b": np.zeros(2)}
    opt = make_optimizer(name, params, 0.1)
    for grads, message in [
            ({"a": np.ones(5), "b": np.ones(2)}, "grads: a expected shape (4, 3) (its parameter's), got (5,)"),
            ({"a": np.ones((1, 3)), "b": np.ones(2)}, "grads: a expected shape (4, 3) (its parameter's), got (1, 3)"),
            ({"a": np.ones((4, 3))}, "grads: expected a gradient for every parameter, got none for 'b'"),
            ([np.ones((4, 3)), np.ones(2)], "grads: expected a dict of arrays keyed by parameter name, got list")]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            opt.step(grads)
    with pytest.raises(ValueError, match=r"^lr: expected a non-negative number, got -0\.1$"):
        opt.step({"a": np.ones((4, 3)), "b": np.ones(2)}, lr=-0.1)
    assert opt.steps == 0 and not params["a"].any() and not params["b"].any()
    opt.step({"a": np.ones((4, 3)), "b": np.ones(2), "x": np.ones(7)}, lr=0.0)     # other keys: ignored
    assert opt.steps == 1 and not params["a"].any()                                 # lr 0: a step that moves nothing


def test_norm_clipping_of_float32_gradients_whose_squares_overflow_scales_them_to_the_bound():
    """Finite float32 entries of 1e19 have squares past float32's range: the norm was inf
    and clipping multiplied every gradient by 0 (an update that learned nothing)."""
    grads = {"a": np.full((10, 10), 1e19, dtype=np.float32), "b": np.array([3e19, -4e19], dtype=np.float32)}
    want = np.sqrt(100 * 1e19 ** 2 + 25e38)
    assert clip.global_norm(grads) == pytest.approx(want, rel=1e-6)
    assert clip.clip_grad_norm(grads, 5.0) == pytest.approx(want, rel=1e-6)
    assert all(g.dtype == np.float32 for g in grads.values())
    np.testing.assert_allclose(grads["b"], np.array([3e19, -4e19]) * 5.0 / want, rtol=1e-6)
    assert clip.global_norm(grads) == pytest.approx(5.0, rel=1e-6)


def test_norm_clipping_of_float64_gradients_whose_squares_overflow_scales_them_to_the_bound():
    """Finite float64 entries of 1e160 have squares past float64's range: the norm was inf,
    clipping multiplied every gradient by 0, and clipping_study called a clipped run that
    had finite gradients diverged."""
    grads = {"a": np.full((10, 10), 1e160), "b": np.array([3e160, -4e160])}
    want = 1e160 * np.sqrt(125)
    assert clip.global_norm(grads) == pytest.approx(want, rel=1e-12)
    assert clip.clip_grad_norm(grads, 5.0) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(grads["b"], np.array([3, -4]) * 5.0 / np.sqrt(125), rtol=1e-12)
    assert clip.global_norm(grads) == pytest.approx(5.0, rel=1e-12)
    assert clip.global_norm({"a": np.array([1e160, np.inf])}) == np.inf
