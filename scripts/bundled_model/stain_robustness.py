"""Stain robustness of a model: the test splits re-coloured by the named stain shifts of
`hovernet.data.stain.SHIFTS`, scored as `score.sh` scores them, with and without
`--stain_norm` (Reinhard to a fixed CoNSeP training crop), printed as one table.

    python scripts/bundled_model/stain_robustness.py SHARED_DATA OUT_DIR [--model CKPT]
        [--shifts none,pale_h,...] [--consep N] [--no-norm-runs] [--reference REL_PATH]

SHARED_DATA is ../shared/data (monuseg/, consep_patches/). Each image gets the shift's jitter
drawn from seed = its index in the sorted list, so the copies are the same on every run.
`--consep N` scores the first N CoNSeP test crops in sorted order (default: all 224).
The images are written once to OUT_DIR/images/<shift>/{monuseg,consep}/ (PNG); predictions
and the stats JSON go to OUT_DIR/<model tag>/<shift>[_norm]/. Default settings otherwise
(one phase, --input_mpp 0.25), as in docs/model-card.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

from hovernet.data.stain import SHIFTS, shift_image

REFERENCE = "consep_train_patches/images/train_1_010.jpg"  # a fixed training crop
CLASSES = ["other", "inflammatory", "epithelial", "spindle"]


def write_shifted(files: list[Path], folder: Path, shift: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, src in enumerate(files):
        dst = folder / f"{src.stem}.png"
        if dst.exists():
            continue
        rgb = cv2.imread(str(src), cv2.IMREAD_COLOR)[:, :, ::-1]
        out = shift_image(rgb, shift, seed)
        tmp = folder / f".{src.stem}.tmp.png"
        cv2.imwrite(str(tmp), out[:, :, ::-1])
        os.replace(tmp, dst)


def hovernet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hovernet", *args], check=True)


def score(images: Path, out: Path, shared: Path, model: list[str], norm: list[str]) -> dict:
    """PQ on MoNuSeg and CoNSeP, CoNSeP detection and type F1s (score.sh's commands)."""
    res = {}
    for name, truth in (("monuseg", "monuseg/labels"), ("consep", "consep_patches/labels")):
        pred = out / f"pred_{name}"
        hovernet(
            "infer",
            *model,
            *norm,
            "--device",
            "cpu",
            "tile",
            "--input_dir",
            str(images / name),
            "--input_mpp",
            "0.25",
            "--output_dir",
            str(pred),
            "--quiet",
        )
        inst = out / f"{name}_instance.json"
        hovernet(
            "stats",
            "--mode",
            "instance",
            "--pred_dir",
            str(pred / "mat"),
            "--true_dir",
            str(shared / truth),
            "--out",
            str(inst),
            "--allow-unmatched",
            "--quiet",
        )
        res[f"pq_{name}"] = json.loads(inst.read_text())["mean"]["pq"]
    typ = out / "consep_type.json"
    hovernet(
        "stats",
        "--mode",
        "type",
        "--pred_dir",
        str(out / "pred_consep/json"),
        "--true_dir",
        str(shared / "consep_patches/labels"),
        "--out",
        str(typ),
        "--mpp",
        "0.25",
        "--radius",
        "3",
        "--allow-unmatched",
        "--quiet",
    )
    res["type"] = json.loads(typ.read_text())
    return res


def type_f1s(report: dict) -> list[float]:
    """Detection F1, then the F1 of classes 1-4 (NaN: a class absent), pooled over crops."""
    per_class = report.get("f1_type", {})
    return [report["f1_d"]] + [float(per_class.get(str(k), "nan")) for k in range(1, 5)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: bundled)")
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--consep", type=int, default=None, help="first N CoNSeP test crops")
    ap.add_argument("--reference", default=REFERENCE, help="--stain_norm image, in SHARED")
    ap.add_argument("--no-norm-runs", action="store_true", help="skip the --stain_norm runs")
    args = ap.parse_args()
    shared = args.shared.resolve()
    split = json.loads((shared / "monuseg/split.json").read_text())["test"]
    monuseg = [shared / f"monuseg/images/{n}.png" for n in sorted(split)]
    consep = sorted((shared / "consep_patches/images").glob("*.png"))[: args.consep]
    model = ["--model_path", str(args.model)] if args.model else []
    tag = args.model.stem if args.model else "bundled"
    rows = []
    for shift in args.shifts.split(","):
        images = args.out / "images" / shift
        write_shifted(monuseg, images / "monuseg", shift)
        write_shifted(consep, images / "consep", shift)
        for norm in ([], ["--stain_norm", str(shared / args.reference)])[
            : 1 if args.no_norm_runs else 2
        ]:
            ref = Path(args.reference).stem
            out = args.out / tag / (shift + (f"_norm_{ref}" if norm else ""))
            res = score(images, out, shared, model, norm)
            rows.append((shift, bool(norm), res))
            print_row(*rows[-1], flush=True)
    print(f"\n{tag}; CoNSeP test crops: {len(consep)} of 224; reference {args.reference}")
    print(
        "| shift | --stain_norm | PQ MoNuSeg | PQ CoNSeP | F1 det. | F1 "
        + " / ".join(CLASSES)
        + " | mean type F1 |\n|---|---|---|---|---|---|---|"
    )
    for row in rows:
        print_row(*row)


def print_row(shift: str, norm: bool, res: dict, flush: bool = False) -> None:
    det, *f1 = type_f1s(res["type"])
    print(
        f"| {shift} | {'yes' if norm else 'no'} | {res['pq_monuseg']:.3f} | "
        f"{res['pq_consep']:.3f} | {det:.3f} | {' / '.join(f'{v:.3f}' for v in f1)} | "
        f"{sum(f1) / len(f1):.3f} |",
        flush=flush,
    )


if __name__ == "__main__":
    main()
