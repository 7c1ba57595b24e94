"""The stamp every benchmark table carries: where its figures were measured.

    CPU model · vector instruction set (AVX-512 / AVX2, and an AVX2 imitation when the
    environment asks for one) · cores this process may use · the BLAS, its kernel and
    threads · Python, NumPy, Numba, PyTorch and bptt versions

A figure holds on the machine it was measured on; a table without this line is not one.
"""
from __future__ import annotations

import os
import platform
import time

# What the AVX2 imitation sets (DESIGN.md); any of them present means the figures are not native.
IMITATION = ("OPENBLAS_CORETYPE", "NUMBA_CPU_NAME", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
             "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    imitated = {k: os.environ[k] for k in IMITATION if k in os.environ}
    if imitated:
        isa += " (imitating: " + ", ".join(f"{k}={v}" for k, v in imitated.items()) + ")"
    return isa


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # pragma: no cover - not Linux
        return os.cpu_count() or 1


def blas() -> str:
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)
    del numpy
    from threadpoolctl import threadpool_info
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
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
    """One line: date, CPU, vector ISA, cores, BLAS, versions."""
    return (f"# {time.strftime('%Y-%m-%d')} · {cpu_model()} · {vector_isa()} · {cores()} cores · {blas()} · "
            f"{versions()}")


if __name__ == "__main__":
    print(stamp())
