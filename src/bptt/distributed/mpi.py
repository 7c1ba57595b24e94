"""Data-parallel training over MPI (mpi4py): every rank a full model, one all-reduce an update.

Launched as ``mpiexec -n N bptt train …``, each rank holds the same parameters and takes
its share of every global batch: rows [r·B/N, (r+1)·B/N) of the synthetic tasks' batch
(all ranks draw the same global batch from the same generator), or those columns of
the text task's B streams. A rank's loss is the mean over its own positions; scaled by
its share of all positions and summed over ranks, it is the mean over the global batch,
so N ranks compute the gradient of one rank with batch B, up to the order of the sums.
The gradients travel as one flat float buffer in one ``Allreduce`` per update, then
every rank clips and steps alike.

Safety: at start every rank compares a hash of its configuration and data with rank 0's
and all stop with the same error on a mismatch; at every checkpoint a checksum of the
parameters is all-reduced (min and max) and a drift stops the run. A rank that dies takes
the job down through the MPI launcher (MPICH's hydra ends the other ranks), so nobody
waits forever in a collective; checkpoints are written by rank 0 alone, atomically.
Without mpi4py, or outside ``mpiexec``, ``world()`` is a world of one and costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np


class CollectiveError(ValueError):
    """An error every rank raises at the same point (a mismatch all of them see). No rank is
    left waiting in a collective, so the job ends without MPI_Abort and rank 0 reports it."""


class World:
    """The ranks of this job: ``rank``, ``size``, and the collectives the trainer needs."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._flat = None
        self.allreduce_seconds = 0.0            # time spent in the gradient all-reduce, in all

    @property
    def root(self) -> bool:
        return self.rank == 0

    def share(self, n: int, name: str) -> slice:
        """This rank's slice of n items (a global batch), n divisible by the number of ranks."""
        if n % self.size:
            ranks = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
            raise CollectiveError(f"{name}: the global batch of {n} does not split evenly over {self.size} MPI "
                                  f"ranks; expected a batch that is a multiple of {self.size}, or a number of "
                                  f"ranks that divides {n} ({ranks})")
        k = n // self.size
        return slice(self.rank * k, (self.rank + 1) * k)

    def sum_gradients(self, grads: dict, loss: float) -> float:
        """Sum grads (in place) and the loss over the ranks: one Allreduce of one flat buffer."""
        if self.comm is None:
            return loss
        from mpi4py import MPI
        n = sum(g.size for g in grads.values()) + 1
        dtype = next(iter(grads.values())).dtype
        if self._flat is None or self._flat.size != n or self._flat.dtype != dtype:
            self._flat = np.empty(n, dtype=dtype)
        flat, at = self._flat, 0
        for g in grads.values():
            flat[at:at + g.size] = g.reshape(-1)
            at += g.size
        flat[-1] = loss
        start = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        at = 0
        for g in grads.values():
            g.reshape(-1)[:] = flat[at:at + g.size]
            at += g.size
        return float(flat[-1])

    def agree(self, what: str, value) -> None:
        """Stop every rank with one error unless ``value`` (JSON-able) is the same on all."""
        if self.comm is None:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        digests = self.comm.allgather(digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise CollectiveError(f"MPI: the {what} of rank(s) {differ} differ(s) from rank 0's; every rank must run "
                             f"the same configuration on the same data")

    def check_parameters(self, params: dict, step: int) -> None:
        """The cheap drift check at a checkpoint: min and max over ranks of a checksum."""
        if self.comm is None:
            return
        from mpi4py import MPI
        local = np.array([sum(float(np.sum(p, dtype=np.float64)) + float(np.vdot(p, p)) for p in params.values())])
        low, high = np.empty(1), np.empty(1)
        self.comm.Allreduce(local, low, op=MPI.MIN)
        self.comm.Allreduce(local, high, op=MPI.MAX)
        if low[0] != high[0]:
            raise RuntimeError(f"MPI: the parameters differ between ranks at update {step} "
                               f"(checksums {low[0]!r} to {high[0]!r}); stopping")

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop request seen by one rank)."""
        if self.comm is None:
            return bool(flag)
        from mpi4py import MPI
        return bool(self.comm.allreduce(int(bool(flag)), op=MPI.MAX))

    def broadcast(self, value):
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def gather_columns(self, array):
        """(…, b, …) blocks of every rank, axis 1, joined in rank order on every rank."""
        if self.comm is None:
            return array
        return np.concatenate(self.comm.allgather(array), axis=1)


_LIMITS = []        # keeps the BLAS thread limit in force
# Set by MPI launchers (MPICH's hydra, Open MPI, PMIx, Slurm's srun, MVAPICH) in each rank.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                      "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def world() -> World:
    """The MPI world when launched under mpiexec with mpi4py installed, else a world of one.

    Outside a launcher MPI is not started at all: a single process does not pay MPI_Init
    nor depend on its transports (UCX's shared-memory files).

    With several ranks on one machine, each rank's BLAS gets its share of the cores:
    ranks whose BLAS threads outnumber the cores would spin against each other.
    """
    if not launched_by_mpi():
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        return World()
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return World()
    on_this_node = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    if not _LIMITS:
        from threadpoolctl import threadpool_limits
        from ..backends.settings import available_cores          # the cores the ranks may use (taskset, cpuset)
        _LIMITS.append(threadpool_limits(limits=max(1, available_cores() // on_this_node), user_api="blas"))
    return World(comm)
