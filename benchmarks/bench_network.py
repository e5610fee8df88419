"""Forward cost of every registered architecture on CPU (original, fast and the lite ones), and
of this package's HoVer-Net against MONAI's HoVerNet, measured in the same run.

    .venv/bin/python benchmarks/bench_network.py [--quick] [--reps 2] [--threads 2]
        [--modes original fast lite] [--batches 1 4]

First table, one row per architecture: parameters, FLOPs per patch and per output pixel
(convolutions and matrix products, counted by torch's FlopCounterMode on the meta device: 2 FLOPs
per multiply-add), how many times fewer FLOPs per output pixel than `fast` it needs, and CPU
milliseconds per megapixel of output (the `prepared` variant below at the largest batch timed),
also as a speed-up over `fast`.

Second table, seconds per patch at batch 1 and 8 for MONAI (`monai.networks.nets.HoVerNet`,
original and fast only, eval + inference_mode, same thread count) and for this package's variants
(the backends of `hovernet infer --backend`, see hovernet/infer/backends.py):

    plain        eval + torch.no_grad
    inference    eval + torch.inference_mode
    chlast       inference + channels-last memory layout
    folded       inference + BatchNorm folded into the preceding convs
    prepared     folded + channels-last (= prepare_for_inference(model)): `--backend torch`
    onnxruntime  the prepared model exported in memory and run by ONNX Runtime's CPU execution
                 provider with the same thread count: `--backend onnxruntime` (the CPU default)

"vs MONAI" and "vs prepared" are that baseline's time / the variant's (> 1: faster). Timings
are the best of `--reps` calls (batch 8: `--reps` - 1; cheap models get more calls, until
`--min-seconds` have been timed, at most 50), the configurations interleaved so that load from
other processes hits all alike, after one warm-up round at batch 1; the larger batch is timed
for MONAI, plain, prepared and onnxruntime only. "max rel diff" compares each variant's outputs
with `plain` on the same random input. The ONNX export (trace, conversion and session) is
timed once per architecture and printed under the table. The default run takes about 8 minutes
on 2 idle cores; `--quick` (about 30 s there) times only `prepared` and `onnxruntime` at batch
1, once after the warm-up (cheap models: more often), and skips MONAI. On a loaded machine,
timings of small models (lite) suffer most: rerun when it is idle.
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

from hovernet.infer.backends import OnnxRuntimeBackend  # noqa: E402
from hovernet.model.inference import prepare_for_inference  # noqa: E402
from hovernet.model.registry import ARCHITECTURES, build_model  # noqa: E402
from hovernet.resources import available_cpus  # noqa: E402

NR_TYPES = {"original": 5, "fast": 6} | dict.fromkeys(("lite", "lite-wide", "lite-deep"), 6)
MONAI_MODES = ("original", "fast")  # the architectures MONAI implements
VARIANTS = ("MONAI", "plain", "inference", "chlast", "folded", "prepared", "onnxruntime")
LARGE_BATCH_VARIANTS = ("MONAI", "plain", "prepared", "onnxruntime")
BASELINE = "fast"
MAX_ROUNDS = 50


class OrtVariant(torch.nn.Module):
    """The ONNX Runtime backend with the models' call interface (NCHW tensor in, dict out)."""

    def __init__(self, prepared: torch.nn.Module, threads: int):
        super().__init__()
        start = time.perf_counter()
        self.backend = OnnxRuntimeBackend(prepared, threads=threads)
        self.export_s = time.perf_counter() - start
        self.counted = prepared  # parameters and FLOPs are the prepared model's

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ort = self.backend
        arrays = ort.session.run(ort.outputs, {ort.input_name: x.numpy()})
        return {k: torch.from_numpy(a) for k, a in zip(ort.outputs, arrays, strict=True)}


def monai_model(mode: str, nr_types: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.networks.nets import HoVerNet as MonaiHoVerNet

        return MonaiHoVerNet(mode=mode, out_classes=nr_types).eval()


def variants(
    mode: str, names: tuple[str, ...], threads: int
) -> dict[str, tuple[torch.nn.Module, object, bool]]:
    """name -> (model, grad context, input is 0..1 instead of 0..255), for the names asked."""
    torch.manual_seed(0)
    base = build_model(mode, NR_TYPES[mode]).eval()
    makers = {
        "MONAI": lambda: (monai_model(mode, NR_TYPES[mode]), torch.inference_mode, True),
        "plain": lambda: (base, torch.no_grad, False),
        "inference": lambda: (base, torch.inference_mode, False),
        "chlast": lambda: (_chlast(base), torch.inference_mode, False),
        "folded": lambda: (
            prepare_for_inference(copy.deepcopy(base), channels_last=False),
            torch.inference_mode,
            False,
        ),
        "prepared": lambda: (
            prepare_for_inference(copy.deepcopy(base)),
            torch.inference_mode,
            False,
        ),
        "onnxruntime": lambda: (
            OrtVariant(prepare_for_inference(copy.deepcopy(base)), threads),
            torch.inference_mode,
            False,
        ),
    }
    return {n: makers[n]() for n in names if n in makers and (n != "MONAI" or mode in MONAI_MODES)}


def _chlast(base: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(base).to(memory_format=torch.channels_last)
    model.channels_last = True
    return model


def flops_per_patch(model: torch.nn.Module, size: int, scale: float = 1.0) -> float:
    meta_model = copy.deepcopy(model).to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.zeros(1, 3, size, size, device="meta") * scale)
    return counter.get_total_flops()


def run(
    mode: str,
    batches: list[int],
    reps: int,
    names: tuple[str, ...],
    min_seconds: float,
    threads: int,
) -> list[dict]:
    size = ARCHITECTURES[mode].geometry.input_size
    configs = variants(mode, names, threads)
    gen = torch.Generator().manual_seed(0)
    x = {b: torch.rand(b, 3, size, size, generator=gen) * 255 for b in batches}
    rows = []
    for batch in batches:
        timed = [n for n in configs if batch == 1 or n in LARGE_BATCH_VARIANTS]
        times: dict[str, list[float]] = {n: [] for n in timed}
        outputs = {}
        # the first batch-1 round warms up; larger batches get one round fewer; cheap
        # models get more rounds, until `min_seconds` have been timed (at most MAX_ROUNDS)
        rounds = reps + 1 if batch == 1 else max(reps - 1, 1)
        spent, rep = 0.0, 0
        while rep < rounds or (spent < min_seconds and rep < MAX_ROUNDS):
            for name in timed:
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
                spent += elapsed
            rep += 1
        monai_time = min(times["MONAI"]) if "MONAI" in times else None
        prepared_time = min(times["prepared"]) if "prepared" in times else None
        for name in timed:
            model, _, unit_range = configs[name]
            export = getattr(model, "export_s", None)
            model = getattr(model, "counted", model)
            diff = ""
            if name != "MONAI" and "plain" in outputs:
                diff = max(
                    float(
                        (outputs[name][k] - outputs["plain"][k]).norm() / outputs["plain"][k].norm()
                    )
                    for k in outputs["plain"]
                )
                diff = f"{diff:.1e}"
            seconds = min(times[name])
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "variant": name,
                    "params": sum(p.numel() for p in model.parameters()) / 1e6,
                    "gflops": flops_per_patch(model, size, 1 / 255 if unit_range else 1) / 1e9,
                    "seconds": seconds,
                    "ratio": "" if monai_time is None else f"{monai_time / seconds:.2f}",
                    "vs_prepared": f"{prepared_time / seconds:.2f}" if prepared_time else "",
                    "diff": diff,
                    "export": export,
                }
            )
    return rows


def summary(mode: str, rows: list[dict]) -> dict:
    """One architecture's cost: parameters, FLOPs, and ms per megapixel of output (prepared)."""
    geometry = ARCHITECTURES[mode].geometry
    with torch.device("meta"):  # shapes only: no time spent on random initialisation
        model = build_model(mode, NR_TYPES[mode])
    flops = flops_per_patch(model, geometry.input_size)
    prepared = [r for r in rows if r["mode"] == mode and r["variant"] == "prepared"]
    best = max(prepared, key=lambda r: r["batch"]) if prepared else None
    out_px = geometry.output_size**2
    return {
        "mode": mode,
        "geometry": f"{geometry.input_size} -> {geometry.output_size}",
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": flops / 1e9,
        "flops_px": flops / out_px,
        "ms_mp": None if best is None else best["seconds"] * 1e9 / out_px,
        "batch": None if best is None else best["batch"],
    }


def print_summary(summaries: list[dict]) -> None:
    base = next((s for s in summaries if s["mode"] == BASELINE), None)
    print(
        f"| arch | input -> output | params (M) | GFLOP/patch | MFLOP/output px | "
        f"FLOPs/px: {BASELINE} / arch | ms per MP output (prepared) | speed vs {BASELINE} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s in summaries:
        flop_ratio = f"{base['flops_px'] / s['flops_px']:.1f}" if base else ""
        ms = "" if s["ms_mp"] is None else f"{s['ms_mp']:.0f} (batch {s['batch']})"
        speed = f"{base['ms_mp'] / s['ms_mp']:.1f}" if base and base["ms_mp"] and s["ms_mp"] else ""
        print(
            f"| {s['mode']} | {s['geometry']} | {s['params']:.2f} | {s['gflops']:.1f} | "
            f"{s['flops_px'] / 1e6:.3f} | {flop_ratio} | {ms} | {speed} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help="repeat timing rounds of cheap models until this much was timed (best is kept)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="prepared only, batch 1, one timed call, no MONAI"
    )
    args = parser.parse_args()
    unknown = [m for m in args.modes if m not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown modes {unknown}: use {', '.join(ARCHITECTURES)}")
    batches = args.batches or ([1] if args.quick else [1, 8])
    reps = args.reps or (1 if args.quick else 2)
    names = ("prepared", "onnxruntime") if args.quick else VARIANTS
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} "
        f"threads, best of {reps}"
        f"{' (quick)' if args.quick else ''}\n"
    )
    all_rows = []
    for mode in args.modes:
        all_rows += run(mode, batches, reps, names, args.min_seconds, args.threads)
    print_summary([summary(mode, all_rows) for mode in args.modes])
    print()
    print(
        "| mode | batch | variant | params (M) | GFLOP/patch | s/patch | vs MONAI | vs prepared "
        "| max rel diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(
            f"| {r['mode']} | {r['batch']} | {r['variant']} | {r['params']:.2f} | "
            f"{r['gflops']:.1f} | {r['seconds']:.3f} | {r['ratio']} | {r['vs_prepared']} | "
            f"{r['diff']} |"
        )
    exports = {r["mode"]: r["export"] for r in all_rows if r["export"] is not None}
    if exports:
        print(
            "\nONNX export (trace + convert + session): "
            + ", ".join(f"{mode} {s:.1f} s" for mode, s in exports.items())
        )


if __name__ == "__main__":
    main()
