"""The training loop: `train(cfg)` runs (or resumes) one run in `cfg.out`, in three steps:
`hovernet.train.setup.prepare_training` (everything decided before the first step: device, run
folder, data, model, optimiser, loader), the epochs (`_run_epochs`: each one's steps, then its
record, validation and checkpoints), and closing the loader's workers and the writer.

Run folder:

    config.yaml     the resolved configuration
    last.pth        the latest state: model (the project's checkpoint format, so `hovernet infer`
                    reads it as it is) + optimiser, scaler, epoch, step and RNG state for --resume
    best.pth        the model of the epoch with the best validation PQ (or loss without PQ)
    metrics.jsonl   one line per epoch: epoch, train_loss, each term, lr, the validation figures
                    (valid_never_predicted: the classes of the targets the model never predicted)
    plots/*.png     loss terms, validation Dice, accuracy, PQ, learning rate
    tensorboard/    TensorBoard logs

With `ema_decay` > 0 the run also keeps an exponential moving average of the weights and BatchNorm
statistics (`torch.optim.swa_utils.AveragedModel`), updated after every step. The average is what
is validated and what best.pth and last.pth hold as their model (so `hovernet infer` uses it);
last.pth keeps the trained weights themselves under `train_desc` for --resume.

Exact resume: an epoch's sample order and every sample's augmentation are drawn from (seed,
epoch) alone (`EpochSampler`), the learning rate is a function of the epoch, and the checkpoint
holds model, optimiser, scaler, the step inside the epoch, the epoch's running sums and the
torch RNG state. So stopping anywhere and resuming gives the same weights as running straight.

Several processes (torchrun, or `--gpu 0,1` via `launch`): DistributedDataParallel, each
process takes its share of every global batch; logs and checkpoints on rank 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hovernet.errors import HoverNetError
from hovernet.progress import Progress
from hovernet.train.config import TrainConfig
from hovernet.train.losses import hovernet_losses
from hovernet.train.setup import TrainSetup, log, make_optimizer, prepare_training
from hovernet.train.state import (
    Dist,
    TrainParts,
    TrainState,
    append_line,
    dist_from_env,
    save_run_checkpoint,
)
from hovernet.train.validate import validate_run

ENCODER_PREFIXES = ("d0.", "d1.", "d2.", "d3.")  # frozen in the first phase (the original's)


class TrainingDiverged(HoverNetError):
    """A loss term became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    stopped: str  # "done", "time", "steps"
    last_metrics: dict = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)  # total loss of each step of this call


@dataclass
class _Budget:
    """When this call stops before the run is done: --time-limit, stop_after_steps."""

    started: float
    limit_s: float | None
    stop_after_steps: int | None
    seconds_before: float = 0.0  # training time of the calls before this one (a resume)
    steps: int = 0  # steps taken by this call
    step_losses: list[float] = field(default_factory=list)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of a (0-based) epoch: drops once per phase, at `lr_drop_epoch`."""
    in_phase = epoch % cfg.epochs
    return cfg.lr * (cfg.lr_drop_factor if in_phase >= cfg.lr_drop_epoch else 1.0)


def set_encoder_frozen(model: torch.nn.Module, frozen: bool) -> None:
    prefixes = getattr(model, "encoder_prefixes", ENCODER_PREFIXES)
    names = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
    if frozen and not names:
        raise HoverNetError(
            f"architecture {model.mode!r} has no encoder layers to freeze: train without "
            "--freeze-encoder"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(not (frozen and name.startswith(tuple(prefixes))))


def _wrap(net: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    if dist.world == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=True)


def train(cfg: TrainConfig, dist: Dist | None = None) -> TrainResult:
    """Train (or resume with `cfg.resume`) the run in `cfg.out`; see the module docstring."""
    dist = dist or dist_from_env()
    setup, state = prepare_training(cfg, dist)
    limit_s = None if cfg.time_limit is None else cfg.time_limit * 60.0
    budget = _Budget(time.monotonic(), limit_s, cfg.stop_after_steps, state.train_seconds)
    try:
        stopped, record = _run_epochs(setup, state, budget)
    finally:  # workers, the pin-memory thread and the writer must not outlive the run
        _shutdown_loader(setup.loader)
        if setup.writer is not None:
            setup.writer.close()
    if dist.world > 1:
        torch.distributed.barrier()
    return TrainResult(setup.run, state, stopped, record, budget.step_losses)


def _run_epochs(setup: TrainSetup, state: TrainState, budget: _Budget) -> tuple[str, dict]:
    """The epochs from `state` on, until the run is done or this call's budget runs out:
    ("done" / "time" / "steps", the last epoch's record)."""
    parts, cfg = setup.parts, setup.parts.cfg
    stopped, record = "done", {}
    frozen_now, model = None, parts.net
    while state.epoch < setup.total_epochs and stopped == "done":
        epoch = state.epoch
        frozen = setup.phases == 2 and epoch < cfg.epochs
        if setup.phases == 2 and epoch == cfg.epochs and state.step_in_epoch == 0:
            parts.optimizer = make_optimizer(cfg, parts.net)  # phase 2 starts afresh
        if frozen != frozen_now:
            set_encoder_frozen(parts.net, frozen)
            model = _wrap(parts.net, parts.dist, parts.device)
            frozen_now = frozen
        lr = lr_at(cfg, epoch)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        parts.net.train()
        setup.sampler.set_epoch(epoch, state.step_in_epoch)
        stopped = _run_steps(setup, model, state, budget)
        state.train_seconds = budget.seconds_before + time.monotonic() - budget.started
        if stopped != "done" and state.step_in_epoch < setup.sampler.steps:
            _save_stopped(setup, state, stopped)
            break
        record = _close_epoch(setup, state, lr)
    return stopped, record


def _save_stopped(setup: TrainSetup, state: TrainState, stopped: str) -> None:
    """A call that stops inside an epoch: last.pth holds the step, for --resume."""
    parts = setup.parts
    if parts.dist.main:
        save_run_checkpoint(setup.run / "last.pth", parts, state)
    why = "time limit reached" if stopped == "time" else "step limit reached"
    log(parts.cfg, parts.dist, f"{why} at step {state.global_step}: saved last.pth (--resume)")


def _close_epoch(setup: TrainSetup, state: TrainState, lr: float) -> dict:
    """The record of the epoch just trained (validated every `valid_every` epochs); rank 0
    writes it, the checkpoints and the plots. The state moves on to the next epoch."""
    parts, cfg, dist = setup.parts, setup.parts.cfg, setup.parts.dist
    epoch = state.epoch
    record = _end_epoch(state, lr, epoch)
    if dist.main and cfg.valid_every and (epoch + 1) % cfg.valid_every == 0:
        record.update(validate_run(parts, setup.data, setup.workers, epoch + 1))
    state.epoch += 1
    state.step_in_epoch = 0
    state.sums = {}
    if dist.main:
        _finish_epoch(parts, setup.run, state, record, setup.writer)
        log(cfg, dist, _summary(record))
    if dist.world > 1:
        torch.distributed.barrier()
    return record


def _run_steps(setup: TrainSetup, model, state: TrainState, budget: _Budget) -> str:
    """One epoch's steps (from `state.step_in_epoch` on): "done", or "time" / "steps" when
    this call's budget ran out first."""
    parts, writer = setup.parts, setup.writer
    cfg, dist = parts.cfg, parts.dist
    desc = f"epoch {state.epoch + 1}/{setup.total_epochs}"
    with Progress(setup.sampler.steps, desc, "steps", cfg.quiet or not dist.main) as bar:
        if state.step_in_epoch:
            bar.advance(state.step_in_epoch)
        for batch in setup.loader:
            values = train_step(parts, model, batch, state)
            if parts.ema is not None:
                parts.ema.update_parameters(parts.net)
            for k, v in values.items():
                state.sums[k] = state.sums.get(k, 0.0) + v
            state.step_in_epoch += 1
            state.global_step += 1
            budget.step_losses.append(values["loss"])
            bar.advance(1, loss=values["loss"])
            if writer is not None:
                writer.add_scalar("train/loss_step", values["loss"], state.global_step)
            budget.steps += 1
            if budget.limit_s is not None and _time_up(
                budget.started, budget.limit_s, dist, parts.device
            ):
                return "time"
            if budget.stop_after_steps and budget.steps >= budget.stop_after_steps:
                return "steps"
    return "done"


def _shutdown_loader(loader: torch.utils.data.DataLoader) -> None:
    """Stop a DataLoader's persistent workers (and pin-memory thread) now.

    A run that stops in the middle of an epoch (time limit, error) leaves the iterator with
    prefetched batches; without this, the process could wait on those workers at exit.
    """
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def _time_up(started: float, limit_s: float, dist: Dist, device: torch.device) -> bool:
    spent = time.monotonic() - started >= limit_s
    if dist.world == 1:
        return spent
    # rank 0's clock decides, so that every process stops after the same step
    up = torch.tensor([float(spent)], device=device)
    torch.distributed.broadcast(up, 0)
    return bool(up.item())


def train_step(parts: TrainParts, model, batch: dict, state: TrainState) -> dict[str, float]:
    """One optimiser step of `model` (the network, or its DDP wrapper) on a batch."""
    cfg, device, amp_dtype = parts.cfg, parts.device, parts.amp_dtype
    img = batch["img"].to(device, non_blocking=True).float()
    if parts.channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    target = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "img"}
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
        out = model(img)
    total, terms = hovernet_losses(out, target, cfg.weights, cfg.msge_variant, parts.class_weights)
    names = ["loss", *terms]
    values = torch.stack([total.detach(), *(t.detach() for t in terms.values())]).float()
    if parts.dist.world > 1:
        torch.distributed.all_reduce(values)
        values /= parts.dist.world
    values = values.cpu()
    if not bool(torch.isfinite(values).all()):
        bad = [n for n, v in zip(names, values.tolist(), strict=True) if not math.isfinite(v)]
        term = next((n for n in bad if n != "loss"), bad[0])
        raise TrainingDiverged(
            f"loss term {term} is {values[names.index(term)].item()} at step "
            f"{state.global_step + 1} (epoch {state.epoch + 1}): training stopped, "
            f"{cfg.out}/last.pth keeps the last good state; lower --lr or check the data"
        )
    optimizer, scaler = parts.optimizer, parts.scaler
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    return dict(zip(names, values.tolist(), strict=True))


def _end_epoch(state: TrainState, lr: float, epoch: int) -> dict:
    n = max(state.step_in_epoch, 1)
    means = {k: v / n for k, v in state.sums.items()}
    record = {"epoch": epoch + 1, "train_loss": means.pop("loss", float("nan"))}
    record.update(means)
    record.update(lr=lr, steps=state.global_step, time_s=round(state.train_seconds, 2))
    return record


def _finish_epoch(parts: TrainParts, run: Path, state: TrainState, record: dict, writer) -> None:
    from hovernet.train.plots import write_plots

    score = record.get("valid_pq", -record.get("valid_loss", math.inf))
    if "valid_pq" in record or "valid_loss" in record:
        if score > state.best_score:
            state.best_score, state.best_epoch = float(score), state.epoch
            save_run_checkpoint(run / "best.pth", parts, state)
    record["best_epoch"] = state.best_epoch
    append_line(run / "metrics.jsonl", record)
    save_run_checkpoint(run / "last.pth", parts, state)
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch":
                writer.add_scalar(f"epoch/{k}", v, state.epoch)
        writer.flush()
    write_plots(run / "metrics.jsonl", run / "plots")


def _summary(record: dict) -> str:
    keys = ("train_loss", "valid_loss", "valid_np_dice", "valid_pq", "valid_aji", "lr")
    parts = [f"{k}={record[k]:.4g}" for k in keys if k in record]
    return f"epoch {record.get('epoch')}: " + " ".join(parts)
