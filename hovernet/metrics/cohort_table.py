"""One row of the cohort table (`cohort.csv`, docs/slide.md#cohort-table) from one slide.

`slide_row(name, summary, type_names, features)` is pure: the slide's summary (the dict of
`<slide>.summary.json`), each nucleus' class name (the CSV's `type_name`) and its numeric
measurements (the CSV's columns, level-0 pixels) in; a dict of column -> number, text or None
out. None is an empty cell: a number that does not exist (a density without tissue, a spread
of fewer than two nuclei), never a stand-in such as 0 or inf.

- Counts and densities: `nuclei`, `nuclei_per_mm2` (per mm^2 of processed tissue), and per
  class `nuclei_<class>`, `nuclei_per_mm2_<class>`, `fraction_<class>` (of all the slide's
  nuclei, unclassified ones included). Classes are the summary's type info in id order; id 0
  is "unclassified" (docs/outputs.md). Untyped models have no class columns.
- Features: for each measurement, `<feature>_<stat>` over all nuclei and `<feature>_<stat>_<class>`
  per class, stats `mean`, `std` (sample, n - 1), `median` and `iqr` (75th - 25th percentile,
  linear interpolation) over the nuclei with a value. Measurements in pixels (`hovernet.nuclei`
  units px and px^2: area, perimeter, the OD sums) are converted from level-0 pixels to microns
  and named so (`area_um2`, `perimeter_um`, `nucleus_h_od_sum_um2`); the others keep their name
  and unit.
- The run: model, model_id, slide_mpp, proc_mpp, phases, precision, tissue source, version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hovernet.nuclei import FEATURES, MEASUREMENTS

STATS = ("mean", "std", "median", "iqr")
UNCLASSIFIED = "unclassified"  # the class name of type 0 in every output
PIXEL_UNITS = {"px^2": ("_um2", 2), "px": ("_um", 1)}  # -> (name suffix, power of um per px)
# measurements in (level-0) pixels -> (column name, power of microns per pixel)
IN_MICRONS = {
    name: (name + PIXEL_UNITS[unit][0], PIXEL_UNITS[unit][1])
    for name, unit in {**MEASUREMENTS, **FEATURES}.items()
    if unit in PIXEL_UNITS
}


def feature_stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean, sample std, median and IQR of the finite values (None where undefined)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return dict.fromkeys(STATS)
    q25, median, q75 = np.percentile(v, [25, 50, 75])
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "median": float(median),
        "iqr": float(q75 - q25),
    }


def class_names(summary: Mapping[str, Any]) -> list[str]:
    """The slide's classes in type id order (id 0: "unclassified"), then any other class its
    counts name; [] for an untyped model."""
    info = summary.get("type_info")
    if not info:
        return []
    names = [UNCLASSIFIED if int(k) == 0 else str(v[0]) for k, v in sorted(info.items(), key=_id)]
    extra = [c for c in summary.get("nuclei_per_class", {}) if c not in names]
    return names + extra


def _id(item: tuple[str, Any]) -> int:
    return int(item[0])


def per_mm2(count: int, tissue_mm2: float | None) -> float | None:
    """Nuclei per mm^2; None without tissue (not inf, not 0)."""
    if tissue_mm2 is None or not tissue_mm2 > 0:
        return None
    return count / tissue_mm2


def in_microns(features: Mapping[str, np.ndarray], slide_mpp: float) -> dict[str, np.ndarray]:
    """Measurements in level-0 pixels (IN_MICRONS) to microns; the others as they are."""
    out = {}
    for name, values in features.items():
        new, power = IN_MICRONS.get(name, (name, 0))
        out[new] = np.asarray(values, np.float64) * slide_mpp**power
    return out


def check_counts(summary: Mapping[str, Any], type_names: Sequence[str]) -> str | None:
    """Why the nuclei do not belong to the summary (None when they do)."""
    if len(type_names) != summary.get("nuclei"):
        return f"{len(type_names)} nuclei, the summary says {summary.get('nuclei')}"
    counted = Counter(type_names)
    expected = {k: v for k, v in summary.get("nuclei_per_class", {}).items() if v}
    if dict(counted) != expected:
        return f"nuclei per class {dict(counted)}, the summary says {expected}"
    return None


def slide_row(
    name: str,
    summary: Mapping[str, Any],
    type_names: Sequence[str],
    features: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The slide's row (see the module docstring). Raises ValueError when the nuclei do not
    match the summary's counts or the summary lacks the slide's resolution."""
    wrong = check_counts(summary, type_names)
    if wrong:
        raise ValueError(wrong)
    mpp = summary.get("slide_mpp")
    if not isinstance(mpp, (int, float)) or not mpp > 0:
        raise ValueError(f"the summary records no slide resolution (slide_mpp: {mpp!r})")
    tissue = summary.get("tissue_mm2")
    tissue = float(tissue) if isinstance(tissue, (int, float)) else None
    types = np.asarray(list(type_names), dtype=str)  # fixed-width text: compared in C
    n = len(types)
    row: dict[str, Any] = {
        "slide": name,
        "slide_path": summary.get("slide"),
        "tissue_mm2": tissue,
        "nuclei": n,
        "nuclei_per_mm2": per_mm2(n, tissue),
    }
    classes = class_names(summary)
    for c in classes:
        k = int(np.count_nonzero(types == c))
        row[f"nuclei_{c}"] = k
        row[f"nuclei_per_mm2_{c}"] = per_mm2(k, tissue)
        row[f"fraction_{c}"] = k / n if n else None
    values = in_microns(features, float(mpp))
    for c in [None, *classes]:
        keep = slice(None) if c is None else types == c
        suffix = "" if c is None else f"_{c}"
        for feature, v in values.items():
            for stat, x in feature_stats(v[keep]).items():
                row[f"{feature}_{stat}{suffix}"] = x
    row.update(run_settings(summary))
    return row


def run_settings(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's model and settings as the summary records them."""
    run = summary.get("run") if isinstance(summary.get("run"), Mapping) else {}
    return {
        "model": summary.get("model"),
        "model_id": run.get("model_id"),
        "slide_mpp": summary.get("slide_mpp"),
        "proc_mpp": summary.get("proc_mpp"),
        "phases": summary.get("phases"),
        "precision": run.get("precision"),
        "tissue_source": summary.get("tissue"),
        "version": summary.get("version"),
    }
