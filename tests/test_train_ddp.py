"""Two CPU processes (gloo) train like one process with the same global batch."""

from __future__ import annotations

import socket

import pytest
import torch
from support.patchdata import make_patch_folder
from support.trainhelpers import ddp_worker, register_tiny

from hovernet.train.config import TrainConfig
from hovernet.train.loop import train


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, monkeypatch):
    register_tiny(monkeypatch)
    data = make_patch_folder(tmp_path / "data", train=[0, 1, 2, 3], valid=[], size=300)
    # terms that are plain means over pixels, so averaging the two halves' gradients is exact
    weights = {"np_dice": 0.0, "hv_msge": 0.0, "tp_dice": 0.0}
    common = dict(
        data=[data], arch="tiny_nonorm", epochs=1, steps_per_epoch=3, workers=0, lr=1e-2,
        valid_every=0, quiet=True, tensorboard=False, loss_weights=weights, device="cpu",
        precision="fp32",  # exact only in fp32: bf16 rounds the two halves differently
    )  # fmt: skip
    train(TrainConfig(out=tmp_path / "one", batch=4, **common))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_port()))
    cfg = TrainConfig(out=tmp_path / "two", batch=2, **common)
    torch.multiprocessing.spawn(ddp_worker, args=(cfg, 2), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "last.pth", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pth", weights_only=True)
    assert one["train_state"]["global_step"] == two["train_state"]["global_step"] == 3
    for key, value in one["desc"].items():
        torch.testing.assert_close(two["desc"][key], value, rtol=1e-4, atol=1e-5)
    first = TrainConfig(out=tmp_path / "zero", batch=4, stop_after_steps=1, **common)
    train(first)  # sanity: the weights did move over the 3 steps
    zero = torch.load(tmp_path / "zero" / "last.pth", weights_only=True)["desc"]
    moved = max(float((zero[k] - v).abs().max()) for k, v in one["desc"].items())
    assert moved > 1e-4
