"""The demo: `python -m hovernet.demo --output-dir demo_output` (what `make demo` runs).

It segments the bundled CC0 slide `hovernet/samples/CMU-1-Small-Region.svs` (Aperio, 20x,
0.499 um/px, 2220 x 2967 px) in slide mode with the bundled CPU model (`lite-v3`, see
docs/model-card.md), on the CPU unless told otherwise, and writes what `hovernet infer wsi` writes:
an overlay PNG, a GeoJSON for QuPath, a CSV of nuclei, the original's JSON and a summary. Nothing is
downloaded. `--slide` segments another slide, `--model-path` uses another checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hovernet.errors import HoverNetError
from hovernet.resources import tune_process

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_SLIDE = SAMPLES / "CMU-1-Small-Region.svs"
SAMPLE = SAMPLES / "dsb2018_00ae65c1.png"  # a small CC0 tile, used by benchmarks and tests


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hovernet.demo", description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--slide", type=Path, default=SAMPLE_SLIDE, help="slide to segment")
    parser.add_argument(
        "--model-path", type=Path, default=None, help="checkpoint (default: the bundled model)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the network")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--backend", default="auto", help="auto (default), torch or onnxruntime")
    parser.add_argument("--overwrite", action="store_true", help="redo a slide already done")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from hovernet.infer.loading import (
        LoadOptions,
        checkpoint_id,
        describe_model,
        load_for_inference,
        model_label,
    )
    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig
    from hovernet.io.names import output_stem
    from hovernet.io.slide_exports import output_paths
    from hovernet.resources import spare_cpus

    start = time.perf_counter()
    if not args.slide.is_file():
        raise HoverNetError(f"slide {args.slide} does not exist: pass --slide <file>")
    opts = LoadOptions(
        model_path=args.model_path, device=args.device, threads=args.threads, backend=args.backend
    )
    model, type_info = load_for_inference(opts)
    # the settings of `hovernet infer wsi` left at their defaults (besides the device): a
    # folder the demo wrote counts as finished for that command, and the other way round
    config = SlideConfig(
        output_dir=args.output_dir,
        type_info=type_info,
        post_proc_workers=spare_cpus(2),
        overwrite=args.overwrite,
        model_name=model_label(opts.model_path),
        model_id=checkpoint_id(opts.model_path),
    )
    print(describe_model(model, type_info, opts, config.batch_size), flush=True)
    (result,) = run_slides(model, [args.slide], config)
    if result.status == "failed":
        print(f"error: {args.slide}: {result.reason}", file=sys.stderr)
        return 2
    paths = output_paths(args.output_dir, output_stem(args.slide))
    summary = json.loads(paths["summary"].read_text())
    if result.status == "skipped":
        head = f"{args.slide.name}: already segmented in {args.output_dir}, skipped (--overwrite)"
    else:
        head = f"segmented {args.slide.name} in {time.perf_counter() - start:.1f} s"
    print(
        f"\n{head}: {summary['nuclei']} nuclei in {summary['tissue_mm2']:.2f} mm^2 of tissue "
        f"({summary['nuclei_per_mm2']:.0f} per mm^2)"
    )
    for name, count in summary["nuclei_per_class"].items():
        print(f"  {name:16s} {count:6d}")
    print("outputs:")
    for kind in ("overlay", "geojson", "csv", "json", "summary", "density", "density_png"):
        if paths[kind].exists():  # the density maps are optional (--density_grid_um 0)
            print(f"  {kind:11s} {paths[kind]}")
    cohort = args.output_dir / "cohort.csv"
    if cohort.exists():
        print(f"  {'cohort':11s} {cohort}  (one row per slide: hovernet cohort)")
    print(f"look at it in the browser: hovernet view {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    tune_process()  # before anything imports torch
    args = _parse(argv)
    try:
        return run(args)
    except HoverNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
