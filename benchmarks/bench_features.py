"""The cost of the per-nucleus colour and texture features: slide mode with them (the default)
and without (`--no_colour_features`), this checkout, alternating fresh processes.

Each run is the command a user runs, `hovernet infer wsi --input_dir SLIDE --output_dir OUT
[--no_colour_features]` with every other default, in a fresh process (imports and model
loading count), on the bundled demo slide (CMU-1-Small-Region, 20x) or, with `--mosaic`, on
bench_end_to_end.py's 2 x 2 mosaic of it. Rounds alternate the order (on, off / off, on) so
that drift of a shared machine hits both alike; the table gives the median wall time and the
median of the per-round ratios (on / off) of the wall time and of the CPU time of the run
and its workers (less moved by other users of a shared machine), and the summary's network
time.
Also times `nucleus_features` alone against `nucleus_measurements` on the same instance map (a
3000 x 3000 tiling of a MoNuSeg image and its annotation), fastest of `--repeat` runs.

    .venv/bin/python benchmarks/bench_features.py [--rounds 3] [--mosaic]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOVERNET_SHARED", ROOT.parent / "shared"))
DEMO = ROOT / "hovernet" / "samples" / "CMU-1-Small-Region.svs"


def run(slide: Path, out: Path, features: bool) -> dict:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, "-m", "hovernet", "infer", "wsi", f"--input_dir={slide}",
           f"--output_dir={out}", "--quiet"]  # fmt: skip
    if not features:
        cmd.append("--no_colour_features")
    subprocess.run(["rm", "-rf", str(out)], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the run and its workers: less moved by other users of the machine
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / f"{slide.stem}.summary.json").read_text())
    header = (out / f"{slide.stem}.csv").read_text().split("\n", 1)[0]
    return {"wall": wall, "cpu": cpu, "columns": header.count(",") + 1, **summary}


def slide_ab(slide: Path, rounds: int, work: Path) -> None:
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(rounds):
        for features in (True, False) if r % 2 == 0 else (False, True):
            rec = run(slide, work / f"out-{int(features)}", features)
            runs[features].append(rec)
            print(f"  round {r + 1} features {'on ' if features else 'off'}: "
                  f"{rec['wall']:.1f} s, {rec['cpu']:.1f} CPU s, {rec['nuclei']} nuclei",
                  flush=True)  # fmt: skip
    print(f"\n{slide.name}, `hovernet infer wsi` defaults, {os.cpu_count()} CPUs, "
          f"median of {rounds}\n")  # fmt: skip
    print("| features | wall s | CPU s | CSV columns | nuclei | network s |")
    print("|---|---:|---:|---:|---:|---:|")
    for features in (False, True):
        rs = runs[features]
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        net = statistics.median(r["network_s"] for r in rs)
        print(f"| {'on' if features else 'off'} | {wall:.1f} | {cpu:.1f} | {rs[0]['columns']} | "
              f"{rs[0]['nuclei']} | {net:.1f} |")  # fmt: skip
    for key in ("wall", "cpu"):
        ratios = [a[key] / b[key] for a, b in zip(runs[True], runs[False], strict=True)]
        print(f"\nper-round {key} ratio on / off: {', '.join(f'{x:.3f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.3f}")  # fmt: skip


def function_times(repeat: int) -> None:
    """nucleus_features vs nucleus_measurements on one 3000 x 3000 map."""
    import cv2
    import tifffile

    from hovernet.infer.features import nucleus_features
    from hovernet.infer.measure import nucleus_measurements

    name = "TCGA-21-5784-01Z-00-DX1"
    lab = tifffile.imread(SHARED / "data" / "monuseg" / "labels" / f"{name}_inst.tif")
    lab = lab.astype(np.int32)
    img = cv2.imread(str(SHARED / "data" / "monuseg" / "images" / f"{name}.png"))[..., ::-1]
    top = int(lab.max())
    tiles = [[np.where(lab > 0, lab + (3 * k + j) * top, 0) for j in range(3)] for k in range(3)]
    big = np.block(tiles).astype(np.int32)
    rgb = np.ascontiguousarray(np.tile(img, (3, 3, 1)))
    ids = np.unique(big)[1:]
    best = {"features": np.inf, "measurements": np.inf}
    for _ in range(repeat):
        start = time.perf_counter()
        nucleus_features(rgb, big, ids, 0.5)
        mid = time.perf_counter()
        nucleus_measurements(big, ids)
        end = time.perf_counter()
        best["features"] = min(best["features"], mid - start)
        best["measurements"] = min(best["measurements"], end - mid)
    print(
        f"\n3000 x 3000 map, {len(ids)} nuclei, fastest of {repeat}: nucleus_features "
        f"{best['features']:.3f} s, nucleus_measurements {best['measurements']:.3f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mosaic", action="store_true", help="the 2 x 2 mosaic, not the demo")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_feat")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    function_times(args.repeat)
    slide = DEMO
    if args.mosaic:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_end_to_end import write_mosaic

        slide = args.work / "mosaic20x.tif"
        if not slide.exists():
            write_mosaic(slide)
    slide_ab(slide, args.rounds, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
