"""Slide region reading speed and memory: hovernet.io.wsi against plain OpenSlide use.

Writes a synthetic 20k x 20k px tiled JPEG pyramid TIFF (0.25 um/px, levels 1/2/4/8/16/32, real
H&E texture from ../shared/data/seed_format/slide_a.tif repeated) once to /tmp, then reads
random 1024 x 1024 regions at 0.5 and 0.25 um/px (and at 0.26 um/px, which needs a non-integer
resample) through `open_slide` with the OpenSlide and the tifffile backend. The baseline is what
code without a resampler does for 0.5 um/px: `read_region` of the 2048 x 2048 level-0 area and
`cv2.resize(INTER_AREA)`. Peak RSS is measured per row (VmHWM, reset before each row).

    .venv/bin/python benchmarks/bench_wsi_read.py [--size 20000] [--regions 40]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

from hovernet.io.slides import read_rgb
from hovernet.io.wsi import open_slide

SHARED = Path(os.environ.get("HOVERNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SEED = SHARED / "data" / "seed_format" / "slide_a.tif"
TILE = 512


def write_slide(path: Path, size: int) -> None:
    """A pyramid TIFF whose level k repeats slide_a downsampled by 2**k (bounded memory)."""
    source = read_rgb(SEED)[:2048, :2048]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level, k = size, 0
        while True:
            pattern = cv2.resize(source, (2048 >> k, 2048 >> k), interpolation=cv2.INTER_AREA)
            reps = -(-TILE // pattern.shape[0]) + 1
            periodic = np.tile(pattern, (reps, reps, 1))
            period = pattern.shape[0]

            def tiles(level=level, periodic=periodic, period=period):
                for y in range(0, level, TILE):
                    for x in range(0, level, TILE):
                        oy, ox = y % period, x % period
                        yield periodic[oy : oy + TILE, ox : ox + TILE]

            mpp = 0.25 * 2**k
            tw.write(
                tiles(),
                shape=(level, level, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0,
                metadata=None,
            )
            if level <= 1024 or k >= 5:
                break
            level, k = -(-level // 2), k + 1


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(read, boxes) -> tuple[float, float]:
    reset_peak_rss()
    t0 = time.perf_counter()
    for box in boxes:
        read(*box)
    return len(boxes) / (time.perf_counter() - t0), peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--regions", type=int, default=40)
    parser.add_argument("--path", type=Path, default=Path("/tmp/hovernet_bench_wsi.tif"))
    args = parser.parse_args()
    if not args.path.exists():
        t0 = time.perf_counter()
        partial = args.path.with_name(args.path.name + ".partial.tif")
        write_slide(partial, args.size)
        partial.replace(args.path)
        print(
            f"wrote {args.path} ({args.path.stat().st_size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    rng = np.random.default_rng(0)
    rows = []
    import openslide

    osr = openslide.OpenSlide(str(args.path))

    def naive(x, y):  # level 0, then resize: 0.5 um/px without a resampler
        rgba = np.asarray(osr.read_region((2 * x, 2 * y), 0, (2048, 2048)))
        return cv2.resize(rgba[:, :, :3], (1024, 1024), interpolation=cv2.INTER_AREA)

    def boxes(mpp: float) -> list[tuple[int, int]]:
        side = int(args.size * 0.25 / mpp) - 1024
        return [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(args.regions)]

    base_rate, base_rss = run(naive, boxes(0.5))
    rows.append(("baseline: OpenSlide level 0 + cv2.resize", 0.5, base_rate, base_rss))
    for backend in ("openslide", "tifffile"):
        slide = open_slide(args.path, backend=backend)
        assert slide.backend_name == backend
        for mpp in (0.5, 0.25, 0.26):
            rate, rss = run(lambda x, y, s=slide, m=mpp: s.read(x, y, 1024, 1024, m), boxes(mpp))
            rows.append((f"open_slide ({backend})", mpp, rate, rss))
        slide.close()
    osr.close()
    print(f"\n{args.regions} random 1024 x 1024 regions of a {args.size} x {args.size} px slide\n")
    print("| reader | um/px | regions/s | vs baseline | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for name, mpp, rate, rss in rows:
        print(f"| {name} | {mpp} | {rate:.1f} | {rate / base_rate:.2f}x | {rss:.0f} |")


if __name__ == "__main__":
    main()
