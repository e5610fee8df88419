"""Benchmarks against a baseline commit: extract it, run a timing script under it and this checkout.

A benchmark keeps no copy of old code. It measures a baseline commit's package, extracted with
`git archive REF hovernet` into a folder, against this checkout's, each in a fresh process of the
same virtualenv with the side's folder first on PYTHONPATH:

- `extract(ref, into)`: the baseline's `hovernet` package under `into` (extracted afresh);
- `sides(ref, work)`: {"baseline": extracted folder, "current": this checkout};
- `run_side(code_root, script, args, out)`: `python script --side OUT ARGS` with code_root's
  `hovernet` importable; the script times its functions, writes what it made under OUT and its
  times as JSON to OUT/times.json ({row: seconds}), which this returns;
- `race(script, args, codes, work, rounds)`: baseline and current alternately `rounds` times;
  the fastest time of each row per side, and the folders each side's last round wrote into.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract(ref: str, into: Path) -> Path:
    """`git archive REF hovernet` unpacked under `into` (an import root for that commit)."""
    shutil.rmtree(into / "hovernet", ignore_errors=True)  # REF may name another commit now
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "hovernet"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as fh:
        fh.write(archive)
        fh.seek(0)
        with tarfile.open(fileobj=fh) as tar:
            tar.extractall(into, filter="data")
    return into


def sides(ref: str, work: Path) -> dict[str, Path]:
    """{"baseline": REF's package extracted under `work`, "current": this checkout}."""
    return {"baseline": extract(ref, work / f"base-{ref}"), "current": ROOT}


def side_env(code_root: Path) -> dict[str, str]:
    """The environment that makes `code_root`'s `hovernet` the one imported."""
    return dict(os.environ, PYTHONPATH=str(code_root), NO_ALBUMENTATIONS_UPDATE="1")


def run_side(code_root: Path, script: Path, args: list[str], out: Path) -> dict[str, float]:
    """Run `script --side OUT ARGS` under `code_root`; the times it wrote to OUT/times.json."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, str(script), "--side", str(out), *args]
    done = subprocess.run(cmd, cwd=code_root, env=side_env(code_root), text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed under {code_root}")
    return json.loads((out / "times.json").read_text())


def race(
    script: Path, args: list[str], codes: dict[str, Path], work: Path, rounds: int
) -> tuple[dict[str, dict[str, float]], dict[str, Path]]:
    """({side: {row: fastest s}}, {side: the folder its last round wrote}), sides alternating."""
    best: dict[str, dict[str, float]] = {side: {} for side in codes}
    outs = {side: work / f"out-{side}" for side in codes}
    for _ in range(rounds):
        for side, code in codes.items():
            for row, s in run_side(code, script, args, outs[side]).items():
                best[side][row] = min(s, best[side].get(row, float("inf")))
    return best, outs


def imported_from() -> str:
    """Where this process's `hovernet` comes from (a side checks it runs the code it should)."""
    import hovernet

    return str(Path(hovernet.__file__).resolve().parents[1])


def ratio_table(best: dict[str, dict[str, float]], rows: list[str]) -> list[str]:
    """Markdown rows `| row | baseline s | current s | speed-up |` ("-" where a side lacks it)."""
    out = ["| step | baseline s | current s | speed-up |", "|---|---:|---:|---:|"]
    for row in rows:
        b, c = best["baseline"].get(row), best["current"].get(row)
        cells = [f"{b:.3f}" if b is not None else "-", f"{c:.3f}" if c is not None else "-"]
        speed = f"{b / c:.2f}x" if b is not None and c else "-"
        out.append(f"| {row} | {cells[0]} | {cells[1]} | {speed} |")
    return out
