"""Beside all floors: fused kernels for the per-step gate arithmetic (Numba, optional)."""
