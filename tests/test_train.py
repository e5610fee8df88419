"""The training loop: exact resume, NaN stop, mixed typed/untyped folders, run folder, config.

Uses `tiny`, a few-convolution test double registered only inside these tests (trainhelpers),
on small folders of real CoNSeP patches (patchdata)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.patchdata import make_patch_folder
from support.trainhelpers import register_tiny

from hovernet.cli import main
from hovernet.errors import HoverNetError
from hovernet.model.checkpoints import load_model
from hovernet.train import loop
from hovernet.train.config import TrainConfig, config_from_dict, resolve_config
from hovernet.train.data import EpochSampler, load_training_data
from hovernet.train.loop import train
from hovernet.train.setup import prepare_training
from hovernet.train.state import Dist, TrainState


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    typed = make_patch_folder(root / "typed", train=[0, 1, 2], valid=[3], size=300)
    untyped = make_patch_folder(root / "untyped", train=[4, 5], valid=[6], size=300, typed=False)
    return typed, untyped


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    register_tiny(monkeypatch)


def _cfg(folders, out, **kw) -> TrainConfig:
    base = dict(
        data=list(folders), out=out, arch="tiny", epochs=1, batch=2, workers=0, lr=1e-3,
        steps_per_epoch=4, valid_images=0, quiet=True, tensorboard=False, mpp=0.5, valid_every=0,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _weights(path):
    return torch.load(path, weights_only=True)["desc"]


def test_resume_mid_epoch_is_exact(folders, tmp_path):
    straight = train(_cfg(folders, tmp_path / "a"))
    assert straight.stopped == "done" and straight.state.global_step == 4
    first = train(_cfg(folders, tmp_path / "b", stop_after_steps=2))
    assert first.stopped == "steps" and first.state.step_in_epoch == 2
    second = train(_cfg(folders, tmp_path / "b", resume=True))
    assert second.state.global_step == 4
    a, b = _weights(tmp_path / "a" / "last.pth"), _weights(tmp_path / "b" / "last.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    ma = json.loads((tmp_path / "a" / "metrics.jsonl").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.jsonl").read_text())
    assert ma["train_loss"] == mb["train_loss"] and ma["hv_msge"] == mb["hv_msge"]
    # the checkpoint records what inference needs: types, colours, mpp
    obj = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    assert obj["mode"] == "tiny" and obj["nr_types"] == 5 and obj["mpp"] == 0.5
    assert obj["type_info"]["2"][0] == "inflammatory"


def test_prepare_training_decides_everything_before_the_first_step(folders, tmp_path):
    cfg = _cfg(folders, tmp_path / "run", freeze_encoder=True)
    setup, state = prepare_training(cfg, Dist())
    assert sorted(p.name for p in setup.run.iterdir()) == ["config.yaml"]  # no checkpoint yet
    assert state == TrainState()
    assert (setup.phases, setup.total_epochs, setup.sampler.steps) == (2, 2, 4)
    assert len(setup.loader.dataset) == 5 and setup.workers == 0 and setup.writer is None
    batch = next(iter(setup.loader))
    assert batch["img"].shape[0] == 2 and batch["tp_map"].shape[0] == 2  # untyped ones too
    assert setup.parts.net.nr_types == 5 and setup.parts.type_info[2][0] == "inflammatory"
    # resuming: the state of the stopped run, step for step
    train(_cfg(folders, tmp_path / "b", stop_after_steps=3))
    _, resumed = prepare_training(_cfg(folders, tmp_path / "b", resume=True), Dist())
    assert (resumed.epoch, resumed.step_in_epoch, resumed.global_step) == (0, 3, 3)


def test_ema_is_the_checkpoint_model_and_resumes_exactly(folders, tmp_path):
    decay = 0.5
    straight = train(_cfg(folders, tmp_path / "a", ema_decay=decay, lr=3e-3))
    obj = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    averaged, trained = obj["desc"], obj["train_desc"]
    assert obj["ema_n_averaged"] == straight.state.global_step == 4
    # the average does not change the training itself
    train(_cfg(folders, tmp_path / "p", lr=3e-3))
    plain = _weights(tmp_path / "p" / "last.pth")
    assert all(torch.equal(plain[k], trained[k]) for k in plain)
    # one step per call, resumed each time: the same weights, and the average is
    # ema_1 = w_1, ema_k = d * ema_(k-1) + (1 - d) * w_k over every float tensor (BN stats too)
    expected = None
    for step in range(4):
        train(_cfg(folders, tmp_path / "b", ema_decay=decay, lr=3e-3, stop_after_steps=1,
                   resume=step > 0))  # fmt: skip
        w = torch.load(tmp_path / "b" / "last.pth", weights_only=True)["train_desc"]
        if expected is None:
            expected = {k: v.clone() for k, v in w.items()}
        else:
            for k, v in w.items():
                if v.is_floating_point():
                    expected[k] = decay * expected[k] + (1 - decay) * v
    for key, value in averaged.items():
        assert torch.equal(w[key], trained[key]), key
        if value.is_floating_point():
            assert torch.allclose(value, expected[key], atol=1e-6), key
    conv, mean = "d0.conv0.weight", "d0.bn0.running_mean"
    assert not torch.allclose(averaged[conv], trained[conv])
    assert not torch.allclose(averaged[mean], trained[mean])
    with pytest.raises(HoverNetError, match="ema_decay must be in"):
        config_from_dict({"ema_decay": 1.0})


def test_training_lowers_the_loss_and_writes_the_run(folders, tmp_path):
    cfg = _cfg(folders, tmp_path / "run", epochs=3, lr=3e-3, tensorboard=True, valid_images=2)
    cfg.valid_every = 1
    result = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1]["np_bce"] < lines[0]["np_bce"]
    terms = ("np_bce", "np_dice", "hv_mse", "hv_msge", "tp_bce", "tp_dice", "lr")
    valid = ("valid_np_dice", "valid_np_acc", "valid_hv_mse", "valid_pq", "valid_aji")
    for key in terms + valid:
        assert key in lines[-1], key
    assert result.state.best_epoch in (1, 2, 3)
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert best["train_state"]["epoch"] == result.state.best_epoch
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} >= {
        "loss.png", "valid_dice.png", "valid_accuracy.png", "valid_pq.png", "lr.png"
    }  # fmt: skip
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    saved = config_from_dict(
        __import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text())
    )
    assert saved.epochs == 3 and saved.arch == "tiny"
    # an existing run is never overwritten unless asked
    with pytest.raises(HoverNetError, match="already holds a run"):
        train(cfg)


def test_nan_stops_with_step_and_term_and_keeps_last_good(folders, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = loop.hovernet_losses

    def poisoned(out, batch, *args, **kw):
        total, terms = real(out, batch, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["hv_msge"] = terms["hv_msge"] * float("nan")
            total = total + terms["hv_msge"]
        return total, terms

    monkeypatch.setattr(loop, "hovernet_losses", poisoned)
    cfg = _cfg(folders, tmp_path / "run", epochs=2, steps_per_epoch=2, valid_every=0)
    with pytest.raises(HoverNetError, match=r"hv_msge is nan at step 3 \(epoch 2\)"):
        train(cfg)
    obj = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert obj["train_state"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in obj["desc"].values() if v.is_floating_point())


def test_typed_and_untyped_folders_train_together(folders):
    from hovernet.config import geometry_for

    data = load_training_data(folders, geometry_for("fast"))
    assert data.nr_types == 5 and data.type_info[1][0] == "other"
    typed_ds, untyped_ds = data.train
    assert typed_ds.with_type and not untyped_ds.with_type
    s = untyped_ds[0]
    assert s["tp_map"].shape == (164, 164) and bool((s["tp_map"] == -1).all())
    t = typed_ds[0]["tp_map"]
    assert t.min() >= 0 and t.max() >= 1
    # only untyped data: no type branch at all
    assert load_training_data([folders[1]], geometry_for("fast")).nr_types is None
    # HV targets are made for the run's resolution (min_size_for_mpp)
    assert {ds.hv_min_size for ds in [*data.train, *data.valid]} == {30}
    at_20x = load_training_data(folders, geometry_for("fast"), mpp=0.5)
    assert {ds.hv_min_size for ds in [*at_20x.train, *at_20x.valid]} == {8}


def test_stain_jitter_recolours_training_samples_only(folders):
    from hovernet.config import geometry_for

    plain = load_training_data(folders, geometry_for("fast"), seed=0)
    jittered = load_training_data(folders, geometry_for("fast"), seed=0, stain_jitter=0.3)
    a = plain.train[0].sample_arrays(0, np.random.default_rng(5))
    b = jittered.train[0].sample_arrays(0, np.random.default_rng(5))
    assert not np.array_equal(a["img"], b["img"])  # the image is re-coloured ...
    assert sorted(a) == sorted(b)
    for key in set(a) - {"img"}:  # ... its targets are not
        np.testing.assert_array_equal(a[key], b[key])
    v1, v2 = plain.valid[0].sample_arrays(0, None), jittered.valid[0].sample_arrays(0, None)
    np.testing.assert_array_equal(v1["img"], v2["img"])  # validation is never jittered
    with pytest.raises(HoverNetError, match="stain_jitter must be in"):
        config_from_dict({"stain_jitter": 1.5})


def test_different_type_info_is_refused(folders, tmp_path):
    other = make_patch_folder(tmp_path / "other", train=[7], valid=[], size=300)
    (other / "type_info.json").write_text(
        json.dumps({"0": ["bg", [0, 0, 0]], "1": ["x", [1, 2, 3]]})
    )
    from hovernet.config import geometry_for

    with pytest.raises(HoverNetError, match="must use the same classes"):
        load_training_data([folders[0], other], geometry_for("fast"))


def test_sampler_shards_global_batches_and_is_reproducible():
    one = EpochSampler(10, 4, seed=3)
    one.set_epoch(2)
    order = list(one)
    two = [EpochSampler(10, 2, seed=3, dist=Dist(r, 2)) for r in range(2)]
    for s in two:
        s.set_epoch(2)
    parts = [list(s) for s in two]
    merged = [x for step in range(2) for p in parts for x in p[2 * step : 2 * step + 2]]
    assert merged == order
    resumed = EpochSampler(10, 4, seed=3)
    resumed.set_epoch(2, start_step=1)
    assert list(resumed) == order[4:]
    assert len(set(i for i, _ in order)) == 8  # a permutation without replacement
    other = EpochSampler(10, 4, seed=3)
    other.set_epoch(3)
    assert list(other) != order


def test_config_yaml_and_seed_spellings(tmp_path, folders):
    yml = tmp_path / "run.yaml"
    yml.write_text("epochs: 7\nbatch: 4\nloss-weights: {hv_mse: 2}\nlr: 0.001\n")
    cfg = resolve_config(yml, {"batch": 2, "epochs": None, "data": [str(folders[0])]})
    assert (cfg.epochs, cfg.batch, cfg.lr, cfg.weights.hv_mse) == (7, 2, 0.001, 2.0)
    yml.write_text("epoch: 7\n")
    with pytest.raises(HoverNetError, match="unknown setting 'epoch'"):
        resolve_config(yml, {})
    # the seed's spellings on the command line: --gpu=..., --view=train, --img, --batch, --epochs
    out = tmp_path / "run"
    data = [f"--data={folders[0]}", f"--data={folders[1]}"]
    seed_style = ["--img=256", "--arch=tiny", "--batch=2", "--epochs=1", "--view=train"]
    code = _cli(["train", *data, f"--out={out}", *seed_style])
    assert code == 0
    grid = out / "view_train.png"
    assert grid.is_file() and grid.stat().st_size > 10_000
    code = _cli(["train", f"--data={folders[0]}", f"--out={out}", "--arch=tiny", "--view=valid"])
    assert code == 0 and (out / "view_valid.png").is_file()
    assert _cli(["train", f"--data={folders[0]}", f"--out={out}", "--gpu=0,1"]) == 2
    assert _cli(["train", f"--data={folders[0]}", f"--out={out}", "--img=300"]) == 2


def test_loss_weights_option_merges_with_the_file(tmp_path, folders, capsys):
    from hovernet.cli.train import _loss_weights

    assert _loss_weights("tp_focal=1, tp_dice=0") == {"tp_focal": 1.0, "tp_dice": 0.0}
    yml = tmp_path / "run.yaml"
    yml.write_text("loss_weights: {hv_mse: 2, tp_focal: 0.5}\n")
    cfg = resolve_config(yml, {"loss_weights": _loss_weights("tp_focal=1,np_dice=0")})
    w = cfg.weights
    assert (w.hv_mse, w.tp_focal, w.np_dice, w.tp_bce) == (2.0, 1.0, 0.0, 1.0)
    out = tmp_path / "run"
    base = ["train", f"--data={folders[0]}", f"--out={out}", "--arch=tiny"]
    assert _cli([*base, "--loss-weights", "tp_focal=1", "--view=train"]) == 0
    assert _cli([*base, "--loss-weights", "tp_focal"]) == 2
    assert "give TERM=NUMBER pairs" in capsys.readouterr().err
    assert _cli([*base, "--loss-weights", "tp_focus=1"]) == 2
    assert "unknown terms ['tp_focus']" in capsys.readouterr().err


def test_class_weights_must_match_the_types(folders, tmp_path):
    with pytest.raises(HoverNetError, match="class_weights has 2 values but the model has 5"):
        train(_cfg(folders, tmp_path / "run", class_weights=[1.0, 2.0]))


def test_time_limit_stops_cleanly_and_resumes(folders, tmp_path):
    cfg = _cfg(folders, tmp_path / "run", epochs=50, steps_per_epoch=2, time_limit=1e-6)
    result = train(cfg)
    assert result.stopped == "time" and result.state.global_step == 1
    # the command line resumes with the run's own config.yaml (same time limit: one more step)
    assert _cli(["train", "--out", str(tmp_path / "run"), "--resume"]) == 0
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["train_state"]
    assert state["global_step"] == 2 and state["epoch"] == 1
    resumed = train(_cfg(folders, tmp_path / "run", epochs=2, steps_per_epoch=2, resume=True))
    assert resumed.stopped == "done" and resumed.state.global_step == 4


@pytest.mark.slow
def test_checkpoint_loads_for_inference(folders, tmp_path, monkeypatch):
    """With a real architecture the run's checkpoint is what `hovernet infer` loads."""
    monkeypatch.setattr(loop, "set_encoder_frozen", lambda *a: None)
    cfg = _cfg(folders, tmp_path / "run", arch="fast", batch=1, steps_per_epoch=1,
               valid_every=0, epochs=1)  # fmt: skip
    train(cfg)
    model = load_model(tmp_path / "run" / "last.pth")
    assert model.mode == "fast" and model.nr_types == 5
    assert model.meta.mpp == 0.5 and model.meta.type_info[4][0] == "spindle-shaped"
    assert np.isfinite(next(model.parameters()).detach().numpy()).all()


def _lite_checkpoint(path, nr_types, mpp=0.5):
    from hovernet.model.checkpoints import save_checkpoint
    from hovernet.model.registry import build_model

    torch.manual_seed(7)
    net = build_model("lite", nr_types)
    save_checkpoint(path, net, mpp=mpp)
    return net.state_dict()


def test_init_loads_a_checkpoint_and_refits_only_the_type_branch(tmp_path):
    from hovernet.model.checkpoints import init_from_checkpoint
    from hovernet.model.registry import build_model

    saved = _lite_checkpoint(tmp_path / "a.pth", 5)
    same = build_model("lite", 5)
    assert "all weights" in init_from_checkpoint(same, tmp_path / "a.pth", mpp=0.5)
    for key, value in same.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # another number of types (or none): the type branch's misfits stay fresh, the rest loads
    for nr_types in (3, None):
        other = build_model("lite", nr_types)
        fresh = {k: v.clone() for k, v in other.state_dict().items()}
        summary = init_from_checkpoint(other, tmp_path / "a.pth", mpp=0.25)
        assert "type branch" in summary and "0.5 um/px" in summary, summary
        for key, value in other.state_dict().items():
            if key in saved and saved[key].shape == value.shape:
                assert torch.equal(value, saved[key]), key
            else:
                assert ".tp." in f".{key}" and torch.equal(value, fresh[key]), key
    with pytest.raises(HoverNetError, match="--arch lite"):
        init_from_checkpoint(build_model("fast", 5), tmp_path / "a.pth")


def test_train_with_init_starts_from_the_checkpoint(folders, tmp_path):
    saved = _lite_checkpoint(tmp_path / "start.pth", 5)
    cfg = _cfg(folders[:1], tmp_path / "run", arch="lite", lr=1e-9, stop_after_steps=1)
    cfg.init = tmp_path / "start.pth"
    train(cfg)
    after = _weights(tmp_path / "run" / "last.pth")
    convs = [k for k in saved if k.endswith("weight") and saved[k].ndim == 4]
    assert convs and all(torch.allclose(after[k], saved[k], atol=1e-6) for k in convs)
    # the command line refuses a missing file and two sources of starting weights
    args = ["train", "--data", str(folders[0]), "--out", str(tmp_path / "r2"), "--arch", "lite"]
    assert _cli([*args, "--init", str(tmp_path / "missing.pth")]) == 2
    assert _cli([*args, "--pretrained", str(tmp_path / "missing.tar")]) == 2
    assert not (tmp_path / "r2").exists()  # a refused start leaves no run folder
    (tmp_path / "broken.pth").write_bytes(bytes(range(256)) * 8)  # no checkpoint at all
    assert _cli([*args, "--init", str(tmp_path / "broken.pth")]) == 2
    assert _cli([*args[:-1], "fast", "--init", str(tmp_path / "start.pth")]) == 2  # lite inside
    assert not (tmp_path / "r2").exists()
    both = [*args, "--init", str(tmp_path / "start.pth"), "--pretrained", str(tmp_path / "x")]
    assert _cli(both) == 2
