"""`python -m hovernet.demo`: the whole pipeline on the bundled sample, no weights, no network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import scipy.io


@pytest.mark.slow
def test_demo_writes_five_outputs_and_says_weights_are_random(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "hovernet.demo", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "RANDOMLY INITIALISED" in result.stdout
    name = "dsb2018_00ae65c1"
    for rel in ("json", "mat", "overlay", "qupath", "csv"):
        assert str(out / rel / name) in result.stdout
    nuc = json.loads((out / "json" / f"{name}.json").read_text())["nuc"]
    mat = scipy.io.loadmat(out / "mat" / f"{name}.mat")
    assert mat["inst_map"].shape == (256, 320)
    assert mat["inst_uid"].ravel().tolist() == [int(i) for i in nuc]
    features = json.loads((out / "qupath" / f"{name}.geojson").read_text())["features"]
    assert len(features) == len(nuc)


def test_demo_refuses_a_missing_checkpoint(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hovernet.demo",
            "--output-dir",
            str(tmp_path / "o"),
            "--model-path",
            str(tmp_path / "none.tar"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "none.tar does not exist" in result.stderr
    assert not (tmp_path / "o").exists()
