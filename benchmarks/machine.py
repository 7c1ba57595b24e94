"""The stamp every benchmark table carries: where its figures were measured.

    CPU model (family, model) · vector instruction set (AVX-512 / AVX2, and an AVX2
    imitation when the environment asks for one) · cores this process may use · the BLAS,
    its kernel and threads · Python, NumPy, Numba, PyTorch and bptt versions

A figure holds on the machine it was measured on; a table without this line is not one.
``block_time`` is the timing the scripts share: blocks of repeats after a short pause.
"""
from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

# What the AVX2 imitation sets (docs/performance.md); any of them present means the figures are not native.
IMITATION = ("OPENBLAS_CORETYPE", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "ATEN_CPU_CAPABILITY",
             "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family_model() -> str:
    """"family F, model M" from /proc/cpuinfo: tells CPUs of one model name apart (a VM's
    "AMD EPYC" is Zen 1 at family 23 and Zen 4 at family 25), or ""."""
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("cpu family", "model") and key not in found:
                    found[key] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"family {found['cpu family']}, model {found['model']}" if len(found) == 2 else ""


def vector_isa() -> str:
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return platform.machine()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    if "amx_tile" in flags:
        isa += "+AMX"
    return isa + imitation(flags, os.environ)


def imitation(flags, env) -> str:
    """" (imitating: …)" naming the imitation's variables set in env, else "". Numba keeps
    the host's features under NUMBA_CPU_NAME alone, and for "haswell" with avx512f it
    compiles 512-bit code: on an AVX-512 CPU without NUMBA_CPU_FEATURES the note says so."""
    imitated = {k: env[k] for k in IMITATION if k in env}
    if not imitated:
        return ""
    note = ", ".join(f"{k}={v}" for k, v in imitated.items())
    if "avx512f" in flags and "NUMBA_CPU_NAME" in env and "NUMBA_CPU_FEATURES" not in env:
        note += "; Numba still compiles for AVX-512 without NUMBA_CPU_FEATURES=-avx512f"
    return f" (imitating: {note})"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # pragma: no cover - not Linux
        return os.cpu_count() or 1


def blas() -> str:
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)
    del numpy
    from threadpoolctl import threadpool_info
    found = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    # NumPy's own (numpy.libs): SciPy's OpenBLAS or MKL's may be loaded beside it, and listed first
    found.sort(key=lambda lib: "numpy" not in (lib.get("filepath") or ""))
    for lib in found:
        kernel = lib.get("architecture") or lib.get("threading_layer") or "?"
        return f"{lib.get('internal_api')} {lib.get('version')} ({kernel}, {lib.get('num_threads')} threads)"
    return "BLAS unknown"


def versions() -> str:
    import numpy
    parts = [f"Python {platform.python_version()}", f"numpy {numpy.__version__}"]
    for name in ("numba", "torch", "bptt"):
        try:
            module = __import__(name)
            parts.append(f"{name} {module.__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def stamp() -> str:
    """One line: date, CPU (and its family and model), vector ISA, cores, BLAS, versions."""
    generation = f" ({cpu_family_model()})" if cpu_family_model() else ""
    return (f"# {time.strftime('%Y-%m-%d')} · {cpu_model()}{generation} · {vector_isa()} · {cores()} cores · {blas()} · "
            f"{versions()}")


# BPTT_BENCHMARK_RESULTS: another folder for the recorded tables (the tests' scratch runs)
RESULTS = Path(os.environ.get("BPTT_BENCHMARK_RESULTS") or Path(__file__).resolve().parent / "results")


def machine_key() -> str:
    """A folder name for this machine: CPU model, its family and model numbers where
    /proc/cpuinfo has them (f25-m17: two generations can share a model name), vector ISA
    (and imitation), cores."""
    isa = vector_isa().split(" (")[0] + ("-imitated-avx2" if "imitating" in vector_isa() else "")
    numbers = re.findall(r"\d+", cpu_family_model())
    generation = f" f{numbers[0]} m{numbers[1]}" if len(numbers) == 2 else ""
    name = f"{cpu_model()}{generation} {isa} {cores()}-cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def recorded(script: str):
    """Print as usual and, when the script ends without an error, write what it printed to
    benchmarks/results/<machine>/<script>[--<arguments>].md with the command that ran it.
    docs/performance.md is generated from those files (benchmarks/report.py)."""
    captured = io.StringIO()
    real = sys.stdout
    sys.stdout = _Tee(real, captured)
    try:
        yield
    finally:
        sys.stdout = real
    name = Path(script).stem
    args = " ".join(sys.argv[1:])
    variant = re.sub(r"[^A-Za-z0-9.,=]+", "-", args).strip("-")
    path = RESULTS / machine_key() / (name + (f"--{variant}" if variant else "") + ".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/{name}.py" + (f" {args}" if args else "")
    path.write_text(f"command: `{command}`\n\n```text\n{captured.getvalue().rstrip()}\n```\n", encoding="utf-8")
    shown = path.relative_to(Path(__file__).resolve().parents[1]) if path.is_relative_to(
        Path(__file__).resolve().parents[1]) else path
    print(f"# recorded in {shown}", file=real)


def block_time(fn, min_block_s, blocks):
    """Median seconds per call over ``blocks`` blocks, each of enough calls to last min_block_s."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(min_block_s / once))
    times = []
    time.sleep(0.3)                       # let the other library's threads go idle
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


if __name__ == "__main__":
    print(stamp())
