"""A stack of recurrent layers of one kind, an output head and a loss (floor 3).

All parameters live in one ordered dict, ``model.params``::

    layer0.W_x  layer0.W_h  layer0.b_h  [layer0.b_hn for GRU]  …  head.W_y  head.b_y

and every gradient comes back in a dict with the same keys. Shapes, time-major:

    x (T, B, D)          targets (T, B, O) floats or (T, B) class indices  [outputs="all"]
    mask (T, B) bool                      (B, O) or (B,)                    [outputs="last"]
    state: RNN/GRU an array (L, B, H); LSTM a tuple (h (L, B, H), c (L, B, H)), as PyTorch.

A mask marks valid steps: on padded steps the state is carried unchanged (M1) and no
loss is counted, so the final state and the outputs="last" prediction are each
sequence's own, taken at its last valid step.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks, batch_split, dropout as noise, stack
from .backends import settings
from .cells import head as head_layer, layer_of, resolve
from .cells.layer_norm import LayerNormGRU, LayerNormLSTM
from .cells.projection import ProjectedLayer
from .cell_check import check_on_one_row
from .ops import ACTIVATIONS, HEADS, LOSSES

INITS = ("default", "orthogonal", "identity", "chrono")


class Gradients(NamedTuple):
    """What ``Model.gradients`` returns: ``loss``; ``params``, ∂L/∂θ keyed as ``model.params``;
    ``x``, ∂L/∂x (T, B, D), None with ``input_grad=False``; ``state0``, ∂L/∂state0 in the
    state's structure; ``state``, the final state of the forward pass."""

    loss: float
    params: dict      # ∂L/∂θ, same keys as model.params
    x: np.ndarray     # ∂L/∂x (T, B, D), None when input_grad=False
    state0: object    # ∂L/∂state0, in the state's structure
    state: object     # the final state of the forward pass


def check_model(value, name: str = "model") -> "Model":
    """``value`` when it is a ``bptt.Model``; else ``name: expected a bptt.Model, got <type>``."""
    if not isinstance(value, Model):
        raise ValueError(f"{name}: expected a bptt.Model, got {type(value).__name__}")
    return value


class Model:
    """Recurrent network trained by hand-derived backpropagation through time.

    Args:
        cell: "rnn" (Elman), "lstm", "gru", or a cell of one's own: a ``bptt.Cell``
            instance, or "package.module:ClassName" of a Cell class built with no
            arguments (cells/protocol.py; docs/custom_cell.md).
        input_size, hidden_size, output_size: D, H, O.
        num_layers: L recurrent layers stacked; layer l > 0 reads layer l-1's h.
        nonlinearity: f of the Elman RNN: "tanh", "relu", "sigmoid", "identity".
        head: g in y = g(W_y h + b_y): "identity", "sigmoid", "softmax".
        loss: "mse" (any head), "cross_entropy" (softmax head, integer targets),
            "bce" (sigmoid head, targets in [0, 1]).
        outputs: "all" (an output at every step) or "last" (at each sequence's last step).
        reduction: "mean" (over valid positions, and over O for mse and bce) or "sum".
        dtype: "float32" or "float64" (a NumPy dtype too; one of the other byte order, '>f4',
            gives the same precision in the machine's own order).
        seed: seed of the initialisation: an integer >= 0, a numpy Generator, or None.
        init: "default" (PyTorch's), "orthogonal" (orthogonal recurrent blocks),
            "identity" (W_h = I, zero b_h: IRNN with nonlinearity="relu", Le et al. 2015)
            or "chrono" (Tallec & Ollivier 2018, LSTM and GRU: gate biases that make
            the state's memory span 1 to chrono_t_max steps, docs/derivation.md (I1)).
        chrono_t_max: the longest dependency expected, in steps, for init="chrono": a finite
            number >= 2 (Python's or NumPy's).
        forget_bias: added to the LSTM's forget-gate bias after initialisation (1.0 is
            the common remedy for early forgetting); only for cell="lstm".
        dropout, input_dropout, recurrent_dropout, zoneout: rates in [0, 1) of the noise
            of bptt/dropout.py, active only in passes given masks (``draw_masks``).
        layer_norm: layer-normalised LSTM or GRU (cells/layer_norm.py, Ba et al. 2016).
        bidirectional: every layer also runs each sequence backward in time, from its last
            valid step, with parameters ``layer{l}_reverse.*``; outputs (T, B, 2H) (stack.py).
            The state is then (2L, B, H), PyTorch's layout.
        proj_size: P > 0 projects the LSTM's output to P units, h_t = W_hr (o ⊙ tanh c_t)
            (Sak et al. 2014, PyTorch's proj_size; cells/projection.py): h is (L, B, P),
            c stays (L, B, H).

    Shapes of the arrays the methods take and return (time-major, T steps, B sequences):
        x: (T, B, D).
        targets: (T, B, O), or class indices (T, B) for cross_entropy, with outputs="all";
            (B, O), or (B,), with outputs="last".
        mask, resets, loss_mask: (T, B) bool.
        state0, dstate and the final state: (L, B, H) (2L with bidirectional), or a tuple
            of such arrays, one per name of the cell's state: (h, c) for the LSTM.
        predictions of ``forward``: (T, B, O), or (B, O) with outputs="last".
    """

    def __init__(self, cell, input_size, hidden_size, output_size, num_layers=1,
                 nonlinearity="tanh", head="identity", loss="mse", outputs="all",
                 reduction="mean", dtype="float32", seed=None, init="default", forget_bias=0.0,
                 dropout=0.0, input_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0, chrono_t_max=None,
                 layer_norm=False, bidirectional=False, proj_size=0):
        self.cell = cell
        self.cell_name, self.layer = resolve(cell)
        self.layer_norm = _checks.flag("layer_norm", layer_norm)
        self.bidirectional = _checks.flag("bidirectional", bidirectional)
        self.directions = 2 if bidirectional else 1
        if layer_norm:
            if cell not in ("lstm", "gru"):
                raise ValueError(f"layer_norm: applies to cell='lstm' or 'gru', got cell={self._named_cell}")
            self.layer = layer_of(LayerNormLSTM() if cell == "lstm" else LayerNormGRU())
        if cell == "rnn":                    # the RNN cell holds its nonlinearity
            self.layer = resolve(cell, _checks.choice("nonlinearity", nonlinearity, tuple(ACTIVATIONS)))[1]
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.output_size = _checks.positive_int("output_size", output_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.nonlinearity = _checks.choice("nonlinearity", nonlinearity, tuple(ACTIVATIONS))
        if cell != "rnn" and nonlinearity != "tanh":
            raise ValueError(f"nonlinearity: applies to cell='rnn' only, got {nonlinearity!r} with "
                             f"cell={self._named_cell}")
        self.head = _checks.choice("head", head, tuple(HEADS))
        self.loss = _checks.choice("loss", loss, tuple(LOSSES))
        if head not in LOSSES[loss].heads:
            raise ValueError(f"head: loss={loss!r} expects head in {LOSSES[loss].heads}, got {head!r}")
        if loss == "cross_entropy" and output_size < 2:
            raise ValueError(f"output_size: cross_entropy needs at least 2 classes, got {output_size}")
        self.outputs = _checks.choice("outputs", outputs, ("all", "last"))
        self.reduction = _checks.choice("reduction", reduction, ("mean", "sum"))
        self.dtype = _checks.dtype_of("dtype", dtype)
        _checks.choice("init", init, INITS)
        if init == "identity" and cell != "rnn":
            raise ValueError(f"init: 'identity' (IRNN) applies to cell='rnn' only, got cell={self._named_cell}")
        forget_bias = _checks.number("forget_bias", forget_bias, expected="a finite number")
        if forget_bias and cell != "lstm":
            raise ValueError(f"forget_bias: applies to cell='lstm' only, got cell={self._named_cell}")
        self.init = init
        self.chrono_t_max = None
        if init == "chrono":
            if cell not in ("lstm", "gru"):
                raise ValueError(f"init: 'chrono' sets gate biases of cell='lstm' or 'gru', got cell={self._named_cell}")
            try:                                            # Python's or NumPy's number, finite
                self.chrono_t_max = _checks.number("chrono_t_max", chrono_t_max, lambda t: t >= 2)
            except ValueError:
                raise ValueError(f"chrono_t_max: init='chrono' needs the longest dependency expected, in steps "
                                 f"(a finite number >= 2), got {chrono_t_max!r}") from None
        elif chrono_t_max is not None:
            raise ValueError(f"chrono_t_max: applies to init='chrono' only, got init={init!r}")
        for rate in noise.RATES:
            setattr(self, rate, noise.check_rate(rate, locals()[rate]))
        if self.dropout and self.num_layers == 1:
            raise ValueError("dropout: acts between stacked layers and num_layers=1 has none; "
                             "use input_dropout or recurrent_dropout, or num_layers >= 2")
        self.proj_size = 0 if proj_size is None else proj_size
        if self.proj_size:
            self._check_projection(init)
            self.layer = ProjectedLayer(self.layer, self.proj_size)
        H = self.hidden_size
        self.state_widths = self.layer.state_widths(H) if self.proj_size else (H,) * len(self.layer.STATE)
        self.output_width = self.state_widths[0]      # what a layer outputs: H, or P when projected
        self.builtin = isinstance(cell, str) and cell in ("rnn", "lstm", "gru") and not layer_norm
        user_cell = getattr(self.layer, "cell", None)
        if user_cell is not None and not type(user_cell).__module__.startswith("bptt."):     # cell_check.py
            check_on_one_row(user_cell, H, self.dtype, kernels=settings.loops_enabled())
        self.tuple_state = len(self.layer.STATE) > 1     # the public state: a tuple of arrays, or one
        self.threads = 1              # how gradients() runs, not part of the model: see there
        self.vocabulary = None        # a text model's characters, in the order of its inputs and outputs
        rng = _checks.generator("seed", seed)
        self.params = self._init_params(rng, init)
        self._shapes = {k: v.shape for k, v in self.params.items()}
        if init == "chrono":
            self._chrono(rng)
        if forget_bias:
            H = self.hidden_size
            for prefix in self.layer_prefixes():
                self.params[f"{prefix}.{self._gate_bias}"][H:2 * H] += forget_bias     # gates i, f, g, o

    # ---- construction -------------------------------------------------------------

    def _check_projection(self, init):
        P = self.proj_size
        if isinstance(P, bool) or not isinstance(P, (int, np.integer)) or not 0 < P < self.hidden_size:
            raise ValueError(f"proj_size: expected an integer from 1 to hidden_size - 1 = {self.hidden_size - 1} "
                             f"(0: none), got {P!r}")
        self.proj_size = int(P)                     # a NumPy integer too; model.json holds Python's
        if self.cell != "lstm" or self.layer_norm:
            raise ValueError(f"proj_size: projects the output of cell='lstm' (without layer_norm), as PyTorch's, "
                             f"got cell={self._named_cell}{' with layer_norm=True' if self.layer_norm else ''}")
        if init in ("orthogonal", "identity"):
            raise ValueError(f"init: {init!r} makes W_h square; with proj_size it is (4H, P): use 'default' or 'chrono'")
        for rate in ("recurrent_dropout", "zoneout"):
            if getattr(self, rate):
                raise ValueError(f"{rate}: not defined with proj_size (the state the step reads is projected); "
                                 f"use dropout or input_dropout")

    @property
    def _named_cell(self) -> str:
        """The cell as a message names it: 'lstm' as given by name; a Cell instance by its repr
        and what it is, since LSTM() runs as a cell of one's own, not as cell='lstm'."""
        if isinstance(self.cell, str):
            return repr(self.cell_name)
        return f"{self.cell!r}, a Cell instance (a cell of one's own; the built-in cells go by name)"

    @property
    def config(self) -> dict:
        """Everything but the parameters needed to build this model again."""
        return {k: getattr(self, k) for k in ("cell", "input_size", "hidden_size", "output_size",
                                              "num_layers", "nonlinearity", "head", "loss",
                                              "outputs", "reduction", "layer_norm", "bidirectional", "proj_size")
                + noise.RATES} | \
            {"dtype": self.dtype.name}

    def astype(self, dtype) -> "Model":
        """A copy of this model with parameters converted to ``dtype`` (and how they were
        initialised: ``init``, ``chrono_t_max``)."""
        other = Model(**(self.config | {"dtype": dtype}))
        other.threads, other.vocabulary = self.threads, self.vocabulary
        other.init, other.chrono_t_max = self.init, self.chrono_t_max
        for name, value in self.params.items():
            other.params[name] = value.astype(other.dtype, copy=True)
        return other

    def save(self, path):
        """Write the model into the folder ``path``: model.safetensors with the parameters,
        model.json with the config and ``vocabulary`` (bptt/saved.py); ``bptt.load(path)``
        builds it again. Returns the folder. ``params`` is checked first, as a call checks
        it: nothing is written that ``bptt.load`` would refuse."""
        from .saved import save
        self._check_params()
        return save(self, path)

    def _init_params(self, rng, init):
        H, dt = self.hidden_size, self.dtype
        bound = 1.0 / np.sqrt(H)

        def uniform(shape):
            return rng.uniform(-bound, bound, size=shape)

        params = {}
        for l in range(self.num_layers):
            D = self.input_size if l == 0 else self.directions * self.output_width
            shapes = self.layer.param_shapes(D, H)
            for d in range(self.directions):
                params |= {f"{self.direction_prefix(l, d)}.{k}": v
                           for k, v in self._init_layer(shapes, uniform, rng, init).items()}
        shapes = head_layer.param_shapes(self.directions * self.output_width, self.output_size)
        bound = 1.0 / np.sqrt(self.directions * self.output_width)   # nn.Linear's default: U(±1/√fan_in)
        params["head.W_y"] = uniform(shapes["W_y"])
        params["head.b_y"] = uniform(shapes["b_y"])
        return {k: np.array(v, dtype=dt, order="C") for k, v in params.items()}      # () stays ()

    def _init_layer(self, shapes, uniform, rng, init) -> dict:
        """One layer's (one direction's) parameters, PyTorch's way for the built-in cells."""
        H = self.hidden_size
        layer = {"W_x": uniform(shapes["W_x"]), "W_h": uniform(shapes["W_h"])}
        if "W_hr" in shapes:                                   # the projection: U(±1/√H), as PyTorch
            layer["W_hr"] = uniform(shapes["W_hr"])
        if init == "orthogonal":
            layer["W_h"] = np.concatenate([_orthogonal(rng, H) for _ in range(self.layer.GATES)])
        elif init == "identity":
            layer["W_h"] = np.eye(H)
        if not self.builtin:                                   # a cell of one's own
            layer["b_h"] = uniform(shapes["b_h"])
            layer |= {k: uniform(shape) for k, shape in shapes.items() if k not in ("W_x", "W_h", "b_h")}
            self.layer.cell.initialize(layer, rng, H)
            _check_initialized(self.layer.cell, layer, shapes, H)
            return {k: layer[k] for k in shapes}
        # PyTorch draws b_ih and b_hh; we keep their sum, except GRU's b_hn (see cells/gru.py).
        b_ih, b_hh = uniform(shapes["b_h"]), uniform(shapes["b_h"])
        if init == "identity":
            b_ih, b_hh = np.zeros_like(b_ih), np.zeros_like(b_hh)
        if self.cell == "gru":
            return layer | {"b_h": np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]]), "b_hn": b_hh[2 * H:]}
        return layer | {"b_h": b_ih + b_hh}

    def _chrono(self, rng):
        """(I1): LSTM b_f ~ log U(1, T_max − 1), b_i = −b_f; GRU (PyTorch's z keeps the
        state) b_z ~ log U(1, T_max − 1). The other gates keep their initialisation."""
        H = self.hidden_size
        for prefix in self.layer_prefixes():
            b = self.params[f"{prefix}.{self._gate_bias}"]
            spans = np.log(rng.uniform(1, self.chrono_t_max - 1, size=H))
            b[H:2 * H] = spans                              # LSTM f (i, f, g, o); GRU z (r, z, n)
            if self.cell == "lstm":
                b[:H] = -spans

    @property
    def _gate_bias(self) -> str:
        """The bias the gates see: b_h, or β (ln_bias) where b_h sits inside a normalisation."""
        return "ln_bias" if self.layer_norm else "b_h"

    def draw_masks(self, T: int, B: int, rng) -> "noise.Masks | None":
        """The dropout and zoneout masks of one training pass over T steps of B sequences,
        from the generator ``rng`` (bptt/dropout.py); None when every rate is 0. Hand them
        to ``gradients``, ``forward``, ``advance`` or ``loss_value`` (masks=…)."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected a numpy Generator (np.random.default_rng(seed)), got {rng!r}")
        return noise.draw(self, rng, _checks.positive_int("T", T), _checks.positive_int("B", B))

    def direction_prefix(self, l: int, d: int = 0) -> str:
        """"layer{l}" (forward in time) or "layer{l}_reverse", as PyTorch names them."""
        return f"layer{l}_reverse" if d else f"layer{l}"

    def layer_prefixes(self) -> list:
        """Every layer's and direction's prefix, in the order of the states (stack.py)."""
        return [self.direction_prefix(l, d) for l in range(self.num_layers) for d in range(self.directions)]

    def direction_params(self, l: int, d: int = 0) -> dict:
        prefix = self.direction_prefix(l, d) + "."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def layer_params(self, l: int) -> dict:
        """Layer l's parameters (its forward direction's)."""
        return self.direction_params(l, 0)

    def head_params(self) -> dict:
        return {"W_y": self.params["head.W_y"], "b_y": self.params["head.b_y"]}

    # ---- state ----------------------------------------------------------------------

    def init_state(self, batch: int):
        """The zero state for ``batch`` sequences, in the public structure."""
        B = _checks.positive_int("batch", batch)
        zeros = tuple(np.zeros((self.num_layers * self.directions, B, w), dtype=self.dtype) for w in self.state_widths)
        return zeros if self.tuple_state else zeros[0]

    def _split_state(self, state, B, name="state0", carried=False):
        """Public state -> list of tuples per layer and direction (stack.py), validated;
        ``carried=True`` (a method's ``carried_state``) for a state this model carried from
        an earlier call, taken even where it is not finite: an overflow is the loss's to
        show, not a mistake in the input."""
        finite = not _checks.flag("carried_state", carried)
        K = self.num_layers * self.directions
        dims = [(K, B, w) for w in self.state_widths]
        if state is None:
            return [tuple(np.zeros((B, w), self.dtype) for w in self.state_widths) for _ in range(K)]
        if self.tuple_state:
            n = len(self.layer.STATE)
            if not (isinstance(state, (tuple, list)) and len(state) == n):
                names = ", ".join(f"{s}0" for s in self.layer.STATE)
                shapes = ", ".join(str(d) for d in dict.fromkeys(dims))
                raise ValueError(f"{name}: expected a tuple ({names}) of arrays {shapes} for cell={self.cell_name!r}, "
                                 f"got {type(state).__name__}")
            arrays = [_checks.float_array(f"{name}[{i}]", s, self.dtype, d, finite)
                      for i, (s, d) in enumerate(zip(state, dims))]
        else:
            if isinstance(state, (tuple, list)) and len(state) == 1 and _depth(state[0]) == len(dims[0]):
                state = state[0]           # (s,) around the array; a nested list (1, B, H) is the array itself
            arrays = [_checks.float_array(name, state, self.dtype, dims[0], finite)]
        return [tuple(a[k] for a in arrays) for k in range(K)]

    def _join_state(self, per_layer):
        arrays = tuple(np.stack([s[i] for s in per_layer]) for i in range(len(self.layer.STATE)))
        return arrays if self.tuple_state else arrays[0]

    # ---- inputs -----------------------------------------------------------------------

    def _check_inputs(self, x, mask, resets=None, carried=False):
        """x, mask and resets checked (mask None where every step is valid, resets None
        where none is set). ``carried``: the call continues from a given state0 (a later
        chunk of a sequence), so a sequence may have no valid step in it: its state passes
        through unchanged (M1). From the zero state such a call is refused as a mistake:
        it would compute nothing, or with outputs="last" predict from no input."""
        x = _checks.float_array("x", x, self.dtype, ("T", "B", self.input_size))
        T, B, _ = x.shape
        if resets is not None:
            resets = _checks.bool_mask("resets", resets, (T, B), _checks.RESET)
            if not resets.any():
                resets = None
            elif self.bidirectional:
                raise ValueError("resets: mark where a stream's next sequence begins; a bidirectional model "
                                 "reads whole sequences (one per row, padded with a mask) and takes none")
        if mask is not None:
            mask = _checks.bool_mask("mask", mask, (T, B), _checks.VALID_STEP)
            if not carried and self.outputs == "last" and not mask.any(axis=0).all():
                b = int(np.flatnonzero(~mask.any(axis=0))[0])
                raise ValueError(f"mask: sequence {b} has no valid step; with outputs='last' "
                                 f"every sequence needs at least one (or a state0 it carries)")
            if not carried and not mask.any():
                raise ValueError("mask: expected at least one valid step, got none (a chunk of padding "
                                 "alone needs the state0 it carries)")
            if mask.all():
                mask = None      # the unmasked path is faster and gives the same numbers
        return x, mask, resets

    def _check_targets(self, targets, T, B):
        if targets is None:
            return None
        lead = (T, B) if self.outputs == "all" else (B,)
        where = "(T, B)" if self.outputs == "all" else "(B,)"
        if self.loss == "cross_entropy":
            return _checks.class_targets(f"targets (class indices {where})", targets, lead, self.output_size)
        targets = _checks.float_array("targets", targets, self.dtype, lead + (self.output_size,))
        if self.loss == "bce" and not ((targets >= 0) & (targets <= 1)).all():
            raise ValueError(f"targets: expected probabilities in [0, 1] for loss='bce', got values from "
                             f"{targets.min():g} to {targets.max():g}")
        return targets

    # ---- forward and backward -----------------------------------------------------------

    def _forward(self, x, state0, mask, resets=None, masks=None) -> stack.Forward:
        self._check_params()
        return stack.forward(self, x, state0, mask, resets, masks)

    def _check_params(self):
        """``params`` may be edited or replaced (an optimizer, a user): it must hold the
        model's keys, no others, each still an array of its parameter's shape in the
        model's dtype."""
        if not isinstance(self.params, dict):         # replaced whole: name it, not a TypeError from below
            raise ValueError(f"params: expected a dict of arrays with the keys {', '.join(self._shapes)}, got "
                             f"{type(self.params).__name__}")
        extra = [k for k in self.params if k not in self._shapes]
        if extra:
            raise ValueError(f"params: unexpected key {extra[0]!r}; expected the keys {', '.join(self._shapes)}")
        for name, shape in self._shapes.items():
            value = self.params.get(name)
            _checks.on_gpu(f"params[{name!r}]", value)
            if not isinstance(value, np.ndarray):
                raise ValueError(f"params[{name!r}]: expected an array of shape {shape} ({self.dtype.name}), "
                                 f"got {type(value).__name__}")
            if value.shape != shape or value.dtype != self.dtype:
                raise ValueError(f"params[{name!r}]: expected shape {shape} and dtype {self.dtype.name}, got "
                                 f"shape {value.shape} and dtype {value.dtype}")

    def _head_rows(self, fw: stack.Forward):
        """What the head reads: every step's top output (T·B, D·H), or with outputs="last"
        the top layer's final h of each direction, side by side (B, D·H), PyTorch's h_n."""
        if self.outputs == "all":
            T, B, width = fw.top.shape
            return fw.top.reshape(T * B, width)
        top = fw.states[-self.directions:]
        return top[0][0] if self.directions == 1 else np.concatenate([s[0] for s in top], axis=1)

    def forward(self, x, state0=None, mask=None, resets=None, masks=None, carried_state=False):
        """Predictions y = g(o): (T, B, O) or (B, O) with outputs="last"; and the final state.
        ``carried_state=True``: state0 is this model's own state from an earlier call, taken
        even where it is not finite (as ``gradients`` takes it)."""
        x, mask, resets = self._check_inputs(x, mask, resets, carried=state0 is not None)
        T, B, _ = x.shape
        fw = self._forward(x, self._split_state(state0, B, carried=carried_state), mask, resets,
                           self._masks(masks, T, B))
        y = HEADS[self.head][0](head_layer.forward(self.head_params(), self._head_rows(fw)))
        if self.outputs == "all":
            y = y.reshape(T, B, self.output_size)
        return y, self._join_state(fw.states)

    def advance(self, x, state0=None, mask=None, resets=None, masks=None, carried_state=False):
        """The state after running x from state0: no head, no loss (checkpointing uses it);
        ``carried_state`` as ``forward`` takes it."""
        x, mask, resets = self._check_inputs(x, mask, resets, carried=state0 is not None)
        T, B, _ = x.shape
        return self._join_state(self._forward(x, self._split_state(state0, B, carried=carried_state), mask,
                                              resets, self._masks(masks, T, B)).states)

    def _masks(self, masks, T, B):
        return noise.check(masks, T, B, self)

    def _counted(self, mask, loss_mask):
        """(T, B) bool: the positions that add loss (outputs="all"); None: all of them."""
        return mask if loss_mask is None else (loss_mask if mask is None else mask & loss_mask)

    def loss_positions(self, mask, T, B, loss_mask=None) -> int:
        """How many positions add loss: what a mean reduction divides by."""
        if self.outputs == "last":
            return B
        counted = self._counted(mask, loss_mask)
        return T * B if counted is None else int(counted.sum())

    def _check_loss_options(self, loss_mask, loss_count, mask, T, B):
        """loss_mask as a (T, B) bool array (outputs="all" only) and loss_count as an int
        no smaller than this call's own count of loss positions (the count of the whole
        objective this call is a chunk of)."""
        if loss_mask is not None:
            if self.outputs != "all":
                raise ValueError("loss_mask: applies to outputs='all' only")
            loss_mask = _checks.bool_mask("loss_mask", loss_mask, (T, B),
                                          "True = the step's output counts in the loss")
        if loss_count is not None:
            own = self.loss_positions(mask, T, B, loss_mask)
            if isinstance(loss_count, bool) or not isinstance(loss_count, (int, np.integer)) or loss_count < own:
                raise ValueError(f"loss_count: expected an integer count of loss positions of the whole "
                                 f"objective, at least this call's own {own}, got {loss_count!r}")
            loss_count = int(loss_count)
        return loss_mask, loss_count

    def _row_weights(self, mask, T, B, loss_mask=None, loss_count=None):
        """w_n per head row: 0 on padded positions and outside loss_mask, 1/count for the
        mean reduction (count = loss_count positions if given, else this call's own)."""
        if self.outputs == "last":
            w = np.ones(B, dtype=self.dtype)
        else:
            counted = self._counted(mask, loss_mask)
            w = np.ones(T * B, dtype=self.dtype) if counted is None else counted.reshape(T * B).astype(self.dtype)
        if self.reduction == "mean":
            positions = w.sum() if loss_count is None else loss_count
            w /= max(positions, 1) * (self.output_size if LOSSES[self.loss].per_element else 1)
        return w

    def gradients(self, x, targets, state0=None, mask=None, dstate=None, input_grad=True,
                  resets=None, loss_mask=None, loss_count=None, threads=None, masks=None,
                  carried_state=False) -> Gradients:
        """Loss and its exact gradient with respect to every parameter, x and state0.

        ``dstate`` (state structure, optional) is a gradient flowing into the final
        state from a later chunk; truncated and checkpointed BPTT use it.
        ``input_grad=False`` skips ∂L/∂x (one GEMM; ``Gradients.x`` is then None).
        ``resets`` (T, B) bool: the state of stream b is set to zero before step t.
        ``targets=None``: no loss in this chunk; only ``dstate`` drives the gradient.
        ``loss_mask`` (T, B) bool: only these positions add loss (the state still
        steps everywhere); ``loss_count``: divide a mean by this many positions
        instead of this call's own count (a chunk of a longer objective).
        ``threads=2`` (default: ``model.threads``, 1) runs two halves of the batch on two
        threads at once, with the same result up to the order of the batch's sums (float
        rounding; batch_split.py); it pays with BLAS held to one thread, as the trainer
        does it.
        ``masks``: dropout and zoneout masks (``draw_masks``); without them, no noise.
        ``carried_state=True``: state0 and dstate are this model's own, carried from an
        earlier call (truncated and checkpointed BPTT pass them so): taken even where they
        are not finite, so that an overflow shows as a non-finite loss or gradient, as in
        one whole pass, instead of being refused as input.
        """
        threads = self.threads if threads is None else threads
        if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) \
                or threads not in (1, 2):
            raise ValueError(f"threads: expected 1 or 2, got {threads!r}")
        input_grad = _checks.flag("input_grad", input_grad)
        x, mask, resets = self._check_inputs(x, mask, resets, carried=state0 is not None)
        T, B, _ = x.shape
        targets = self._check_targets(targets, T, B)
        loss_mask, loss_count = self._check_loss_options(loss_mask, loss_count, mask, T, B)
        s0 = self._split_state(state0, B, carried=carried_state)
        dsT = None if dstate is None else self._split_state(dstate, B, "dstate", carried=carried_state)
        masks = self._masks(masks, T, B)
        if threads == 2 and batch_split.can_split(mask, B):
            return batch_split.gradients(self, x, targets, None if state0 is None else self._join_state(s0), mask,
                                         None if dsT is None else self._join_state(dsT), input_grad, resets,
                                         loss_mask, loss_count, masks)        # the states as checked: arrays
        fw = self._forward(x, s0, mask, resets, masks)
        rows = self._head_rows(fw)
        loss, do = self._loss(rows, targets, mask, T, B, loss_mask, loss_count)
        d_rows, grads = head_layer.backward(self.head_params(), do, rows)
        grads = {f"head.{k}": v for k, v in grads.items()}
        if self.outputs == "all":
            dh = d_rows.reshape(T, B, d_rows.shape[1])
        else:
            # The rows are the top layer's final states: their gradient enters as dstate_T.
            dh, H, K = None, self.output_width, len(fw.states)
            dsT = list(dsT) if dsT is not None else [None] * K
            for d in range(self.directions):
                k = K - self.directions + d
                top = list(dsT[k]) if dsT[k] is not None else [np.zeros((B, w), self.dtype) for w in self.state_widths]
                top[0] = top[0] + d_rows[:, d * H:(d + 1) * H]
                dsT[k] = tuple(top)
        dx, dstate0, layer_grads = stack.backward(self, fw, dh, dsT, input_grad)
        grads = {k: (layer_grads | grads)[k] for k in self.params}
        return Gradients(loss, grads, dx, self._join_state(dstate0), self._join_state(fw.states))

    def loss_and_grads(self, x, targets, state0=None, mask=None, resets=None, masks=None):
        """(loss, grads, final state); grads has the keys of ``params``."""
        g = self.gradients(x, targets, state0, mask, input_grad=False, resets=resets, masks=masks)
        return g.loss, g.params, g.state

    def loss_value(self, x, targets, state0=None, mask=None, resets=None, loss_mask=None,
                   loss_count=None, masks=None, carried_state=False) -> float:
        """The loss alone, through the same forward pass and loss as ``gradients``
        (``carried_state`` as it takes it)."""
        x, mask, resets = self._check_inputs(x, mask, resets, carried=state0 is not None)
        T, B, _ = x.shape
        targets = self._check_targets(targets, T, B)
        loss_mask, loss_count = self._check_loss_options(loss_mask, loss_count, mask, T, B)
        fw = self._forward(x, self._split_state(state0, B, carried=carried_state), mask, resets,
                           self._masks(masks, T, B))
        return self._loss(self._head_rows(fw), targets, mask, T, B, loss_mask, loss_count)[0]

    def _loss(self, rows, targets, mask, T, B, loss_mask=None, loss_count=None):
        """Head and loss on all rows at once -> (loss, ∂L/∂o); no targets, no loss."""
        if targets is None:
            return 0.0, np.zeros((rows.shape[0], self.output_size), dtype=self.dtype)
        o = head_layer.forward(self.head_params(), rows)
        tgt = targets.reshape(rows.shape[0], -1) if self.loss != "cross_entropy" else targets.reshape(-1)
        w = self._row_weights(mask, T, B, loss_mask, loss_count)
        return LOSSES[self.loss].value_and_grad(o, tgt, w, self.head)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"Model({args})"


def _depth(value) -> int:
    """The dimensions of an array, or of nested lists and tuples (counted along their first
    items, without converting them: a ragged list is left for the check that names it)."""
    depth = 0
    while isinstance(value, (list, tuple)) and value:
        value, depth = value[0], depth + 1
    return depth + np.ndim(value)


def _orthogonal(rng, n):
    """A Haar-random orthogonal (n, n) matrix: QR of a Gaussian, signs fixed by R's diagonal."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _check_initialized(cell, layer: dict, shapes: dict, H: int) -> None:
    """A cell's ``initialize`` changes the values of the parameters it is given in place:
    the same names, each in its shape, finite, else a ValueError naming the cell and the
    parameter (a NaN from there was reported as the optimizer's overflow at update 0)."""
    name = f"cell: {type(cell).__name__}.initialize(params, rng, {H})"
    if set(layer) != set(shapes):
        raise ValueError(f"{name} expected to keep the parameters {sorted(shapes)}, got {sorted(layer)}; change "
                         f"their values in place (params[name][...] = …)")
    for k, shape in shapes.items():
        if np.shape(layer[k]) != tuple(shape):
            raise ValueError(f"{name} expected params[{k!r}] of shape {tuple(shape)}, got {np.shape(layer[k])}; "
                             f"change its values in place (params[{k!r}][...] = …)")
        value = np.asarray(layer[k])
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ValueError(f"{name} expected finite values in params[{k!r}], got "
                             f"{np.count_nonzero(~np.isfinite(value))} of {value.size} not finite (NaN or ±inf)")
