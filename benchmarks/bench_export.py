"""Slide exports: `hovernet.io.slide_exports.export_slide` (GeoJSON .geojson.gz, CSV, JSON,
overlay PNG) from a nucleus store, against the code it replaced (kept below as the baseline:
shapely builds each nucleus's polygon, json.dumps formats every coordinate, and each file reads
the whole store again).

The store: `--store S.db` with `--slide` the slide it was made from (the overlay is drawn on its
thumbnail); by default the bundled demo slide is run once through `hovernet infer wsi` (about
15-30 s on 2 cores) into `--work`. The class names come from `<store>.summary.json` beside the
store when it is there. Both implementations export the same store in the same process,
interleaved; times are the fastest of `--repeats` runs (the development machine is shared: the
fastest run is the one least disturbed). The files are compared byte for byte: the baseline's
against this checkout's, and both against the files the run wrote beside the store when they
are there. Prints a markdown table.

    .venv/bin/python benchmarks/bench_export.py [--store S.db --slide S.svs] [--repeats 3]

e.g. on the 2 x 2 mosaic of the demo slide that benchmarks/bench_end_to_end.py runs (9,773
nuclei): --store /tmp/bench_e2e/out-current-mosaic20x-0/mosaic20x.db
--slide /tmp/bench_e2e/mosaic20x.tif
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hovernet.io import slide_exports as new  # noqa: E402
from hovernet.io.atomic import atomic_path  # noqa: E402
from hovernet.io.store import NucleusStore  # noqa: E402
from hovernet.io.writers import (  # noqa: E402
    _UUID_NAMESPACE,
    _outline_geometry,
    _polygon,
    class_of,
    csv_header,
    csv_row,
    feature_geometry,
    write_overlay_canvas,
)
from hovernet.nuclei import MEASUREMENTS  # noqa: E402

DEMO = REPO / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
FILES = ("geojson", "csv", "json", "overlay")


# ---------------------------------------------- baseline: the exports before, one file per pass
def _old_geometry(outline, contour, scale):
    from shapely import affinity
    from shapely.geometry import mapping

    poly = _outline_geometry(outline) if outline else _polygon(contour)
    if scale != 1.0:
        poly = affinity.scale(poly, scale, scale, origin=(0, 0))
    return mapping(poly)


def _old_feature(key, nid, rec, type_info, shapes, class_names, scale):
    name, colour = class_of(rec, type_info)
    values = {"Nucleus ID": nid}
    if rec.get("type_prob") is not None:
        values["Type probability"] = float(rec["type_prob"])
    for key_, unit in MEASUREMENTS.items():
        values[key_.capitalize() + (f" ({unit})" if unit else "")] = float(shapes[nid][key_])
    for cname, p in zip(class_names, rec.get("type_probs") or [], strict=False):
        values[f"Probability {cname}"] = float(p)
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_UUID_NAMESPACE, key)),
        "geometry": _old_geometry(shapes[nid].get("outline"), rec["contour"], scale),
        "properties": {
            "objectType": "detection",
            "classification": {"name": name, "color": list(colour)},
            "measurements": values,
        },
    }


def _old_level0(rec, scale):
    (rmin, cmin), (rmax, cmax) = rec["bbox"]
    out = dict(rec)
    out["centroid"] = rec["xy"]
    out["bbox"] = [
        [int(np.floor(rmin * scale)), int(np.floor(cmin * scale))],
        [int(np.ceil(rmax * scale)), int(np.ceil(cmax * scale))],
    ]
    shapes = dict(rec["measurements"])
    shapes["area"] *= scale * scale
    shapes["perimeter"] *= scale
    return out, shapes


def old_geojson(path, store, type_info, stem):
    scale = float(store.meta["scale"])
    names = new._class_names(store, type_info)
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8") as fh,
    ):
        fh.write('{"type": "FeatureCollection", "features": [')
        for nid, rec in enumerate(store.nuclei(), start=1):
            _, shapes = _old_level0(rec, scale)
            feature = _old_feature(
                f"{stem}/{nid}", nid, rec, type_info, {nid: shapes}, names, scale
            )
            fh.write(("\n" if nid == 1 else ",\n") + json.dumps(feature))
        fh.write("\n]}\n")


def old_csv(path, store, type_info):
    scale = float(store.meta["scale"])
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(csv_header(new._class_names(store, type_info)))
        for nid, rec in enumerate(store.nuclei(), start=1):
            rec0, shapes = _old_level0(rec, scale)
            writer.writerow(csv_row(nid, rec0, type_info, shapes))


def old_json(path, store, mag):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"mag": ' + json.dumps(mag) + ', "nuc": {')
        for nid, rec in enumerate(store.nuclei(), start=1):
            doc = {
                "bbox": rec["bbox"],
                "centroid": rec["centroid"],
                "contour": rec["contour"].tolist(),
                "type_prob": rec["type_prob"],
                "type": rec["type"],
            }
            if "type_probs" in rec:
                doc["type_probs"] = rec["type_probs"]
            fh.write(("" if nid == 1 else ", ") + f'"{nid}": ' + json.dumps(doc))
        fh.write("}}\n")


def old_overlay(path, thumb, thumb_scale, store, type_info):
    import cv2

    canvas = cv2.cvtColor(np.ascontiguousarray(thumb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    counts: Counter = Counter()
    for rec in store.nuclei():
        name, colour = class_of(rec, type_info)
        counts[(name, colour)] += 1
        bgr = tuple(int(c) for c in colour[::-1])
        pts = np.round(rec["contour"] / thumb_scale).astype(np.int32)
        if np.ptp(pts, axis=0).max() >= 3:
            cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], True, bgr, 1)
        else:
            x, y = (int(round(v / thumb_scale)) for v in rec["centroid"])
            cv2.circle(canvas, (x, y), 1, bgr, -1)
    write_overlay_canvas(path, canvas, counts, type_info)


# ---------------------------------------------- the stages, both ways
def stages(store, spec, name: str, old_paths: dict, new_paths: dict) -> dict:
    """{stage: (baseline function, this checkout's function)}, each side writing its files."""
    info, scale = spec.type_info, spec.thumb_mpp / spec.frame_mpp
    old, cur = old_paths, new_paths
    pairs = {
        "GeoJSON": (
            lambda: old_geojson(old["geojson"], store, info, name),
            lambda: new.export_geojson(cur["geojson"], store, info, name),
        ),
        "CSV": (
            lambda: old_csv(old["csv"], store, info),
            lambda: new.export_csv(cur["csv"], store, info),
        ),
        "JSON": (
            lambda: old_json(old["json"], store, spec.mag),
            lambda: new.export_json(cur["json"], store, spec.mag),
        ),
        "overlay": (
            lambda: old_overlay(old["overlay"], spec.thumb, scale, store, info),
            lambda: new.export_overlay(cur["overlay"], spec.thumb, scale, store, info),
        ),
    }
    olds = [before for before, _ in pairs.values()]
    pairs["export_slide (the four files)"] = (
        lambda: [before() for before in olds],  # what export_slide was: one file after another
        lambda: new.export_slide(store, cur, spec, log=lambda _: None),
    )
    return pairs


def geometry_pair(store):
    """The GeoJSON geometries of every nucleus, shapely's way and this checkout's."""
    recs = list(store.nuclei())
    scale = float(store.meta["scale"])

    def args(rec):
        return rec["measurements"].get("outline"), rec["contour"], scale

    old = [_old_geometry(*args(r)) for r in recs]
    assert old == [feature_geometry(*args(r)) for r in recs], "geometries differ"
    return (
        lambda: [_old_geometry(*args(r)) for r in recs],
        lambda: [feature_geometry(*args(r)) for r in recs],
    )


# ---------------------------------------------- inputs
def demo_store(work: Path) -> tuple[Path, Path]:
    out = work / "demo"
    store = out / f"{DEMO.stem}.db"
    if not store.exists():
        cmd = [sys.executable, "-m", "hovernet", "infer", "--nr_post_proc_workers", "0", "wsi",
               "--input_dir", str(DEMO), "--output_dir", str(out), "--quiet"]  # fmt: skip
        env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return store, DEMO


def export_spec(store: NucleusStore, store_path: Path, slide_path: Path) -> new.ExportSpec:
    """What `hovernet.infer.slide` passes to `export_slide` for this store and slide."""
    from hovernet.io.wsi import open_slide

    meta = store.meta
    frame_mpp = meta["proc_mpp"] / meta.get("phases", 1)
    with open_slide(slide_path) as slide:
        thumb, thumb_mpp = slide.thumbnail()
        mag = (
            slide.magnification * slide.mpp / frame_mpp if slide.magnification else 10.0 / frame_mpp
        )
        summary = store_path.with_suffix(".summary.json")
        found = json.loads(summary.read_text()).get("type_info") if summary.exists() else None
        info = {int(k): (n, tuple(c)) for k, (n, c) in found.items()} if found else None
        return new.ExportSpec(
            slide_path=str(slide.path),
            dimensions=tuple(slide.dimensions),
            slide_mpp=float(slide.mpp),
            frame_mpp=frame_mpp,
            frame_size=(0, 0),
            mag=mag,
            thumb=thumb,
            thumb_mpp=thumb_mpp,
            mask=np.zeros((1, 1), bool),
            type_info=info,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a slide-mode store (.db); default: demo")
    parser.add_argument("--slide", type=Path, help="the slide the store was made from")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_export")
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.store is None:
        store_path, slide_path = demo_store(work)
    elif args.slide is None:
        parser.error("--store needs --slide (the overlay is drawn on its thumbnail)")
    else:
        store_path, slide_path = args.store, args.slide
    name = Path(slide_path).stem
    copy = work / "store" / store_path.name  # opening a store may write to it: use a copy
    copy.parent.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):  # with the write-ahead log of an unfinished run, if any
        if Path(f"{store_path}{suffix}").exists():
            shutil.copyfile(f"{store_path}{suffix}", f"{copy}{suffix}")
    outs = {k: work / k for k in ("baseline", "current")}
    paths = {k: new.output_paths(d, name) for k, d in outs.items()}
    for d in outs.values():
        d.mkdir(exist_ok=True)

    with NucleusStore(copy, {}) as store:
        spec = export_spec(store, store_path, Path(slide_path))
        rows = {"read the store": (lambda: sum(1 for _ in store.nuclei()),) * 2}
        rows["GeoJSON geometry (shapely / direct)"] = geometry_pair(store)
        rows.update(stages(store, spec, name, paths["baseline"], paths["current"]))
        times = {stage: [float("inf")] * 2 for stage in rows}
        for _ in range(args.repeats):
            for stage, pair in rows.items():
                for k, fn in enumerate(pair):  # baseline, then this checkout
                    start = time.perf_counter()
                    fn()
                    times[stage][k] = min(times[stage][k], time.perf_counter() - start)
        n = store.count()

    print(f"\n{name}: {n} nuclei, scale {spec.thumb_mpp / spec.frame_mpp:.3g} store px per "
          f"thumbnail px, {os.cpu_count()} CPUs, fastest of {args.repeats}\n")  # fmt: skip
    print("| stage | before s | after s | speed-up |")
    print("|---|---:|---:|---:|")
    for stage, (before, after) in times.items():
        print(f"| {stage} | {before:.3f} | {after:.3f} | {before / after:.2f}x |")
    print()
    for key in FILES:
        base, cur = paths["baseline"][key].read_bytes(), paths["current"][key].read_bytes()
        line = f"{paths['current'][key].name}: baseline == current: {base == cur}"
        written = store_path.parent / paths["current"][key].name
        if written.exists():
            line += f"; == the run's own file: {cur == written.read_bytes()}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
