"""Proof that training learns: `lite` overfits 4 real CoNSeP patches on the CPU."""

from __future__ import annotations

import pytest
from patchdata import make_patch_folder

from hovernet.config import geometry_for
from hovernet.model.checkpoints import load_model
from hovernet.train.config import TrainConfig
from hovernet.train.data import load_training_data
from hovernet.train.loop import train
from hovernet.train.validate import instance_metrics


@pytest.mark.slow
def test_lite_overfits_four_real_patches(tmp_path):
    root = make_patch_folder(tmp_path / "data", train=[0, 1, 2, 3], valid=[], size=256)
    cfg = TrainConfig(
        data=[root], out=tmp_path / "run", arch="lite", epochs=1, batch=4, lr=2e-3,
        steps_per_epoch=50, augment=False, workers=0, valid_every=0, quiet=True,
        tensorboard=False,
    )  # fmt: skip
    result = train(cfg)
    losses = result.step_losses
    assert len(losses) == 50
    final = sum(losses[-3:]) / 3
    assert final <= 0.4 * losses[0], f"total loss {losses[0]:.3f} -> {final:.3f}: not -60 %"
    model = load_model(tmp_path / "run" / "last.pth")
    data = load_training_data([root], geometry_for("lite"), augment=False)
    scores = instance_metrics(model, data.train, n=4, crop=256, batch=4)
    assert scores["valid_pq"] > 0.5, scores
