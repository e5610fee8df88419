"""Sharing slides between processes: torchrun ranks (RANK/WORLD_SIZE) within `--shard i/n`
job-array tasks; each slide is processed by exactly one of them.

`share_slides` hands them out as the processes become free (`hovernet.infer.claims`): a counter
in the process group's store under torchrun, claim files in the output folder between job-array
tasks."""

from __future__ import annotations

import os
from pathlib import Path

from hovernet.errors import HoverNetError
from hovernet.infer.claims import Cohort, CounterClaims, FileClaims, FixedCohort, largest_first


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


def leave_distributed() -> None:
    """Leave the process group once every rank is done (a rank that exits with the group
    still up can abort in the store's or gloo's threads)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def same_on_every_rank(value):
    """Rank 0's `value` on every rank (so that every rank counts over the same list)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_slides(
    slides: list[Path], output_dir: Path, shard: tuple[int, int], distributed: bool
) -> Cohort:
    """This process's slides, handed out one at a time as it asks for them (largest first):
    between `--shard` tasks (n > 1) by claim files in `output_dir`, between the ranks of one
    torchrun job by a counter in its store; a lone process takes them all, in order."""
    if shard[1] > 1:
        return FileClaims(largest_first(slides), output_dir)
    if distributed:
        return CounterClaims(same_on_every_rank(largest_first(slides)))
    return FixedCohort(slides)
