"""PNG plots of a run's metrics.jsonl, like the seed's: loss terms, validation Dice, accuracy,
PQ and learning rate against the epoch."""

from __future__ import annotations

import json
from pathlib import Path

from hovernet.io.atomic import atomic_path

PLOTS = {
    "loss": ("training loss", ["train_loss", "np_bce", "np_dice", "hv_mse", "hv_msge",
                               "tp_bce", "tp_dice", "tp_focal", "valid_loss"]),
    "valid_dice": ("validation Dice", ["valid_np_dice", "valid_dice"]),
    "valid_accuracy": ("validation accuracy", ["valid_np_acc", "valid_type_acc", "valid_f1_d"]),
    "valid_pq": ("validation PQ / AJI", ["valid_pq", "valid_dq", "valid_sq", "valid_aji"]),
    "lr": ("learning rate", ["lr"]),
}  # fmt: skip


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_plots(metrics_path: Path, out_dir: Path) -> list[Path]:
    """One PNG per figure in `out_dir` (only the series present); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        return []
    written = []
    for name, (title, keys) in PLOTS.items():
        series = {k: [(r["epoch"], r[k]) for r in records if k in r] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if name == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        written.append(path)
    return written
