"""A cheap, deterministic stand-in for HoVer-Net, for tests and benchmarks without weights.

`BlobNet` has HoVer-Net's interface (`forward` -> {"np", "hv", "tp"} logits for the central
`output_size` square of each `input_size` window; `geometry`, `nr_types`, `mode`) but computes
each output pixel from a small neighbourhood: the nucleus logit from the Gaussian-blurred
darkness of the image, the h/v maps from minus its x/y derivatives (they increase across a dark
blob, like HoVer-Net's distance maps), and the type logits from the local redness. Dark blobs of
a real H&E image (nuclei) become nucleus-like instances after post-processing, in a few
milliseconds per window on a CPU.

HoVer-Net's post-processing min-max normalises the h/v maps and their Sobel gradients over the
whole map it is given. A trained HoVer-Net's maps saturate at -1 and +1 in any area with nuclei,
so those extremes hardly depend on the map's extent; a naive stand-in's would, and a region of a
slide would then be post-processed differently from the whole image. So `BlobNet` clips its h/v
maps to [-1, 1] and writes an *anchor* into the top-left `ANCHOR` x `ANCHOR` pixels of every
output square (background, h/v stripes -1, +1, -1: perfect steps both ways), which pins those
extremes wherever a map is cut. Outputs depend on the window's position only through the anchor,
which lies on the same global grid in tile and slide mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hovernet.config import GEOMETRY, ModelGeometry

ANCHOR = 36  # three stripes of 12 px: wider than the 21-px Sobel's half-width


class BlobNet(torch.nn.Module):
    def __init__(
        self,
        geometry: ModelGeometry = GEOMETRY["fast"],
        nr_types: int | None = 3,
        threshold: float = 0.35,
        sigma: float = 2.0,
        hv_gain: float = 10.0,
    ):
        super().__init__()
        self.geometry, self.nr_types, self.mode = geometry, nr_types, geometry.mode
        self.radius = int(3 * sigma)
        t = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        self.register_buffer("kernel", g / g.sum())
        self.threshold, self.hv_gain = threshold, hv_gain
        if geometry.margin < self.radius + 1:
            raise ValueError(
                f"geometry margin {geometry.margin} < stand-in reach {self.radius + 1}"
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        k = len(self.kernel)
        x = x.float()
        dark = 1 - x.mean(1, keepdim=True) / 255
        blur = F.conv2d(dark, self.kernel.view(1, 1, 1, k))
        blur = F.conv2d(blur, self.kernel.view(1, 1, k, 1))
        dx = blur[..., 1:-1, 2:] - blur[..., 1:-1, :-2]
        dy = blur[..., 2:, 1:-1] - blur[..., :-2, 1:-1]
        core = blur[..., 1:-1, 1:-1]
        c = self.geometry.margin - self.radius - 1

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., c : t.shape[-2] - c, c : t.shape[-1] - c]

        zero = torch.zeros_like(core)
        logit = crop((core - self.threshold) * 30)
        hv = crop(torch.clamp(torch.cat([-dx, -dy], 1) * self.hv_gain, -1, 1))
        a, third = min(ANCHOR, hv.shape[-1], hv.shape[-2]), ANCHOR // 3
        stripes = torch.tensor([-1.0, 1.0, -1.0]).repeat_interleave(third)[:a]
        hv[:, 0, :a, :a] = stripes.view(1, a)
        hv[:, 1, :a, :a] = stripes.view(a, 1)
        logit[:, :, :a, :a] = -20.0
        out = {"np": torch.cat([torch.zeros_like(logit), logit], 1), "hv": hv}
        if self.nr_types:
            red = x[:, :1, self.radius + 1 : -self.radius - 1, self.radius + 1 : -self.radius - 1]
            red = red / 255
            logits = [zero] + [(red - 0.6) * 10 * (-1) ** i for i in range(self.nr_types - 1)]
            out["tp"] = crop(torch.cat(logits, 1))
        return out
