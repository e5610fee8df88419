"""scripts/gpu_check.sh, the GPU throughput check, in its CPU smoke mode (a real architecture,
`lite`, with random weights on a small synthetic slide): it runs end to end, the engine's maps
equal the old engine's, and it reports throughput and efficiency."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


@pytest.mark.slow  # three torch processes and a slide on the CPU: ~40 s on 2 cores
def test_gpu_check_smoke_mode_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable, "WORKERS": "0"}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "maps before vs after: identical" in out
    assert re.search(r"\| all but the network \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out), out
    result = re.search(
        r"RESULT lite fp32 batch 8 on cpu: ([\d.]+) mm\^2/min, .* efficiency ([\d.]+)", out
    )
    assert result, out
    assert float(result.group(1)) > 0 and 0 < float(result.group(2)) <= 1.5


def test_gpu_check_refuses_a_bad_option():
    done = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
