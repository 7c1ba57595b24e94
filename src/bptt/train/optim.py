"""Optimizers over the model's one dict of parameters, matching torch.optim step for step.

Each optimizer updates ``params`` (the model's dict) in place from a dict of gradients
with the same keys. Its state (moments, step count) is plain arrays and numbers:
``state_dict()`` gives {name: array} and ``load_state_dict`` restores it, so checkpoints
hold it as safetensors + JSON.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _checks
from ..backends import loop_threads

SPLIT_FROM = 2 ** 17                     # elements from which Adam's pass runs on two threads


class Optimizer:
    slots: tuple = ()                    # names of the per-parameter state arrays

    def __init__(self, params: dict, lr: float):
        self.params = params
        self.lr = _positive_float("lr", lr)
        self.steps = 0
        self.state = {slot: {k: np.zeros_like(v) for k, v in params.items()} for slot in self.slots}

    def step(self, grads: dict, lr: float | None = None) -> None:
        """One update with learning rate ``lr`` (the constructor's when omitted; 0, where a
        cosine schedule ends, leaves the parameters). ``grads`` holds an array of each
        parameter's shape under its name (other keys are ignored); anything else is refused
        before any state changes: Adam's compiled pass reads as many gradient entries as the
        parameter has, past the end of a smaller array, and the others would broadcast."""
        lr = self.lr if lr is None else _positive_float("lr", lr, allow_zero=True)
        _check_grads(grads, self.params)
        self.steps += 1
        for name, p in self.params.items():
            self._update(name, p, grads[name], lr)

    def state_dict(self) -> dict:
        out = {f"{slot}.{k}": v for slot, arrays in self.state.items() for k, v in arrays.items()}
        out["steps"] = np.array([self.steps], dtype=np.int64)
        return out

    def load_state_dict(self, state: dict) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"optimizer state: expected the keys of {type(self).__name__}, "
                             f"missing {missing[:3]}, unexpected {extra[:3]}")
        steps = np.asarray(state["steps"])          # Adam's bias correction divides by 1 - β^steps
        if steps.size != 1 or steps.dtype.kind not in "iu" or steps.reshape(-1)[0] < 0:
            raise ValueError(f"optimizer state: steps expected one integer >= 0 (the updates taken), got "
                             f"{steps.shape} {steps.dtype} {steps.reshape(-1)[:3].tolist()}")
        for slot, arrays in self.state.items():
            for k, v in arrays.items():
                src = state[f"{slot}.{k}"]
                if src.shape != v.shape or src.dtype != v.dtype:
                    raise ValueError(f"optimizer state: {slot}.{k} expected {v.shape} {v.dtype}, "
                                     f"got {src.shape} {src.dtype}")
                v[...] = src
        self.steps = int(np.asarray(state["steps"]).reshape(-1)[0])


def _check_grads(grads, params):
    """ValueError naming the first parameter whose gradient is missing or of another shape."""
    if not isinstance(grads, dict):
        raise ValueError(f"grads: expected a dict of arrays keyed by parameter name, got {type(grads).__name__}")
    for name, p in params.items():
        if name not in grads:
            raise ValueError(f"grads: expected a gradient for every parameter, got none for {name!r}")
        shape = np.shape(grads[name])
        if shape != p.shape:
            raise ValueError(f"grads: {name} expected shape {p.shape} (its parameter's), got {shape}")


def _positive_float(name, value, allow_zero=False):
    """A finite number > 0 (>= 0 with ``allow_zero``); a bool or a string is refused."""
    return _checks.number(name, value, lambda v: v > 0 or (allow_zero and v == 0),
                          f"a {'non-negative' if allow_zero else 'positive'} number")


class SGD(Optimizer):
    """p -= lr·g, with momentum (buf = μ·buf + g; Nesterov: g + μ·buf) and weight decay."""
    slots = ("momentum",)

    def __init__(self, params, lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = _positive_float("momentum", momentum, allow_zero=True)
        self.nesterov = _checks.flag("nesterov", nesterov)       # "False" is a true string
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0, got momentum=0")

    def _update(self, name, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = self.state["momentum"][name]
            if self.steps == 1:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= lr * g


class Adagrad(Optimizer):
    """sum += g²; p -= lr·g/(√sum + ε)."""
    slots = ("sum",)

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0):
        super().__init__(params, lr)
        self.eps = _positive_float("eps", eps)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)

    def _update(self, name, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        s = self.state["sum"][name]
        s += g * g
        p -= lr * g / (np.sqrt(s) + self.eps)


class RMSprop(Optimizer):
    """v = α·v + (1 − α)·g²; p -= lr·g/(√v + ε) (with momentum: through a buffer)."""
    slots = ("square_avg", "momentum")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.alpha = _positive_float("alpha", alpha)
        self.eps = _positive_float("eps", eps)
        self.momentum = _positive_float("momentum", momentum, allow_zero=True)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)

    def _update(self, name, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = self.state["square_avg"][name]
        v *= self.alpha
        v += (1 - self.alpha) * g * g
        step = g / (np.sqrt(v) + self.eps)
        if self.momentum:
            buf = self.state["momentum"][name]
            buf *= self.momentum
            buf += step
            step = buf
        p -= lr * step


class Adam(Optimizer):
    """m, v moving averages of g and g²; p -= lr/(1−β1^t)·m/(√v/√(1−β2^t) + ε)."""
    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        in_range = (lambda b: isinstance(b, (int, float, np.integer, np.floating))
                    and not isinstance(b, (bool, np.bool_)) and 0 <= b < 1)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(in_range, betas))):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = _positive_float("eps", eps)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)

    def _update(self, name, p, g, lr):
        m, v = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
        bias1 = 1 - self.beta1 ** self.steps
        bias2 = 1 - self.beta2 ** self.steps
        if isinstance(p, np.ndarray) and p.dtype in (np.float32, np.float64) and p.flags.c_contiguous:
            # The operations below in the same order and dtypes, in one pass over memory.
            c = np.array([self.beta1, 1 - self.beta1, self.beta2, 1 - self.beta2, lr / bias1, self.weight_decay,
                          1 - lr * self.weight_decay], dtype=p.dtype)
            # Element by element: halves on two threads (the loops' worker) give the same bits.
            parts = 2 if p.size >= SPLIT_FROM and loop_threads.wanted() == 2 else 1
            args = (p.reshape(-1), np.ascontiguousarray(g, dtype=p.dtype).reshape(-1), m.reshape(-1), v.reshape(-1),
                    c, float(np.sqrt(bias2)), self.eps, bool(self.weight_decay), self.decoupled)
            loop_threads.run(_adam_part, args, parts)
            return
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - lr * self.weight_decay                    # AdamW: decay the weights apart
            else:
                g = g + self.weight_decay * p
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        p -= (lr / bias1) * m / (np.sqrt(v) / np.sqrt(bias2) + self.eps)


@njit(cache=True, nogil=True)
def _adam_part(p, g, m, v, c, sqrt_bias2, eps, decay, decoupled, part, parts):
    """_adam on this part's half of the arrays (all of them for one part). The halves are
    slices: a loop over [lo, hi) of the whole arrays is not vectorised."""
    half = p.size // 2
    lo, hi = (0, p.size) if parts == 1 else ((0, half) if part == 0 else (half, p.size))
    _adam(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], c, sqrt_bias2, eps, decay, decoupled)


@njit(cache=True, nogil=True, error_model="numpy")           # no zero-division branch: vectorised
def _adam(p, g, m, v, c, sqrt_bias2, eps, decay, decoupled):
    """Adam's update of 1-D arrays of one dtype, element by element: c holds β1, 1 − β1, β2,
    1 − β2, lr/(1 − β1^t), λ and 1 − lr·λ in that dtype; the denominator is in float64,
    as NumPy computes it above (√(1 − β2^t) is a float64 scalar there)."""
    for i in range(p.size):
        gi = g[i]
        if decay:
            if decoupled:
                p[i] *= c[6]
            else:
                gi = gi + c[5] * p[i]
        m[i] = m[i] * c[0] + c[1] * gi
        v[i] = v[i] * c[2] + c[3] * gi * gi
        p[i] -= c[4] * m[i] / (np.float64(np.sqrt(v[i])) / sqrt_bias2 + eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter): p *= 1 − lr·λ first."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def make_optimizer(name, params, lr, **kwargs) -> Optimizer:
    cls = OPTIMIZERS[_checks.choice("optimizer", name, tuple(OPTIMIZERS))]
    return cls(params, lr, **kwargs)
