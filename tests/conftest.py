import numpy as np
import pytest


@pytest.fixture(autouse=True)
def strict_floats():
    """Overflow, division by zero and invalid operations are errors in every test."""
    old = np.seterr(over="raise", divide="raise", invalid="raise", under="ignore")
    yield
    np.seterr(**old)
