"""A slide-mode run in its own process, for the resume and multi-process tests.

    python tests/support/slide_rank_process.py SLIDE_DIR OUT_DIR REGION_SIZE WORKERS

Each `SLIDE_DIR/<name>.npy` is an in-memory slide at 0.25 um/px; the network is BlobNet.
Slides are shared by RANK/WORLD_SIZE (and a gloo process group when MASTER_ADDR is set), as
`hovernet infer wsi` shares them. Prints one line per slide and "RESULTS <json>" on rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `support`
from hovernet.infer.ranks import (
    gather,
    init_distributed,
    leave_distributed,
    rank_and_world,
)
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.model.standin import BlobNet
from support.fixed_split import my_slides  # noqa: E402
from support.slide_helpers import ArraySlide, dark_tissue  # noqa: E402


def main() -> None:
    slide_dir, out, region_size, workers = sys.argv[1:5]
    slides = sorted(Path(slide_dir).glob("*.npy"))
    rank, world = rank_and_world()
    distributed = init_distributed()
    config = SlideConfig(
        Path(out),
        proc_mpp=0.25,
        region_size=int(region_size),
        quiet=True,
        post_proc_workers=int(workers),
        batch_size=4,
    )

    def opener(path, cfg):
        return ArraySlide(path, np.load(path), 0.25)

    results = run_slides(
        BlobNet(),
        my_slides(slides, rank, world),
        config,
        lambda line: print(line, flush=True),
        opener,
        dark_tissue,
    )
    if distributed:
        results = gather(results)
    if rank == 0:
        print("RESULTS " + json.dumps({r.name: [r.status, r.n_nuclei] for r in results}))
    leave_distributed()  # a rank that exits with the group still up can abort


if __name__ == "__main__":
    main()
