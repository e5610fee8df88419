"""`hovernet view` in a real browser: headless Chromium driven by Playwright on a real slide-mode
output (the bundled model on a crop of the bundled slide).

Needs Debian's `chromium` (`/usr/bin/chromium`, or HOVERNET_CHROMIUM) and the `playwright`
package; `make test` installs both. Where either is missing the tests are skipped with the
reason (`pytest -ra` lists it).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs

import cv2
import numpy as np
import pytest
from support.view_helpers import serving, slide_output

from hovernet.view.catalog import load_slides
from hovernet.view.server import create_app

VIEWPORT = {"width": 1000, "height": 700}
EPITHELIAL = (0, 200, 0)  # the bundled model's colour for class 3
VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
           "#6ece58", "#b5de2b", "#fde725"]  # fmt: skip


def _chromium() -> str | None:
    for candidate in (os.environ.get("HOVERNET_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):  # fmt: skip
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed (`make test` installs it: pip install -e '.[test]')",
    )
    path = _chromium()
    if path is None:
        pytest.skip(
            "no Chromium to drive: `make test` installs Debian's chromium with apt-get "
            "(or set HOVERNET_CHROMIUM to a Chromium binary)"
        )
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path, headless=True)
        except sync_api.Error as exc:
            pytest.skip(f"Chromium at {path} does not start here: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def real_out(tmp_path_factory) -> Path:
    return slide_output(tmp_path_factory.getbasetemp() / "view_real")


@pytest.fixture(scope="module")
def url(real_out):
    slides = load_slides(real_out)
    with serving(create_app(slides)) as port:
        yield f"http://127.0.0.1:{port}/"
    for s in slides:
        s.close()


@pytest.fixture(scope="module")
def target(real_out) -> dict:
    """The largest epithelial nucleus away from the crop's edges: its CSV row and the contour
    the JSON export holds (the store's pixels, through pixel centres)."""
    with open(real_out / "cmu_crop.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["type_name"] == "epithelial"]
    inner = [r for r in rows if all(80 < float(r[k]) < 940 for k in ("centroid_x", "centroid_y"))]
    row = max(inner, key=lambda r: float(r["area"]))
    doc = json.loads((real_out / "cmu_crop.json").read_text())
    contour = np.asarray(doc["nuc"][row["id"]]["contour"], float)
    return {"row": row, "contour": contour}


def _open(browser, url: str, view_hash: str):
    page = browser.new_page(viewport=VIEWPORT)
    errors: list = []
    page.on("pageerror", lambda exc: errors.append(exc))
    page.goto(url + "#" + view_hash)
    _settle(page)
    page.errors = errors
    return page


def _settle(page) -> None:
    """Wait until tiles and the overlay data for the current view are in and drawn."""
    page.wait_for_function("window.hovernetView && window.hovernetView.idle()", timeout=30000)
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _screen(page) -> np.ndarray:
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), 1), cv2.COLOR_BGR2RGB
    )


def _viewer_box(page) -> list[float]:
    return page.evaluate(
        "(() => { const r = document.getElementById('viewer').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )


def _hash(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(page.evaluate("location.hash")[1:]).items()}


def _to_screen(page, points: np.ndarray) -> np.ndarray:
    """Store pixels (pixel centres) -> screen pixels, from the view the page reports."""
    state = {k: float(v) for k, v in _hash(page).items() if k in ("x", "y", "z")}
    box = _viewer_box(page)
    scale = page.evaluate("window.hovernetInfo.scale")
    level0 = (points + 0.5) * scale
    centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
    return centre + (level0 - [state["x"], state["y"]]) * state["z"]


def _share_near(image: np.ndarray, points: np.ndarray, colour, radius: int = 2, tol=60) -> float:
    """Share of `points` with a pixel of about `colour` within `radius` px."""
    hits = 0
    for x, y in np.round(points).astype(int):
        patch = image[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
        dist = np.abs(patch.astype(int) - colour).max(axis=2)
        hits += bool((dist <= tol).any())
    return hits / len(points)


def _luminance(rgb) -> np.ndarray:
    """Relative luminance (WCAG) of sRGB colours (..., 3) in 0..255."""
    c = np.asarray(rgb, float) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ [0.2126, 0.7152, 0.0722]


def _contrast(a, b) -> np.ndarray:
    """WCAG contrast ratio (1..21) between colours a and b."""
    la, lb = _luminance(a), _luminance(b)
    return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)


def _overlay_rgba(page) -> np.ndarray:
    """The overlay canvas' own pixels (RGBA, transparent where nothing is drawn)."""
    url = page.evaluate("document.getElementById('overlay-canvas').toDataURL('image/png')")
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


def _viridis(t: float) -> np.ndarray:
    stops = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in VIRIDIS], float)
    f = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(f), len(stops) - 2)
    return np.round(stops[i] + (stops[i + 1] - stops[i]) * (f - i))


def test_a_csv_nucleus_is_outlined_in_its_class_colour_where_it_lies(browser, url, target):
    row = target["row"]
    page = _open(browser, url, f"slide=cmu_crop&x={row['centroid_x']}&y={row['centroid_y']}&z=8")
    assert page.evaluate("hovernetView.mode") == "outlines" and not page.errors
    outline = _to_screen(page, target["contour"])
    left, top, width, height = _viewer_box(page)
    assert np.hypot(*(outline.mean(axis=0) - [left + width / 2, top + height / 2])) < 20
    image = _screen(page)
    assert _share_near(image, outline, EPITHELIAL) >= 0.9
    # its inside is not painted, and 12 px outside the outline is not green either
    centre = outline.mean(axis=0)
    assert _share_near(image, centre[None], EPITHELIAL, radius=1) == 0
    far = centre + (outline - centre) * (1 + 12 / np.hypot(*(outline - centre).T)[:, None])
    assert _share_near(image, far, EPITHELIAL, radius=0) <= 0.2
    # hiding the class removes it
    page.click("input[data-key='3']")
    _settle(page)
    assert "hide=3" in page.evaluate("location.hash")
    assert _share_near(_screen(page), outline, EPITHELIAL) <= 0.1
    page.close()


def test_clicking_a_nucleus_shows_its_values_under_its_csv_number(browser, url, target):
    row = target["row"]
    page = _open(browser, url, f"slide=cmu_crop&x={row['centroid_x']}&y={row['centroid_y']}&z=8")
    centre = _to_screen(page, target["contour"]).mean(axis=0)
    page.mouse.click(*centre)
    page.wait_for_selector("#details h2", state="visible")
    assert page.inner_text("#details h2") == f"Nucleus {row['id']}"
    values = dict(
        page.evaluate(
            "[...document.querySelectorAll('#details tr')].map(r => [...r.cells]"
            ".map(c => c.textContent))"
        )  # fmt: skip
    )
    assert values["class"] == "epithelial"
    assert float(values["eccentricity"]) == pytest.approx(float(row["eccentricity"]), abs=2e-3)
    assert float(values["area (px²)"]) == pytest.approx(float(row["area"]), rel=2e-3)
    page.close()


def test_colour_by_area_uses_the_colour_bar_and_the_view_reopens_from_its_link(
    browser, url, target, real_out
):
    row = target["row"]
    view = f"slide=cmu_crop&x={row['centroid_x']}&y={row['centroid_y']}&z=8&colour=area&hide=2"
    page = _open(browser, url, view)
    assert page.is_visible("#colourbar") and not page.is_checked("input[data-key='2']")
    info = page.evaluate("window.hovernetInfo")
    lo, hi = info["ranges"]["area"]
    area = float(row["area"]) * info["mpp"] ** 2  # level-0 px^2 -> um^2
    step = round((area - lo) / (hi - lo) * 31) / 31  # the page's 32 colour steps
    outline = _to_screen(page, target["contour"])
    image = _screen(page)
    assert _share_near(image, outline, _viridis(step), tol=40) >= 0.8
    assert _share_near(image, outline, EPITHELIAL) <= 0.1
    # pan, then open the link in a new tab: same place, zoom, colouring and hidden class
    page.evaluate("hovernetView.viewer.viewport.panBy(new OpenSeadragon.Point(0.05, 0.02), true)")
    page.wait_for_function(f"!location.hash.includes('x={float(row['centroid_x']):.1f}')")
    _settle(page)
    link = page.evaluate("location.hash")[1:]
    before = _hash(page)
    again = _open(browser, url, link)
    after = _hash(again)
    for key in ("x", "y"):
        assert float(after.pop(key)) == pytest.approx(float(before.pop(key)), abs=0.5)
    assert float(after.pop("z")) == pytest.approx(float(before.pop("z")), rel=1e-3)
    assert after == before == {"slide": "cmu_crop", "colour": "area", "hide": "2"}
    assert again.is_visible("#colourbar") and not again.is_checked("input[data-key='2']")
    page.close()
    again.close()


def test_zoomed_out_the_nuclei_are_a_heat_map(browser, url, real_out):
    page = _open(browser, url, "slide=cmu_crop&x=512&y=512&z=0.2")
    assert page.evaluate("hovernetView.mode") == "heatmap"
    painted = page.evaluate(
        "(() => { const c = document.getElementById('overlay-canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()"
    )
    side = 1024 * 0.2
    assert painted > 0.2 * side * side  # the tissue's nuclei, not one dot each
    # the whole crop is in view: every nucleus of the summary
    n = json.loads((real_out / "cmu_crop.summary.json").read_text())["nuclei"]
    assert page.inner_text("#status").startswith(f"heat map of ~{n} nuclei in view")
    assert page.is_visible("#colourbar") and "nuclei/mm²" in page.inner_text("#colourbar")
    page.close()


def _heat_top(counts: np.ndarray) -> float:
    """The page's heat-map scale top for a (rows, cols) count grid: the 99th percentile (its
    sorted index) of the non-zero cells after two 3 x 3 box means with clamped edges."""
    grid = counts.astype(np.float32)
    for _ in range(2):
        padded = np.pad(grid, 1, mode="edge")
        grid = sum(padded[r : r + grid.shape[0], c : c + grid.shape[1]]
                   for r in range(3) for c in range(3)) / np.float32(9)  # fmt: skip
    values = np.sort(grid[grid > 0])
    return float(values[int(np.floor(0.99 * (len(values) - 1)))])


def test_the_heat_map_can_show_one_class(browser, url, real_out):
    from urllib.request import urlopen

    summary = json.loads((real_out / "cmu_crop.summary.json").read_text())
    page = _open(browser, url, "slide=cmu_crop&x=512&y=512&z=0.2&overlay=heatmap&heat=2")
    assert page.input_value("#heat-class") == "2"
    options = page.eval_on_selector_all("#heat-class option", "os => os.map(o => o.value)")
    assert options[0] == "all" and "2" in options
    n = summary["nuclei_per_class"]["inflammatory"]
    assert page.inner_text("#status").startswith(f"heat map of ~{n} inflammatory nuclei in view")
    assert page.inner_text("#colourbar-title") == "inflammatory density"
    # the colour bar's top is that of class 2's counts alone, not of all classes
    with urlopen(url + "api/slides/cmu_crop/density") as r:
        doc = json.loads(r.read())
    rows, cols = doc["shape"]
    dtype = "<u2" if doc["dtype"] == "uint16" else "<u4"
    counts = np.frombuffer(base64.b64decode(doc["counts"]), dtype)
    counts = counts.reshape(len(doc["classes"]), rows, cols)
    info = page.evaluate("window.hovernetInfo")
    mm2 = (doc["cell"] * info["um_per_px"] / 1000) ** 2
    one = _heat_top(counts[doc["classes"].index("2")]) / mm2
    every = _heat_top(counts.sum(axis=0)) / mm2
    shown = float(page.inner_text("#colourbar-max").split()[0].replace(",", ""))
    assert shown == pytest.approx(one, abs=1) and abs(shown - every) > 10
    # back to all classes: the link loses `heat`, the status counts every nucleus
    page.select_option("#heat-class", "all")
    _settle(page)
    assert "heat" not in _hash(page) and page.inner_text("#colourbar-title") == "nuclei density"
    assert page.inner_text("#status").startswith(f"heat map of ~{summary['nuclei']} nuclei")
    assert not page.errors
    page.close()


def _download(page) -> dict:
    with page.expect_download() as download:
        page.click("#download")
    return json.loads(Path(download.value.path()).read_text())


def test_the_geojson_download_holds_the_nuclei_the_status_line_counts(browser, url, target):
    row = target["row"]
    page = _open(browser, url, f"slide=cmu_crop&x={row['centroid_x']}&y={row['centroid_y']}&z=4")
    doc = _download(page)
    ids = {f["properties"]["measurements"]["Nucleus ID"] for f in doc["features"]}
    assert int(row["id"]) in ids and len(ids) == len(doc["features"]) > 5
    assert doc["hovernet"]["truncated"] is False
    # "N nuclei in view" is what the download holds, not the fetched view plus its margin
    assert page.inner_text("#status") == f"{len(ids)} nuclei in view"
    assert page.evaluate("hovernetView.nuclei") > len(ids)
    # again with a class hidden and the view reaching past the slide's top edge
    page.click("input[data-key='4']")
    page.evaluate("(vp => vp.panTo(vp.imageToViewportCoordinates(450, 20), true))"
                  "(hovernetView.viewer.viewport)")  # fmt: skip
    page.wait_for_function("location.hash.includes('y=20.0')")
    _settle(page)
    doc = _download(page)
    assert doc["hovernet"]["bbox"].split(",")[1] == "0.0"
    classes = {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert "spindle-shaped" not in classes and len(doc["features"]) > 5
    assert page.inner_text("#status") == f"{len(doc['features'])} nuclei in view"
    page.close()


def test_a_folder_of_several_slides_opens_on_a_list(browser, real_out, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("first", "second"):
        for suffix in (".db", ".summary.json"):
            shutil.copy(real_out / f"cmu_crop{suffix}", out / f"{name}{suffix}")
    slides = load_slides(out)
    with serving(create_app(slides)) as port:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#slides a")
        assert page.inner_text("#slides").split()[:2] == ["first", "1024"]
        page.click("text=second")
        _settle(page)
        assert page.inner_text("#title") == "second" and page.is_visible("#back")
        page.close()
    for s in slides:
        s.close()


def test_the_dark_end_of_a_measurement_scale_stands_out_on_haematoxylin(browser, url, real_out):
    """The smallest nuclei take viridis' dark purple; on the crop's dark haematoxylin the
    outline alone has a contrast ratio near 1, so it gets a light halo: along each outline some
    drawn pixel must reach a WCAG contrast of 3 against the nuclei's own stain."""
    page = _open(browser, url, "slide=cmu_crop&x=512&y=512&z=3&colour=area")
    info = page.evaluate("window.hovernetInfo")
    lo, hi = info["ranges"]["area"]
    cut = lo + 0.05 * (hi - lo)  # the scale's darkest colours
    left, top, width, height = _viewer_box(page)
    doc = json.loads((real_out / "cmu_crop.json").read_text())
    with open(real_out / "cmu_crop.csv", newline="") as fh:
        small = [r for r in csv.DictReader(fh) if float(r["area"]) * info["mpp"] ** 2 <= cut]
    outlines = []
    for row in small:  # the darkest colour of the scale, fully in view
        pts = _to_screen(page, np.asarray(doc["nuc"][row["id"]]["contour"], float))
        if (pts.min(axis=0) > [left + 5, top + 5]).all() and (
            pts.max(axis=0) < [left + width - 5, top + height - 5]
        ).all():
            outlines.append(pts)
    assert len(outlines) >= 3
    drawn = _overlay_rgba(page)
    page.evaluate("document.getElementById('overlay-canvas').style.visibility = 'hidden'")
    stain = np.zeros(_screen(page).shape[:2], np.uint8)
    for pts in outlines:
        cv2.fillPoly(stain, [np.round(pts).astype(np.int32)], 1)
    haematoxylin = np.median(_screen(page)[cv2.erode(stain, np.ones((3, 3))) > 0], axis=0)
    assert _luminance(haematoxylin) < 0.1  # dark: these nuclei are where the problem shows
    for pts in outlines:
        seen = []
        for x, y in np.round(pts - [left, top]).astype(int):
            patch = drawn[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3].reshape(-1, 4)
            opaque = patch[patch[:, 3] >= 200, :3]
            seen.append(opaque.size > 0 and _contrast(opaque, haematoxylin).max() >= 3)
        assert np.mean(seen) >= 0.9
    page.close()


def test_the_info_panel_closes_when_its_outline_is_no_longer_shown(browser, url, target):
    row = target["row"]
    page = _open(browser, url, f"slide=cmu_crop&x={row['centroid_x']}&y={row['centroid_y']}&z=8")
    centre = _to_screen(page, target["contour"]).mean(axis=0)

    def click_it():
        page.mouse.click(*centre)
        page.wait_for_selector("#details h2", state="visible")
        assert page.inner_text("#details h2") == f"Nucleus {row['id']}"

    click_it()
    page.select_option("#overlay", "heatmap")
    _settle(page)
    assert page.is_hidden("#details") and page.evaluate("hovernetView.mode") == "heatmap"
    page.select_option("#overlay", "outlines")  # back: the old panel does not come back
    _settle(page)
    assert page.is_hidden("#details")
    click_it()
    page.click("input[data-key='3']")  # its class hidden
    _settle(page)
    assert page.is_hidden("#details")
    page.click("input[data-key='3']")
    _settle(page)
    click_it()
    page.select_option("#overlay", "none")
    _settle(page)
    assert page.is_hidden("#details")
    page.select_option("#overlay", "auto")
    _settle(page)
    click_it()  # zoomed out, auto shows the heat map
    page.evaluate("hovernetView.viewer.viewport.zoomTo(0.05, null, true)")
    page.wait_for_function("hovernetView.mode === 'heatmap'")
    assert page.is_hidden("#details") and not page.errors
    page.close()


def _navigator_share(page) -> tuple[float, float]:
    return tuple(
        page.evaluate(
            "(() => { const v = document.getElementById('viewer').getBoundingClientRect();"
            " const n = document.querySelector('#osd .navigator').getBoundingClientRect();"
            " return [n.width / v.width, n.height / v.height]; })()"
        )
    )


def test_the_navigator_stays_a_small_share_of_a_700_x_500_window(browser, url):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url + "#slide=cmu_crop")
    _settle(page)
    assert all(0.1 <= s <= 0.2 for s in _navigator_share(page))
    page.set_viewport_size({"width": 700, "height": 500})  # made smaller: not kept as large
    small = "(() => { const v = document.getElementById('viewer'), n = document.querySelector("
    small += "'#osd .navigator'); return v.clientWidth === 430 && n.offsetWidth <= 0.2 * 430"
    small += " && n.offsetHeight <= 0.2 * 500; })()"
    page.wait_for_function(small, timeout=5000)  # OpenSeadragon resizes it in its next frames
    assert all(0.1 <= s <= 0.2 for s in _navigator_share(page)), _navigator_share(page)
    page.close()
    page = browser.new_page(viewport={"width": 700, "height": 500})
    page.goto(url + "#slide=cmu_crop")
    _settle(page)
    assert all(0.1 <= s <= 0.2 for s in _navigator_share(page)), _navigator_share(page)
    page.close()
