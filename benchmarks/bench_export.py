"""Slide exports: `hovernet.io.slide_exports.export_slide` (GeoJSON .geojson.gz, CSV, JSON,
overlay PNG) from a nucleus store, this checkout against a baseline commit.

The baseline (default fb35ebc^, before the exports were made about 2x faster: shapely built each
nucleus's polygon, json.dumps formatted every coordinate, and each file read the whole store
again) is extracted with `git archive` and both run the same timing code in a fresh process
each (benchmarks/baseline.py), alternating `--rounds` times.

The store: `--store S.db` with `--slide` the slide it was made from (the overlay is drawn on its
thumbnail); by default the bundled demo slide is run once through `hovernet infer wsi
--no_colour_features` (about 15-30 s on 2 cores) into `--work` (shape-only features, as the
default baseline wrote them: its files can be byte-identical). The class names come from
`<store>.summary.json` beside the store when it is there. Each side exports its own copy of the
store; times are the fastest of `--repeats` runs in a process and over the rounds (the
development machine is shared: the fastest run is the one least disturbed). The files are
compared byte for byte: the baseline's against this checkout's, and both against the files the
run wrote beside the store when they are there (a baseline older than a column or field the
store has writes files without it). Prints a markdown table.

    .venv/bin/python benchmarks/bench_export.py [--store S.db --slide S.svs] [--baseline fb35ebc^]
        [--repeats 3] [--rounds 2]

e.g. on the 2 x 2 mosaic of the demo slide that benchmarks/bench_end_to_end.py runs (9,773
nuclei): --store /tmp/bench_e2e/out-current-mosaic20x-0/mosaic20x.db
--slide /tmp/bench_e2e/mosaic20x.tif
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from baseline import ROOT, imported_from, race, ratio_table, sides

DEMO = ROOT / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
FILES = ("geojson", "csv", "json", "overlay")


# ---------------------------------------------- the stages (run under either side's hovernet)
def _single_exports():
    """tests/support/single_exports.py: each export alone, through the sinks of `export_slide`
    (the package kept these as functions of its own until they had no caller but tests)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import single_exports

    return single_exports


def stages(store, spec, name: str, paths: dict) -> dict:
    """{stage: function} of this process's `hovernet`, each writing its file under `paths`."""
    from hovernet.io import slide_exports as ex
    from hovernet.io import writers

    info, per_thumb_px = spec.type_info, spec.thumb_mpp / spec.frame_mpp
    rows = {"read the store": lambda: sum(1 for _ in store.nuclei())}
    if hasattr(writers, "feature_geometry"):
        recs, s = list(store.nuclei()), float(store.meta["scale"])
        rows["GeoJSON geometry"] = lambda: [
            writers.feature_geometry(r["measurements"].get("outline"), r["contour"], s)
            for r in recs
        ]
    one = ex if hasattr(ex, "export_geojson") else _single_exports()  # older: the package's
    rows["GeoJSON"] = lambda: one.export_geojson(paths["geojson"], store, info, name)
    # the package's own export_csv (older) took no resolution; the sinks take the store's
    csv_args = (info,) if one is ex else (info, spec.frame_mpp)
    rows["CSV"] = lambda: one.export_csv(paths["csv"], store, *csv_args)
    rows["JSON"] = lambda: one.export_json(paths["json"], store, spec.mag)
    rows["overlay"] = lambda: one.export_overlay(
        paths["overlay"], spec.thumb, per_thumb_px, store, info
    )
    rows["export_slide (the four files)"] = lambda: ex.export_slide(
        store, paths, spec, log=lambda _: None
    )
    return rows


def side(out: Path, store_path: Path, slide_path: Path, repeats: int) -> None:
    """Time this process's `hovernet` (the checkout or the baseline) on a copy of the store."""
    from hovernet.io import slide_exports as ex
    from hovernet.io.store import NucleusStore

    copy = out / "store" / store_path.name  # opening a store may write to it: use a copy
    copy.parent.mkdir()
    for suffix in ("", "-wal"):  # with the write-ahead log of an unfinished run, if any
        if Path(f"{store_path}{suffix}").exists():
            shutil.copyfile(f"{store_path}{suffix}", f"{copy}{suffix}")
    name = slide_path.stem
    (out / "files").mkdir()
    paths = ex.output_paths(out / "files", name)
    with NucleusStore(copy, {}) as store:
        spec = export_spec(ex, store, store_path, slide_path)
        rows = stages(store, spec, name, paths)
        times = {stage: float("inf") for stage in rows}
        for _ in range(repeats):
            for stage, fn in rows.items():
                start = time.perf_counter()
                fn()
                times[stage] = min(times[stage], time.perf_counter() - start)
        facts = {"nuclei": store.count(), "scale": spec.thumb_mpp / spec.frame_mpp}
    facts |= {"code": imported_from(), "files": {k: paths[k].name for k in FILES}}
    (out / "facts.json").write_text(json.dumps(facts))
    (out / "times.json").write_text(json.dumps(times))


# ---------------------------------------------- inputs
def demo_store(work: Path) -> tuple[Path, Path]:
    out = work / "demo-shape-only"
    store = out / f"{DEMO.stem}.db"
    if not store.exists():
        cmd = [sys.executable, "-m", "hovernet", "infer", "--nr_post_proc_workers", "0", "wsi",
               "--no_colour_features",
               "--input_dir", str(DEMO), "--output_dir", str(out), "--quiet"]  # fmt: skip
        env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return store, DEMO


def export_spec(ex, store, store_path: Path, slide_path: Path):
    """What `hovernet.infer.slide` passes to `export_slide` for this store and slide (in the
    fields of `ex.ExportSpec`, the side's slide_exports)."""
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
        return ex.ExportSpec(
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
    parser.add_argument("--baseline", default="fb35ebc^")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_export")
    parser.add_argument("--side", type=Path, help=argparse.SUPPRESS)  # a timing process's folder
    args = parser.parse_args(argv)
    if args.side:
        side(args.side, args.store, args.slide, args.repeats)
        return 0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.store is None:
        store_path, slide_path = demo_store(work)
    elif args.slide is None:
        parser.error("--store needs --slide (the overlay is drawn on its thumbnail)")
    else:
        store_path, slide_path = args.store.resolve(), args.slide.resolve()
    argv = ["--store", str(store_path), "--slide", str(slide_path), "--repeats", str(args.repeats)]
    best, outs = race(Path(__file__), argv, sides(args.baseline, work), work, args.rounds)
    facts = {k: json.loads((d / "facts.json").read_text()) for k, d in outs.items()}
    cur, base_code = facts["current"], facts["baseline"]["code"]
    print(f"\n{slide_path.stem}: {cur['nuclei']} nuclei, scale {cur['scale']:.3g} store px per "
          f"thumbnail px, {os.cpu_count()} CPUs, fastest of {args.repeats} x {args.rounds}; "
          f"baseline {args.baseline} ({base_code}) against {cur['code']}\n")  # fmt: skip
    print("\n".join(ratio_table(best, list(best["current"]))))
    print()
    for key in FILES:
        base, now = (outs[s] / "files" / facts[s]["files"][key] for s in ("baseline", "current"))
        line = f"{now.name}: baseline == current: {base.read_bytes() == now.read_bytes()}"
        written = store_path.parent / now.name
        if written.exists():
            line += f"; == the run's own file: {now.read_bytes() == written.read_bytes()}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
