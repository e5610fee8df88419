"""`hovernet train --view train|valid`: the batches training would see, as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hovernet.data.preview import render_grid
from hovernet.errors import HoverNetError
from hovernet.train.config import TrainConfig
from hovernet.train.data import EpochSampler, SeededConcat, load_training_data
from hovernet.train.state import Dist


def write_view(cfg: TrainConfig) -> Path:
    """Write `<out>/view_<split>.png`: the first `view_n` samples of epoch 1 (train: with the
    run's augmentation and sample order; valid: centre crops) and return its path."""
    import cv2

    from hovernet.io.atomic import atomic_path
    from hovernet.model.registry import get_architecture

    if cfg.out is None:
        raise HoverNetError("--view needs --out RUN: the grid is written into the run folder")
    geometry = get_architecture(cfg.arch).geometry
    data = load_training_data(
        cfg.data, geometry, cfg.seed, stain_jitter=cfg.stain_jitter, mpp=cfg.mpp
    )
    if cfg.view == "valid":
        if not data.valid:
            raise HoverNetError(
                f"no validation patches in {', '.join(map(str, cfg.data))}: extract patches "
                "with --valid-fraction above 0"
            )
        pairs = [(ds, i, None) for ds in data.valid for i in range(len(ds))][: cfg.view_n]
    else:
        concat = SeededConcat(data.train)
        sampler = EpochSampler(len(concat), cfg.batch, cfg.seed, Dist(), cfg.steps_per_epoch)
        index, seeds = sampler.draws(0)
        pairs = []
        for i, seed in zip(index[: cfg.view_n], seeds[: cfg.view_n], strict=True):
            ds, local = concat.locate(int(i))
            pairs.append((ds, local, np.random.default_rng(int(seed))))
    samples = [ds.sample_arrays(i, rng) for ds, i, rng in pairs]
    grid = render_grid(samples, geometry.margin, data.type_info)
    path = cfg.out / f"view_{cfg.view}.png"
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise HoverNetError(f"could not write {path}: check the folder is writable")
    return path
