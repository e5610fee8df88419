"""Helpers for the viewer's tests and benchmark: a real slide-mode output folder (the bundled
model on a crop of the bundled slide) and synthetic nucleus stores of any size."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path

import numpy as np

from hovernet.demo import SAMPLE_SLIDE
from hovernet.io.store import NucleusStore

CROP = (700, 1200, 1024)  # x, y, side of the crop of CMU-1-Small-Region.svs: stroma, epithelium
MPP = 0.499  # CMU-1-Small-Region.svs


def crop_slide(path: Path, x: int, y: int, size: int) -> np.ndarray:
    """A crop of the bundled slide as a plain TIFF that records the slide's resolution."""
    import openslide
    import tifffile

    with openslide.OpenSlide(str(SAMPLE_SLIDE)) as slide:
        rgb = np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"))
    res = 1e4 / MPP  # pixels per centimetre
    tifffile.imwrite(path, rgb, resolution=(res, res), resolutionunit="CENTIMETER")
    return rgb


def slide_output(base: Path) -> Path:
    """Slide mode with the bundled model on a 1024 px crop of the bundled slide, once per
    `base` folder (reused by every test module of a session): returns the output folder."""
    out = base / "out"
    if (out / "cmu_crop.summary.json").is_file():
        return out
    from hovernet.infer.loading import LoadOptions, load_for_inference
    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig

    base.mkdir(parents=True, exist_ok=True)
    crop = base / "cmu_crop.tif"
    crop_slide(crop, *CROP)
    model, type_info = load_for_inference(LoadOptions(model_path=None, device="cpu"))
    config = SlideConfig(output_dir=out, type_info=type_info, post_proc_workers=0, quiet=True)
    (result,) = run_slides(model, [crop], config, log=lambda line: None)
    assert result.status == "done", result.reason
    return out


@contextlib.contextmanager
def serving(app, threads: int = 4):
    """Run a WSGI app on waitress at 127.0.0.1 on a free port in a thread; yields the port."""
    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=threads)

    def run() -> None:
        try:
            server.run()
        except OSError:  # select() on the socket closed below
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.close()
        thread.join(timeout=10)


def _disk_record(cx: float, cy: float, r: float, t: int, rng: np.random.Generator) -> dict:
    """A polygon nucleus record as slide mode stores it (store pixels = level 0 here)."""
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    contour = np.round(pts).astype(np.int32)
    x0, y0 = contour.min(axis=0)
    x1, y1 = contour.max(axis=0) + 1
    probs = rng.dirichlet(np.ones(5))
    return {
        "bbox": [[int(y0), int(x0)], [int(y1), int(x1)]],
        "centroid": [float(cx), float(cy)],
        "contour": contour,
        "type": t,
        "type_prob": float(0.5 + 0.5 * rng.random()),
        "type_probs": probs.tolist(),
        "xy": [float(cx), float(cy)],
        "measurements": {
            "area": math.pi * r * r,
            "perimeter": 2 * math.pi * r,
            "eccentricity": float(rng.random() * 0.9),
            "solidity": float(0.85 + 0.15 * rng.random()),
        },
    }


def synthetic_store(
    path: Path,
    n: int,
    spacing: int = 16,
    region: int = 3000,
    slide_mpp: float = 0.25,
    seed: int = 0,
    rtree: bool = True,
    typed: bool = True,
) -> dict:
    """A slide-mode store of `n` disk nuclei on a jittered grid `spacing` px apart (radius 3-6
    px, types 1-4), stored region by region as slide mode does (cores `region` px square,
    store pixels = level-0 pixels). `rtree=False` makes a store as slide mode wrote them before
    the R*Tree (for the viewer's sidecar index); `typed=False` one of an untyped model (type,
    type_prob None). Returns its meta."""
    side = math.ceil(math.sqrt(n))
    size = side * spacing
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    cx = (k % side) * spacing + spacing / 2 + rng.uniform(-2, 2, n)
    cy = (k // side) * spacing + spacing / 2 + rng.uniform(-2, 2, n)
    radius = rng.uniform(3, 6, n)
    types = rng.integers(1, 5, n)
    per_row = math.ceil(size / region)
    region_of = (cy // region).astype(int) * per_row + (cx // region).astype(int)
    meta = {
        "format": 1,
        "slide": path.stem,
        "dimensions": [size, size],
        "slide_mpp": slide_mpp,
        "proc_mpp": slide_mpp,
        "phases": 1,
        "scale": 1.0,
        "core": region,
        "margin": 0,
        "model": "synthetic",
        "nr_types": 5 if typed else None,
        "tissue_regions": sorted(set(region_of.tolist())),
    }
    order = np.argsort(region_of, kind="stable")
    bounds = np.searchsorted(region_of[order], np.arange(per_row * per_row + 1))
    with NucleusStore(path, meta) as store:
        if not rtree:
            store._db.execute("DROP TABLE nuclei_rtree")
            store._rtree = False
        for idx in range(per_row * per_row):
            members = order[bounds[idx] : bounds[idx + 1]]
            recs = [_disk_record(cx[i], cy[i], radius[i], int(types[i]), rng) for i in members]
            if not typed:
                for rec in recs:
                    rec.update(type=None, type_prob=None, type_probs=None)
            gx, gy = (idx % per_row) * region, (idx // per_row) * region
            store.add_region(idx, (gx, gy, gx + region, gy + region), recs)
    return meta
