"""Where slide mode's time goes, stage by stage, this checkout against a baseline commit.

Each code runs `hovernet infer --nr_post_proc_workers 0 wsi` (post-processing in the main
process, so that the stages add up to the wall time) under cProfile on the slides of
`bench_end_to_end.py`; the table gives each stage's seconds and share of the profiled process:

- startup: imports, model loading and the command line (the process less `run_slides`);
- tissue: the tissue mask (`tissue_mask`);
- network: every batch through the network (`_run_batch` before, `network_maps` now; the
  HV calibration's windows included);
- post-processing: watershed and nucleus records (`postprocess`);
- measurements: per-nucleus shapes (`nucleus_measurements`);
- exports: GeoJSON, CSV, JSON, overlay (`_export` before, `export_slide` now);
- rest: reading regions, padding and stitching, the store, resampling.

cProfile slows Python-heavy stages more than the network, so the shares are for comparing the
two codes, not wall times (`bench_end_to_end.py` gives those).

    .venv/bin/python benchmarks/bench_stages.py [--baseline 93b4c3d]
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_end_to_end import bench_setup

STAGES = {
    "tissue": ("tissue_mask",),
    "network": ("_run_batch", "network_maps"),
    "post-processing": ("postprocess",),
    "measurements": ("nucleus_measurements",),
    "exports": ("_export", "export_slide"),
}


def profile(code_root: Path, slide: Path, out: Path) -> Path:
    prof = out.with_suffix(".prof")
    env = dict(os.environ, PYTHONPATH=str(code_root), NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "hovernet", "infer",
           "--nr_post_proc_workers", "0", "wsi", f"--input_dir={slide}", f"--output_dir={out}",
           "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code_root}):\n{done.stderr[-2000:]}")
    return prof


def cumulative(stats: pstats.Stats, names: tuple[str, ...], under: str) -> float:
    """Seconds inside the functions called `names` in files under `under` (outermost calls:
    the largest cumulative time per name, summed over names)."""
    total = 0.0
    for name in names:
        best = 0.0
        for (path, _, func), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
            if func == name and path.startswith(under):
                best = max(best, cum)
        total += best
    return total


def stages(prof: Path, code_root: Path) -> dict[str, float]:
    stats = pstats.Stats(str(prof))
    under = str(code_root / "hovernet")
    whole = stats.total_tt  # type: ignore[attr-defined]
    run = cumulative(stats, ("run_slides",), under)
    out = {"startup": whole - run}
    for stage, names in STAGES.items():
        out[stage] = cumulative(stats, names, under)
    out["rest"] = run - sum(out[s] for s in STAGES)
    out["total"] = whole
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="93b4c3d")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_e2e")
    args = parser.parse_args(argv)
    work = args.work
    slides, codes = bench_setup(work, args.baseline)
    rows = {}
    for name, slide in slides.items():
        for which, code in codes.items():
            out = work / f"stages-{which}-{name}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            rows[(name, which)] = stages(profile(code, slide, out), code)
            print(f"  {name} {which}: {rows[(name, which)]['total']:.1f} s profiled", flush=True)
    names = ["startup", *STAGES, "rest"]
    print(f"\nseconds (share) under cProfile, post-processing inline; baseline {args.baseline}\n")
    print("| slide | code | " + " | ".join(names) + " | total |")
    print("|---|---|" + "---:|" * (len(names) + 1))
    for (name, which), row in rows.items():
        cells = [f"{row[s]:.1f} ({row[s] / row['total']:.0%})" for s in names]
        print(f"| {name} | {which} | " + " | ".join(cells) + f" | {row['total']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
