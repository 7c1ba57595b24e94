"""A compiled loop on two threads (backends/loop_threads.py, spin.py): same numbers as on one,
a barrier that orders memory, a failure that stops both threads, and when it is used."""
import threading
import time

import numpy as np
import pytest
from numba import njit

from bptt.backends import cblas, cpu_loops, fused, loop_threads, recurrent_gemm, spin
from helpers import make_model, make_state, make_targets, ragged_mask

needs_two = pytest.mark.skipif(not (cpu_loops.AVAILABLE and spin.AVAILABLE),
                               reason="needs the compiled loops (OpenBLAS) and sched_yield")


@pytest.fixture
def counted_pairs(monkeypatch):
    """Every step worth splitting, and a count of the loops that ran on two threads."""
    monkeypatch.setattr(loop_threads, "MIN_STEP_FLOPS", 0.0)
    monkeypatch.setattr(loop_threads, "MIN_LOOP_FLOPS", 0.0)
    monkeypatch.setattr(loop_threads, "MIN_ROWS_SPLIT", 2)
    calls = []
    run_pair = loop_threads.run_pair

    def counted(loop, args):
        calls.append(loop)
        return run_pair(loop, args)
    monkeypatch.setattr(loop_threads, "run_pair", counted)
    return calls


def _everything(model, B, rng, T=11):
    """Gradients (padding, resets, state0, dstate: every branch of the loops) and outputs."""
    x = rng.standard_normal((T, B, model.input_size)).astype(model.dtype)
    targets = make_targets(model, T, B, rng)
    state0 = make_state(model, B, rng)
    dstate = make_state(model, B, rng)
    mask = ragged_mask(T, ([11, 4, 9, 7, 11, 2, 10] * 2)[:B])
    resets = np.zeros((T, B), bool)
    resets[3, 0] = resets[6, B - 1] = resets[6, B // 2] = True
    grads = model.gradients(x, targets, state0=state0, mask=mask, dstate=dstate, resets=resets)
    y = model.forward(x, state0=state0, mask=mask, resets=resets)[0]
    return grads, y


@needs_two
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("B", [2, 3, 7])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("step_gemm,mode", [("packed", "auto"), ("blas", "plain"), ("blas", "transposed")])
def test_two_threads_give_one_threads_numbers(cell, B, dtype, tol, step_gemm, mode, counted_pairs, monkeypatch):
    """Both threads' halves of every step, against one thread doing it all: outputs, every
    weight gradient, ∂L/∂x and ∂L/∂state0 (float64 through the compiled loops: 1e-12;
    the GEMM's blocking differs, so the sums' order does). H = 40: the GEMM blocks cut at
    column 16 or 32 of 40 and 120, so the blocks are uneven too, and the packed GEMM's last
    panel is partly filled. The packed GEMM, and BLAS in both orientations."""
    monkeypatch.setattr(fused, "FLOAT64", True)
    monkeypatch.setattr(cpu_loops, "STEP_GEMM", step_gemm)
    monkeypatch.setattr(recurrent_gemm, "MODE", mode)
    model = make_model(cell, layers=2, D=3, H=40, O=2, outputs="all", dtype=dtype, seed=4)
    results = []
    for threads in (1, 2):
        with loop_threads.use(threads):
            results.append(_everything(model, B, np.random.default_rng(9)))
    assert len(counted_pairs) == 6                     # 2 layers x (gradients: forward, backward; forward)
    (one, y1), (two, y2) = results
    assert np.abs(y2 - y1).max() < tol
    assert abs(two.loss - one.loss) < tol * max(1.0, abs(one.loss))
    for k, g in one.params.items():
        assert np.abs(two.params[k] - g).max() < tol * max(1.0, np.abs(g).max()), k
    assert np.abs(two.x - one.x).max() < tol
    for a, b in zip(np.atleast_1d(two.state0) if cell != "lstm" else two.state0,
                    np.atleast_1d(one.state0) if cell != "lstm" else one.state0):
        assert np.abs(a - b).max() < tol


@needs_two
def test_the_barrier_orders_what_each_thread_wrote_before_it():
    """Each round, each thread writes its slot, meets the other, then reads the other's
    slot: it must see this round's value (release/acquire), never the last round's."""

    @njit(nogil=True)
    def rounds(sync, part, slots, n, seen):
        for r in range(1, n + 1):
            slots[part * 16] = r
            spin.wait_for_partner(sync, part, 2)
            seen[r - 1] = slots[(1 - part) * 16]
            spin.wait_for_partner(sync, part, 2)      # nobody writes round r+1 before both read r

    n = 20000
    sync, slots = spin.new_sync(), np.zeros(32, np.int64)
    seen = [np.zeros(n, np.int64), np.zeros(n, np.int64)]
    released = spin.new_sync()
    released[spin.ABORT] = 1                          # compile it with a sync that never waits
    rounds(released, 0, np.zeros(32, np.int64), 1, np.zeros(1, np.int64))
    threads = [threading.Thread(target=rounds, args=(sync, p, slots, n, seen[p])) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    expected = np.arange(1, n + 1)
    assert np.array_equal(seen[0], expected) and np.array_equal(seen[1], expected)
    assert sync[0] == sync[8] == 2 * n


@needs_two
@pytest.mark.parametrize("failing", [0, 1])
def test_a_failing_part_releases_its_partner_and_raises(failing):
    """Whichever thread fails, the other stops waiting (sync's abort) and the error comes out."""

    @njit(nogil=True)
    def waits(sync, part, parts):
        for _ in range(1000):
            spin.wait_for_partner(sync, part, parts)

    def loop(fail_in, part, parts, sync):
        if part == fail_in:
            raise RuntimeError(f"part {part} failed")
        waits(sync, part, parts)

    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=f"part {failing} failed"):
        loop_threads.run_pair(loop, (failing,))
    assert time.perf_counter() - start < 30


def test_when_two_threads_are_used(monkeypatch):
    monkeypatch.setattr(spin, "AVAILABLE", True)
    with loop_threads.use(2):
        assert loop_threads.parts_for(32, 512, 128) == 2
        assert loop_threads.parts_for(1, 512, 128) == 1           # one row cannot be halved
        assert loop_threads.parts_for(4, 16, 4) == 1              # a step too small to share
        # Threads that never meet (the packed GEMM): the whole loop's work decides.
        assert loop_threads.parts_for(32, 128, 128, T=100, meets=False) == 2    # 105 MFLOP
        assert loop_threads.parts_for(4, 16, 4, T=100, meets=False) == 1        # 0.05 MFLOP
        assert loop_threads.parts_for(16, 64, 64, T=100, meets=False) == 1      # 13 MFLOP
        assert loop_threads.parts_for(16, 256, 256, T=1, meets=False) == 1      # 2.1 MFLOP
        assert loop_threads.parts_for(1, 512, 512, T=1000, meets=False) == 1    # one row
        assert loop_threads.parts_for(4, 512, 512, T=1000, meets=False) == 1    # 2 rows a thread: too few
        assert loop_threads.parts_for(8, 512, 512, T=1000, meets=False) == 2
        with loop_threads.use(1):
            assert loop_threads.parts_for(32, 512, 128) == 1
    with loop_threads.use(1):
        assert loop_threads.parts_for(32, 512, 128) == 1
    with pytest.raises(ValueError, match="threads: expected 1 or 2, got 3"):
        with loop_threads.use(3):
            pass


def test_the_default_follows_the_cores_and_the_environment(monkeypatch):
    monkeypatch.delenv("BPTT_LOOP_THREADS", raising=False)
    for cores, expected in ((1, 1), (2, 2), (4, 1), (16, 1)):
        monkeypatch.setattr(loop_threads, "available_cores", lambda c=cores: c)
        assert loop_threads._default() == expected
    monkeypatch.setenv("BPTT_LOOP_THREADS", "1")
    monkeypatch.setattr(loop_threads, "available_cores", lambda: 2)
    assert loop_threads._default() == 1
    monkeypatch.setenv("BPTT_LOOP_THREADS", "4")
    with pytest.raises(ValueError, match="BPTT_LOOP_THREADS: expected 1 or 2 \\(or unset\\), got '4'"):
        loop_threads._default()


@needs_two
def test_the_halves_of_a_batch_run_their_loops_on_one_thread_each(counted_pairs):
    """Model.gradients(threads=2) already gives each core a half: the loops inside must not
    ask for a second thread (with only one worker, the two halves would queue for it)."""
    model = make_model("lstm", H=40, dtype="float32")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    targets = make_targets(model, 6, 4, rng)
    with loop_threads.use(2):
        model.gradients(x, targets, threads=1)
        assert len(counted_pairs) == 2
        model.gradients(x, targets, threads=2)
        assert len(counted_pairs) == 2


_QUIET_PROBE = """
import os, time, numpy as np
from bptt.backends import cblas, loop_threads
a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
before = a @ a
quiet = cblas.quiet_idle_workers()
after = a @ a                               # the workers, restarted, give the same product
a @ a
start = time.process_time()
time.sleep(0.3)                             # a spinning worker would burn ~110 ms of this
idle_cpu = time.process_time() - start
with loop_threads.use(2):
    parts = loop_threads.parts_for(32, 512, 128)
print(quiet, os.environ.get("OPENBLAS_THREAD_TIMEOUT"), float(np.abs(after - before).max()), idle_cpu, parts)
"""


def _probe(env):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"} | env
    out = subprocess.run([sys.executable, "-c", _QUIET_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    quiet, timeout, diff, idle_cpu, parts = out.stdout.split()
    return quiet == "True", timeout, float(diff), float(idle_cpu), int(parts)


@needs_two
def test_openblas_idle_workers_are_put_to_sleep_once_and_still_compute():
    """Where two threads run loops, OpenBLAS's idle workers must stop spinning (they would
    take a core from the loop): after quiet_idle_workers a process that made a two-thread
    GEMM and sleeps 0.3 s uses well under the ~110 ms of CPU a spinning worker burns."""
    quiet, timeout, diff, idle_cpu, parts = _probe({"BPTT_LOOP_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    assert quiet and timeout == str(cblas.IDLE_SPIN_LOG2)
    assert diff == 0.0
    assert idle_cpu < 0.04
    assert parts == 2


@needs_two
def test_a_users_own_long_openblas_spin_is_kept_and_the_loops_stay_on_one_thread():
    quiet, timeout, _, _, parts = _probe({"BPTT_LOOP_THREADS": "2", "OPENBLAS_THREAD_TIMEOUT": "28"})
    assert not quiet and timeout == "28"
    assert parts == 1


@needs_two
def test_a_busy_worker_turns_a_second_caller_away_at_once():
    ran = []
    with loop_threads._PAIR:                       # another thread's loop holds the worker
        assert loop_threads.run_pair(lambda *a: ran.append(a), ()) is False
    assert ran == []


@needs_two
def test_layers_called_from_two_threads_at_once_give_their_own_results(counted_pairs):
    """Two threads each running a layer whose loop would use two threads: whichever finds
    the worker busy runs its loop whole, and both results are right."""
    from concurrent.futures import ThreadPoolExecutor
    from bptt.cells import CELLS
    layer = CELLS["lstm"]
    rng = np.random.default_rng(1)
    T, B, D, H = 30, 8, 5, 48
    params = {"W_x": (rng.standard_normal((4 * H, D)) / 3).astype(np.float32),
              "W_h": (rng.standard_normal((4 * H, H)) / 8).astype(np.float32),
              "b_h": (0.1 * rng.standard_normal(4 * H)).astype(np.float32)}
    xs = [rng.standard_normal((T, B, D)).astype(np.float32) for _ in range(2)]
    state0 = (np.zeros((B, H), np.float32), np.zeros((B, H), np.float32))
    with loop_threads.use(1):
        expected = [layer.forward(params, x, state0)[0] for x in xs]

    def forward(x):
        with loop_threads.use(2):
            return [layer.forward(params, x, state0)[0] for _ in range(20)]

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(forward, xs))
    for hs, h_ref in zip(got, expected):
        for h in hs:
            assert np.abs(h - h_ref).max() < 1e-5
    assert len(counted_pairs) == 40
