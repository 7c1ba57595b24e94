"""backends/allocator.py: after keep_freed_memory(), a step's large arrays reuse pages."""
import subprocess
import sys

import pytest

from bptt.backends import allocator

GLIBC = allocator._glibc() is not None

# Allocates and frees the same 64 MiB array ten times, as a training step does its tape,
# and prints the page faults of the last nine (the first may fault in fresh pages).
_CYCLES = """
import resource, sys
import numpy as np
from bptt.backends.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def cycle():
    a = np.ones(16 * 1024 * 1024, dtype=np.float32)
    a.sum()
np.ones(1)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", _CYCLES, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults():
    default, kept = _faults("default"), _faults("kept")
    assert default >= 9 * 30            # each 64 MiB array faults again: >= 32 huge or 16384 small pages
    assert kept <= 20                   # the freed array's pages are reused


def test_limit_is_checked():
    for bad in (0, -1, 2 ** 31, 1.5, True, "1"):
        with pytest.raises(ValueError, match="limit"):
            allocator.keep_freed_memory(bad)
