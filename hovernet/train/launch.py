"""Starting training in one or several processes.

- under `torchrun` (WORLD_SIZE in the environment) every process calls `train` itself;
- `--gpu 0,1` starts one process per listed GPU here (`torch.multiprocessing.spawn`), each
  seeing only its GPU; `--gpu 0` runs in this process on that GPU;
- `launch(cfg, nprocs=2)` on the CPU runs 2 gloo processes (used by the tests).
"""

from __future__ import annotations

import os
import socket

from hovernet.errors import HoverNetError
from hovernet.train.config import TrainConfig
from hovernet.train.loop import TrainResult, train
from hovernet.train.state import Dist


def parse_gpus(spec: str) -> list[int]:
    try:
        ids = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise HoverNetError(
            f"--gpu {spec!r}: give GPU numbers separated by commas, e.g. 0,1"
        ) from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise HoverNetError(f"--gpu {spec!r}: give distinct GPU numbers, e.g. 0,1")
    return ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, cfg: TrainConfig, world: int, gpus: list[int] | None) -> None:
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[rank])
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE=str(world)
    )
    import torch

    from hovernet.resources import rank_cpus

    torch.set_num_threads(rank_cpus())
    try:
        train(cfg, Dist(rank, world, 0))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(cfg: TrainConfig, nprocs: int | None = None) -> TrainResult | None:
    """Run training: in this process, or in `nprocs` spawned processes (None = from --gpu)."""
    import torch

    gpus = parse_gpus(cfg.gpu) if cfg.gpu is not None else None
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return train(cfg)  # torchrun
    if gpus is not None:
        if not torch.cuda.is_available():
            raise HoverNetError(f"--gpu {cfg.gpu}: no CUDA device here; leave --gpu out")
        if len(gpus) == 1:
            cfg.device = f"cuda:{gpus[0]}"
            return train(cfg)
        nprocs = len(gpus)
    if not nprocs or nprocs == 1:
        return train(cfg)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    torch.multiprocessing.spawn(_worker, args=(cfg, nprocs, gpus), nprocs=nprocs, join=True)
    return None
