"""Where the engine's main process spends its time per network window, before and after the
maps stayed on the device, and slide-mode throughput on a GPU.

Profile (default): slide regions (3328^2 px: a 3000 px core and fast mode's margins) of a
synthetic slide, held in memory, through

- *before*: the engine as it was (unchanged building blocks, run here in the same order):
  windows cut and stacked on the host, per batch one upload, the network and one copy back,
  each window placed by `Stitcher` (tests/support/stitcher.py), type ids by numpy
  (`maps.to_pred_maps`), the job pickled whole for the worker pool (what
  `ProcessPoolExecutor` does before the pipe);
- *after*: `predict_stream` as it is (image up once, windows cut, stitched and finished on the
  device, one copy per region into shared memory) and the job pickled by `SharedArrays.dumps`;

first with every stage synchronised (milliseconds per window per stage: cut, upload, network,
stitch, finish, download, ship; bytes sent per region), then free-running (windows/s of the
whole loop, and its efficiency: the same windows through the network alone, inputs and
outputs on the device, over the loop's wall time). Both must give the same maps; the table
says whether they did.

    python benchmarks/bench_engine.py                       # CPU, BlobNet, 2 regions (~2 min)
    python benchmarks/bench_engine.py --arch fast --windows 4   # + the real net's time on CPU
    python benchmarks/bench_engine.py --device cuda --arch fast --precision bf16 --regions 4

Slide (`--slide`): `run_slides` on a synthetic slide (`--size`, half tissue) with the network
of `--arch` (random weights), GPU utilisation sampled, the batch from free memory unless
`--batch_size` is given, `--compile` to torch.compile it; tissue mm^2/min, and the network-only
time for the same windows (device-resident) over the slide's wall time (efficiency):

    python benchmarks/bench_engine.py --slide --device cuda --arch fast --precision bf16
    python benchmarks/bench_engine.py --slide --device cpu --arch lite --size 1024 --workers 1
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.stitcher

from bench_slide import SyntheticSlide, timed_slide_run  # noqa: E402
from support.stitcher import Stitcher  # noqa: E402

from hovernet.device import autocast_dtype, model_device  # noqa: E402
from hovernet.infer.gpu import compile_for_inference, probe_batch_size  # noqa: E402
from hovernet.infer.maps import to_pred_maps  # noqa: E402
from hovernet.infer.predict import (  # noqa: E402
    StageClock,
    network_maps,
    predict_maps,
    predict_stream,
)
from hovernet.infer.sharedmem import SharedArrays  # noqa: E402
from hovernet.infer.tiling import TileGrid  # noqa: E402

MPP = 0.25
STAGES = ["pad", "cut", "upload", "network", "download", "stitch", "finish", "ship"]


def build(arch: str, device: str, nr_types: int) -> torch.nn.Module:
    if arch == "blob":
        from hovernet.model.standin import BlobNet

        return BlobNet(nr_types=nr_types).to(device)
    from hovernet.model.inference import prepare_for_inference
    from hovernet.model.registry import build_model

    torch.manual_seed(0)
    model = build_model(arch, nr_types).to(device).eval()
    return prepare_for_inference(model, channels_last=True)


def regions(n: int, side: int) -> list[np.ndarray]:
    """n regions of side^2 px from inside the tissue of a synthetic slide."""
    slide = SyntheticSlide(max(8192, 2 * side), 0.5)
    x0, y0, x1, _ = slide.box
    step = max(1, (x1 - x0 - side) // max(1, n))
    return [slide.read(x0 + i * step, y0, side, side, MPP) for i in range(n)]


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def before(model, images, batch_size, dtype, clock: StageClock, keep: bool = False) -> list:
    """The engine's stream as it was, stage by stage; the PredMaps if `keep`."""
    g, device = model.geometry, model_device(model)
    typed = model.nr_types is not None
    channels = 3 + (model.nr_types if typed else 0)
    pending, batch, owners, out_maps = [], [], [], []

    def flush():
        with clock("cut"):
            x = torch.from_numpy(np.stack(batch))
        with clock("upload"):
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
        with clock("network"):
            maps = network_maps(model, x, dtype)
        with clock("download"):
            out = maps.to("cpu").numpy()
        with clock("stitch"):
            for (stitcher, index), window in zip(owners, out, strict=True):
                stitcher.add(index, window)
        clock.count("windows", len(batch))
        batch.clear()
        owners.clear()
        while pending and pending[0].done:
            stitcher = pending.pop(0)
            with clock("finish"):
                maps = to_pred_maps(stitcher.result(), typed)
            with clock("ship"):
                clock.count("bytes_pipe", len(pickle.dumps((0, maps), pickle.HIGHEST_PROTOCOL)))
            if keep:
                out_maps.append(maps)

    with torch.inference_mode():
        for image in images:
            with clock("pad"):
                grid = TileGrid(image.shape[:2], g.input_size, g.output_size)
                padded = grid.pad(image)
            stitcher = Stitcher(grid, channels)
            pending.append(stitcher)
            for index in range(len(grid)):
                batch.append(grid.crop(padded, index))
                owners.append((stitcher, index))
                if len(batch) == batch_size:
                    flush()
        if batch:
            flush()
    return out_maps


def after(model, images, batch_size, precision, clock, shared, keep=False, in_flight=2) -> list:
    """The engine's stream as it is, each job pickled as the engine now ships it; the last
    `in_flight` jobs are held (their workers would still be reading them), older ones let go,
    so their files are reused, as in a slide's run; the PredMaps if `keep`."""
    out_maps, held = [], []
    for _, _, maps in predict_stream(
        model, enumerate(images), batch_size, precision, alloc=shared.empty, clock=clock
    ):
        with clock("ship"):
            payload, holders, nbytes = shared.dumps((0, maps))
        clock.count("bytes_pipe", len(payload))
        clock.count("bytes_shared", nbytes)
        held = (held + [holders])[-in_flight:]
        if keep:
            out_maps.append(maps)
        del maps, holders
    return out_maps


def network_only(model, windows: int, batch_size: int, dtype) -> float:
    """Seconds for `windows` windows through the network alone, inputs and outputs on the
    device (the bound an engine can reach), after one warm-up batch."""
    device = model_device(model)
    size = model.geometry.input_size
    x = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, device=device)
    sync = _sync(device)
    with torch.inference_mode():
        network_maps(model, x, dtype)
        sync()
        start = time.perf_counter()
        for _ in range(math.ceil(windows / batch_size)):
            network_maps(model, x, dtype)
        sync()
    return time.perf_counter() - start


def same_maps(a: list, b: list) -> str:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        worst = max(worst, float(np.abs(x.pred_map - y.pred_map).max()))
        if x.type_softmax is not None:
            worst = max(worst, float(np.abs(x.type_softmax - y.type_softmax).max()))
    return "identical" if worst == 0 else f"max difference {worst:.2e}"


def profile(args) -> None:
    device = torch.device(args.device)
    model = build(args.arch, args.device, args.nr_types)
    dtype = autocast_dtype(device, args.precision)
    images = regions(args.regions, args.region)
    g = model.geometry
    if args.windows:  # a slow network on the CPU: a strip of `windows` windows per region
        images = [im[: g.output_size, : g.output_size * args.windows] for im in images]
    bs = args.batch_size
    sync = _sync(device)
    shared = SharedArrays()  # one per run, as the engine has (files reused from job to job)
    same = same_maps(
        before(model, images, bs, dtype, StageClock(), keep=True),
        after(model, images, bs, args.precision, StageClock(), shared, keep=True),
    )
    sync()
    if device.type == "cuda":  # the device's maps against the CPU's, on a crop
        crop = np.ascontiguousarray(images[0][: 3 * g.output_size, : 3 * g.output_size])
        ref = predict_maps(build(args.arch, "cpu", args.nr_types), crop, 8, "fp32")
        got = predict_maps(model, crop, bs, args.precision)
        diff = np.abs(got.pred_map[..., -3:] - ref.pred_map[..., -3:]).max()
        types = (got.pred_map[..., 0] != ref.pred_map[..., 0]).mean()
        print(
            f"{device} ({args.precision}) vs CPU (fp32) maps on {crop.shape[0]}^2 px: prob/h/v "
            f"max difference {diff:.2e}, type ids differ at {types:.3%} of pixels"
        )
    # each path `repeat` times, alternating; the fastest of each stage
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    counts: dict[str, dict[str, int]] = {}
    for _ in range(args.repeat):
        for name in best:
            clock = StageClock(sync)
            if name == "before":
                before(model, images, bs, dtype, clock)
            else:
                after(model, images, bs, args.precision, clock, shared)
            for stage, sec in clock.seconds.items():
                best[name][stage] = min(best[name].get(stage, sec), sec)
            counts[name] = dict(clock.counts)
    n = counts["after"]["windows"]
    assert counts["before"]["windows"] == n
    print(
        f"\n{args.arch} on {device}, {len(images)} regions of {images[0].shape[0]} x "
        f"{images[0].shape[1]} px ({n} windows), batch {bs}, {args.precision}, best of "
        f"{args.repeat}; maps before vs after: {same}\n"
    )
    print("| stage (main process, synchronised) | before ms/window | after ms/window | ratio |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        b, a = (best[k].get(stage, 0.0) * 1000 / n for k in ("before", "after"))
        ratio = f"{b / a:.1f}x" if a > 1e-4 else "-"
        print(f"| {stage} | {b:.3f} | {a:.3f} | {ratio} |")
    b, a = (sum(v for k, v in best[x].items() if k != "network") * 1000 / n for x in best)
    print(f"| all but the network | {b:.3f} | {a:.3f} | {b / a:.1f}x |")
    per_region = {k: c["bytes_pipe"] / len(images) for k, c in counts.items()}
    mapped = counts["after"]["bytes_shared"] / len(images)
    print(
        f"| bytes to a worker per region (pipe) | {per_region['before'] / 1e6:.1f} MB | "
        f"{per_region['after'] / 1e3:.1f} kB (+ {mapped / 1e6:.1f} MB mapped) | "
        f"{per_region['before'] / max(1, per_region['after']):.0f}x |"
    )
    # free-running: the whole loop without synchronising, and the network alone (inputs and
    # outputs on the device) for as many windows; interleaved, the fastest of each
    runs: dict[str, float] = {}
    for _ in range(args.repeat):
        for name in ("before", "after", "network"):
            start = time.perf_counter()
            if name == "before":
                before(model, images, bs, dtype, StageClock())
            elif name == "after":
                after(model, images, bs, args.precision, StageClock(), shared)
            sync()
            took = time.perf_counter() - start
            if name == "network":  # timed inside, without its warm-up batch
                took = network_only(model, n, bs, dtype)
            runs[name] = min(runs.get(name, math.inf), took)
    net = runs.pop("network")
    print(f"\n| free-running loop | windows/s | ratio | efficiency (network-only {net:.2f} s) |")
    print("|---|---:|---:|---:|")
    for name, wall in runs.items():
        ratio = runs["before"] / wall
        print(f"| {name} | {n / wall:.1f} | {ratio:.2f} | {net / wall:.2f} |")
    print(f"| network alone, on the device | {n / net:.1f} | {runs['before'] / net:.2f} | 1.00 |")
    print(
        f"RESULT profile {args.arch} {args.precision} batch {bs} on {device}: engine efficiency "
        f"{net / runs['before']:.2f} before, {net / runs['after']:.2f} after; windows/s "
        f"{n / runs['before']:.0f} before, {n / runs['after']:.0f} after, {n / net:.0f} network "
        f"alone; host ms/window outside the network {b:.2f} before, {a:.2f} after"
    )
    shared.close()


def slide_run(args) -> dict:
    """One synthetic slide through run_slides; the figures as a dict (also printed as JSON)."""

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build(args.arch, args.device, args.nr_types)
    batch = args.batch_size
    if args.auto_batch and device.type == "cuda":
        batch = probe_batch_size(model, args.precision)
    compile_s = 0.0
    if args.compile:
        compile_for_inference(model)
        start = time.perf_counter()  # compile now, outside the timed run
        size = model.geometry.input_size
        warm = torch.zeros((batch, size, size, 3), dtype=torch.uint8, device=device)
        with torch.inference_mode():
            network_maps(model, warm, autocast_dtype(device, args.precision))
        _sync(device)()
        compile_s = time.perf_counter() - start
    result, wall, samples = timed_slide_run(
        model,
        SyntheticSlide(args.size, args.tissue),
        device.type == "cuda",
        region_size=args.region_size,
        batch_size=batch,
        precision=args.precision,
        post_proc_workers=args.workers,
    )
    s = result.summary
    windows = s["network_windows_this_run"]
    net = network_only(model, windows, batch, autocast_dtype(device, args.precision))
    return {
        "device": str(device),
        "arch": args.arch,
        "precision": args.precision,
        "size": args.size,
        "batch": batch,
        "compiled": bool(args.compile),
        "compile_s": round(compile_s, 1),
        "tissue_mm2": s["tissue_mm2"],
        "regions": s["regions_tissue"],
        "windows": windows,
        "wall_s": round(wall, 2),
        "mm2_per_min": round(s["tissue_mm2"] / wall * 60, 2),
        "gpu_util": round(float(np.mean(samples)), 1) if samples else None,
        "network_only_s": round(net, 2),
        "efficiency": round(net / wall, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="blob", help="blob (stand-in), fast, original or lite")
    ap.add_argument("--nr_types", type=int, default=6)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch_size", type=int, default=None)
    ap.add_argument("--regions", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each path (best kept)")
    ap.add_argument("--region", type=int, default=3328, help="region side read (px)")
    ap.add_argument("--windows", type=int, default=0, help="windows per region strip (slow nets)")
    ap.add_argument("--slide", action="store_true", help="slide throughput instead of profile")
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--tissue", type=float, default=0.5)
    ap.add_argument("--region_size", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    from hovernet.resources import available_cpus

    args.workers = args.workers if args.workers is not None else max(1, available_cpus() - 1)
    args.auto_batch = args.batch_size is None
    args.batch_size = args.batch_size or (32 if args.device.startswith("cuda") else 8)
    if not args.slide:
        profile(args)
        return
    row = slide_run(args)
    print("SLIDE " + json.dumps(row))
    keys = ["mm2_per_min", "gpu_util", "network_only_s", "wall_s", "efficiency", "batch"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    print(result_line(row))


def result_line(r: dict) -> str:
    """One line: the slide's figures and, on CUDA, whether they meet the H200 target."""
    line = (
        f"RESULT {r['arch']} {r['precision']} batch {r['batch']}"
        f"{' compiled' if r['compiled'] else ''} on {r['device']}: {r['mm2_per_min']} mm^2/min, "
        f"GPU util {r['gpu_util']} %, network-only {r['network_only_s']} s of {r['wall_s']} s "
        f"wall, efficiency {r['efficiency']}"
    )
    if r["device"].startswith("cuda"):
        ok = r["mm2_per_min"] >= 60 and r["efficiency"] >= 0.85
        line += f"; {'meets' if ok else 'misses'} the target (>= 60 mm^2/min, efficiency >= 0.85)"
    return line


if __name__ == "__main__":
    main()
