"""The overlay PNG of segmented nuclei: contours in class colours on the image, with a legend
of every class and its count (see `hovernet.io.writers` for the records and `type_info`)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.atomic import atomic_path
from hovernet.io.type_info import TypeInfo
from hovernet.io.writers import UNTYPED_CLASS, class_of
from hovernet.nuclei import Nuclei

PathLike = str | os.PathLike


def _draw_legend(canvas: np.ndarray, entries: list[tuple[str, tuple, int]]) -> None:
    """Class colour swatches with "name: count" in the top-left corner (in place, BGR)."""
    import cv2

    if not entries:
        return
    scale = max(0.4, min(canvas.shape[:2]) / 1500)
    thick = max(1, round(scale * 2))
    (_, text_h), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    line_h, pad = int(text_h * 1.8), int(text_h * 0.6)
    texts = [f"{name}: {count}" for name, _, count in entries]
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in texts)
    box_w, box_h = pad * 3 + text_h + width, pad * 2 + line_h * len(entries)
    region = canvas[:box_h, :box_w]
    region[:] = (0.35 * region + 0.65 * 255).astype(np.uint8)
    for k, ((_, colour, _), text) in enumerate(zip(entries, texts, strict=True)):
        y = pad + k * line_h
        bgr = tuple(int(c) for c in colour[::-1])
        cv2.rectangle(canvas, (pad, y + 2), (pad + text_h, y + 2 + text_h), bgr, -1)
        org = (pad * 2 + text_h, y + 2 + text_h)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick)


def write_overlay(
    path: PathLike,
    image: np.ndarray,
    nuclei: Nuclei,
    type_info: TypeInfo | None,
    draw_dot: bool = False,
) -> None:
    """PNG of the RGB `image` with each contour in its class colour (2 px, as the original),
    a 3-px centroid dot when `draw_dot`, and a legend of every class name (all of `type_info`
    but the background, or the untyped class) with its nucleus count, 0 included."""
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise HoverNetError(
            f"overlay {path}: the image has shape {image.shape}; pass the H x W x 3 RGB image "
            "the nuclei were found in"
        )
    canvas = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    counts: Counter = Counter()
    for rec in nuclei.values():
        name, colour = class_of(rec, type_info)
        counts[(name, colour)] += 1
        bgr = tuple(int(c) for c in colour[::-1])
        contour = np.asarray(rec["contour"], dtype=np.int32).reshape(-1, 1, 2)
        cv2.drawContours(canvas, [contour], -1, bgr, 2)
        if draw_dot:
            x, y = (int(round(v)) for v in rec["centroid"])
            cv2.circle(canvas, (x, y), 3, bgr, -1)
    # every class is in the legend, with 0 when the image has none of it
    if type_info is not None:
        for t, (n, c) in type_info.items():
            if int(t) > 0:
                counts[(str(n), tuple(int(v) for v in c))] += 0
    else:
        counts[UNTYPED_CLASS] += 0
    write_overlay_canvas(path, canvas, counts, type_info)


def write_overlay_canvas(
    path: PathLike, canvas: np.ndarray, counts: Counter, type_info: TypeInfo | None
) -> None:
    """Draw the legend (classes in type-id order, with their counts) on a BGR overlay and write
    it atomically as PNG. `counts` is {(class name, colour): nuclei}."""
    import cv2

    if type_info is not None:
        order = {class_of({"type": t}, type_info): t for t in type_info}
        keys = sorted(counts, key=lambda k: (order.get(k, 1 << 30), k[0]))
    else:
        keys = list(counts)
    _draw_legend(canvas, [(name, colour, counts[(name, colour)]) for name, colour in keys])
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), canvas):
            raise OSError(f"OpenCV could not write the overlay {path}")
