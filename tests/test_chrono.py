"""Chrono initialisation (Tallec & Ollivier 2018): the gate biases it sets, what it leaves,
and the errors for the cells and values it does not take."""
import numpy as np
import pytest

import bptt


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_forget_biases_span_log_1_to_log_t_max_and_input_biases_mirror_them(layers):
    H, t_max = 400, 200
    model = bptt.Model("lstm", 3, H, 2, num_layers=layers, dtype="float64", seed=1, init="chrono", chrono_t_max=t_max)
    plain = bptt.Model("lstm", 3, H, 2, num_layers=layers, dtype="float64", seed=1)
    for l in range(layers):
        b, b0 = model.params[f"layer{l}.b_h"], plain.params[f"layer{l}.b_h"]
        forget, inputs = b[H:2 * H], b[:H]
        assert forget.min() >= 0 and forget.max() <= np.log(t_max - 1)
        spans = np.exp(forget)                                   # U(1, T_max − 1): spread over it
        assert spans.min() < 1 + 0.02 * (t_max - 2) and spans.max() > t_max - 1 - 0.02 * (t_max - 2)
        assert abs(spans.mean() - t_max / 2) < 0.1 * t_max
        np.testing.assert_array_equal(inputs, -forget)
        np.testing.assert_array_equal(b[2 * H:], b0[2 * H:])                         # g and o as before
        decay = 1 / (1 - 1 / (1 + np.exp(-forget)))                                    # 1 / (1 − σ(b_f))
        assert 2 - 1e-9 <= decay.min() and decay.max() <= t_max + 1e-9
    for k in model.params:
        if not k.endswith("b_h"):
            np.testing.assert_array_equal(model.params[k], plain.params[k])


def test_gru_update_gate_biases_span_log_1_to_log_t_max():
    H, t_max = 300, 50
    model = bptt.Model("gru", 3, H, 2, dtype="float64", seed=2, init="chrono", chrono_t_max=t_max)
    plain = bptt.Model("gru", 3, H, 2, dtype="float64", seed=2)
    b, b0 = model.params["layer0.b_h"], plain.params["layer0.b_h"]
    z = b[H:2 * H]
    assert z.min() >= 0 and z.max() <= np.log(t_max - 1) and z.std() > 0.5
    np.testing.assert_array_equal(b[:H], b0[:H])
    np.testing.assert_array_equal(b[2 * H:], b0[2 * H:])


@pytest.mark.parametrize("options,message", [
    (dict(cell="rnn", chrono_t_max=100), "init: 'chrono' sets gate biases of cell='lstm' or 'gru', got cell='rnn'"),
    (dict(cell="lstm"), "chrono_t_max: init='chrono' needs the longest dependency expected"),
    (dict(cell="lstm", chrono_t_max=1), "chrono_t_max: init='chrono' needs the longest dependency expected, in "
                                        "steps (a finite number >= 2), got 1"),
    (dict(cell="lstm", chrono_t_max=float("inf")), "(a finite number >= 2), got inf"),     # numpy's OverflowError
    (dict(cell="gru", chrono_t_max=float("nan")), "(a finite number >= 2), got nan"),
    (dict(cell="lstm", chrono_t_max=10 ** 400), "(a finite number >= 2), got 1000"),
    (dict(cell="lstm", chrono_t_max=True), "(a finite number >= 2), got True"),
    (dict(cell="lstm", chrono_t_max="50"), "(a finite number >= 2), got '50'"),
])
def test_chrono_refuses_what_it_cannot_initialise(options, message):
    cell = options.pop("cell")
    with pytest.raises(ValueError) as err:
        bptt.Model(cell, 3, 4, 2, init="chrono", **options)
    assert message in str(err.value)
    with pytest.raises(ValueError, match="chrono_t_max: applies to init='chrono' only"):
        bptt.Model("lstm", 3, 4, 2, chrono_t_max=10)


@pytest.mark.parametrize("t_max", [np.int64(50), np.float32(50.0), np.float64(50.0), 50.0])
def test_chrono_takes_numpys_numbers(t_max):
    """NumPy's numbers were refused (Config takes them); the biases are the int's."""
    b = bptt.Model("lstm", 3, 4, 2, init="chrono", chrono_t_max=t_max, seed=3).params["layer0.b_h"]
    b50 = bptt.Model("lstm", 3, 4, 2, init="chrono", chrono_t_max=50, seed=3).params["layer0.b_h"]
    np.testing.assert_array_equal(b, b50)
