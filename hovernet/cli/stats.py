"""`hovernet stats`: score predictions against ground truth, as the original's compute_stats.py.

Instance mode: Dice, AJI, AJI+, DQ, SQ, PQ per image, their mean over images (the original's
summary) and pooled values. Type mode: detection F1, type accuracy and per-type F1 pooled over
images (the original's numbers), plus per-image detection values. Pannuke and conic modes: the
two datasets' per-class protocols (hovernet/cli/stats_classes.py), also on their .npy arrays.
Errors mode: why PQ is lost, each error's cause and recall by size (hovernet/cli/stats_errors.py).
Results are printed and, with --out result.json, written as JSON and CSV (result.csv beside it).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.errors import HoverNetError

INSTANCE_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")
INSTANCE_COUNTS = ("n_true", "n_pred", "tp", "fp", "fn")
TYPE_IMAGE_KEYS = ("f1_d", "precision_d", "recall_d", "acc")
MODES = ("instance", "type", "pannuke", "conic", "errors")


@dataclass(frozen=True)
class StatsConfig:
    """Options of `hovernet stats`."""

    pred_dir: Path
    true_dir: Path
    mode: str = "instance"
    out: Path | None = None
    radius: float = 12.0  # pixels, or microns when mpp is given
    mpp: float | None = None
    match_iou: float = 0.5
    type_ids: tuple[int, ...] | None = None
    allow_unmatched: bool = False
    count_crop: int = 224  # conic mode: side of the central square nuclei are counted in
    area_bins: tuple[float, ...] | None = None  # errors mode (None: its defaults)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HoverNetError(f"--mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.count_crop < 0:
            raise HoverNetError(
                f"--count-crop must be >= 0 (0: whole image), got {self.count_crop}"
            )
        if self.out is not None and self.out.suffix.lower() != ".json":
            raise HoverNetError(
                f"--out {self.out}: give a .json path; the CSV is written beside it"
            )
        if self.area_bins is not None:
            from hovernet.metrics.errors import check_area_bins

            check_area_bins(self.area_bins, "--area-bins")
        if not 0.0 <= self.match_iou < 1.0:
            raise HoverNetError(f"--match-iou must be in [0, 1), got {self.match_iou}")


def match_files(cfg: StatsConfig) -> tuple[list[tuple[str, object, object]], dict, Path]:
    """Pair prediction and truth files by image name; report (or refuse) unmatched names.
    Also returns the folder the predictions were read from (tile mode's output: its mat/)."""
    from hovernet.io.labels import list_label_files
    from hovernet.io.prediction_files import list_predictions, prediction_folder

    if cfg.mode in ("pannuke", "conic"):
        from hovernet.cli.stats_classes import open_sides

        preds, trues, pred_dir = open_sides(cfg.pred_dir, cfg.true_dir)
    else:
        pred_dir = prediction_folder(cfg.pred_dir)
        preds = list_predictions(pred_dir, "--pred_dir")
        trues = list_label_files(cfg.true_dir, "--true_dir")
    names = sorted(set(preds) & set(trues))
    unmatched = {
        "pred_only": sorted(set(preds) - set(trues)),
        "true_only": sorted(set(trues) - set(preds)),
    }
    if not names:
        raise HoverNetError(
            f"no image name is in both --pred_dir {pred_dir} ({len(preds)} files, e.g. "
            f"{sorted(preds)[:3]}) and --true_dir {cfg.true_dir} ({len(trues)} files, e.g. "
            f"{sorted(trues)[:3]}); files are matched by name without suffix (and '_inst'), "
            "images of a PanNuke / CoNIC array by index"
        )
    if unmatched["pred_only"] and not cfg.allow_unmatched:
        raise HoverNetError(
            f"{len(unmatched['pred_only'])} prediction(s) in {pred_dir} have no truth in "
            f"{cfg.true_dir}: {unmatched['pred_only'][:10]}; add the truth, remove them, or "
            "pass --allow-unmatched to score only the matched images"
        )
    return [(n, preds[n], trues[n]) for n in names], unmatched, pred_dir


def run_instance(cfg: StatsConfig, pairs: list, progress=None) -> dict:
    import numpy as np

    from hovernet.io.prediction_files import read_scored_pair
    from hovernet.metrics import instance_stats, pool_instance_stats

    per_image, stats = {}, []
    for name, pred_file, true_file in pairs:
        true, _, pred = read_scored_pair(pred_file, true_file)
        s = instance_stats(true, pred, cfg.match_iou)
        stats.append(s)
        per_image[name] = {k: getattr(s, k) for k in INSTANCE_KEYS + INSTANCE_COUNTS}
        if progress is not None:
            progress.advance(1, pq=s.pq)
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in INSTANCE_KEYS}
    return {
        "mode": "instance",
        "per_image": per_image,
        "mean": mean,
        "pooled": pool_instance_stats(stats),
        "match_iou": cfg.match_iou,
    }


def run_type(cfg: StatsConfig, pairs: list, progress=None) -> dict:
    import numpy as np

    from hovernet.io.labels import read_centroids
    from hovernet.io.prediction_files import read_prediction_centroids
    from hovernet.metrics import radius_pixels, type_stats

    radius = radius_pixels(cfg.radius, cfg.mpp)
    data = {}
    for name, p, t in pairs:
        data[name] = (read_centroids(t), read_prediction_centroids(p))
        if progress is not None:
            progress.advance(1)
    true_xy, true_type = zip(*(truth for truth, _ in data.values()), strict=True)
    pred_xy, pred_type = zip(*(pred for _, pred in data.values()), strict=True)
    type_ids = list(cfg.type_ids) if cfg.type_ids is not None else None
    pooled = type_stats(true_xy, true_type, pred_xy, pred_type, radius=radius, type_ids=type_ids)
    per_image = {}
    for name, ((txy, tt), (pxy, pt)) in data.items():
        s = type_stats([txy], [tt], [pxy], [pt], radius=radius, type_ids=list(pooled.f1_type))
        per_image[name] = {
            **{k: getattr(s, k) for k in TYPE_IMAGE_KEYS},
            "f1_type": {str(k): v for k, v in s.f1_type.items()},
            "n_true": len(txy),
            "n_pred": len(pxy),
            "paired": s.paired,
        }
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in TYPE_IMAGE_KEYS}
    return {
        "mode": "type",
        **pooled.as_dict(),
        "radius_px": radius,
        "per_image": per_image,
        "mean": mean,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.5f}" if isinstance(value, float) else str(value)


def table_rows(result: dict) -> tuple[list[str], list[list]]:
    """Header and rows (per image, then summary rows) shared by the printout and the CSV."""
    if result["mode"] in ("pannuke", "conic"):
        from hovernet.cli.stats_classes import table_rows as class_rows

        return class_rows(result)
    if result["mode"] == "errors":
        from hovernet.cli.stats_errors import table_rows as error_rows

        return error_rows(result)
    if result["mode"] == "instance":
        header = ["image", *INSTANCE_KEYS, *INSTANCE_COUNTS]
        rows = [[n, *(v[k] for k in header[1:])] for n, v in result["per_image"].items()]
        rows.append(["mean", *(result["mean"][k] for k in INSTANCE_KEYS), *[""] * 5])
        counts = [sum(v[k] for v in result["per_image"].values()) for k in INSTANCE_COUNTS]
        rows.append(["pooled", *(result["pooled"][k] for k in INSTANCE_KEYS), *counts])
        return header, rows
    type_keys = list(result["f1_type"])
    header = ["image", "n_true", "n_pred", "paired", *TYPE_IMAGE_KEYS]
    header += [f"f1_type_{t}" for t in type_keys]
    rows = []
    for n, v in result["per_image"].items():
        rows.append(
            [
                n,
                v["n_true"],
                v["n_pred"],
                v["paired"],
                *(v[k] for k in TYPE_IMAGE_KEYS),
                *(v["f1_type"][t] for t in type_keys),
            ]
        )
    rows.append(
        ["mean", "", "", "", *(result["mean"][k] for k in TYPE_IMAGE_KEYS), *[""] * len(type_keys)]
    )
    n_true = result["paired"] + result["unpaired_true"]
    n_pred = result["paired"] + result["unpaired_pred"]
    rows.append(
        [
            "pooled",
            n_true,
            n_pred,
            result["paired"],
            *(result[k] for k in TYPE_IMAGE_KEYS),
            *(result["f1_type"][t] for t in type_keys),
        ]
    )
    return header, rows


def format_table(header: list[str], rows: list[list], n_summary: int = 2) -> str:
    """Aligned columns; a rule under the header and above the last `n_summary` rows."""
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        padded = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(padded))
    lines.insert(1, "  ".join("-" * w for w in widths))
    if n_summary:
        lines.insert(len(lines) - n_summary, lines[1])
    return "\n".join(lines)


def _csv_cell(value):
    if value is None:
        return ""  # a value PanNuke skips (class absent from the truth)
    return f"{value:.10g}" if isinstance(value, float) else value


def write_results(result: dict, out: Path) -> Path:
    """Write result JSON at `out` and the table as CSV beside it, both atomically."""
    from hovernet.io.atomic import atomic_path

    header, rows = table_rows(result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_csv_cell(c) for c in r] for r in rows])
    csv_path = out.with_suffix(".csv")
    with atomic_path(out) as tmp_json, atomic_path(csv_path) as tmp_csv:
        tmp_csv.write_text(buf.getvalue(), encoding="utf-8")
        tmp_json.write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
    return csv_path


def _runner(mode: str):
    if mode == "errors":
        from hovernet.cli.stats_errors import run_errors

        return run_errors
    if mode in ("pannuke", "conic"):
        from hovernet.cli.stats_classes import run_conic, run_pannuke

        return run_pannuke if mode == "pannuke" else run_conic
    return run_instance if mode == "instance" else run_type


def run_stats(cfg: StatsConfig, quiet: bool = True) -> dict:
    """Score every matched image; return the result dictionary (the JSON written by --out).

    --out is checked to be writable before any image is read."""
    from hovernet.io.atomic import check_writable_file
    from hovernet.progress import Progress

    if cfg.out is not None:
        check_writable_file(cfg.out, "result file (--out)")
    pairs, unmatched, pred_dir = match_files(cfg)
    with Progress(len(pairs), "stats", unit="images", quiet=quiet) as bar:
        result = _runner(cfg.mode)(cfg, pairs, bar)
    result["pred_dir"] = str(pred_dir)
    result["unmatched"] = unmatched
    result["n_images"] = len(pairs)
    return result


def _numbers(text: str | None, flag: str) -> tuple[float, ...] | None:
    """A comma-separated list of numbers, or None."""
    if not text:
        return None
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError as exc:
        raise HoverNetError(f"{flag} must be numbers like 5,10,20, got {text}") from exc


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats(
        pred_dir: Path = typer.Option(
            ...,
            "--pred-dir",
            "--pred_dir",
            help="Predictions: an output folder of `hovernet infer` (tile or slide mode), a "
            "folder of .mat/.npy/.tif/.json files, or (pannuke/conic) a PanNuke masks.npy / "
            "CoNIC labels.npy or its folder.",
        ),
        true_dir: Path = typer.Option(
            ...,
            "--true-dir",
            "--true_dir",
            help="Folder of ground truth, matched by name (pannuke/conic: or a PanNuke / CoNIC "
            "array or its folder, images matched by index).",
        ),
        mode: str = typer.Option(
            "instance",
            "--mode",
            help="'instance', 'type', 'pannuke' (mPQ/bPQ), 'conic' (mPQ+, count R2) or 'errors' "
            "(each PQ error's cause; recall by nucleus size).",
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Write the results as JSON here and as CSV beside it."
        ),
        radius: float = typer.Option(
            12.0, "--radius", help="Type mode: centroid pairing radius (pixels; microns w/ --mpp)."
        ),
        mpp: float | None = typer.Option(
            None, "--mpp", help="Microns per pixel of the images: makes --radius microns."
        ),
        match_iou: float = typer.Option(
            0.5,
            "--match-iou",
            "--match_iou",
            help="Instance, pannuke, conic modes: PQ pairing IoU threshold.",
        ),
        type_ids: str | None = typer.Option(
            None,
            "--type-ids",
            "--type_ids",
            help="Type, pannuke, conic modes: class ids to score, e.g. '1,2,3,4'; errors mode: "
            "report recall per true type of these ids.",
        ),
        allow_unmatched: bool = typer.Option(
            False,
            "--allow-unmatched",
            help="Score matched images even if some predictions have no truth (they are listed).",
        ),
        count_crop: int = typer.Option(
            224,
            "--count-crop",
            help="Conic mode: count nuclei touching the central square of this side (px; 0: "
            "whole image).",
        ),
        area_bins: str | None = typer.Option(
            None,
            "--area-bins",
            help="Errors mode: nucleus area bin edges, e.g. '5,10,20,40' (um^2 with --mpp, "
            "else px; default 5,10,20,40 um^2 or 80,160,320,640 px).",
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Score predictions against ground truth (the original's compute_stats.py)."""
        ids = None
        if type_ids:
            try:
                ids = tuple(int(t) for t in type_ids.split(","))
            except ValueError as exc:
                raise HoverNetError(
                    f"--type-ids must be integers like 1,2,3, got {type_ids}"
                ) from exc
        cfg = StatsConfig(
            Path(pred_dir),
            Path(true_dir),
            mode,
            out,
            radius,
            mpp,
            match_iou,
            ids,
            allow_unmatched,
            count_crop,
            _numbers(area_bins, "--area-bins"),
        )
        result = run_stats(cfg, quiet=quiet)
        if Path(result["pred_dir"]) != cfg.pred_dir:
            print(f"predictions: {result['pred_dir']}", file=sys.stderr)
        for side, names in result["unmatched"].items():
            if names:
                where = "no truth" if side == "pred_only" else "no prediction"
                print(
                    f"warning: {len(names)} image(s) with {where}, not scored: {names[:10]}",
                    file=sys.stderr,
                )
        if cfg.mode in ("pannuke", "conic"):
            from hovernet.cli.stats_classes import summary_tables

            tables, line = summary_tables(result)
            print("\n\n".join(format_table(*table, n_summary=0) for table in tables))
            print(line)
        elif cfg.mode == "errors":
            from hovernet.cli.stats_errors import recall_lines

            print(format_table(*table_rows(result), n_summary=1))
            print(recall_lines(result))
        else:
            print(format_table(*table_rows(result)))
        if cfg.mode == "type":
            f1t = "  ".join(f"f1_type[{k}]={v:.5f}" for k, v in result["f1_type"].items())
            print(
                f"pooled over {result['n_images']} images (radius {result['radius_px']:.3g} "
                f"px): f1_d={result['f1_d']:.5f}  acc={result['acc']:.5f}  {f1t}"
            )
        if out is not None:
            csv_path = write_results(result, Path(out))
            print(f"wrote {out} and {csv_path}")
