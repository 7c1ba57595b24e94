"""Beside all floors: BLAS from Numba, the packed GEMM micro-kernel, loop threads, the
workspace cache, runtime settings, and CuPy (CUDA) for a GPU."""
