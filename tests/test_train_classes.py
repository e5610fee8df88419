"""Training warns of the classes of the validation targets that the model never predicted.

The decision is a pure function of per-class counts (`never_predicted`), turned into one
warning line and one metrics.jsonl key (`never_predicted_warning`); `patch_metrics` feeds it
pixel counts and a training run warns and records it. The models are the `tiny` test double
(trainhelpers) with the type branch's bias pinned so that the predicted classes are known, on
small folders of real CoNSeP patches (patchdata).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.patchdata import make_patch_folder
from support.trainhelpers import TinyNet, _TinyArch, register_tiny

from hovernet.config import geometry_for
from hovernet.errors import HoverNetWarning
from hovernet.model import registry
from hovernet.train.config import TrainConfig
from hovernet.train.data import load_training_data
from hovernet.train.loop import train
from hovernet.train.losses import IGNORE
from hovernet.train.validate import (
    PatchOptions,
    never_predicted,
    never_predicted_warning,
    patch_metrics,
)

INFO = {0: ("background", (0, 0, 0)), 1: ("other", (1, 1, 1)), 2: ("inflammatory", (2, 2, 2))}


def test_never_predicted_names_classes_in_targets_without_predictions():
    # type 0 (background) never counts; 2 is absent from the targets, so not "never predicted"
    assert never_predicted([0, 0, 0, 7], [5, 3, 0, 4]) == [1]
    assert never_predicted([9, 1, 0, 0, 2], [9, 1, 5, 6, 2]) == [2, 3]
    assert never_predicted([3, 2], [0, 1, 4, 0]) == [2]  # shorter predictions: 0 beyond
    assert never_predicted(np.array([1, 1, 1]), np.array([1, 1, 1])) == []
    assert never_predicted([], []) == []


def test_warning_line_and_record_key():
    record = {
        "valid_loss": 1.0,
        "valid_never_predicted_px": [2],
        "valid_never_predicted_nuclei": [],
    }
    line = never_predicted_warning(record, INFO)
    assert record == {"valid_loss": 1.0, "valid_never_predicted": ["inflammatory"]}
    assert line.startswith("the model never predicted inflammatory on the validation patches")
    assert "hold it (arg-max type of no pixel: inflammatory): train" in line
    assert "--class-weights" in line
    # nucleus level only, two classes, one without a name
    record = {"valid_never_predicted_px": [], "valid_never_predicted_nuclei": [3, 1]}
    line = never_predicted_warning(record, INFO)
    assert record == {"valid_never_predicted": ["other", "type 3"]}
    assert "predicted other, type 3 on" in line
    assert "hold them (type of no nucleus found on the --valid-images crops: other, type 3)" in line
    # every class predicted (or an untyped run): no line, no key
    for record in ({"valid_never_predicted_px": [], "valid_never_predicted_nuclei": []}, {}):
        assert never_predicted_warning(record, INFO) is None and record == {}


class PinnedTypes(TinyNet):
    """TinyNet whose type logits get `bias` added: +1e4 makes a class the arg-max everywhere,
    -1e4 makes it never the arg-max (training steps of lr 1e-3 cannot move that)."""

    def __init__(self, nr_types, bias: dict[int, float]):
        super().__init__(nr_types)
        with torch.no_grad():
            for c, b in bias.items():
                self.heads["tp"].bias[c] = b


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_patch_folder(tmp_path_factory.mktemp("data") / "typed", train=[0], valid=[3, 5])


def target_classes(datasets) -> set[int]:
    """The classes of the validation targets as patch_metrics sees them (centre crops)."""
    seen = set()
    for ds in datasets:
        for i in range(len(ds)):
            tp = ds[i]["tp_map"].numpy()
            seen |= {int(c) for c in np.unique(tp[tp != IGNORE])}
    return seen - {0}


def test_patch_metrics_counts_pixels_per_class(folder):
    data = load_training_data([folder], geometry_for("fast"), augment=False)
    present = target_classes(data.valid)
    assert len(present) >= 3  # real CoNSeP mosaics: several classes
    model = PinnedTypes(data.nr_types, {1: 1e4})  # class 1 predicted on every pixel
    result = patch_metrics(model, data.valid, torch.device("cpu"), PatchOptions(batch=2))
    assert result["valid_never_predicted_px"] == sorted(present - {1})
    model = PinnedTypes(data.nr_types, {0: 1e4})  # background everywhere: every class missed
    result = patch_metrics(model, data.valid, torch.device("cpu"), PatchOptions(batch=2))
    assert result["valid_never_predicted_px"] == sorted(present)
    untyped = TinyNet(None)
    assert "valid_never_predicted_px" not in patch_metrics(untyped, data.valid, torch.device("cpu"))


def test_training_warns_and_records_the_classes_never_predicted(folder, tmp_path, monkeypatch):
    register_tiny(monkeypatch)
    data = load_training_data([folder], geometry_for("fast"), augment=False)
    missed = sorted(target_classes(data.valid) - {1})
    arch = _TinyArch(
        "tiny_pinned",
        lambda n: PinnedTypes(n, {1: 1e4}),  # type 1 on every pixel, whatever one step does
        "test double",
        lambda sd: registry.NOT_MINE,
        "test double",
    )
    monkeypatch.setitem(registry.ARCHITECTURES, "tiny_pinned", arch)
    cfg = TrainConfig(
        data=[folder], out=tmp_path / "run", arch="tiny_pinned", epochs=1, batch=2, workers=0,
        lr=1e-3, steps_per_epoch=1, valid_images=1, quiet=True, tensorboard=False, mpp=0.5,
        valid_every=1,
    )  # fmt: skip
    info = json.loads((folder / "type_info.json").read_text())
    names = [info[str(c)][0] for c in missed]
    with pytest.warns(HoverNetWarning, match=r"^epoch 1: the model never predicted") as caught:
        train(cfg)
    lines = [str(w.message) for w in caught if issubclass(w.category, HoverNetWarning)]
    assert len(lines) == 1
    assert f"arg-max type of no pixel: {', '.join(names)}" in lines[0]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(names) <= set(record["valid_never_predicted"])
    assert info["1"][0] not in record["valid_never_predicted"]
    assert not any(k.startswith("valid_never_predicted_") for k in record)
