"""Training speed: optimiser steps per second at batch 8 for each architecture and precision.

    .venv/bin/python benchmarks/bench_train.py [--device cuda] [--steps 20] [--archs lite fast]
    .venv/bin/python benchmarks/bench_train.py --quick        # CPU: lite only, a few steps

Each step is the trainer's own (`hovernet.train.loop.train_step`: forward under autocast, the
HoVer-Net losses, backward, Adam), on random uint8 images and random targets already on the
device, so the figures are the model's training speed without the data pipeline. On CUDA:
channels-last, fp32 and bf16 autocast, peak GPU memory per configuration (torch's allocator);
on the CPU fp32 only. After `--warmup` untimed steps, `--steps` steps are timed (CUDA
synchronised). "vs fp32" is the bf16 speed-up of the same architecture; "vs original" compares
each architecture's fp32 rate with the original's, both measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hovernet.model.registry import ARCHITECTURES, build_model  # noqa: E402
from hovernet.train.config import TrainConfig  # noqa: E402
from hovernet.train.loop import train_step  # noqa: E402
from hovernet.train.state import Dist, TrainParts, TrainState  # noqa: E402

NR_TYPES = 5


def batch_for(model, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = model.geometry
    s, n = g.output_size, g.input_size
    return {
        "img": torch.randint(0, 256, (batch, 3, n, n), dtype=torch.uint8, device=device),
        "np_map": torch.randint(0, 2, (batch, s, s), device=device),
        "hv_map": torch.rand(batch, 2, s, s, device=device) * 2 - 1,
        "tp_map": torch.randint(0, NR_TYPES, (batch, s, s), device=device),
    }


def measure(arch: str, precision: str, device: torch.device, batch: int, steps: int, warmup: int):
    torch.manual_seed(0)
    model = build_model(arch, NR_TYPES).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    cfg = TrainConfig(arch=arch, batch=batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = batch_for(model, batch, device)
    state = TrainState()

    parts = TrainParts(cfg, Dist(), device, model, optimizer, amp_dtype=dtype, channels_last=cuda)

    def step() -> None:
        train_step(parts, model, data, state)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return steps / elapsed, peak, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--archs", nargs="+", default=["original", "fast", "lite"])
    parser.add_argument("--quick", action="store_true", help="lite only, 3 steps, 1 warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.steps, args.warmup = ["lite"], 3, 1
    unknown = [a for a in args.archs if a not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architectures {unknown}: use {', '.join(ARCHITECTURES)}")
    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"training steps/s at batch {args.batch} on {name} ({torch.get_num_threads()} threads), "
        f"{args.steps} timed steps after {args.warmup} warm-up; torch {torch.__version__}"
    )
    rows = []
    fp32_rate: dict[str, float] = {}
    for arch in args.archs:
        for precision in precisions:
            rate, peak, params = measure(
                arch, precision, device, args.batch, args.steps, args.warmup
            )
            if precision == "fp32":
                fp32_rate[arch] = rate
            rows.append((arch, precision, params, rate, peak))
    header = f"{'arch':9} {'precision':9} {'params M':>8} {'steps/s':>8} {'patches/s':>9} "
    header += f"{'vs fp32':>7} {'vs original':>11} {'peak GiB':>8}"
    print(header)
    print("-" * len(header))
    for arch, precision, params, rate, peak in rows:
        vs_fp32 = rate / fp32_rate[arch]
        vs_orig = (
            f"{rate / fp32_rate['original']:.2f}x"
            if "original" in fp32_rate and precision == "fp32"
            else "-"
        )
        mem = f"{peak:.2f}" if peak == peak else "-"
        print(
            f"{arch:9} {precision:9} {params:8.2f} {rate:8.2f} {rate * args.batch:9.1f} "
            f"{vs_fp32:6.2f}x {vs_orig:>11} {mem:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
