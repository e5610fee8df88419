"""Tile mode on 40x images with the bundled 0.5 um/px model: time per image for 1, 2 and 4
sub-pixel phases (`hovernet infer tile --input_mpp 0.25 --phases N`).

    .venv/bin/python benchmarks/bench_phases.py [IMAGE ...]     # default: the 14 MoNuSeg test
                                                                # images in ../shared, if there

Each configuration runs `run_tile` over the same images into a fresh folder (post-processing
inline, so the figure is the whole pipeline on this process's threads), after one warm-up
image; the table gives seconds per image, the ratio to one phase, and nuclei found.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from hovernet.infer.backends import use_backend
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.model.bundled import bundled_model_path
from hovernet.model.checkpoints import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg"


def main(argv: list[str]) -> None:
    if argv:
        images = [Path(a) for a in argv]
    else:
        names = json.loads((SHARED / "split.json").read_text())["test"]
        images = [SHARED / "images" / f"{n}.png" for n in names]
    model = load_model(bundled_model_path())
    use_backend(model, "auto", "fp32")  # as `hovernet infer` does
    print(f"{len(images)} images at 0.25 um/px, bundled model, {torch.get_num_threads()} threads")
    print("| phases | s / image | ratio | nuclei |\n|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        run_tile(model, TileConfig((images[0],), Path(tmp) / "warm", input_mpp=0.25,
                                   post_proc_workers=0), log=lambda _: None)  # fmt: skip
        base = None
        for phases in (1, 2, 4):
            config = TileConfig(tuple(images), Path(tmp) / str(phases), input_mpp=0.25,
                                post_proc_workers=0, phases=phases)  # fmt: skip
            start = time.perf_counter()
            summary = run_tile(model, config, log=lambda _: None)
            per_image = (time.perf_counter() - start) / len(images)
            base = base or per_image
            nuclei = sum(summary.done.values())
            print(f"| {phases} | {per_image:.2f} | {per_image / base:.2f} | {nuclei} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
