"""A barrier for two threads inside compiled loops: the meeting point of a step's two halves.

When a layer's time loop runs on two threads (backends/loop_threads.py), the threads meet
twice a step: once after the recurrent GEMM (each wrote half of its columns, and each
kernel reads whole rows) and once after the kernel (each wrote half of the rows, and
the next GEMM reads them all). A step is 5-800 µs, so the meeting must cost well under
a microsecond: no lock, no system call. Each thread counts the barriers it has reached
in its own cache line of ``sync`` (an int64 array of 17), publishes the count with a
release store, and spins (x86 ``pause``) on the other's count with acquire loads, so
that everything written before the barrier is seen after it. After a while of spinning
it yields the core (``sched_yield``), which bounds the cost when something else runs
on the core the other thread needs.

    wait_for_partner(sync, part, parts)      returns when both threads have arrived (no-op for one)

``sync[ABORT]`` set to non-zero releases a waiting thread for good, so that a thread whose
partner failed cannot spin forever.
"""
from __future__ import annotations

import ctypes
import platform

import numpy as np

ABORT = 16                       # sync[16]: the partner failed; stop waiting
SPINS_BEFORE_YIELD = 20000       # about 0.2-1 ms of pause instructions


def new_sync():
    """The counters of one two-thread run: [0] part 0's, [8] part 1's, [16] abort."""
    return np.zeros(ABORT + 1, dtype=np.int64)


try:
    import llvmlite.binding as _llvm
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    _NUMBA = True
except ImportError:                              # pragma: no cover - Numba is a dependency
    _NUMBA = False

_YIELD = False                                   # sched_yield found (Linux, macOS)
if _NUMBA:
    try:
        _libc = ctypes.CDLL(None)
        _llvm.add_symbol("bptt_sched_yield", ctypes.cast(_libc.sched_yield, ctypes.c_void_p).value)
        _YIELD = True
    except (OSError, AttributeError, TypeError):  # pragma: no cover - depends on the platform
        pass
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

# Two threads share a loop only where a waiting thread can give its core back.
AVAILABLE = _NUMBA and _YIELD

if _NUMBA:
    if _YIELD:
        _sched_yield_fn = types.ExternalFunction("bptt_sched_yield", types.int32())

        @njit(nogil=True, cache=True)
        def _give_way():
            _sched_yield_fn()
    else:                                        # pragma: no cover - depends on the platform
        @njit(nogil=True, cache=True)
        def _give_way():
            pass

    def _element_pointer(context, builder, aryty, ary_value, index):
        ary = context.make_array(aryty)(context, builder, ary_value)
        return cgutils.get_item_pointer(context, builder, aryty, ary, [index])

    @intrinsic
    def _load_acquire(typingctx, arr, index):
        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            return builder.load_atomic(ptr, ordering="acquire", align=8)
        return types.int64(arr, index), codegen

    @intrinsic
    def _store_release(typingctx, arr, index, value):
        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            builder.store_atomic(args[2], ptr, ordering="release", align=8)
            return context.get_dummy_value()
        return types.void(arr, index, value), codegen

    @intrinsic
    def _pause(typingctx):
        """x86's spin-wait hint (it frees the core's shared resources for its sibling);
        elsewhere nothing."""
        def codegen(context, builder, signature, args):
            if _X86:
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse2.pause")
                builder.call(fn, [])
            return context.get_dummy_value()
        return types.void(), codegen

    @njit(nogil=True, cache=True)
    def wait_for_partner(sync, part, parts):
        if parts == 1:
            return
        arrived = sync[8 * part] + 1            # only this thread writes its own count
        _store_release(sync, 8 * part, arrived)
        spins = 0
        while _load_acquire(sync, 8 * (1 - part)) < arrived:
            if _load_acquire(sync, ABORT) != 0:
                return
            spins += 1
            if spins < SPINS_BEFORE_YIELD:
                _pause()
            else:
                _give_way()
