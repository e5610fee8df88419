"""Training samples as a PNG grid, to check the pipeline by eye (`hovernet view-dataset`,
`hovernet train --view`); pure: arrays in, an RGB image out.

One row per sample: the network input (the output window outlined), the NP target, the HV
target's horizontal and vertical channels (blue -1, white 0, red +1) and, for typed data, the
type map over the image. Target panels show the output window enlarged to the panel size.
"""

from __future__ import annotations

import numpy as np

GAP = 4  # pixels between panels
HEADER = 28  # pixels of the title row
BACKGROUND = 255
OUTLINE = (0, 255, 0)
DEFAULT_COLOURS = [(255, 255, 0), (255, 0, 0), (0, 200, 0), (0, 80, 255), (255, 0, 255)]


def column_titles(typed: bool) -> list[str]:
    return ["image", "NP", "HV horizontal", "HV vertical"] + (["types"] if typed else [])


def grid_shape(n: int, panel: int, typed: bool) -> tuple[int, int]:
    """(height, width) in pixels of the grid for n samples of panel x panel pixels."""
    cols = len(column_titles(typed))
    return HEADER + n * (panel + GAP) + GAP, cols * (panel + GAP) + GAP


def _diverging_lut() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["coolwarm"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _type_colour(type_info: dict | None, type_id: int) -> tuple[int, int, int]:
    if type_info and type_id in type_info:
        return tuple(type_info[type_id][1])
    return DEFAULT_COLOURS[(type_id - 1) % len(DEFAULT_COLOURS)]


def render_panels(sample: dict, margin: int, type_info: dict | None) -> list[np.ndarray]:
    """The row of RGB panels (all input-size squares) for one sample of NumPy arrays."""
    import cv2

    img = sample["img"]
    size = img.shape[0]
    out = sample["np_map"].shape[0]

    def enlarge(x: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.resize(x, (size, size), interpolation=interpolation)

    framed = img.copy()
    cv2.rectangle(framed, (margin - 1, margin - 1), (margin + out, margin + out), OUTLINE, 1)
    panels = [framed, enlarge(np.repeat(sample["np_map"][..., None] * 255, 3, axis=2), 0)]
    lut = _diverging_lut()
    for channel in range(2):
        index = np.rint((sample["hv_map"][..., channel] + 1) * 127.5).astype(np.uint8)
        panels.append(enlarge(lut[index], cv2.INTER_NEAREST))
    if "tp_map" in sample:
        window = img[margin : margin + out, margin : margin + out].astype(np.float32)
        tint = window.copy()
        for type_id in np.unique(sample["tp_map"]):
            if type_id > 0:
                tint[sample["tp_map"] == type_id] = _type_colour(type_info, int(type_id))
        blended = np.rint(0.45 * window + 0.55 * tint).astype(np.uint8)
        panels.append(enlarge(blended, cv2.INTER_NEAREST))
    return panels


def render_grid(samples: list[dict], margin: int, type_info: dict | None = None) -> np.ndarray:
    """Compose the rows of panels with a title row into one RGB uint8 image."""
    import cv2

    size = samples[0]["img"].shape[0]
    typed = "tp_map" in samples[0]
    height, width = grid_shape(len(samples), size, typed)
    grid = np.full((height, width, 3), BACKGROUND, np.uint8)
    for c, title in enumerate(column_titles(typed)):
        x = GAP + c * (size + GAP)
        cv2.putText(grid, title, (x + 4, HEADER - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    for r, sample in enumerate(samples):
        y = HEADER + r * (size + GAP)
        for c, panel in enumerate(render_panels(sample, margin, type_info)):
            x = GAP + c * (size + GAP)
            grid[y : y + size, x : x + size] = panel
    return grid
