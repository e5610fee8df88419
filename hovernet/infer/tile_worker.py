"""What a tile-mode worker does with one image: its maps -> nuclei -> the five outputs.

Torch-free (numpy, OpenCV, SciPy, scikit-image and the writers), so that a spawned worker does
not import torch (`hovernet.infer.workers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovernet.infer import resample
from hovernet.infer.features import nucleus_features
from hovernet.infer.maps import PredMaps, maps_to_nuclei
from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.workers import maps_nbytes
from hovernet.io import overlay_files, writers
from hovernet.io.type_info import TypeInfo

OUTPUT_KINDS = ("json", "mat", "overlay", "qupath", "csv")


@dataclass
class TileJob:
    """One image's maps and what its outputs need; pickled to a worker."""

    name: str
    image: np.ndarray
    maps: PredMaps
    nr_types: int | None
    output_dir: Path
    type_info: TypeInfo | None
    draw_dot: bool
    save_raw_map: bool
    maps_mpp: float | None = None  # resolution of the maps (scales the watershed's constants)
    prob: np.ndarray | None = None  # nucleus probability (merged phases: at the image's pixels)
    features: bool = True  # colour and texture features in the CSV and GeoJSON
    image_mpp: float | None = None  # um/px of `image` (the ring's width); None: unknown

    @property
    def nbytes(self) -> int:
        return maps_nbytes(self.image, self.maps.pred_map, self.maps.type_softmax, self.prob)


def output_paths(output_dir: Path, name: str) -> dict[str, Path]:
    suffix = {"json": "json", "mat": "mat", "overlay": "png", "qupath": "geojson", "csv": "csv"}
    return {kind: output_dir / kind / f"{name}.{suffix[kind]}" for kind in OUTPUT_KINDS}


def is_done(output_dir: Path, name: str) -> bool:
    """An image is done when all five of its outputs exist (each is written atomically)."""
    return all(p.is_file() for p in output_paths(output_dir, name).values())


def finish_tile(job: TileJob) -> tuple[str, int, float, float]:
    """Post-process one image and write its five outputs: (name, nuclei, post s, write s).

    The post-processing time includes the shape measurements shared by the CSV and GeoJSON
    and, with `job.features`, the colour features (on the input image's pixels).
    """
    start = time.perf_counter()
    # maps at the network's resolution (--input_mpp): back to the input image's pixels
    inst_map, nuclei = maps_to_nuclei(
        job.maps, job.nr_types, job.maps_mpp, job.image.shape, job.prob
    )
    shapes = nucleus_measurements(inst_map, nuclei)
    if job.features:
        colour = nucleus_features(job.image, inst_map, nuclei, job.image_mpp)
        for nid, values in colour.items():
            shapes[nid].update(values)
    mid = time.perf_counter()
    paths = output_paths(job.output_dir, job.name)
    raw_map = None
    if job.save_raw_map:
        typed = job.maps.type_softmax is not None
        raw_map = resample.maps_to_input(job.maps.pred_map, job.image.shape, typed)
    writers.write_json(paths["json"], nuclei, mag=None)
    writers.write_mat(
        paths["mat"], inst_map, nuclei, raw_map=raw_map, typed=job.nr_types is not None
    )
    overlay_files.write_overlay(
        paths["overlay"], job.image, nuclei, job.type_info, draw_dot=job.draw_dot
    )
    writers.write_geojson(paths["qupath"], nuclei, job.type_info, measurements=shapes)
    writers.write_csv(paths["csv"], nuclei, job.type_info, shapes, job.features)
    return job.name, len(nuclei), mid - start, time.perf_counter() - mid
