"""Write a lite checkpoint grown into lite-wide or lite-deep, computing the same outputs (the
capacity probes' start, docs/model-card.md "Probes"; hovernet.model.grow says how).

    python scripts/bundled_model/grow.py LITE.pth OUT.pth lite-wide|lite-deep

Then `hovernet train --arch ARCH --init OUT.pth ...` (probe.sh: INIT=OUT.pth with --arch ARCH).
The type names and the resolution are carried over.
"""

from __future__ import annotations

import sys

import torch

from hovernet.model.checkpoints import load_model, save_checkpoint
from hovernet.model.grow import deepen_lite, widen_lite
from hovernet.model.registry import build_model

GROW = {"lite-wide": widen_lite, "lite-deep": deepen_lite}


def main(src: str, dst: str, arch: str) -> None:
    small = load_model(src)
    torch.manual_seed(0)  # the added weights' initialisation
    grown = GROW[arch](small, build_model(arch, small.nr_types)).eval()
    x = torch.rand(2, 3, 256, 256) * 255
    with torch.no_grad():
        before, after = small(x), grown(x)
    gap = max((before[k] - after[k]).abs().max().item() for k in before)
    save_checkpoint(dst, grown, small.meta.type_info, small.meta.mpp)
    params = [sum(p.numel() for p in m.parameters()) for m in (small, grown)]
    print(f"wrote {dst}: {params[0]:,} -> {params[1]:,} parameters, outputs differ by {gap:.1e}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in GROW:
        sys.exit(__doc__)
    main(*sys.argv[1:])
