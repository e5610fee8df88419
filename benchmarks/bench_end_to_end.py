"""Slide mode end to end, this checkout against a baseline commit, side by side in one command.

The command a user runs, `hovernet infer wsi --input_dir SLIDE --output_dir OUT` with every
default, in a fresh process per run (so imports, model loading and the ONNX export count), on:

- `mosaic20x`: a 2 x 2 mosaic of the bundled demo slide (CMU-1-Small-Region, 20x, 0.499 um/px),
  4440 x 5934 px, written once as a tiled pyramidal TIFF (lossless) to the work folder;
- `slide_a40x`: ../shared/data/seed_format/slide_a.tif (40x, 0.25 um/px), if it is there.

The baseline is extracted with `git archive REF` (benchmarks/baseline.py; default 93b4c3d, main
before this work) and run with the same virtualenv. Baseline and current runs alternate
(`--repeat` rounds), and the table gives the median wall time, seconds per mm^2 of tissue, the
nuclei, the network's share of the main process (summary `network_s`) and the speed-up.

    .venv/bin/python benchmarks/bench_end_to_end.py [--baseline 93b4c3d] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from baseline import extract

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOVERNET_SHARED", ROOT.parent / "shared"))
DEMO = ROOT / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
TILE = 256


def write_mosaic(path: Path) -> None:
    """2 x 2 copies of the demo slide as a tiled pyramidal TIFF at its 0.499 um/px (zlib)."""
    import cv2
    import tifffile

    from hovernet.io.slides import read_rgb

    one = read_rgb(DEMO)
    mosaic = np.concatenate([np.concatenate([one, one], axis=1)] * 2, axis=0)
    mpp = 0.499
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        level, k = mosaic, 0
        while True:
            tw.write(
                level, tile=(TILE, TILE), photometric="rgb", compression="zlib",
                resolution=(1e4 / (mpp * 2**k), 1e4 / (mpp * 2**k)), resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0, metadata=None,
            )  # fmt: skip
            if max(level.shape[:2]) <= 1024:
                break
            level = cv2.resize(
                level, (level.shape[1] // 2, level.shape[0] // 2), interpolation=cv2.INTER_AREA
            )
            k += 1


def run(code_root: Path, slide: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_root), NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, "-m", "hovernet", "infer", "wsi", f"--input_dir={slide}",
           f"--output_dir={out}", "--quiet"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code_root}):\n{done.stderr[-2000:]}")
    summary = json.loads((out / f"{slide.stem}.summary.json").read_text())
    return {"wall": wall, **summary}


def bench_setup(work: Path, baseline: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """({name: slide}, {"baseline": extracted code, "current": this checkout}) in `work`: the
    mosaic (written once) and slide_a where ../shared has it."""
    work.mkdir(parents=True, exist_ok=True)
    slides = {"mosaic20x": work / "mosaic20x.tif"}
    if not slides["mosaic20x"].exists():
        write_mosaic(slides["mosaic20x"])
    if (SHARED / "data" / "seed_format" / "slide_a.tif").is_file():
        slides["slide_a40x"] = SHARED / "data" / "seed_format" / "slide_a.tif"
    return slides, {"baseline": extract(baseline, work / f"base-{baseline}"), "current": ROOT}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="93b4c3d")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_e2e")
    args = parser.parse_args(argv)
    work = args.work
    slides, codes = bench_setup(work, args.baseline)
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.repeat):
        for name, slide in slides.items():
            for which, code in codes.items():
                out = work / f"out-{which}-{name}-{r}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                runs.setdefault((name, which), []).append(run(code, slide, out))
                last = runs[(name, which)][-1]
                print(f"  {name} {which} round {r + 1}: {last['wall']:.1f} s, "
                      f"{last['nuclei']} nuclei", flush=True)  # fmt: skip
    print(f"\nbaseline {args.baseline} vs this checkout, `hovernet infer wsi` defaults, "
          f"{os.cpu_count()} CPUs, median of {args.repeat}\n")  # fmt: skip
    print("| slide | code | wall s | tissue mm^2 | s / mm^2 | nuclei | network share | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in slides:
        base_wall = statistics.median(r["wall"] for r in runs[(name, "baseline")])
        for which in codes:
            rs = runs[(name, which)]
            wall = statistics.median(r["wall"] for r in rs)
            mm2 = rs[0]["tissue_mm2"]
            share = statistics.median(r["network_s"] / r["wall"] for r in rs)
            print(f"| {name} | {which} | {wall:.1f} | {mm2:.3f} | {wall / mm2:.1f} | "
                  f"{rs[0]['nuclei']} | {share:.0%} | {base_wall / wall:.2f}x |")  # fmt: skip
    # each round's baseline and current run back to back: their ratio is immune to the
    # machine's drift between rounds
    print()
    for name in slides:
        ratios = [
            b["wall"] / c["wall"]
            for b, c in zip(runs[(name, "baseline")], runs[(name, "current")], strict=True)
        ]
        listed = ", ".join(f"{r:.2f}x" for r in ratios)
        print(f"{name}: speed-up per round {listed}; median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
