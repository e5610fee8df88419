"""Tile inference throughput: network patches/s per batch size and precision, and the pipeline.

    .venv/bin/python benchmarks/bench_infer.py                      # CPU, small (about 1 min)
    python benchmarks/bench_infer.py --device cuda --batch-sizes 32 64 --dtypes fp32 bf16 \\
        --n-images 64 --size 512

Part 1 runs the network alone (tiling, batching, softmax, stitching) over the images for each
batch size x precision and reports patches/s with the ratio to the first configuration.
Part 2 runs the whole `hovernet infer tile` pipeline (`run_tile`: read, network,
post-processing, five outputs) with post-processing inline (baseline) and in worker processes,
and the share of the time spent in the network, post-processing and writing.

The network is a fast-mode HoVer-Net (6 types, as for PanNuke) with seeded random weights,
BatchNorm folded (`prepare_for_inference`). Images are crops of the bundled sample tile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from hovernet.demo import SAMPLE
from hovernet.device import autocast_dtype
from hovernet.infer.predict import predict_stream
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.infer.tiling import TileGrid
from hovernet.io.slides import read_rgb
from hovernet.model.inference import prepare_for_inference
from hovernet.model.network import HoVerNet


def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """n size x size crops of the sample (reflect-tiled when larger), randomly flipped."""
    sample = read_rgb(SAMPLE)
    reps = (size // sample.shape[0] + 1, size // sample.shape[1] + 1)
    big = np.pad(
        sample, ((0, sample.shape[0] * reps[0]), (0, sample.shape[1] * reps[1]), (0, 0)), "reflect"
    )
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        y = rng.integers(0, big.shape[0] - size + 1)
        x = rng.integers(0, big.shape[1] - size + 1)
        crop = big[y : y + size, x : x + size]
        images.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return images


def bench_network(model, images, batch_size: int, precision: str) -> float:
    """Patches per second of the network stage alone (after one warm-up batch)."""
    warm = [(0, images[0])]
    for _ in predict_stream(model, warm, batch_size, precision):
        pass
    geometry = model.geometry
    n = sum(len(TileGrid(im.shape[:2], geometry.input_size, geometry.output_size)) for im in images)
    start = time.perf_counter()
    for _ in predict_stream(model, enumerate(images), batch_size, precision):
        pass
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], help="fp32, bf16, fp16")
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--size", type=int, default=164, help="image side (164 = one window)")
    parser.add_argument("--workers", type=int, default=1, help="post-processing processes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = prepare_for_inference(HoVerNet("fast", nr_types=6).eval()).to(device)
    images = make_images(args.n_images, args.size)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    print(
        f"device {device} ({hardware}), fast mode, 6 types, "
        f"{args.n_images} images of {args.size} x {args.size}\n"
    )

    print("| batch | precision | patches/s | ratio |\n|---:|---|---:|---:|")
    base = None
    for batch_size in args.batch_sizes:
        for precision in args.dtypes:
            autocast_dtype(device, precision)  # validates the name
            rate = bench_network(model, images, batch_size, precision)
            base = base or rate
            print(f"| {batch_size} | {precision} | {rate:.2f} | {rate / base:.2f} |", flush=True)

    if args.skip_pipeline:
        return
    print(
        "\n| pipeline | nuclei | wall s | patches/s | ratio | network | post-proc. | writing |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i, image in enumerate(images):
            cv2.imwrite(str(folder / f"img{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        base = None
        for workers in (0, args.workers):
            config = TileConfig(
                (folder,),
                Path(tmp) / f"out{workers}",
                batch_size=args.batch_sizes[0],
                precision=args.dtypes[0],
                post_proc_workers=workers,
            )
            s = run_tile(model, config, log=lambda line: None)
            rate = s.n_patches / s.wall_s
            base = base or rate
            busy = s.network_s + s.postprocess_s + s.write_s
            shares = " | ".join(
                f"{t / busy:.0%}" for t in (s.network_s, s.postprocess_s, s.write_s)
            )
            label = "inline (baseline)" if workers == 0 else f"{workers} worker process(es)"
            print(
                f"| {label} | {sum(s.done.values())} | {s.wall_s:.1f} | {rate:.2f} | "
                f"{rate / base:.2f} | {shares} |",
                flush=True,
            )
    print(
        "\nShares are of the summed time of the three stages (network in this process, "
        "post-processing and writing summed over workers). Random weights find few or no "
        "nuclei, so post-processing here is cheaper than with a trained model; see "
        "benchmarks/bench_postprocess.py for its cost on realistic maps."
    )


if __name__ == "__main__":
    sys.exit(main())
