"""The diagnostic benchmark scripts run against the current engine (a tiny shape)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lstm_profile_runs_and_its_parts_fit_in_the_whole(cell):
    out = subprocess.run([sys.executable, "lstm_profile.py", "--shape", "4,2,3,5", "--cell", cell],
                         cwd=ROOT / "benchmarks", capture_output=True, text=True, check=True).stdout
    ms = {m[1]: float(m[2]) for m in re.finditer(r"^\s*(\S.*?)\s+([\d.]+) ms", out, re.M)}
    assert {"forward", "backward", "forward loop", "input projection", "backward loop", "∂W products"} <= set(ms), out
    # each block's parts lie inside its whole, so their medians do too
    assert ms["forward loop"] <= ms["forward"] and ms["backward loop"] <= ms["backward"]
