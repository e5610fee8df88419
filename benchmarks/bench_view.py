"""`hovernet view` on a synthetic store of 1,000,000 nuclei: request times over HTTP and the
server's peak memory.

Built once in --work (default /tmp/hovernet_bench_view): a nucleus store of N disk nuclei on a
jittered 16 px grid, stored region by region as slide mode stores them, R*Tree included
(`tests/support/view_helpers.synthetic_store`); a tiled JPEG pyramid TIFF of real H&E texture of
the same size (16000 x 16000 px at 0.25 um/px for 1M nuclei, `bench_wsi_read.write_slide`); and a
summary naming it. The server runs as `python -m hovernet view` in its own process (waitress, 4
threads); one client sends the requests over a keep-alive connection, as a browser tab does for the
overlay (tiles: one at a time here, a browser fetches ~6 at once). Peak RSS is the server's VmHWM
at the end. Also times the sidecar index built for a copy of the store without R*Tree.

    .venv/bin/python benchmarks/bench_view.py [--nuclei 1000000] [--requests 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the helper that builds synthetic stores

from bench_wsi_read import write_slide  # noqa: E402
from support.view_helpers import synthetic_store  # noqa: E402

from hovernet.view.index import unpack_nuclei  # noqa: E402

SPACING = 16
TYPE_INFO = {
    "0": ["background", [0, 0, 0]],
    "1": ["other", [255, 165, 0]],
    "2": ["inflammatory", [255, 0, 0]],
    "3": ["epithelial", [0, 200, 0]],
    "4": ["spindle-shaped", [0, 0, 255]],
}
SCREEN = (1920, 1080)  # a full-HD viewer at full zoom shows this many level-0 pixels


def build(work: Path, n: int) -> tuple[Path, int]:
    """The store, slide and summary in `work` (reused when already there)."""
    work.mkdir(parents=True, exist_ok=True)
    store, slide = work / "synthetic.db", work / "synthetic.tif"
    if store.exists():
        with sqlite3.connect(store.resolve().as_uri() + "?mode=ro", uri=True) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            have = db.execute("SELECT COUNT(*) FROM nuclei").fetchone()[0]
        if have != n:
            store.unlink()
            (work / "synthetic.summary.json").unlink(missing_ok=True)
    if not store.exists():
        t0 = time.perf_counter()
        synthetic_store(store, n, spacing=SPACING, seed=0)
        print(f"built {store} ({store.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    with sqlite3.connect(store.resolve().as_uri() + "?mode=ro", uri=True) as db:
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        per_type = dict(db.execute("SELECT type, COUNT(*) FROM nuclei GROUP BY type"))
    size = meta["dimensions"][0]
    if not slide.exists():
        t0 = time.perf_counter()
        partial = slide.with_name("partial.tif")
        write_slide(partial, size)
        partial.replace(slide)
        print(f"wrote {slide} ({slide.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    summary = {
        "slide": str(slide),
        "dimensions": [size, size],
        "slide_mpp": meta["slide_mpp"],
        "nuclei": n,
        "nuclei_per_class": {TYPE_INFO[str(t)][0]: c for t, c in sorted(per_type.items())},
        "type_info": TYPE_INFO,
    }
    (work / "synthetic.summary.json").write_text(json.dumps(summary))
    return store, size


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[float, bytes]:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
        return time.perf_counter() - t0, body


def row(name: str, times: list[float], nuclei: list[int] | None, sizes: list[int]) -> tuple:
    ms = np.array(times) * 1000
    shown = f"{np.mean(nuclei):.0f}" if nuclei else ""
    return (name, len(ms), *np.percentile(ms, [50, 95]), ms.max(), shown, np.mean(sizes) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuclei", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hovernet_bench_view"))
    parser.add_argument("--no-sidecar", action="store_true", help="skip the sidecar timing")
    args = parser.parse_args()
    store, size = build(args.work, args.nuclei)
    rng = np.random.default_rng(0)
    env = {**os.environ, "DISPLAY": "", "WAYLAND_DISPLAY": ""}
    t_start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "hovernet", "view", str(args.work), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    rows = []
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        start_s = time.perf_counter() - t_start
        c = Client(port)
        t_info, body = c.get("/api/slides/synthetic")  # waits for the warm-up count
        info = json.loads(body)
        rows.append(row("slide info (first request)", [t_info], None, [len(body)]))
        t, body = c.get("/api/slides/synthetic/density")
        rows.append(row("density grid (heat map)", [t], None, [len(body)]))

        def viewports(w: int, h: int, name: str) -> None:
            times, counts, sizes, cut = [], [], [], 0
            for _ in range(args.requests):
                x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
                t, body = c.get(f"/api/slides/synthetic/nuclei?bbox={x:.1f},{y:.1f},"
                                f"{x + w:.1f},{y + h:.1f}")  # fmt: skip
                doc = unpack_nuclei(body)
                times.append(t), counts.append(doc["n"]), sizes.append(len(body))
                cut += doc["truncated"]
            rows.append(row(f"{name} ({cut} capped)", times, counts, sizes))

        viewports(*SCREEN, f"viewport {SCREEN[0]} x {SCREEN[1]} px, full zoom")
        viewports(SCREEN[0] * 2, SCREEN[1] * 2, "viewport at half zoom")
        w, h = SCREEN
        x, y = size / 3, size / 3
        t, body = c.get(f"/api/slides/synthetic/nuclei?bbox={x},{y},{x + w},{y + h}&types=2,3")
        rows.append(row("viewport, 2 of 4 classes shown", [t], [unpack_nuclei(body)["n"]],
                        [len(body)]))  # fmt: skip

        top = info["max_level"]
        tile_size = info["tile_size"]

        def tiles(levels: list[int], name: str) -> list[str]:
            """Distinct random tiles of these levels (none fetched before: not cached)."""
            every = []
            for level in levels:
                side = -(-size // 2 ** (top - level))
                n = -(-side // tile_size)
                every += [(level, x, y) for x in range(n) for y in range(n)]
            picks = rng.choice(len(every), min(args.requests, len(every)), replace=False)
            urls = [f"/api/slides/synthetic/tiles/{lv}/{x}_{y}.jpg" for lv, x, y in
                    (every[i] for i in picks)]  # fmt: skip
            times, sizes = [], []
            for url in urls:
                t, body = c.get(url)
                times.append(t), sizes.append(len(body))
            rows.append(row(name, times, None, sizes))
            return urls

        urls = tiles([top], "tile at full resolution, not cached")
        tiles(list(range(top - 7, top)), f"tile at levels {top - 7}..{top - 1}, not cached")
        times, sizes = [], []
        for url in urls:
            t, body = c.get(url)
            times.append(t), sizes.append(len(body))
        rows.append(row("tile, cached", times, None, sizes))
        times = []
        for nid in rng.integers(1, args.nuclei + 1, args.requests):
            t, body = c.get(f"/api/slides/synthetic/nucleus/{nid}")
            times.append(t)
        rows.append(row("nucleus details (click)", times, None, [len(body)]))
        t, body = c.get(f"/api/slides/synthetic/nuclei.geojson?bbox={x},{y},{x + 1024},{y + 1024}")
        n_geo = len(json.loads(body)["features"])
        rows.append(row("GeoJSON of a 1024 x 1024 px view", [t], [n_geo], [len(body)]))
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    sidecar_s = None
    if not args.no_sidecar:
        from hovernet.view.index import StoreIndex, sidecar_path

        old = args.work / "old" / "synthetic.db"
        old.parent.mkdir(exist_ok=True)
        shutil.copy(store, old)
        with sqlite3.connect(old) as db:
            db.execute("DROP TABLE nuclei_rtree")
        sidecar_path(old).unlink(missing_ok=True)
        t0 = time.perf_counter()
        StoreIndex(old).close()
        sidecar_s = time.perf_counter() - t0
        shutil.rmtree(old.parent)

    print(f"\n`hovernet view`, synthetic store of {args.nuclei:,} nuclei on a {size} x {size} px "
          f"slide ({store.stat().st_size / 1e6:.0f} MB store); server ready {start_s:.1f} s "
          f"after start; peak RSS of the server {rss:.0f} MB\n")  # fmt: skip
    print("| request | n | p50 ms | p95 ms | max ms | nuclei | KB |")
    print("|---|---|---|---|---|---|---|")
    for name, n, p50, p95, mx, nuclei, kb in rows:
        print(f"| {name} | {n} | {p50:.1f} | {p95:.1f} | {mx:.1f} | {nuclei} | {kb:.0f} |")
    if sidecar_s is not None:
        print(f"\nsidecar index for the same store without R*Tree: built in {sidecar_s:.1f} s")
    full = next(r for r in rows if r[0].startswith("viewport 1920"))
    cold = next(r for r in rows if r[0].startswith("tile at full"))
    print(f"\ntargets: viewport at full zoom p95 {full[3]:.0f} ms (< 100), tile p95 {cold[3]:.0f} "
          f"ms (< 150), server memory {rss:.0f} MB (< 500)")  # fmt: skip


if __name__ == "__main__":
    main()
