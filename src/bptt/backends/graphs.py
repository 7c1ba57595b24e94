"""One layer's forward + backward for a fixed shape, captured once as a CUDA graph.

Eagerly, each step on the GPU is a GEMM and a small kernel, a few µs of launch overhead
each; captured as one CUDA graph, the T steps forward and back replay in one launch.
``GraphedLayer`` keeps fixed input buffers, copies new values into them, replays, and
returns the same output arrays each time (copy them to keep them). Everything the
captured call allocates comes from a private CuPy memory pool the graph keeps (as
PyTorch's CUDA graphs do), filled by a warm-up call before the capture.
"""
from __future__ import annotations

from . import cuda


class GraphedLayer:
    """layer: a layer of cells/ (cells.layer("lstm"), …); params, x, state0, dh: CuPy arrays."""

    def __init__(self, layer, params, x, state0, dh, need_dx=False, **forward_kwargs):
        cp = cuda.cp
        if not cuda.AVAILABLE:
            raise RuntimeError("GraphedLayer needs CuPy and an NVIDIA GPU (pip install -e '.[gpu]')")
        self.layer, self.params, self.need_dx, self.kwargs = layer, params, need_dx, forward_kwargs
        self.pool = cp.cuda.MemoryPool()
        self.stream = cp.cuda.Stream(non_blocking=True)
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            self.x, self.dh = x.copy(), dh.copy()
            self.state0 = tuple(s.copy() for s in state0)
            self._run()                                          # warm-up: kernels, pool, cuBLAS
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                self.outputs = self._run()
            finally:
                self.graph = self.stream.end_capture()
        self.stream.synchronize()

    def _run(self):
        h, stateT, tape = self.layer.forward(self.params, self.x, self.state0, **self.kwargs)
        dx, dstate0, grads = self.layer.backward(self.params, self.dh, None, tape, need_dx=self.need_dx)
        return h, stateT, dx, dstate0, grads

    def __call__(self, x=None, state0=None, dh=None):
        """Replay with new inputs (None keeps the last ones): (h, stateT, dx, dstate0, grads)."""
        cp = cuda.cp
        with self.stream:
            if x is not None:
                cp.copyto(self.x, x)
            if dh is not None:
                cp.copyto(self.dh, dh)
            for dst, src in zip(self.state0, state0 or ()):
                cp.copyto(dst, src)
            self.graph.launch(self.stream)
        return self.outputs
