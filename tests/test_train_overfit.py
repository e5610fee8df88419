"""Proof that training learns: `lite` overfits 4 real CoNSeP patches on the CPU.

The total loss falls by at least 60 % within 50 steps; after 125 steps (the last 25 at a tenth
of the learning rate, so that BatchNorm's running statistics settle) the nuclei found by the
real tile inference and post-processing on those patches reach PQ > 0.5.
"""

from __future__ import annotations

import pytest
from support.patchdata import make_patch_folder

from hovernet.config import geometry_for
from hovernet.model.checkpoints import load_model
from hovernet.train.config import TrainConfig
from hovernet.train.data import load_training_data
from hovernet.train.loop import train
from hovernet.train.validate import CropOptions, instance_metrics


@pytest.mark.slow
def test_lite_overfits_four_real_patches(tmp_path):
    root = make_patch_folder(tmp_path / "data", train=[0, 1, 2, 3], valid=[], size=256)
    cfg = TrainConfig(
        data=[root], out=tmp_path / "run", arch="lite", epochs=5, steps_per_epoch=25, batch=4,
        lr=2e-3, lr_drop_epoch=4, augment=False, workers=0, valid_every=0, quiet=True,
        tensorboard=False,
    )  # fmt: skip
    losses = train(cfg).step_losses
    assert len(losses) == 125
    at_50 = sum(losses[47:50]) / 3
    assert at_50 <= 0.4 * losses[0], f"total loss {losses[0]:.3f} -> {at_50:.3f} at step 50"
    model = load_model(tmp_path / "run" / "last.pth")
    data = load_training_data([root], geometry_for("lite"), augment=False)
    scores = instance_metrics(model, data.train, CropOptions(n=4, crop=256, batch=4))
    print(f"loss {losses[0]:.3f} -> {at_50:.3f} (step 50) -> {losses[-1]:.3f}; {scores}")
    assert scores["valid_pq"] > 0.5, scores
