"""One line of validation figures for a probe (probe.sh): MoNuSeg and CoNSeP PQ, CoNSeP pooled
detection F1 and recall, per-class type F1 and their mean.
   python scripts/bundled_model/probe_line.py NAME SCORE_DIR   (score.sh's output, SPLIT=valid)"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def line(name: str, score: Path) -> str:
    mon = json.loads((score / "monuseg_valid_instance.json").read_text())["mean"]
    con = json.loads((score / "consep_valid_instance.json").read_text())["mean"]
    typ = json.loads((score / "consep_valid_type.json").read_text())
    f1 = [typ["f1_type"][k] for k in sorted(typ["f1_type"], key=int)]
    cells = [
        name,
        f"{mon['pq']:.3f}",
        f"{con['pq']:.3f}",
        f"{typ['f1_d']:.3f}",
        f"{typ['recall_d']:.3f}",
        " / ".join(f"{v:.3f}" for v in f1),
        f"{sum(f1) / len(f1):.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    head = "probe | MoNuSeg PQ | CoNSeP PQ | det. F1 | recall | type F1 oth/inf/epi/spi | mean"
    print(f"| {head} |")
    print(line(sys.argv[1], Path(sys.argv[2])))
