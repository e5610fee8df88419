"""Sharing slides between processes: torchrun ranks (RANK/WORLD_SIZE) within `--shard i/n`
job-array tasks; each slide is processed by exactly one of them."""

from __future__ import annotations

import os
from pathlib import Path

from hovernet.errors import HoverNetError


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "i/n" (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise HoverNetError(f"--shard {text!r}: write it as i/n, e.g. 0/4 .. 3/4") from None
    if not 0 <= i < n:
        raise HoverNetError(f"--shard {text!r}: i must be in 0..n-1 (e.g. $SLURM_ARRAY_TASK_ID/n)")
    return i, n


def rank_and_world(shard: tuple[int, int] = (0, 1)) -> tuple[int, int]:
    """This process's share: torchrun's RANK/WORLD_SIZE within a `--shard` i/n."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    i, n = shard
    return i * world + rank, n * world


def my_slides(slides: list[Path], rank: int, world: int) -> list[Path]:
    """Every world-th slide from `rank`: each slide belongs to exactly one rank."""
    return slides[rank::world]


def init_distributed() -> bool:
    """Join the process group of a torchrun launch (gloo: only small results are exchanged)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def gather(results: list) -> list:
    """Every rank's results, in rank order, on every rank."""
    import torch.distributed as dist

    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, results)
    return [r for part in everyone for r in part]
