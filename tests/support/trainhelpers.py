"""Test helpers for the trainer: a tiny registered test double and small patch folders."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from hovernet.config import geometry_for
from hovernet.model import registry
from hovernet.model.network import centre_crop


class TinyNet(nn.Module):
    """A few convolutions with the `fast` geometry (256 -> 164) and the registry's interface."""

    def __init__(self, nr_types: int | None = None, norm: bool = True) -> None:
        super().__init__()
        self.mode = "tiny" if norm else "tiny_nonorm"
        self.nr_types = nr_types or None
        self.geometry = geometry_for("fast")
        self.channels_last = False
        layers: list[tuple[str, nn.Module]] = []
        ch = 3
        for i in range(2):
            layers.append((f"conv{i}", nn.Conv2d(ch, 8, 3, padding=1)))
            if norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(8)))
            layers.append((f"relu{i}", nn.ReLU()))
            ch = 8
        self.d0 = nn.Sequential(OrderedDict(layers))  # "encoder" (frozen by the first phase)
        heads = {"np": 2, "hv": 2} | ({"tp": self.nr_types} if self.nr_types else {})
        self.heads = nn.ModuleDict({k: nn.Conv2d(8, c, 1) for k, c in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # work at 1/4 resolution: the CPUs of the test machines are few and shared
        f = self.d0(nn.functional.avg_pool2d(x / 255.0, 4))
        out = {k: self.heads[k](f) for k in ("np", "hv", "tp") if k in self.heads}
        up = {
            k: nn.functional.interpolate(v, scale_factor=4.0, mode="bilinear")
            for k, v in out.items()
        }
        return {k: centre_crop(v, (164, 164)) for k, v in up.items()}


class _TinyArch(registry.Architecture):
    @property
    def geometry(self):
        return geometry_for("fast")


def tiny_architectures() -> dict[str, registry.Architecture]:
    """`tiny` (with BatchNorm) and `tiny_nonorm` as registry entries."""
    return {
        name: _TinyArch(
            name,
            lambda n, norm=norm: TinyNet(n, norm),
            "test double",
            lambda sd: registry.NOT_MINE,  # never claims a checkpoint
            "test double",
        )
        for name, norm in (("tiny", True), ("tiny_nonorm", False))
    }


def register_tiny(monkeypatch) -> None:
    """Register the test doubles for the duration of a test."""
    for name, arch in tiny_architectures().items():
        monkeypatch.setitem(registry.ARCHITECTURES, name, arch)


def ddp_worker(rank: int, cfg, world: int) -> None:
    """One process of a CPU (gloo) run: the test double must be registered in each process."""
    import os

    from hovernet.train.loop import train
    from hovernet.train.state import Dist

    registry.ARCHITECTURES.update(tiny_architectures())
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")
    torch.set_num_threads(1)
    try:
        train(cfg, Dist(rank, world, 0))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
