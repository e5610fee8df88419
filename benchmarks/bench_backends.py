"""PyTorch fp32 against ONNX Runtime fp32, end to end, the way a user runs them.

What `--precision auto` picks on a CPU without native bf16 rests on this. Each run is the CLI in
a fresh process (imports, model loading and the ONNX export or cache read count), with bf16
turned off by `--precision fp32` and every other option at its default, on:

- `tile`: the first `--tiles` MoNuSeg test tiles (1000 x 1000, 40x) from ../shared/data/monuseg,
  `hovernet infer tile --input_mpp 0.25` (resampled to the bundled model's 0.5 um/px);
- `slide`: the bundled demo slide hovernet/samples/CMU-1-Small-Region.svs, `hovernet infer wsi`.

Variants, alternating inside every round (the order rotates from round to round):

- `torch`: `--backend torch`;
- `onnx-export`: `--backend onnxruntime` with an empty ONNX cache (`HOVERNET_CACHE` set to a new
  folder per run), so the model is exported in the run, as on a first run;
- `onnx-cached`: `--backend onnxruntime` with the cache already filled (by a run before the
  rounds), as on every later run.

The table gives per variant the median wall time and CPU time (user + system of the process and
its workers: less sensitive to other load on a shared machine than wall time) and, per round,
each ONNX variant's time against the torch run of the same round (above 1: ONNX Runtime is
slower), with the median of those ratios.

    .venv/bin/python benchmarks/bench_backends.py [--rounds 5] [--tiles 4] [--modes tile slide]
        [--model_path CHECKPOINT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOVERNET_SHARED", ROOT.parent / "shared"))
MONUSEG = SHARED / "data" / "monuseg"
DEMO = ROOT / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
VARIANTS = ("torch", "onnx-export", "onnx-cached")


def monuseg_tiles(count: int) -> list[Path]:
    names = json.loads((MONUSEG / "split.json").read_text())["test"][:count]
    return [MONUSEG / "images" / f"{name}.png" for name in names]


def command(mode: str, variant: str, out: Path, tiles: list[Path], model: str | None) -> list[str]:
    backend = "torch" if variant == "torch" else "onnxruntime"
    cmd = [sys.executable, "-m", "hovernet", "infer", f"--backend={backend}", "--precision=fp32"]
    cmd += [f"--model_path={model}"] if model else []
    if mode == "tile":
        inputs = [f"--input_dir={t}" for t in tiles]
        return [*cmd, "tile", *inputs, f"--output_dir={out}", "--input_mpp=0.25", "--quiet"]
    return [*cmd, "wsi", f"--input_dir={DEMO}", f"--output_dir={out}", "--quiet"]


def run_once(cmd: list[str], cache: Path) -> tuple[float, float]:
    """(wall s, CPU s of the process and the workers it waited for)."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HOVERNET_CACHE=str(cache))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def bench(modes: list[str], rounds: int, tiles: list[Path], work: Path, model: str | None) -> dict:
    """{(mode, variant): [(wall s, CPU s) per round]}, the variants alternating in every round."""
    warm_cache = work / "cache-warm"
    walls: dict[tuple[str, str], list[float]] = {}
    for mode in modes:
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        run_once(command(mode, "onnx-cached", out, tiles, model), warm_cache)  # fills the cache
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for variant in order:
                shutil.rmtree(out, ignore_errors=True)
                cache = warm_cache if variant == "onnx-cached" else work / f"cache-{mode}-{r}"
                wall, cpu = run_once(command(mode, variant, out, tiles, model), cache)
                walls.setdefault((mode, variant), []).append((wall, cpu))
                print(f"  {mode} round {r + 1} {variant}: {wall:.2f} s, CPU {cpu:.2f} s",
                      flush=True)  # fmt: skip
                if variant != "onnx-cached":
                    shutil.rmtree(cache, ignore_errors=True)
    return walls


def ratio_cells(values: tuple, base: tuple, is_base: bool) -> list[str]:
    """[the ratios to `base` round by round, their median] as table cells."""
    if is_base:
        return ["-", "-"]
    ratios = [v / b for v, b in zip(values, base, strict=True)]
    return [", ".join(f"{r:.2f}" for r in ratios), f"{statistics.median(ratios):.2f}"]


def report(walls: dict, modes: list[str], rounds: int, tiles: int, model: str | None) -> None:
    import onnxruntime
    import torch

    print(f"\n`hovernet infer --precision fp32`, {model or 'bundled model'}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; tile = {tiles} MoNuSeg test tiles at "
          f"--input_mpp 0.25, slide = the demo slide; {rounds} rounds\n")  # fmt: skip
    print("| mode | variant | median wall s | min-max | wall vs torch per round | median | "
          "median CPU s | CPU vs torch per round | median |")  # fmt: skip
    print("|---|---|---:|---:|---|---:|---:|---|---:|")
    for mode in modes:
        base_wall, base_cpu = zip(*walls[(mode, "torch")], strict=True)
        for variant in VARIANTS:
            ws, cs = zip(*walls[(mode, variant)], strict=True)
            cells = [f"{statistics.median(ws):.2f}", f"{min(ws):.2f}-{max(ws):.2f}"]
            cells += ratio_cells(ws, base_wall, variant == "torch")
            cells += [f"{statistics.median(cs):.2f}"]
            cells += ratio_cells(cs, base_cpu, variant == "torch")
            print(f"| {mode} | {variant} | " + " | ".join(cells) + " |")
    print("\n(ratios: ONNX Runtime's time / PyTorch's in the same round; above 1 = slower)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiles", type=int, default=4, help="MoNuSeg test tiles (at most 14)")
    parser.add_argument("--modes", nargs="+", choices=["tile", "slide"], default=["tile", "slide"])
    parser.add_argument("--model_path", help="a checkpoint (default: the bundled model)")
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    tiles = monuseg_tiles(args.tiles) if "tile" in args.modes else []
    if "tile" in args.modes and not all(t.is_file() for t in tiles):
        raise SystemExit(f"MoNuSeg test tiles not found under {MONUSEG}: set HOVERNET_SHARED")
    with tempfile.TemporaryDirectory(prefix="bench_backends.") as tmp:
        work = args.work or Path(tmp)
        walls = bench(args.modes, args.rounds, tiles, work, args.model_path)
    report(walls, args.modes, args.rounds, len(tiles), args.model_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
