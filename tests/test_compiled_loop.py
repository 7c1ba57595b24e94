"""The compiled time loop (cells/compiled.py) against the Python loop with the cells' NumPy
steps (cells/loop.py, the reference): float64 to 1e-12 with masks, resets and carried
state, with either per-step GEMM (the micro-kernel, oneMKL's packed GEMM), on one thread or
two."""
import inspect
import os
import subprocess
import sys
import textwrap
import time
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import numba
from numba import njit

from bptt._files import cached_source
from bptt.backends import bulk, loop_threads, mkl, settings
from bptt.cells import CellLayer, Cell, compiled, layer, layer_of, scalar
from bptt.cells.compiled import CompiledLayer, CompiledTape
from helpers import KINDS, make_model, make_state, make_targets, ragged_mask

HAS_MKL = mkl.library_path() is not None


@pytest.fixture
def pairs(monkeypatch):
    """Counts the loops that ran on two threads (allowed whatever OpenBLAS's idle spin)."""
    monkeypatch.setattr(settings, "blas_workers_sleep", lambda: True)
    calls = []
    run_pair = loop_threads.run_pair
    monkeypatch.setattr(loop_threads, "run_pair", lambda *a: calls.append(1) or run_pair(*a))
    return calls


def test_fast_tanh_is_within_a_few_float32_ulp_and_never_leaves_its_range():
    """Within 4e-7 of tanh, and |tanh| ≤ 1, σ in [0, 1] everywhere (vectorised, as in a
    kernel): unclipped, the rational exceeds 1 past |x| ≈ 8.3 (1.0000002), σ goes below 0
    near z = −17, and 1 − tanh² turns negative on saturated units."""
    @njit(fastmath=True)
    def apply(x, out, sig):
        for k in range(x.size):
            out[k] = scalar.tanh(x[k])
            sig[k] = scalar.sigmoid(x[k])
    x = np.linspace(-20, 20, 400_001, dtype=np.float32)
    out, sig = np.empty_like(x), np.empty_like(x)
    apply(x, out, sig)
    ref = np.tanh(x.astype(np.float64))
    assert np.abs(out - ref).max() < 4e-7
    assert out[0] == -1.0 and out[-1] == 1.0
    assert np.abs(out).max() == 1.0 and sig.min() == 0.0 and sig.max() == 1.0
    assert (1 - out * out).min() == 0.0


def _params(cell, D, H, dtype, rng):
    shapes = CellLayer(cell).param_shapes(D, H)
    return {k: (rng.standard_normal(s) / np.sqrt(H)).astype(dtype) for k, s in shapes.items()}


def _run(lay, params, x, state0, dh, dstateT, mask, resets):
    h, stateT, tape = lay.forward(params, x, state0, mask, resets)
    dx, dstate0, grads = lay.backward(params, dh, dstateT, tape)
    return [h, *stateT, dx, *dstate0] + [grads[k] for k in sorted(grads)], tape


def _case(name, nonlinearity, dtype, T=9, B=7, D=5, H=12, seed=0):
    rng = np.random.default_rng(seed)
    lay = layer(name, nonlinearity)
    params = _params(lay.cell, D, H, dtype, rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state0 = tuple((0.5 * rng.standard_normal((B, H))).astype(dtype) for _ in lay.STATE)
    dstateT = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in lay.STATE)
    dh = rng.standard_normal((T, B, H)).astype(dtype)
    mask = ragged_mask(T, [(9, 5, 8, 2, 9, 1, 7, 4)[b % 8] for b in range(B)])
    resets = np.zeros((T, B), bool)
    resets[[2 % T, 6 % T, 4 % T], [0, 3 % B, 6 % B]] = True
    return lay, params, x, state0, dh, dstateT, mask, resets


@pytest.mark.parametrize("name,nonlinearity", KINDS)
@pytest.mark.parametrize("step_gemm,threads,in_loop", [("packed", 1, True), ("packed", 2, False),
                                                        ("mkl", 1, False), ("mkl", 2, False)])
def test_the_compiled_loop_equals_the_reference_in_float64(name, nonlinearity, step_gemm, threads, in_loop,
                                                           monkeypatch, pairs):
    if step_gemm == "mkl" and not HAS_MKL:
        pytest.skip("oneMKL is not installed (the extra mkl)")
    monkeypatch.setenv("BPTT_STEP_GEMM", step_gemm)
    monkeypatch.setattr(compiled, "IN_LOOP_PROJECTION_BYTES", 2 ** 21 if in_loop else 0)
    monkeypatch.setattr(loop_threads, "MIN_LOOP_FLOPS", 0)
    settings.reset()
    lay, params, x, state0, dh, dstateT, mask, resets = _case(name, nonlinearity, np.float64, B=8)
    ref, _ = _run(CellLayer(lay.cell), params, x, state0, dh, dstateT, mask, resets)
    with loop_threads.use(threads):
        out, tape = _run(lay, params, x, state0, dh, dstateT, mask, resets)
    settings.reset()
    assert isinstance(tape, CompiledTape)
    assert len(pairs) == (2 if threads == 2 else 0)
    for a, b in zip(out, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a - b).max() < 1e-12 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("step_gemm", ["packed", "mkl"])
@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("T,B,H,short", [(1, 1, 12, True), (8, 1, 12, True), (4, 2, 12, True), (1, 1, 192, True),
                                         (9, 1, 12, False), (5, 2, 12, False), (20, 1, 12, False),
                                         (12, 2, 12, False)])
def test_one_or_two_rows_add_rows_of_w_over_short_passes_and_pack_it_over_long_ones(name, T, B, H, short, step_gemm,
                                                                                     monkeypatch):
    """B ≤ 2 over at most FEW_ROW_STEPS rows in all: rows of W added (mode 1; a large W_hᵀ
    copied in blocks); longer passes: W packed for the GEMM in force (mode 2, or 3 for
    MKL). Every way equals the reference, with a mask, resets and carried state, and
    without them (then ∂W_h's h_0 part is a product of its own, one row at B = 1)."""
    if step_gemm == "mkl" and not HAS_MKL:
        pytest.skip("oneMKL is not installed (the extra mkl)")
    monkeypatch.setenv("BPTT_STEP_GEMM", step_gemm)
    settings.reset()
    modes, gemm = [], compiled._gemm
    def spy(*args, **kwargs):
        chosen = gemm(*args, **kwargs)
        modes.append(chosen[0])
        return chosen
    monkeypatch.setattr(compiled, "_gemm", spy)
    lay, params, x, state0, dh, dstateT, mask, resets = _case(name, "tanh", np.float64, T=T, B=B, H=H)
    if T > 1:
        mask[-1, -1] = False                                # the last row's last step padded
    for m, r in ((mask, resets), (None, None)):
        ref, _ = _run(CellLayer(lay.cell), params, x, state0, dh, dstateT, m, r)
        out, tape = _run(lay, params, x, state0, dh, dstateT, m, r)
        assert isinstance(tape, CompiledTape)
        for a, b in zip(out, ref):
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-12 * max(1.0, np.abs(b).max())
    settings.reset()
    assert modes == [1 if short else 2 if step_gemm == "packed" else 3] * 4


@pytest.mark.parametrize("name,nonlinearity", KINDS)
def test_the_compiled_loop_in_float32_is_within_float32_rounding_of_float64(name, nonlinearity):
    lay, params, x, state0, dh, dstateT, mask, resets = _case(name, nonlinearity, np.float64, seed=1)
    ref, _ = _run(CellLayer(lay.cell), params, x, state0, dh, dstateT, mask, resets)
    f32 = [{k: v.astype(np.float32) for k, v in params.items()}, x.astype(np.float32),
           tuple(s.astype(np.float32) for s in state0), dh.astype(np.float32),
           tuple(s.astype(np.float32) for s in dstateT)]
    out, tape = _run(lay, *f32[:3], f32[3], f32[4], mask, resets)
    assert isinstance(tape, CompiledTape)
    for a, b in zip(out, ref):
        assert a.dtype == np.float32
        assert np.abs(a - b).max() < 3e-5 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "ln-lstm", "ln-gru"])
def test_the_built_in_kernels_compute_float32_in_float32(name):
    """A float32 model's kernels never widen to float64 (an int literal such as ``1 - x``
    would: Numba types int64 and float32 as float64, at half the vector width). The
    kernels are compiled afresh (cached code cannot be inspected) and their LLVM IR read."""
    from bptt.cells.layer_norm import LayerNormGRU, LayerNormLSTM
    cell = {"ln-lstm": LayerNormLSTM(), "ln-gru": LayerNormGRU()}.get(name) or layer(name).cell
    H = 4
    G, S, A = cell.gates, len(cell.state), cell.tape_width(H)
    E = sum(int(np.prod(s)) for s in cell.extra_shapes(H).values())
    row = lambda n: np.zeros(n, np.float32)                                  # noqa: E731
    block = lambda: np.zeros((S, H), np.float32)                              # noqa: E731
    arguments = {"forward": (row(G * H), row(G * H), row(G * H), row(E), block(), block(), row(A), 0),
                 "backward": (block(), row(G * H), row(A), row(E), block(), block(), row(G * H), row(G * H),
                              block(), row(E), 0)}
    for kernel, direction in zip(cell.kernels, ("forward", "backward")):
        fresh = njit(fastmath=True, error_model="numpy")(kernel.py_func)
        signature = tuple(numba.typeof(a) for a in arguments[direction])
        fresh.compile(signature)
        ir = fresh.inspect_llvm(signature)
        assert "fpext float" not in ir, f"{name}'s {direction} kernel widens float32 to float64"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_one_hot_inputs_take_a_gather_and_equal_the_reference(name, threads, monkeypatch, pairs):
    """Rows of x that are unit vectors (characters) give (K1) as rows of W_xᵀ, copied by
    each loop thread for its rows, and ∂L/∂W_x as sums of du's rows: the reference's
    numbers, with masks, resets and carried state."""
    monkeypatch.setattr(loop_threads, "MIN_LOOP_FLOPS", 0)
    lay, params, x, state0, dh, dstateT, mask, resets = _case(name, "tanh", np.float64, B=8)
    T, B, D = x.shape
    x = np.eye(D)[np.random.default_rng(3).integers(0, D, (T, B))]
    ref, _ = _run(CellLayer(lay.cell), params, x, state0, dh, dstateT, mask, resets)
    with loop_threads.use(threads):
        out, tape = _run(lay, params, x, state0, dh, dstateT, mask, resets)
    assert len(pairs) == (2 if threads == 2 else 0)
    assert tape.codes is not None and np.array_equal(tape.codes, x.reshape(T * B, D).argmax(axis=1))
    for a, b in zip(out, ref):
        assert np.abs(a - b).max() < 1e-12 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("change", ["a 2", "two ones", "a zero row", "-1", "a NaN beside the 1", "a strided view"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_only_rows_of_one_1_and_zeros_count_as_one_hot(change, dtype):
    """-0.0 counts as a zero (the product is the same); a NaN beside the 1 does not, or
    the gather would drop it where x W_xᵀ carries it."""
    x = np.eye(5, dtype=dtype)[np.random.default_rng(0).integers(0, 5, (4, 3))]
    x[x == 0] = -0.0
    assert bulk.one_hot_codes(x) is not None
    if change == "a strided view":
        x = np.concatenate([x, x], axis=2)[:, :, :5]
    else:
        x[3, 2] = {"a 2": 2 * x[3, 2], "two ones": 1.0, "a zero row": 0.0, "-1": -x[3, 2],
                   "a NaN beside the 1": x[3, 2] + [np.nan, 0, 0, 0, 0]}[change]
    assert bulk.one_hot_codes(x) is None


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_two_threads_give_one_threads_bits(name, monkeypatch, pairs):
    """Each thread runs its own rows with the same arithmetic: the same bits, so a result
    does not depend on the cores a process was given."""
    monkeypatch.setattr(loop_threads, "MIN_LOOP_FLOPS", 0)
    lay, params, x, state0, dh, dstateT, mask, resets = _case(name, "tanh", np.float32, B=16, H=40)
    with loop_threads.use(1):
        one, _ = _run(lay, params, x, state0, dh, dstateT, mask, resets)
    with loop_threads.use(2):
        two, _ = _run(lay, params, x, state0, dh, dstateT, mask, resets)
    assert len(pairs) == 2
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("B", [10, 13])
def test_mkls_step_gemm_gives_the_same_bits_on_one_thread_and_two(B, monkeypatch, pairs):
    """MKL's float64 product rounds a row differently by the rows of the call (blocks of 4
    and the rest): one thread multiplies by the two threads' halves too, so the bits do not
    follow the cores."""
    if not HAS_MKL:
        pytest.skip("oneMKL is not installed (the extra mkl)")
    monkeypatch.setenv("BPTT_STEP_GEMM", "mkl")
    monkeypatch.setattr(loop_threads, "MIN_LOOP_FLOPS", 0)
    settings.reset()
    lay, params, x, state0, dh, dstateT, mask, resets = _case("lstm", "tanh", np.float64, B=B, H=33)
    with loop_threads.use(1):
        one, _ = _run(lay, params, x, state0, dh, dstateT, mask, resets)
    with loop_threads.use(2):
        two, _ = _run(lay, params, x, state0, dh, dstateT, mask, resets)
    ref, _ = _run(CellLayer(lay.cell), params, x, state0, dh, dstateT, mask, resets)
    settings.reset()
    assert len(pairs) == 2
    for a, b, r in zip(one, two, ref):
        assert np.array_equal(a, b) and np.abs(a - r).max() < 1e-12 * max(1.0, np.abs(r).max())


def test_arrays_the_compiled_loop_does_not_take_go_to_the_python_loop(monkeypatch):
    lay, params, x, state0, dh, dstateT, mask, resets = _case("lstm", "tanh", np.float32)
    monkeypatch.setenv("BPTT_LOOPS", "0")
    settings.reset()
    try:
        assert not isinstance(lay.forward(params, x, state0)[2], CompiledTape)
    finally:
        monkeypatch.delenv("BPTT_LOOPS")
        settings.reset()
    assert isinstance(lay.forward(params, x, state0)[2], CompiledTape)


@pytest.mark.parametrize("variable,value", [("BPTT_STEP_GEMM", "fast"), ("BPTT_LOOPS", "yes"),
                                            ("BPTT_LOOP_THREADS", "4")])
def test_a_bad_setting_is_an_error_naming_it(variable, value):
    code = "import numpy as np, bptt; m = bptt.Model('lstm', 2, 8, 2); m.forward(np.zeros((3, 16, 2), np.float32))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, variable: value})
    assert run.returncode != 0
    assert f"{variable}: expected one of" in run.stderr and repr(value) in run.stderr


def test_the_loops_are_generated_into_the_cache_and_reused_and_the_cache_stays_bounded(tmp_path):
    """A new loop module prunes the cache to the KEPT_LOOPS used last, compiled files with
    them; a cached one is read again, not rewritten (Numba keys its cache by its mtime), and
    gives the bits the process that compiled it got."""
    folder = tmp_path / "loops"
    (folder / "__pycache__").mkdir(parents=True)
    stale = [f"loops_{i:020d}" for i in range(compiled.KEPT_LOOPS + 8)]
    for i, stem in enumerate(stale):     # used 1 h apart, the last 1 h ago; written in the other order
        for f in (folder / f"{stem}.used", folder / "__pycache__" / f"{stem}.f-9.py311.nbi"):
            f.write_text("")
            os.utime(f, (time.time() - 3600 * (len(stale) - i),) * 2)
        (folder / f"{stem}.py").write_text("")
        os.utime(folder / f"{stem}.py", (time.time() - 3600 * (i + 1),) * 2)
    code = ("import hashlib, numpy as np, bptt, bptt.cells.compiled as c; m = bptt.Model('lstm', 3, 32, 3, seed=0);"
            "x = np.random.default_rng(0).standard_normal((20, 8, 3)).astype(np.float32);"
            "grads = m.loss_and_grads(x, x)[1]; print(c.loops_for(*bptt.cells.LSTM.kernels).__file__);"
            "print(hashlib.sha256(b''.join(g.tobytes() for g in grads.values())).hexdigest())")
    # Numba's own files beside the loop modules, where it puts them unless NUMBA_CACHE_DIR moves them
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"BPTT_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    path, bits = first.stdout.split()
    assert path.startswith(str(folder)) and os.path.exists(path)
    assert "bptt.cells.lstm" in open(path).read()
    kept = sorted(p.stem for p in folder.glob("*.py"))
    assert len(kept) == compiled.KEPT_LOOPS and Path(path).stem in kept
    assert kept[:-1] == stale[-(compiled.KEPT_LOOPS - 1):]                 # the ones used last
    assert not list(folder.glob(f"__pycache__/{stale[0]}.*")) and not (folder / f"{stale[0]}.used").exists()
    assert list(folder.glob(f"__pycache__/{stale[-1]}.*"))
    cached = list((folder / "__pycache__").glob(f"{Path(path).stem}.*.nbi"))
    assert cached                                          # Numba's index of the compiled loops
    written = os.stat(path).st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert second.stdout.split() == [path, bits] and os.stat(path).st_mtime_ns == written
    # the same bits whether this process compiled the loops or loaded them: the kernels are
    # inlined, not called where a copy compiled in the process may answer instead
    assert len(list(folder.glob("*.py"))) == compiled.KEPT_LOOPS


def test_the_cache_keeps_the_sources_used_last(tmp_path, monkeypatch):
    """cached_source with keep = 3 ranks by the markers (a, written first, was used last),
    a source without a marker by its own mtime; files of no source, and writes cut short,
    go an hour after their last change; a cache folder it cannot write to is read as it is."""
    now = time.time()
    a = cached_source(tmp_path, "a", "A = 1\n", keep=3)
    b = cached_source(tmp_path, "b", "B = 1\n", keep=3)
    for f, age in ((a, 300), (a.with_suffix(".used"), 300), (b, 200), (b.with_suffix(".used"), 200)):
        os.utime(f, (now - age,) * 2)
    for name, age in (("unmarked.py", 100), ("gone.used", 7200), ("fresh.used", 0), ("b.py.7.tmp", 7200)):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (now - age,) * 2)
    assert cached_source(tmp_path, "a", "ignored", keep=3) == a and a.read_text() == "A = 1\n"
    cached_source(tmp_path, "c", "C = 1\n", keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "a.used", "c.py", "c.used", "fresh.used",
                                                          "unmarked.py"]
    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "touch", read_only)
    assert cached_source(tmp_path, "c", "ignored", keep=3).read_text() == "C = 1\n"


def test_the_cache_prunes_only_its_own_files(tmp_path):
    """BPTT_CACHE_DIR may name a folder of the user's: in its loops/ only the loop modules
    and what was made from them are pruned, never another file however old."""
    old = time.time() - 7200
    for name in ("notes.txt", "mine.py", "__pycache__/mine.cpython-311.pyc", "loops_gone.used"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (old, old))
    cached_source(tmp_path, "loops_a", "A = 1\n", keep=1)
    os.utime(tmp_path / "loops_a.used", (old, old))
    cached_source(tmp_path, "loops_b", "B = 1\n", keep=1)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        ["__pycache__/mine.cpython-311.pyc", "loops_b.py", "loops_b.used", "mine.py", "notes.txt"]


def test_a_cache_folder_that_cannot_be_written_is_named_once(tmp_path):
    """Where the loops cannot be written (a file where the folder should be; a read-only
    disk), the caller compiles them in memory: one RuntimeWarning a process names the
    folder and BPTT_CACHE_DIR, and the OSError still reaches the caller."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.warns(RuntimeWarning, match=r"BPTT_CACHE_DIR: cannot write compiled loops to .*file/loops"):
        with pytest.raises(OSError):
            cached_source(blocked / "loops", "a", "A = 1\n", keep=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(OSError):
            cached_source(blocked / "loops", "b", "B = 1\n", keep=3)


def test_the_cached_loop_follows_an_edit_of_a_module_the_kernels_call(tmp_path, monkeypatch):
    """The loop's cache key holds the source of every module the kernels reach: the
    kernel's own, a helper module it calls, and bptt's scalar functions. An edit of the
    helper alone gave the old loop (h = 5 where the helper now gave 10)."""
    (tmp_path / "act_helper.py").write_text("from numba import njit\n\n\n@njit\ndef act(a):\n    return a\n")
    (tmp_path / "act_cell.py").write_text(
        "from numba import njit\nimport act_helper\nfrom bptt.cells.scalar import tanh\n\n\n@njit\n"
        "def fwd(z, rec, bias, extra, prev, new, aux, option):\n    for j in range(prev.shape[1]):\n"
        "        new[0, j] = tanh(act_helper.act(z[j] + rec[j] + bias[j]))\n\n\n@njit\n"
        "def bwd(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import act_cell
    import numba
    sources = compiled._sources_of(act_cell.fwd, act_cell.bwd)
    for module in ("act_cell.py", "act_helper.py"):
        assert (tmp_path / module).read_text() in sources
    assert inspect.getsource(scalar) in sources
    assert inspect.getsource(numba) not in sources and len(sources) == 3      # libraries: by their versions


def test_the_cached_loop_follows_a_dotted_helper_and_an_imported_constant(tmp_path, monkeypatch):
    """``pkg.mod.f(...)`` in a kernel reaches pkg/mod.py, and ``from pkg.consts import SCALE``
    a constant Numba freezes into the loop: both are in what the loop's cache key is made
    of, so that an edit of either names another loop."""
    (tmp_path / "scaled_pkg").mkdir()
    (tmp_path / "scaled_pkg" / "__init__.py").write_text("")
    (tmp_path / "scaled_pkg" / "consts.py").write_text("SCALE = 1.5\n")
    (tmp_path / "scaled_pkg" / "helper.py").write_text("from numba import njit\n\n\n@njit\ndef act(a):\n    return a\n")
    (tmp_path / "scaled_cell.py").write_text(
        "from numba import njit\nimport scaled_pkg.helper\nfrom scaled_pkg.consts import SCALE\n\n\n@njit\n"
        "def fwd(z, rec, bias, extra, prev, new, aux, option):\n    for j in range(prev.shape[1]):\n"
        "        new[0, j] = scaled_pkg.helper.act(SCALE * z[j])\n\n\n@njit\n"
        "def bwd(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import scaled_cell
    sources = compiled._sources_of(scaled_cell.fwd, scaled_cell.bwd)
    assert (tmp_path / "scaled_pkg" / "helper.py").read_text() in sources and "1.5" in sources


def _minimal_gated_unit():
    """A cell defined inside a function: its kernels cannot be imported by name, so its
    loops are compiled in this process."""
    def sig(a):
        return 0.5 * np.tanh(0.5 * a) + 0.5

    class MGU(Cell):
        name, gates, state = "mgu", 2, ("h",)

        def step(self, p, u, v, state):
            (h,) = state
            H = h.shape[1]
            f = sig(u[:, :H] + v[:, :H])
            n = np.tanh(u[:, H:] + f * v[:, H:])
            return (h + f * (n - h),), (f, n, v[:, H:].copy(), h)

        def step_backward(self, p, dstate, cache):
            (dh,), (f, n, vn, h) = dstate, cache
            dn = dh * f * (1 - n * n)
            df = (dh * (n - h) + dn * vn) * f * (1 - f)
            return (np.concatenate([df, dn], axis=1), np.concatenate([df, dn * f], axis=1),
                    (dh * (1 - f),), {})

    @njit
    def forward_kernel(z, rec, bias, extra, prev, new, aux, option):
        H = prev.shape[1]
        for j in range(H):
            f = scalar.sigmoid(z[j] + rec[j] + bias[j])
            n = scalar.tanh(z[H + j] + bias[H + j] + f * rec[H + j])
            z[j], z[H + j], aux[j] = f, n, rec[H + j]
            new[0, j] = prev[0, j] + f * (n - prev[0, j])

    @njit
    def backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option):
        H = prev.shape[1]
        for j in range(H):
            f, n, dh = z[j], z[H + j], ds[0, j]
            dn = dh * f * (1 - n * n)
            df = (dh * (n - prev[0, j]) + dn * aux[j]) * f * (1 - f)
            du[j], du[H + j], dv[j], dv[H + j] = df, dn, df, dn * f
            ds_prev[0, j] = dh * (1 - f)

    MGU.kernels = (forward_kernel, backward_kernel)
    MGU.tape_width = lambda self, H: H
    return MGU()


def test_a_users_cell_with_kernels_defined_in_a_function_runs_compiled():
    cell = _minimal_gated_unit()
    rng = np.random.default_rng(4)
    T, B, D, H = 8, 6, 3, 5
    params = _params(cell, D, H, np.float64, rng)
    x = rng.standard_normal((T, B, D))
    state0 = (rng.standard_normal((B, H)),)
    dh = rng.standard_normal((T, B, H))
    mask = ragged_mask(T, [8, 3, 8, 5, 1, 8])
    resets = np.zeros((T, B), bool)
    resets[3, 2] = True
    ref, _ = _run(CellLayer(cell), params, x, state0, dh, None, mask, resets)
    out, tape = _run(CompiledLayer(cell), params, x, state0, dh, None, mask, resets)
    assert isinstance(tape, CompiledTape)
    assert compiled._address(cell.kernels[0]) is None                # compiled here, not from the cache
    for a, b in zip(out, ref):
        assert np.abs(a - b).max() < 1e-12 * max(1.0, np.abs(b).max())


def test_a_kernel_numba_cannot_type_is_an_error_naming_the_cell_and_the_kernel(monkeypatch):
    """A typo in a user's kernel surfaces at the first pass as a ValueError that names the
    cell, the kernel and Numba's own finding; the cell's NumPy step still runs it."""
    cell = _minimal_gated_unit()

    @njit
    def forward_with_typo(z, rec, bias, extra, prev, new, aux, option):
        new[0, 0] = z[0] + undefined_weight  # noqa: F821

    rng = np.random.default_rng(5)
    params = _params(cell, 3, 4, np.float64, rng)
    x, state0 = rng.standard_normal((5, 2, 3)), (np.zeros((2, 4)),)
    type(cell).kernels = (forward_with_typo, cell.kernels[1])
    with pytest.raises(ValueError, match=r"cell: MGU's forward_kernel does not compile .*"
                                         r"NameError: name 'undefined_weight' is not defined"):
        CompiledLayer(cell).forward(params, x, state0)
    monkeypatch.setenv("BPTT_LOOPS", "0")
    settings.reset()
    try:
        h_numpy, _, _ = CompiledLayer(cell).forward(params, x, state0)
    finally:
        monkeypatch.undo()
        settings.reset()
    assert np.abs(h_numpy - CellLayer(cell).forward(params, x, state0)[0]).max() == 0


def test_the_backward_loops_typing_error_is_named_too(monkeypatch):
    """The same for the backward loop, here with Numba's TypingError raised by stand-in
    loops (real ones would compile the whole forward loop first, seconds of the suite)."""
    from numba.core.errors import TypingError

    def backward(*args):
        raise TypingError("Failed in nopython mode pipeline (step: nopython frontend)\n"
                          "\x1b[1mNo implementation of function Function(<built-in function add>)\x1b[0m\n"
                          "During: typing of call")
    cell = _minimal_gated_unit()
    lay = CompiledLayer(cell)
    params = _params(cell, 3, 4, np.float64, np.random.default_rng(6))
    monkeypatch.setattr(compiled, "loops_for", lambda *kernels: types.SimpleNamespace(
        forward=lambda *args: None, backward=backward))
    h, _, tape = lay.forward(params, np.ones((2, 2, 3)), (np.zeros((2, 4)),))
    with pytest.raises(ValueError, match=r"^cell: MGU's backward_kernel does not compile in the time loop: "
                                         r"No implementation of function Function\(<built-in function add>\); "):
        lay.backward(params, np.ones_like(h), None, tape)


def test_kernels_that_are_not_numba_functions_are_refused_when_the_layer_is_built():
    cell = _minimal_gated_unit()
    type(cell).kernels = (cell.kernels[0].py_func, cell.kernels[1].py_func)
    with pytest.raises(ValueError, match=r"cell: MGU.kernels expected \(forward_kernel, backward_kernel\), "
                                         r"two Numba functions"):
        layer_of(cell)
    type(cell).kernels = (cell.kernels[0],)
    with pytest.raises(ValueError, match=r"MGU.kernels expected"):
        layer_of(cell)


@pytest.mark.parametrize("cell,nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "relu")])
def test_models_agree_with_the_python_loop_outputs_last_and_one_stream(cell, nonlinearity, monkeypatch):
    """A whole model, B = 1 (one row: gemv) and B = 4, two layers, through both loops."""
    for B in (1, 4):
        rng = np.random.default_rng(B)
        model = make_model(cell, nonlinearity, layers=2, D=3, H=6, O=2, outputs="last", seed=2)
        x = rng.standard_normal((6, B, 3))
        targets = make_targets(model, 6, B, rng)
        state0 = make_state(model, B, rng)
        got = model.gradients(x, targets, state0)
        monkeypatch.setattr(settings, "loops_enabled", lambda: False)
        want = model.gradients(x, targets, state0)
        monkeypatch.undo()
        assert abs(got.loss - want.loss) < 1e-12
        for k in want.params:
            assert np.abs(got.params[k] - want.params[k]).max() < 1e-12, k


@pytest.mark.skipif(not HAS_MKL, reason="oneMKL is not installed (the extra mkl)")
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_mkls_packed_gemm_from_compiled_code_equals_numpy(dtype, tol, forward, m):
    @njit
    def product(a, buffer, out):
        mkl.compute(a, buffer, out)
    rng = np.random.default_rng(0)
    W_h = rng.standard_normal((12, 5)).astype(dtype)                       # (G·H, H)
    B = W_h.T if forward else W_h
    a = rng.standard_normal((m, B.shape[0])).astype(dtype)
    buffer = np.empty(mkl.packed_size(W_h, forward, m), dtype)
    mkl.pack_into(W_h, forward, m, buffer)
    out = np.full((m, B.shape[1]), np.nan, dtype)
    product(a, buffer, out)
    assert np.abs(out - a @ B).max() < tol * np.abs(a @ B).max()


@pytest.mark.skipif(not HAS_MKL, reason="oneMKL is not installed (the extra mkl)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mkls_packed_gemm_gives_the_same_bits_wherever_its_arrays_lie(dtype):
    """The loop's rows and MKL's packed buffer lie at whatever address NumPy's allocator
    gives (16-byte aligned, not 64): for the same bits in every process MKL's product must
    not depend on it. Every offset of a, out and the buffer modulo 64 bytes, at a shape of
    the core benchmark."""
    @njit
    def product(a, buffer, out):
        mkl.compute(a, buffer, out)
    rng = np.random.default_rng(1)
    W_h = rng.standard_normal((1024, 256)).astype(dtype)
    a0 = rng.standard_normal((16, 256)).astype(dtype)
    size = mkl.packed_size(W_h, True, 16)
    per_line = 64 // np.dtype(dtype).itemsize
    first = None
    for offset in range(per_line):
        a = np.empty(a0.size + per_line, dtype)[offset:offset + a0.size].reshape(a0.shape)
        a[:] = a0
        out = np.empty(16 * 1024 + per_line, dtype)[offset:offset + 16 * 1024].reshape(16, 1024)
        buffer = np.empty(size + per_line, dtype)[offset:offset + size]
        mkl.pack_into(W_h, True, 16, buffer)
        product(a, buffer, out)
        if first is None:
            first = out.copy()
        assert np.array_equal(out, first), offset


def test_mkl_takes_32_bit_integers_whatever_mkl_interface_layer_says():
    """The calls pass 32-bit MKL_INT: under MKL_INTERFACE_LAYER=ILP64 MKL would read 64-bit
    ones (a crash), so load() sets LP64 itself."""
    if not HAS_MKL:
        pytest.skip("oneMKL is not installed (the extra mkl)")
    code = ("import numpy as np; from bptt.backends import mkl; from numba import njit\n"
            "a, W = np.arange(12.).reshape(3, 4), np.arange(20.).reshape(5, 4)\n"
            "buf = np.empty(mkl.packed_size(W, True, 3)); mkl.pack_into(W, True, 3, buf); out = np.empty((3, 5))\n"
            "njit(lambda a, b, o: mkl.compute(a, b, o))(a, buf, out); print(np.array_equal(out, a @ W.T))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "MKL_INTERFACE_LAYER": "ILP64"})
    assert (run.returncode, run.stdout.strip()) == (0, "True"), run.stderr[-500:]


def test_the_step_gemm_default_follows_the_cpu(monkeypatch):
    """MKL where installed on Intel with AVX-512; bptt's micro-kernel elsewhere, AMD's
    AVX-512 included (benchmarks/results/amd-epyc-f25-m17-avx-512-2-cores/step_gemm.md)."""
    monkeypatch.delenv("BPTT_STEP_GEMM", raising=False)
    for vendor, isa, installed, want in [("GenuineIntel", "AVX-512", True, "mkl"),
                                         ("GenuineIntel", "AVX-512", False, "packed"),
                                         ("GenuineIntel", "AVX2", True, "packed"),
                                         ("AuthenticAMD", "AVX-512", True, "packed"),
                                         ("AuthenticAMD", "AVX2", True, "packed")]:
        monkeypatch.setattr(settings, "vector_isa", lambda: isa)
        monkeypatch.setattr(settings, "cpu_vendor", lambda: vendor)
        monkeypatch.setattr(mkl, "library_path", lambda: "libmkl_rt.so" if installed else None)
        settings.reset()
        assert settings.step_gemm() == want
    settings.reset()


def test_a_busy_worker_turns_a_second_caller_away_at_once():
    ran = []
    with loop_threads._PAIR:                       # another thread's loop holds the worker
        assert loop_threads.run_pair(lambda *a: ran.append(a), ()) is False
    assert ran == []


def test_a_forked_child_runs_two_thread_loops_after_its_parent_did():
    """The child of a fork (multiprocessing's default on Linux) has no worker thread: its
    two-thread loops must make one, not queue a part for the parent's and wait for ever."""
    code = textwrap.dedent("""
        import os, signal, sys, time, numpy as np
        from bptt.backends import loop_threads, settings
        from bptt.cells import layer
        settings.blas_workers_sleep = lambda: True
        loop_threads.MIN_LOOP_FLOPS = 0
        lay, x = layer("rnn"), np.ones((3, 16, 2))
        params = {k: np.full(s, 0.1) for k, s in lay.param_shapes(2, 8).items()}
        def h():
            with loop_threads.use(2):
                return lay.forward(params, x, (np.zeros((16, 8)),))[0]
        first = h()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.array_equal(h(), first) else 3)
        for _ in range(300):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                sys.exit(print(os.waitstatus_to_exitcode(status), loop_threads._POOL is not None))
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        print("the child hangs")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.split() == ["0", "True"], run.stdout + run.stderr[-500:]


def test_layers_called_from_two_threads_at_once_give_their_own_results(monkeypatch):
    """Two threads each running a layer whose loop would use two threads: whichever finds
    the worker busy runs its loop whole, and both results are right."""
    monkeypatch.setattr(loop_threads, "MIN_LOOP_FLOPS", 0)
    lay, params, _, _, _, _, _, _ = _case("lstm", "tanh", np.float32, B=8, H=48)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((30, 8, 5)).astype(np.float32) for _ in range(2)]
    state0 = (np.zeros((8, 48), np.float32), np.zeros((8, 48), np.float32))
    with loop_threads.use(1):
        expected = [lay.forward(params, x, state0)[0] for x in xs]

    def forward(x):
        with loop_threads.use(2):
            return [lay.forward(params, x, state0)[0].copy() for _ in range(20)]

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(forward, xs))
    for hs, h_ref in zip(got, expected):
        for h in hs:
            assert np.array_equal(h, h_ref)


def test_when_two_threads_are_used(monkeypatch):
    monkeypatch.setattr(settings, "blas_workers_sleep", lambda: True)
    with loop_threads.use(2):
        assert loop_threads.parts_for(32, 512, 128, 100) == 2
        assert loop_threads.parts_for(7, 512, 128, 100) == 1                  # too few rows a thread
        assert loop_threads.parts_for(32, 64, 16, 10) == 1                    # too little work
    with loop_threads.use(1):
        assert loop_threads.parts_for(32, 512, 128, 100) == 1
    monkeypatch.setattr(settings, "blas_workers_sleep", lambda: False)        # OpenBLAS spins long
    with loop_threads.use(2):
        assert loop_threads.parts_for(32, 512, 128, 100) == 1


def _probe(env, cores=None, numpy_first=False):
    code = ("import bptt, os; from bptt.backends import settings as s;"
            "print(s.loop_threads(), s.blas_workers_sleep(), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    if numpy_first:
        code = "import numpy; " + code
    if cores:
        code = f"import os; os.sched_setaffinity(0, {cores!r}); " + code
    clean = {k: v for k, v in os.environ.items() if k not in ("BPTT_LOOP_THREADS", "OPENBLAS_THREAD_TIMEOUT")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
                         check=True)
    return run.stdout.split()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores")
def test_the_defaults_follow_the_cores_and_the_environment():
    from bptt.backends.settings import _numpy_has_openblas
    if not _numpy_has_openblas():
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    assert _probe({}) == ["2", "True", "20"]                 # bptt shortens OpenBLAS's idle spin
    assert _probe({}, cores={0}) == ["1", "True", "20"]      # one core (as taskset -c 0)
    assert _probe({"BPTT_LOOP_THREADS": "1"}) == ["1", "True", "20"]
    assert _probe({"OPENBLAS_THREAD_TIMEOUT": "28"}) == ["2", "False", "28"]    # the user's own is kept
    assert _probe({}, numpy_first=True) == ["2", "False", "None"]    # too late: OpenBLAS has read it
