"""The viewer's web server: a Flask app over the slides of one output folder (docs/viewer.md).

Every slide is addressed by its name in the catalog (`hovernet.view.catalog`): no request names
a file, so nothing but the packaged page files, the stores of OUT_DIR and the slides their
summaries name can be reached.

| route | returns |
|---|---|
| `/` | the page (`static/index.html`) |
| `/static/<file>` | the packaged page files (OpenSeadragon, script, style) |
| `/api/slides` | the slides: name, dimensions, mpp, nuclei |
| `/api/slides/<name>` | one slide: pyramid, scale, classes with counts, colour ranges, limits |
| `/api/slides/<name>/tiles/<level>/<x>_<y>.jpg` | a JPEG tile (`hovernet.view.tiles`) |
| `.../nuclei?bbox=x0,y0,x1,y1[&types=1,none]` | nuclei meeting the box (level-0 px), binary |
| `...&view=x0,y0,x1,y1` | the same, and the count of the nuclei meeting `view` (as the GeoJSON) |
| `.../nuclei.geojson?bbox=...[&types=...]` | the same as the export's GeoJSON Features, capped |
| `/api/slides/<name>/density` | centroid counts per class on a grid (the heat map) |
| `/api/slides/<name>/nucleus/<id>` | one nucleus' values (its store id, from `nuclei`) |

A bad parameter is answered 400 with `{"error": "..."}`, an unknown slide, tile file name or
route 404, any other failure 500 with one line (the traceback goes to the server's log only).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, current_app, request, send_from_directory
from werkzeug.exceptions import BadRequest, HTTPException

from hovernet.view.catalog import ViewSlide, class_key
from hovernet.view.tiles import TileCache, encode_jpeg, read_tile

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_NUCLEI = 10000  # outlines per viewport request
MAX_GEOJSON = 20000  # nuclei per GeoJSON download
BINARY = "application/octet-stream"
_UINT = re.compile(r"[0-9]{1,9}")
_TILE = re.compile(r"([0-9]{1,18})_([0-9]{1,18})\.jpg")
log = logging.getLogger("hovernet.view")


# -- parameters (pure) -------------------------------------------------------------------------
def parse_bbox(
    text: str | None, width: int, height: int, param: str = "bbox"
) -> tuple[float, float, float, float]:
    """`x0,y0,x1,y1` (level-0 pixels, x0 < x1, y0 < y1) of a `width` x `height` slide -> floats;
    BadRequest (naming the parameter `param`) otherwise. A box may reach past the slide by at
    most one slide width (x) or height (y) on each side (the page clips its boxes to the slide;
    nothing lies further out)."""
    hint = f"pass {param}=x0,y0,x1,y1 in level-0 pixels with x0 < x1 and y0 < y1"
    if not text:
        raise BadRequest(f"{param} is missing: {hint}")
    shown = f"{param} {text[:80]!r}"
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise BadRequest(f"{shown} is not four numbers: {hint}")
    if not all(math.isfinite(v) for v in values):
        raise BadRequest(f"{shown} is not four finite numbers (nan or inf): {hint}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise BadRequest(f"{shown} is empty: {hint}")
    if x0 < -width or x1 > 2 * width or y0 < -height or y1 > 2 * height:
        raise BadRequest(
            f"{shown} reaches too far past the slide, which is {width} x {height} level-0 "
            f"px: keep x within {-width}..{2 * width} and y within {-height}..{2 * height}"
        )
    return x0, y0, x1, y1


def parse_types(text: str | None, keys: dict[str, int | None]) -> list[int | None] | None:
    """`types=1,2,none` -> those types (None: the parameter is absent, all types); a key not in
    `keys` (class key -> type) is a BadRequest."""
    if text is None:
        return None
    out = []
    for item in filter(None, text.split(",")):
        if item not in keys:
            raise BadRequest(f"types: unknown class {item[:40]!r}; known: {', '.join(keys)}")
        out.append(keys[item])
    return out


def parse_uint(text: str, what: str, lo: int, hi: int) -> int:
    """A plain decimal integer in lo..hi; BadRequest otherwise."""
    if not _UINT.fullmatch(text or "") or not lo <= int(text) <= hi:
        raise BadRequest(f"{what} {str(text)[:40]!r} is not a whole number in {lo}..{hi}")
    return int(text)


def _json(doc: Any, status: int = 200) -> Response:
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    response = Response(body, status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the app -----------------------------------------------------------------------------------
def create_app(
    slides: list[ViewSlide],
    *,
    tile_cache_bytes: int | None = None,
    allowed_hosts: set[str] | None = None,
    max_nuclei: int = MAX_NUCLEI,
) -> Flask:
    """The app serving `slides` (from `catalog.load_slides`). `allowed_hosts`: host names the
    Host header may carry (against DNS rebinding when bound to the loopback); None: any."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.url_map.merge_slashes = False  # "/static//etc/passwd" is a 404, not a redirect
    cache = TileCache() if tile_cache_bytes is None else TileCache(tile_cache_bytes)
    app.extensions["hovernet_view"] = {"slides": {s.name: s for s in slides}, "tiles": cache}
    _add_guards(app, allowed_hosts)
    _add_slide_routes(app, slides, max_nuclei)
    _add_nuclei_routes(app, max_nuclei)
    return app


def _get_slide(name: str) -> ViewSlide:
    slide = current_app.extensions["hovernet_view"]["slides"].get(name)
    if slide is None:
        abort(404, description=f"no slide named {name[:80]!r} here")
    return slide


def _add_guards(app: Flask, allowed_hosts: set[str] | None) -> None:
    """The Host check, the headers of every answer, and errors as one JSON line."""

    @app.before_request
    def check_host() -> None:
        if allowed_hosts is not None and request.host.rsplit(":", 1)[0] not in allowed_hosts:
            abort(403, description="this viewer only answers requests made to its own address")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _json({"error": exc.description or exc.name}, exc.code or 500)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        log.exception("request %s failed", request.path)
        return _json({"error": f"internal error ({type(exc).__name__}); see the server's log"}, 500)


def _add_slide_routes(app: Flask, slides: list[ViewSlide], max_nuclei: int) -> None:
    """The page, the slide list, one slide's description, its tiles and its heat map."""

    @app.get("/")
    def page():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/api/slides")
    def list_slides():
        return _json([_slide_entry(s) for s in slides])

    @app.get("/api/slides/<name>")
    def slide_info(name: str):
        s = _get_slide(name)
        pyramid = s.pyramid
        doc = _slide_entry(s)
        doc.update(
            tile_size=pyramid.tile,
            max_level=pyramid.max_level,
            scale=s.index.scale,
            um_per_px=s.index.um_per_px,
            classes=s.classes(),
            ranges=s.index.value_ranges(),
            limits={"nuclei": max_nuclei, "geojson": MAX_GEOJSON},
            image=s.image_path.name,
            model=s.index.meta.get("model"),
        )
        return _json(doc)

    @app.get("/api/slides/<name>/tiles/<level>/<tile>")
    def tile(name: str, level: str, tile: str):
        return _tile(_get_slide(name), level, tile)

    @app.get("/api/slides/<name>/density")
    def density(name: str):
        return _density(_get_slide(name))


def _tile(s: ViewSlide, level: str, tile: str) -> Response:
    pyramid = s.pyramid
    lv = parse_uint(level, "level", 0, pyramid.max_level)
    match = _TILE.fullmatch(tile)
    if match is None:
        abort(404, description="tiles are named <x>_<y>.jpg")
    x, y = (int(v) for v in match.groups())
    try:
        pyramid.tile_box(lv, x, y)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    cache = current_app.extensions["hovernet_view"]["tiles"]
    key = (s.name, lv, x, y)
    data = cache.get(key)
    if data is None:
        with s.reading() as image:
            rgb = read_tile(image, pyramid, lv, x, y)
        data = encode_jpeg(rgb)
        cache.put(key, data)
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _density(s: ViewSlide) -> Response:
    grid = s.index.density()
    counts = grid["counts"]
    dtype = "uint16" if counts.size == 0 or counts.max() < 65536 else "uint32"
    data = counts.astype("<u2" if dtype == "uint16" else "<u4").tobytes()
    return _json(
        {
            "cell": grid["cell"],
            "shape": grid["shape"],
            "classes": [class_key(t) for t in grid["types"]],
            "dtype": dtype,
            "counts": base64.b64encode(data).decode("ascii"),
        }
    )


def _store_box(s: ViewSlide, param: str) -> tuple[float, ...]:
    """The level-0 box of query parameter `param`, in store pixels."""
    x0, y0, x1, y1 = parse_bbox(request.args.get(param), *s.dimensions, param)
    k = s.index.scale
    return x0 / k, y0 / k, x1 / k, y1 / k


def _box_and_types(s: ViewSlide) -> tuple[tuple[float, ...], list | None]:
    keys = {c["key"]: c["type"] for c in s.classes()}
    return _store_box(s, "bbox"), parse_types(request.args.get("types"), keys)


def _add_nuclei_routes(app: Flask, max_nuclei: int) -> None:
    """The nuclei in a box (binary, or as GeoJSON) and one nucleus' values."""

    @app.get("/api/slides/<name>/nuclei")
    def nuclei(name: str):
        s = _get_slide(name)
        box, types = _box_and_types(s)
        header = None
        if "view" in request.args:  # counted as the download of that box counts
            n = s.index.count_in_box(_store_box(s, "view"), types, MAX_GEOJSON)
            header = {"view": {"count": min(n, MAX_GEOJSON), "more": n > MAX_GEOJSON}}
        response = Response(s.index.query(box, types, max_nuclei, header), mimetype=BINARY)
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/slides/<name>/nuclei.geojson")
    def nuclei_geojson(name: str):
        s = _get_slide(name)
        box, types = _box_and_types(s)
        ids, truncated = s.index.ids_in_box(box, types, MAX_GEOJSON)
        doc = _feature_collection(s, ids)
        bbox = request.args["bbox"]
        doc["hovernet"] = {"slide": s.name, "bbox": bbox, "truncated": truncated}
        response = _json(doc)
        response.mimetype = "application/geo+json"
        label = "_".join(str(round(float(v))) for v in bbox.split(","))
        response.headers["Content-Disposition"] = f'attachment; filename="{s.name}_{label}.geojson"'
        return response

    @app.get("/api/slides/<name>/nucleus/<nid>")
    def nucleus(name: str, nid: str):
        s = _get_slide(name)
        store_id = parse_uint(nid, "nucleus id", 1, 2**62)
        recs = s.index.records([store_id])
        if not recs:
            abort(404, description=f"no nucleus {store_id} in {s.name}")
        return _json(_nucleus_doc(s, recs[0]))


def _slide_entry(s: ViewSlide) -> dict[str, Any]:
    return {
        "name": s.name,
        "dimensions": list(s.dimensions),
        "mpp": s.summary.get("slide_mpp"),
        "nuclei": s.index.count(),
    }


def _feature_collection(s: ViewSlide, ids: list[int]) -> dict[str, Any]:
    """The nuclei `ids` as the Features of the slide's exported GeoJSON, in export order."""
    from hovernet.io.slide_exports import Level0Features

    numbers = s.index.export_numbers(ids)
    writer = Level0Features(s.index.meta, s.type_info, s.name)
    recs = sorted(s.index.records(ids), key=lambda r: numbers[r["store_id"]])
    features = [writer.feature(numbers[rec["store_id"]], rec) for rec in recs]
    return {"type": "FeatureCollection", "features": features}


def _nucleus_doc(s: ViewSlide, rec: dict[str, Any]) -> dict[str, Any]:
    from hovernet.io.writers import class_of, prob_names

    scale, um = s.index.scale, s.index.um_per_px
    number = s.index.export_numbers([rec["store_id"]])[rec["store_id"]]
    name, colour = class_of(rec, s.type_info)
    (rmin, cmin), (rmax, cmax) = rec["bbox"]
    shapes = rec["measurements"]
    probs = rec.get("type_probs") or []
    names = prob_names(len(probs), s.type_info)
    return {
        "id": rec["store_id"],
        "number": number,
        "class": {"key": class_key(rec["type"]), "name": name, "colour": list(colour)},
        "type_prob": _num(rec["type_prob"], 4),
        "type_probs": [{"name": n, "p": _num(p, 4)} for n, p in zip(names, probs, strict=False)],
        "centroid": [_num(v, 2) for v in rec["xy"]],
        "bbox": [cmin * scale, rmin * scale, cmax * scale, rmax * scale],
        "area_px": _num(shapes["area"] * scale * scale, 2),
        "area_um2": _num(shapes["area"] * um * um, 3) if um else None,
        "perimeter_um": _num(shapes["perimeter"] * um, 3) if um else None,
        "eccentricity": _num(shapes["eccentricity"], 4),
        "solidity": _num(shapes["solidity"], 4),
    }


def _num(value: Any, digits: int) -> float | None:
    """A rounded float for JSON, or None for a missing or non-finite value."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


# -- running it --------------------------------------------------------------------------------
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
THREADS = 4  # waitress threads answering requests
STOP_WAIT_S = 2.0  # how long Ctrl-C waits for the threads to return (their reads interrupted)


def serve(
    out_dir: Path,
    slide: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = True,
    echo=print,
) -> None:
    """Serve `out_dir`'s slides until interrupted (see `hovernet view --help`)."""
    from hovernet.progress import set_status
    from hovernet.view.catalog import load_slides

    slides = load_slides(out_dir, slide)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 2"
    try:
        server = _listen(slides, host, port)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{getattr(server, 'effective_port', port)}/"
        names = ", ".join(s.name for s in slides[:3]) + (", ..." if len(slides) > 3 else "")
        set_status(f"the viewer of {out_dir} stopped (nothing in it was changed)")
        echo(f"viewing {len(slides)} slide(s) of {out_dir} ({names}) at {url}")
        echo("press Ctrl-C to stop")
        if open_browser:
            _open_browser(url, echo)
        _run(server, slides)
    finally:
        for s in slides:
            s.close()


def _run(server, slides: list[ViewSlide]) -> None:
    """Serve until interrupted; then take no more requests, close the slides (which interrupts
    what other threads read, see `ViewSlide.close`) and give the threads up to STOP_WAIT_S to
    return, so that the interpreter does not exit under a thread still inside SQLite, numpy
    or OpenCV (which crashed or aborted the viewer now and then)."""
    stopping = threading.Event()
    warm = threading.Thread(target=_warm_up, args=(slides, stopping), daemon=True)
    warm.start()
    try:
        server.run()
    finally:
        stopping.set()
        server.close()
        for s in slides:
            s.close()
        warm.join(STOP_WAIT_S)
        server.task_dispatcher.shutdown(timeout=STOP_WAIT_S)


def _listen(slides: list[ViewSlide], host: str, port: int):
    """The waitress server of the app on host:port (warning when that is not the loopback)."""
    import warnings

    from waitress import create_server

    from hovernet.errors import HoverNetError, HoverNetWarning

    loopback = host in LOOPBACK
    allowed = LOOPBACK | {host} if loopback else None
    app = create_app(slides, allowed_hosts=allowed)
    try:
        server = create_server(app, host=host, port=port, threads=THREADS, ident="hovernet")
    except (OSError, ValueError) as exc:
        raise HoverNetError(
            f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc}): "
            "pass another --port (--port 0: any free one) or --host"
        ) from None
    if not loopback:
        warnings.warn(
            f"--host {host}: anyone on the network who can reach this machine can see these "
            "slides and their nuclei; use the default --host 127.0.0.1 to keep them private",
            HoverNetWarning,
            stacklevel=3,
        )
    return server


def _open_browser(url: str, echo) -> None:
    """Open `url` in a browser half a second from now, or say where to when there is no display."""
    import os
    import sys
    import webbrowser

    gui = (
        sys.platform in ("darwin", "win32")
        or os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
    )
    if gui:
        threading.Timer(0.5, webbrowser.open, [url]).start()
    else:
        echo(f"no display found: open {url} in a browser")


def _warm_up(slides: list[ViewSlide], stopping: threading.Event) -> None:
    """Count the nuclei per class and cell (one pass over each store) before the page asks;
    stops quietly once `stopping` is set (the count in progress is interrupted by `close`)."""
    for s in slides:
        if stopping.is_set():
            return
        try:
            s.index.density()
        except Exception:  # the request that needs it reports the problem
            if not stopping.is_set():
                log.exception("counting the nuclei of %s failed", s.name)
