"""CPU inference backends: seconds per patch for each registered architecture, one run.

    .venv/bin/python benchmarks/bench_backends.py [--quick] [--archs original fast lite]
        [--batches 1 8] [--reps 1] [--threads N]

For each architecture (default: every one in hovernet.model.registry) and batch size, the same
random input through:

    MONAI        monai.networks.nets.HoVerNet in the same mode (original and fast only), eval +
                 inference_mode, input scaled to 0..1 as MONAI expects
    torch plain  eval + torch.no_grad
    torch prep.  prepare_for_inference (BatchNorm folded, channels-last) + inference_mode
    onnxruntime  the prepared model exported in memory (hovernet.infer.backends), ONNX Runtime
                 CPU execution provider, the same number of intra-op threads as torch

"vs MONAI" and "vs plain"/"vs prep." are the baseline's time / the variant's (> 1: faster),
all from the same run: variants are interleaved round by round so that load from other
processes hits all alike, after one warm-up call each at batch 1. "rel diff" is the largest
relative norm difference of any output against torch plain on the same input. The export
column is the time to export (trace + convert) the model and create the ONNX Runtime session.
`--quick` runs fast (and lite, when registered) at batches 1 and 4, under 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hovernet.infer.backends import OnnxRuntimeBackend  # noqa: E402
from hovernet.model.inference import prepare_for_inference  # noqa: E402
from hovernet.model.registry import ARCHITECTURES, build_model  # noqa: E402
from hovernet.resources import available_cpus  # noqa: E402

NR_TYPES = {"original": 5, "fast": 6}  # CoNSeP- and PanNuke-like heads; others: 6
VARIANTS = ("MONAI", "torch plain", "torch prep.", "onnxruntime")


def monai_model(mode: str, nr_types: int) -> torch.nn.Module | None:
    if mode not in ("original", "fast"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.networks.nets import HoVerNet as MonaiHoVerNet

        return MonaiHoVerNet(mode=mode, out_classes=nr_types).eval()


def runners(arch: str, threads: int) -> tuple[dict, float]:
    """variant -> callable(x 0..255 NCHW float) -> {name: array}; and the export seconds."""
    torch.manual_seed(0)
    nr_types = NR_TYPES.get(arch, 6)
    plain = build_model(arch, nr_types).eval()
    prepared = prepare_for_inference(copy.deepcopy(plain))
    start = time.perf_counter()
    ort = OnnxRuntimeBackend(prepared, threads=threads)
    export_s = time.perf_counter() - start
    monai = monai_model(arch, nr_types)

    def torch_run(model, context):
        def run(x):
            with context():
                return {k: v.numpy() for k, v in model(x).items()}

        return run

    def monai_run(x):
        with torch.inference_mode():
            out = monai(x / 255.0)
        return {k: v.numpy() for k, v in out.items()}

    def ort_run(x):
        arrays = ort.session.run(ort.outputs, {ort.input_name: x.numpy()})
        return dict(zip(ort.outputs, arrays, strict=True))

    found = {
        "MONAI": monai_run if monai is not None else None,
        "torch plain": torch_run(plain, torch.no_grad),
        "torch prep.": torch_run(prepared, torch.inference_mode),
        "onnxruntime": ort_run,
    }
    return {k: v for k, v in found.items() if v is not None}, export_s


def measure(arch: str, batches: list[int], reps: int, threads: int) -> list[dict]:
    run, export_s = runners(arch, threads)
    size = ARCHITECTURES[arch].geometry.input_size
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in batches:
        x = torch.rand(batch, 3, size, size, generator=gen) * 255
        if batch == batches[0]:  # warm-up: first call of each variant (allocations, JIT)
            for fn in run.values():
                fn(x[:1])
        times: dict[str, list[float]] = {name: [] for name in run}
        outputs: dict[str, dict] = {}
        for _ in range(reps):
            for name, fn in run.items():
                start = time.perf_counter()
                outputs[name] = fn(x)
                times[name].append((time.perf_counter() - start) / batch)
        best = {name: min(t) for name, t in times.items()}
        ref = outputs["torch plain"]
        for name in VARIANTS:
            if name not in run:
                continue
            diff = ""
            if name not in ("MONAI", "torch plain"):
                diff = max(
                    float(np.linalg.norm(outputs[name][k] - ref[k]) / np.linalg.norm(ref[k]))
                    for k in ref
                )
                diff = f"{diff:.1e}"
            rows.append(
                {
                    "arch": arch,
                    "batch": batch,
                    "variant": name,
                    "seconds": best[name],
                    "vs_monai": best["MONAI"] / best[name] if "MONAI" in best else None,
                    "vs_plain": best["torch plain"] / best[name],
                    "vs_prep": best["torch prep."] / best[name],
                    "diff": diff,
                    "export": f"{export_s:.1f} s" if name == "onnxruntime" else "",
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default: 1 8")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--quick", action="store_true", help="fast (+ lite), batches 1 and 4")
    args = parser.parse_args()
    archs = args.archs or (
        [a for a in ("fast", "lite") if a in ARCHITECTURES] if args.quick else list(ARCHITECTURES)
    )
    batches = args.batches or ([1, 4] if args.quick else [1, 8])
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{args.threads} threads, best of {args.reps}\n"
    )
    header = ("arch", "batch", "variant", "s/patch", "vs MONAI", "vs plain", "vs prep.")
    print("| " + " | ".join(header + ("rel diff", "export")) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in archs:
        for r in measure(arch, batches, args.reps, args.threads):
            vs_monai = "—" if r["vs_monai"] is None else f"{r['vs_monai']:.2f}"
            print(
                f"| {r['arch']} | {r['batch']} | {r['variant']} | {r['seconds']:.3f} | "
                f"{vs_monai} | {r['vs_plain']:.2f} | {r['vs_prep']:.2f} | {r['diff']} | "
                f"{r['export']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
