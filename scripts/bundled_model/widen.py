"""Write a lite checkpoint widened into lite-wide, computing the same outputs (the capacity
probe's start, docs/model-card.md "Probes"; hovernet.model.widen says how).

    python scripts/bundled_model/widen.py LITE.pth WIDE.pth

Then `hovernet train --arch lite-wide --init WIDE.pth ...` (probe.sh: INIT=WIDE.pth with
--arch lite-wide). The type names and the resolution are carried over.
"""

from __future__ import annotations

import sys

import torch

from hovernet.model.checkpoints import load_model, save_checkpoint
from hovernet.model.registry import build_model
from hovernet.model.widen import widen_lite


def main(src: str, dst: str) -> None:
    narrow = load_model(src)
    torch.manual_seed(0)  # the extra channels' initialisation
    wide = widen_lite(narrow, build_model("lite-wide", narrow.nr_types))
    x = torch.rand(2, 3, 256, 256) * 255
    with torch.no_grad():
        gap = max((narrow(x)[k] - wide.eval()(x)[k]).abs().max().item() for k in narrow(x))
    save_checkpoint(dst, wide, narrow.meta.type_info, narrow.meta.mpp)
    params = [sum(p.numel() for p in m.parameters()) for m in (narrow, wide)]
    print(f"wrote {dst}: {params[0]:,} -> {params[1]:,} parameters, outputs differ by {gap:.1e}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
