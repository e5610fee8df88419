"""Forward speed of HoVer-Net on CPU against MONAI's HoVerNet, measured in the same run.

    .venv/bin/python benchmarks/bench_network.py [--reps 2] [--threads N] [--modes original fast]

For each mode: parameters, FLOPs per patch (convolutions, counted by torch's FlopCounterMode on
the meta device: 2 FLOPs per multiply-add), and seconds per patch at batch 1 and 4 for
MONAI (`monai.networks.nets.HoVerNet`, eval + inference_mode, same thread count) and for this
package's variants:

    plain       eval + torch.no_grad
    inference   eval + torch.inference_mode
    chlast      inference + channels-last memory layout
    folded      inference + BatchNorm folded into the preceding convs
    prepared    folded + channels-last (= prepare_for_inference(model))

"vs MONAI" is MONAI's time / ours (> 1: ours is faster). Timings are the best of `--reps`
calls (batch 4: `--reps` - 1), the configurations interleaved so that load from other
processes hits all alike, after one warm-up round at batch 1; batch 4 is timed for MONAI, plain
and prepared only, to keep the default run near 3 minutes on 2 cores.
"max rel diff" compares each variant's outputs with `plain` on the same random input.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hovernet.model.inference import prepare_for_inference  # noqa: E402
from hovernet.model.network import HoVerNet  # noqa: E402

NR_TYPES = {"original": 5, "fast": 6}  # CoNSeP- and PanNuke-like heads
BATCH4_VARIANTS = ("MONAI", "plain", "prepared")


def monai_model(mode: str, nr_types: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.networks.nets import HoVerNet as MonaiHoVerNet

        return MonaiHoVerNet(mode=mode, out_classes=nr_types).eval()


def variants(mode: str) -> dict[str, tuple[torch.nn.Module, object, bool]]:
    """name -> (model, grad context, input is 0..1 instead of 0..255)."""
    base = HoVerNet(mode, NR_TYPES[mode]).eval()
    chlast = copy.deepcopy(base).to(memory_format=torch.channels_last)
    chlast.channels_last = True
    return {
        "MONAI": (monai_model(mode, NR_TYPES[mode]), torch.inference_mode, True),
        "plain": (base, torch.no_grad, False),
        "inference": (base, torch.inference_mode, False),
        "chlast": (chlast, torch.inference_mode, False),
        "folded": (
            prepare_for_inference(copy.deepcopy(base), channels_last=False),
            torch.inference_mode,
            False,
        ),
        "prepared": (prepare_for_inference(copy.deepcopy(base)), torch.inference_mode, False),
    }


def flops_per_patch(model: torch.nn.Module, size: int, scale: float) -> float:
    meta_model = copy.deepcopy(model).to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.zeros(1, 3, size, size, device="meta") * scale)
    return counter.get_total_flops()


def run(mode: str, batches: list[int], reps: int) -> list[dict]:
    size = HoVerNet(mode).geometry.input_size
    configs = variants(mode)
    gen = torch.Generator().manual_seed(0)
    x = {b: torch.rand(b, 3, size, size, generator=gen) * 255 for b in batches}
    rows = []
    for batch in batches:
        names = [n for n in configs if batch == 1 or n in BATCH4_VARIANTS]
        times: dict[str, list[float]] = {n: [] for n in names}
        outputs = {}
        # the first batch-1 round warms up; batch 4 (4x the work) gets one round fewer
        for rep in range(reps + 1 if batch == 1 else max(reps - 1, 1)):
            for name in names:
                model, context, unit_range = configs[name]
                inp = x[batch] / 255.0 if unit_range else x[batch]
                with context():
                    start = time.perf_counter()
                    out = model(inp)
                    elapsed = time.perf_counter() - start
                if batch == 1 and rep == 0:
                    continue
                times[name].append(elapsed / batch)
                outputs[name] = out
        monai_time = min(times["MONAI"])
        for name in names:
            model, _, unit_range = configs[name]
            diff = ""
            if name != "MONAI":
                diff = max(
                    float(
                        (outputs[name][k] - outputs["plain"][k]).norm() / outputs["plain"][k].norm()
                    )
                    for k in outputs["plain"]
                )
                diff = f"{diff:.1e}"
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "variant": name,
                    "params": sum(p.numel() for p in model.parameters()) / 1e6,
                    "gflops": flops_per_patch(model, size, 1 / 255 if unit_range else 1) / 1e9,
                    "seconds": min(times[name]),
                    "ratio": monai_time / min(times[name]),
                    "diff": diff,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["original", "fast"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.reps}\n")
    print(
        "| mode | batch | variant | params (M) | GFLOP/patch | s/patch | vs MONAI | max rel diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for r in run(mode, args.batches, args.reps):
            print(
                f"| {r['mode']} | {r['batch']} | {r['variant']} | {r['params']:.1f} | "
                f"{r['gflops']:.1f} | {r['seconds']:.3f} | {r['ratio']:.2f} | {r['diff']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
