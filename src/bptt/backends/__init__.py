"""Beside all floors: runtime settings, the packed GEMM micro-kernel and oneMKL's packed
GEMM, loop threads, and CuPy (CUDA) for a GPU."""
