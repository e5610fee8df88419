"""Slide-mode throughput and memory on synthetic slides (no files, no weights needed).

CPU (default): the `BlobNet` stand-in network on synthetic slides of 10k^2, 25k^2 and 50k^2 px
with the same tissue fraction, each size in a fresh process: peak RSS of the main process and of
the post-processing workers, wall time, regions/s and mm^2 of tissue per minute. Peak memory
should not grow with slide size, time should grow linearly with tissue area.

    python benchmarks/bench_slide.py            # 10k, 25k, 50k at 1 % tissue
    python benchmarks/bench_slide.py --quick    # 10k only

GPU: a real network with random weights (`--arch fast|original|lite`) in `--precision`, on one
synthetic slide of `--size` px (default 16384, half tissue), with GPU utilisation sampled from
nvidia-smi (or torch.cuda.utilization), and the same number of network windows run alone as the
baseline (engine efficiency = network-only time / wall time):

    python benchmarks/bench_slide.py --device cuda --arch fast --precision bf16 --precision fp32

The synthetic slide is generated on the fly (a periodic texture of dark nuclei-like disks inside
a centred square of tissue on white), so even a 50k^2 slide uses no memory of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.network_batch

MPP = 0.25
TISSUE_RGB = (205, 150, 190)


def _texture(period: int = 480, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    tex = np.empty((period, period, 3), np.uint8)
    tex[:] = TISSUE_RGB
    step = 24
    for y in range(step // 2, period, step):
        for x in range(step // 2, period, step):
            if rng.random() < 0.7:
                cx, cy = x + rng.integers(-4, 5), y + rng.integers(-4, 5)
                r = int(rng.integers(4, 8))
                # disks wrap around the tile so the texture is periodic
                for ox in (-period, 0, period):
                    for oy in (-period, 0, period):
                        cv2.circle(tex, (int(cx + ox), int(cy + oy)), r, (60, 40, 110), -1)
    return tex


class SyntheticSlide:
    """A `size` x `size` slide at 0.25 um/px: a centred square of tissue (`fraction` of the
    area) textured with disks, white elsewhere. Has the methods of hovernet.io.wsi.Slide."""

    def __init__(self, size: int, fraction: float):
        self.path = Path(f"synthetic_{size}.svs")
        self.dimensions = (size, size)
        self.mpp, self.magnification = MPP, 40.0
        side = int(round(size * fraction**0.5))
        self.box = ((size - side) // 2, (size - side) // 2, (size + side) // 2, (size + side) // 2)
        self.tex = _texture()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def size_at(self, mpp: float) -> tuple[int, int]:
        assert abs(mpp - MPP) < 1e-9, "the synthetic slide is read at its own resolution"
        return self.dimensions

    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = self.box
        ax0, ay0, ax1, ay1 = max(x, x0), max(y, y0), min(x + w, x1), min(y + h, y1)
        if ax1 > ax0 and ay1 > ay0:
            p = self.tex.shape[0]
            rows = np.arange(ay0, ay1) % p
            cols = np.arange(ax0, ax1) % p
            out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = self.tex[rows][:, cols]
        return out

    def thumbnail(self, max_side: int = 2048):
        k = max(1, -(-max(self.dimensions) // max_side))
        size = -(-self.dimensions[0] // k)
        thumb = np.full((size, size, 3), 255, np.uint8)
        x0, y0, x1, y1 = (v // k for v in self.box)
        thumb[y0:y1, x0:x1] = TISSUE_RGB
        return thumb, MPP * k


def _gpu_sampler(stop: threading.Event, samples: list[float]) -> None:
    import shutil

    smi = shutil.which("nvidia-smi")
    while not stop.is_set():
        value = None
        if smi:
            try:
                text = subprocess.run(
                    [
                        smi,
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i",
                        "0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                value = float(text.split()[0])
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                value = None
        if value is None:
            try:
                import torch

                value = float(torch.cuda.utilization())
            except Exception:
                return
        samples.append(value)
        stop.wait(0.25)


def timed_slide_run(model, slide, cuda: bool, **config) -> tuple:
    """(result, wall seconds, GPU utilisation samples) of one synthetic slide through
    `run_slides` (tissue from its thumbnail, `config` added to the SlideConfig)."""
    from hovernet.infer.engine import physical_memory
    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig
    from hovernet.infer.tissue import tissue_mask

    def tissue(slide_, name, cfg):
        thumb, mpp = slide_.thumbnail()
        return thumb, mpp, tissue_mask(thumb, mpp=mpp), mpp

    samples: list[float] = []
    stop = threading.Event()
    sampler = None
    if cuda:
        sampler = threading.Thread(target=_gpu_sampler, args=(stop, samples), daemon=True)
        sampler.start()
    with tempfile.TemporaryDirectory() as out:
        cfg = SlideConfig(
            Path(out), proc_mpp=MPP, read_workers=2, mem_budget=int(0.3 * physical_memory()),
            quiet=True, **config,
        )  # fmt: skip
        start = time.perf_counter()
        (result,) = run_slides(model, [slide.path], cfg, lambda line: None, lambda p, c: slide,
                               tissue)  # fmt: skip
        wall = time.perf_counter() - start
    stop.set()
    if sampler is not None:
        sampler.join()
    if result.status != "done":
        raise SystemExit(f"slide failed: {result.reason}")
    return result, wall, samples


def run_one(args, size: int, fraction: float, precision: str) -> dict:
    """One slide through run_slides; returns the measured figures."""
    import torch

    if args.arch == "blob":
        from hovernet.model.standin import BlobNet

        model = BlobNet()
    else:
        from hovernet.model.inference import prepare_for_inference
        from hovernet.model.registry import build_model

        torch.manual_seed(0)
        model = build_model(args.arch, 6).to(args.device).eval()
        if args.arch != "lite":
            prepare_for_inference(model, channels_last=True)
    result, wall, samples = timed_slide_run(
        model,
        SyntheticSlide(size, fraction),
        args.device.startswith("cuda"),
        region_size=args.region_size,
        batch_size=args.batch_size,
        precision=precision,
        post_proc_workers=args.workers,
    )
    s = result.summary
    row = {
        "size": size,
        "precision": precision,
        "tissue_mm2": s["tissue_mm2"],
        "regions": s["regions_tissue"],
        "nuclei": s["nuclei"],
        "wall_s": wall,
        "regions_per_s": s["regions_tissue"] / wall,
        "mm2_per_min": s["tissue_mm2"] / wall * 60,
        "rss_main_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_worker_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        "gpu_util": float(np.mean(samples)) if samples else None,
    }
    if args.arch != "blob":
        row.update(_network_only(model, s["network_windows_this_run"], args, precision, wall))
    return row


def _network_only(model, windows: int, args, precision, wall) -> dict:
    """The baseline: as many windows as the slide run needed, through the network alone."""
    import math

    import torch
    from support.network_batch import run_batch

    from hovernet.device import autocast_dtype

    g = model.geometry
    batch = np.random.default_rng(0).integers(
        0, 256, (args.batch_size, g.input_size, g.input_size, 3), np.uint8
    )
    dtype = autocast_dtype(torch.device(args.device), precision)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        run_batch(model, batch, dtype)
        sync()
        start = time.perf_counter()
        for _ in range(math.ceil(windows / args.batch_size)):
            run_batch(model, batch, dtype)  # returns maps on the CPU: includes the copy back
        sync()
    net = time.perf_counter() - start
    return {"windows": windows, "network_only_s": net, "efficiency": net / wall}


def _table(rows: list[dict], real: bool) -> str:
    head = (
        "| slide px | precision | tissue mm^2 | regions | nuclei | wall s | regions/s | mm^2/min |"
    )
    head += " peak RSS main GB | peak RSS worker GB |"
    if real:
        head += " GPU util % | network-only s | efficiency |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['size']}^2 | {r['precision']} | {r['tissue_mm2']:.2f} | {r['regions']} | "
            f"{r['nuclei']} | {r['wall_s']:.1f} | {r['regions_per_s']:.2f} | "
            f"{r['mm2_per_min']:.2f} | {r['rss_main_gb']:.2f} | {r['rss_worker_gb']:.2f} |"
        )
        if real:
            util = "n/a" if r["gpu_util"] is None else f"{r['gpu_util']:.0f}"
            line += f" {util} | {r['network_only_s']:.1f} | {r['efficiency']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    from hovernet.resources import available_cpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10k^2 only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--arch",
        default=None,
        help="blob (stand-in; CPU default) or a registered network with random weights "
        "(fast: the default on CUDA)",
    )
    ap.add_argument("--precision", action="append", help="fp32, bf16 (repeat for several)")
    ap.add_argument("--size", type=int, default=None, help="one slide size (px per side)")
    ap.add_argument("--tissue", type=float, default=None, help="tissue fraction of the slide")
    ap.add_argument("--region_size", type=int, default=None)
    ap.add_argument("--batch_size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=max(1, available_cpus() - 1))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device != "cpu"
    args.arch = args.arch or ("fast" if gpu else "blob")
    real = args.arch != "blob"
    precisions = args.precision or (["bf16", "fp32"] if gpu else ["fp32"])
    args.region_size = args.region_size or 3000
    args.batch_size = args.batch_size or (32 if gpu else 8)
    if args.one:  # a child process: one size, print the row as JSON
        row = run_one(args, args.size, args.tissue, precisions[0])
        print("ROW " + json.dumps(row))
        return
    if real:
        size, fraction = args.size or 16384, args.tissue or 0.5
        rows = [run_one(args, size, fraction, p) for p in precisions]
    else:
        sizes = [args.size] if args.size else [10_000] if args.quick else [10_000, 25_000, 50_000]
        fraction = args.tissue or 0.01
        rows = []
        for size in sizes:
            cmd = [sys.executable, __file__, "--one", f"--size={size}", f"--tissue={fraction}"]
            cmd += [f"--region_size={args.region_size}", f"--batch_size={args.batch_size}"]
            cmd += [f"--workers={args.workers}", f"--precision={precisions[0]}", "--arch=blob"]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                raise SystemExit(out.stderr)
            rows.append(json.loads(out.stdout.split("ROW ", 1)[1]))
    print(_table(rows, real))
    if len(rows) > 1 and not real:
        base = rows[0]
        for r in rows[1:]:
            tissue = r["tissue_mm2"] / base["tissue_mm2"]
            print(
                f"{r['size']}^2 vs {base['size']}^2: tissue x{tissue:.1f}, "
                f"time x{r['wall_s'] / base['wall_s']:.1f}, "
                f"peak RSS x{r['rss_main_gb'] / base['rss_main_gb']:.2f}"
            )


if __name__ == "__main__":
    main()
