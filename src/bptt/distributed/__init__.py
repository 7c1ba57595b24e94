"""Floor 6: data-parallel training over MPI (mpi4py); see mpi.py."""
from .mpi import World, world

__all__ = ["World", "world"]
