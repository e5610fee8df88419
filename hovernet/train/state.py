"""The state of a training run and its files: what a step and a checkpoint need (`TrainParts`),
the counters that make resume exact (`TrainState`), and last.pth / best.pth / metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hovernet.errors import HoverNetError
from hovernet.io.atomic import write_text_atomic
from hovernet.io.type_info import TypeInfo
from hovernet.model.checkpoints import save_checkpoint
from hovernet.train.config import TrainConfig, config_to_dict

RUN_FILES = ("config.yaml", "last.pth", "best.pth", "metrics.jsonl")


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed; the epoch in progress is this one (0-based)
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # running sums of the epoch's terms
    train_seconds: float = 0.0


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class TrainParts:
    """What a training step and a checkpoint need: the model, its optimiser, where and in which
    precision it runs."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: Any = None  # torch.amp.GradScaler for fp16
    ema: Any = None  # torch.optim.swa_utils.AveragedModel with ema_decay > 0
    class_weights: torch.Tensor | None = None
    type_info: TypeInfo | None = None


def prepare_run_folder(cfg: TrainConfig) -> Path:
    out = cfg.out
    if out is None:
        raise HoverNetError("no run folder: pass --out RUN")
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if cfg.resume:
        if not (out / "last.pth").is_file():
            raise HoverNetError(
                f"--resume: {out}/last.pth does not exist: start the run without --resume"
            )
    elif existing and not cfg.overwrite:
        raise HoverNetError(
            f"run folder {out} already holds a run ({', '.join(existing)}): continue it with "
            "--resume, pass --overwrite to start again, or choose another --out"
        )
    elif existing:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def make_ema(net: torch.nn.Module, decay: float):
    """The moving average of `net` (parameters and buffers), or None when `decay` is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def save_run_checkpoint(path: Path, parts: TrainParts, state: TrainState) -> None:
    extra = {
        "train_state": asdict(state),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "rng": _rng_state(parts.device),
        "config": config_to_dict(parts.cfg),
    }
    model, ema = parts.net, parts.ema
    if ema is not None:  # the average is the checkpoint's model; the trained weights ride along
        extra["train_desc"] = parts.net.state_dict()
        extra["ema_n_averaged"] = int(ema.n_averaged)
        model = ema.module
    save_checkpoint(path, model, type_info=parts.type_info, mpp=parts.cfg.mpp, extra=extra)


def _load_weights(path: Path, net: torch.nn.Module, desc: dict) -> None:
    state_dict = {k.removeprefix("module."): v for k, v in desc.items()}
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise HoverNetError(
            f"{path} does not fit the configured model ({net.mode}, nr_types={net.nr_types}): "
            f"{str(exc).splitlines()[0]}; resume with the run's own settings"
        ) from None


def load_run_checkpoint(path: Path, parts: TrainParts) -> TrainState:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if "train_state" not in obj:
        raise HoverNetError(f"{path} holds no training state: it cannot be resumed")
    _load_weights(path, parts.net, obj.get("train_desc", obj["desc"]))
    # the checkpoint's model is the average; a run started without one starts it at its next step
    if parts.ema is not None and "train_desc" in obj:
        _load_weights(path, parts.ema.module, obj["desc"])
        parts.ema.n_averaged.fill_(int(obj["ema_n_averaged"]))
    parts.optimizer.load_state_dict(obj["optimizer"])
    if parts.scaler is not None and obj.get("scaler"):
        parts.scaler.load_state_dict(obj["scaler"])
    _set_rng_state(obj["rng"], parts.device)
    return TrainState(**obj["train_state"])


def truncate_metrics(path: Path, epochs_done: int) -> None:
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["epoch"] <= epochs_done]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(ln + "\n" for ln in kept))


def append_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
