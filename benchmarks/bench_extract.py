"""Patch extraction: peak memory, patches per second and MB per patch on a synthetic slide.

Builds a synthetic H&E-like pair on disk: a tiled (256 x 256) pyramidal JPEG TIFF and a colour
mask (PNG by default, the worst case: OpenCV must decode it whole) with ~1 nucleus per 1,600 px,
20 % of them red. Then runs, each in its own subprocess under `/usr/bin/time -v` (peak RSS):

- `hovernet extract-patches` (this project: band reading, strip-wise labelling, .npz);
- a baseline in the original's style: whole image and labels in memory as one H x W x 5 int32
  array, `np.pad(mode="reflect")`, one int32 `.npy` per window (for the instance map it uses
  scipy.ndimage.label on the whole mask, as one would before the original's extractor).

Default: 3,000 x 4,200 px (under 2 minutes). `--full`: 10,000 x 14,000 px, this project only
(the baseline would need > 3 GB). Prints a markdown table with ratios against the baseline.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RED, YELLOW = (255, 0, 0), (255, 255, 0)
TYPE_INFO = {
    "0": ["background", [0, 0, 0]],
    "1": ["other", list(YELLOW)],
    "2": ["immune", list(RED)],
}
CELL = 40  # one nucleus per CELL x CELL px


def _nuclei(height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gy, gx = height // CELL, width // CELL
    cy = (np.arange(gy)[:, None] * CELL + rng.integers(8, CELL - 8, (gy, gx))).astype(np.int32)
    cx = (np.arange(gx)[None, :] * CELL + rng.integers(8, CELL - 8, (gy, gx))).astype(np.int32)
    radius = rng.integers(5, 13, (gy, gx)).astype(np.int32)
    red = rng.random((gy, gx)) < 0.2
    return cy, cx, radius, red


def _mask_tile(y0: int, x0: int, h: int, w: int, nuclei) -> np.ndarray:
    import cv2

    cy, cx, radius, red = nuclei
    tile = np.zeros((h, w, 3), np.uint8)
    r0, r1 = max((y0 - CELL) // CELL, 0), min((y0 + h + CELL) // CELL + 1, cy.shape[0])
    c0, c1 = max((x0 - CELL) // CELL, 0), min((x0 + w + CELL) // CELL + 1, cy.shape[1])
    for i in range(r0, r1):
        for j in range(c0, c1):
            colour = RED if red[i, j] else YELLOW
            centre = (int(cx[i, j] - x0), int(cy[i, j] - y0))
            cv2.circle(tile, centre, int(radius[i, j]), colour, -1)
    return tile


def build_pair(folder: Path, height: int, width: int, mask_format: str) -> tuple[Path, Path]:
    """Write slide.tif (tiled pyramidal JPEG TIFF) and slide_mask.png/.tif, tile by tile."""
    import cv2
    import tifffile

    nuclei = _nuclei(height, width)
    rng = np.random.default_rng(1)
    noise = rng.integers(-12, 12, (256, 256, 3)).astype(np.int16)
    pink = np.array([232, 190, 215], np.int16)
    purple = np.array([90, 60, 140], np.int16)

    def image_tiles(level: int):
        step = 256 * 2**level
        for y in range(0, height, step):
            for x in range(0, width, step):
                h, w = min(step, height - y), min(step, width - x)
                m = _mask_tile(y, x, h, w, nuclei)[:: 2**level, :: 2**level].any(axis=2)
                tile = np.where(m[..., None], purple, pink) + noise[: m.shape[0], : m.shape[1]]
                out = np.zeros((256, 256, 3), np.uint8)
                out[: m.shape[0], : m.shape[1]] = np.clip(tile, 0, 255)
                yield out

    image = folder / "slide.tif"
    with tifffile.TiffWriter(image, bigtiff=True) as tif:
        for level in range(3):
            shape = (-(-height // 2**level), -(-width // 2**level), 3)
            tif.write(
                image_tiles(level), shape=shape, dtype=np.uint8, tile=(256, 256),
                compression="jpeg", photometric="rgb", subfiletype=1 if level else 0,
                resolution=(1e4 / 0.25 / 2**level,) * 2, resolutionunit="CENTIMETER",
            )  # fmt: skip
    if mask_format == "png":
        mask = np.zeros((height, width, 3), np.uint8)
        for y in range(0, height, 1024):
            mask[y : y + 1024] = _mask_tile(y, 0, min(1024, height - y), width, nuclei)
        mask_path = folder / "slide_mask.png"
        cv2.imwrite(str(mask_path), mask[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        mask_path = folder / "slide_mask.tif"

        def mask_tiles():
            for y in range(0, height, 256):
                for x in range(0, width, 256):
                    out = np.zeros((256, 256, 3), np.uint8)
                    t = _mask_tile(y, x, min(256, height - y), min(256, width - x), nuclei)
                    out[: t.shape[0], : t.shape[1]] = t
                    yield out

        tifffile.imwrite(
            mask_path, mask_tiles(), shape=(height, width, 3), dtype=np.uint8,
            tile=(256, 256), compression="zlib", photometric="rgb",
        )  # fmt: skip
    (folder / "type_info.json").write_text(json.dumps(TYPE_INFO))
    return image, mask_path


BASELINE = r"""
import sys, numpy as np, cv2, tifffile
from pathlib import Path
from scipy import ndimage
image, mask, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
win, step = 540, 164
img = tifffile.imread(image, level=0)
m = cv2.imread(str(mask))[..., ::-1] if mask.suffix == ".png" else tifffile.imread(mask)
inst = np.zeros(m.shape[:2], np.int32); typ = np.zeros(m.shape[:2], np.int32)
for k, colour in ((1, (255, 255, 0)), (2, (255, 0, 0))):
    lab, n = ndimage.label((m == colour).all(axis=2), structure=np.ones((3, 3)))
    inst[lab > 0] = lab[lab > 0] + inst.max(); typ[lab > 0] = k
del m
x = np.concatenate([img, inst[..., None], typ[..., None]], axis=-1).astype(np.int32)
d = win - step
x = np.pad(x, ((d // 2, d - d // 2), (d // 2, d - d // 2), (0, 0)), mode="reflect")
def starts(n):
    s = list(range(0, n - win + 1, step))
    return s if s[-1] == n - win else s + [n - win]
out.mkdir(parents=True, exist_ok=True)
i = 0
for r in starts(x.shape[0]):
    for c in starts(x.shape[1]):
        np.save(out / f"p_{i:05d}.npy", x[r:r + win, c:c + win]); i += 1
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a subprocess, from /usr/bin/time -v."""
    start = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return wall, rss_kb / 1024


def folder_stats(folder: Path, pattern: str) -> tuple[int, float]:
    files = list(folder.rglob(pattern))
    return len(files), sum(f.stat().st_size for f in files) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="10,000 x 14,000 px (minutes)")
    parser.add_argument("--mask-format", choices=("png", "tif"), default="png")
    parser.add_argument("--compress", default="labels", choices=("labels", "all", "none"))
    parser.add_argument("--keep", type=Path, help="reuse/keep the synthetic pair in this folder")
    args = parser.parse_args()
    height, width = (10_000, 14_000) if args.full else (3_000, 4_200)
    with tempfile.TemporaryDirectory(dir=args.keep.parent if args.keep else None) as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        image = work / "slide.tif"
        mask = work / f"slide_mask.{args.mask_format}"
        if not (image.is_file() and mask.is_file()):
            image, mask = build_pair(work, height, width, args.mask_format)
        print(f"synthetic {width} x {height} pair ({args.mask_format} mask) in "
              f"{time.perf_counter() - t:.0f} s", file=sys.stderr)  # fmt: skip
        ours_out = Path(tmp) / "ours"
        ours_cmd = [
            sys.executable, "-m", "hovernet", "extract-patches", "--images", str(image),
            "--annotations", str(mask), "--type-info", str(work / "type_info.json"),
            "--out", str(ours_out), "--valid-fraction", "0", "--compress", args.compress,
        ]  # fmt: skip
        rows = []
        wall, rss = measure(ours_cmd)
        n, mb = folder_stats(ours_out, "*.npz")
        rows.append(("hovernet extract-patches", wall, rss, n, mb))
        if not args.full:
            base_out = Path(tmp) / "baseline"
            base_cmd = [sys.executable, "-c", BASELINE, str(image), str(mask), str(base_out)]
            wall, rss = measure(base_cmd)
            n, mb = folder_stats(base_out, "*.npy")
            rows.append(("original style (whole arrays, int32 .npy)", wall, rss, n, mb))
    base = rows[-1] if len(rows) > 1 else None

    def ratio(value: float, ref: float | None) -> str:
        return f"{value / ref:.2f}" if ref else "-"

    print(f"\n### extract-patches, {width} x {height} px, window 540 step 164\n")
    print("| method | patches | wall s | patches/s | x baseline | peak RSS MB | x baseline "
          "| MB/patch | x baseline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, wall, rss, n, mb in rows:
        pps, mbp = n / wall, mb / n
        ref_pps = base[3] / base[1] if base else None
        ref_mbp = base[4] / base[3] if base else None
        print(
            f"| {name} | {n} | {wall:.1f} | {pps:.1f} | {ratio(pps, ref_pps)} | {rss:.0f} "
            f"| {ratio(rss, base[2] if base else None)} | {mbp:.2f} | {ratio(mbp, ref_mbp)} |"
        )
    print("\n(wall time includes labelling the mask and interpreter start; the original's "
          "540 x 540 x 5 int32 .npy is 5.83 MB)")  # fmt: skip


if __name__ == "__main__":
    main()
