"""docs/training.md's walk-through, run as written on ../shared/data/seed_format with `lite`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import DATA, REPO

DOC = REPO / "docs" / "training.md"


def walkthrough_blocks() -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks between the walkthrough markers, in order."""
    text = DOC.read_text(encoding="utf-8")
    part = text.split("<!-- walkthrough: begin -->")[1].split("<!-- walkthrough: end -->")[0]
    return re.findall(r"```(bash|python)\n(.*?)```", part, flags=re.S)


def test_walkthrough_is_bash_and_python():
    blocks = walkthrough_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash"]
    commands = " ".join(code for _, code in blocks)
    for step in ("extract-patches", "--view train", "train --data", "infer", "stats"):
        assert step in commands


@pytest.mark.slow
def test_walkthrough_runs(tmp_path):
    (tmp_path / "seed_format").symlink_to(DATA / "seed_format")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hovernet"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hovernet "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(REPO))
    for lang, code in walkthrough_blocks():
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable]
        done = subprocess.run(
            cmd, cwd=tmp_path, env=env, input=code if lang == "python" else None,
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "dataset" / "manifest.csv").is_file()
    assert (tmp_path / "run" / "view_train.png").stat().st_size > 10_000
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert best["mode"] == "lite" and best["mpp"] == 0.25
    assert [v[0] for v in best["type_info"].values()] == [
        "background",
        "other nuclei",
        "inflammatory",
    ]
    assert (tmp_path / "pred" / "json" / "slide_b.json").is_file()
    result = json.loads((tmp_path / "result.json").read_text())
    assert "pq" in json.dumps(result)
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} >= {"loss.png", "lr.png"}
