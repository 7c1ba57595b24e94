"""Floor 6: data-parallel training over MPI (mpi4py); see mpi.py."""
from .mpi import CollectiveError, World, world

__all__ = ["CollectiveError", "World", "world"]
