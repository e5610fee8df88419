"""HoVer-Net's loss terms against direct NumPy computations on real CoNSeP patch targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from support.patchdata import make_patch_folder

from hovernet.data.dataset import PatchDataset
from hovernet.train import losses


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = make_patch_folder(tmp_path_factory.mktemp("patches"), train=[0, 1], valid=[], size=300)
    ds = PatchDataset.from_folder(root, "train", geometry="fast", augment=False)
    samples = [ds[i] for i in range(len(ds))]
    b = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    g = torch.Generator().manual_seed(0)
    n, s = b["np_map"].shape[0], b["np_map"].shape[-1]
    out = {
        "np": torch.randn(n, 2, s, s, generator=g) * 2,
        "hv": torch.randn(n, 2, s, s, generator=g) * 0.5,
        "tp": torch.randn(n, 5, s, s, generator=g) * 2,
    }
    return out, b


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_xentropy(logits, target, valid=None):
    p = np.clip(_softmax(logits.astype(np.float64)), 1e-7, 1 - 1e-7)
    picked = np.take_along_axis(p, np.maximum(target, 0)[:, None], axis=1)[:, 0]
    nll = -np.log(picked)
    return nll.mean() if valid is None else nll[valid].mean()


def np_dice(logits, target, valid=None):
    p = _softmax(logits.astype(np.float64))
    onehot = np.eye(p.shape[1])[np.maximum(target, 0)].transpose(0, 3, 1, 2)
    if valid is not None:
        p, onehot = p * valid[:, None], onehot * valid[:, None]
    inter = (p * onehot).sum(axis=(0, 2, 3))
    total = p.sum(axis=(0, 2, 3)) + onehot.sum(axis=(0, 2, 3))
    return (1 - (2 * inter + 1e-3) / (total + 1e-3)).sum()


def np_grad(hv, variant):
    """5 x 5 kernels written out: k[y, x] = offset / (x^2 + y^2), zero padding."""
    r = np.arange(-2, 3, dtype=np.float64)
    y, x = np.meshgrid(r, r, indexing="ij")
    d = x * x + y * y
    d[2, 2] = 1.0
    kx, ky = x / d, y / d
    kh, kv = (kx, ky) if variant == "paper" else (ky, kx)
    out = np.zeros_like(hv, dtype=np.float64)
    for i in range(hv.shape[0]):
        out[i, 0] = ndimage.correlate(hv[i, 0].astype(np.float64), kh, mode="constant")
        out[i, 1] = ndimage.correlate(hv[i, 1].astype(np.float64), kv, mode="constant")
    return out


def test_each_term_matches_numpy(batch):
    out, b = batch
    o = {k: v.numpy() for k, v in out.items()}
    t = {k: v.numpy() for k, v in b.items()}
    assert t["np_map"].any() and (t["tp_map"] > 1).any()  # real nuclei of several types
    _, terms = losses.hovernet_losses(out, b)
    expect = {
        "np_bce": np_xentropy(o["np"], t["np_map"]),
        "np_dice": np_dice(o["np"], t["np_map"]),
        "hv_mse": ((o["hv"].astype(np.float64) - t["hv_map"]) ** 2).mean(),
        "tp_bce": np_xentropy(o["tp"], t["tp_map"]),
        "tp_dice": np_dice(o["tp"], t["tp_map"]),
    }
    for variant in losses.MSGE_VARIANTS:
        diff = np_grad(o["hv"], variant) - np_grad(t["hv_map"], variant)
        focus = np.repeat(t["np_map"][:, None], 2, axis=1)
        expect[f"msge_{variant}"] = (focus * diff**2).sum() / focus.sum()
        got = losses.msge(out["hv"], b["hv_map"], b["np_map"], variant)
        assert float(got) == pytest.approx(expect[f"msge_{variant}"], rel=1e-5)
    for name in ("np_bce", "np_dice", "hv_mse", "tp_bce", "tp_dice"):
        assert float(terms[name]) == pytest.approx(expect[name], rel=1e-5), name
    assert float(terms["hv_msge"]) == pytest.approx(expect["msge_paper"], rel=1e-5)
    # default weights are the original's (all 1): the total is the plain sum
    total, _ = losses.hovernet_losses(out, b)
    assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)


def test_weights_scale_terms(batch):
    out, b = batch
    base, terms = losses.hovernet_losses(out, b)
    w = losses.LossWeights(hv_mse=3.0, tp_dice=0.0)
    total, _ = losses.hovernet_losses(out, b, w)
    expect = float(base) + 2 * float(terms["hv_mse"]) - float(terms["tp_dice"])
    assert float(total) == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("variant,responds_to", [("paper", "x"), ("original", "y")])
def test_msge_variant_responds_to_its_direction(batch, variant, responds_to):
    """paper: d(h)/dx and d(v)/dy; original code: d(h)/dy and d(v)/dx."""
    _, b = batch
    s = b["np_map"].shape[-1]
    target = torch.zeros(1, 2, s, s)
    focus = torch.zeros(1, s, s, dtype=torch.long)
    focus[:, 10:-10, 10:-10] = 1  # away from the zero padding
    ramp = torch.arange(s, dtype=torch.float32) / s
    along_x = ramp[None, :].expand(s, s)
    along_y = ramp[:, None].expand(s, s)
    other = {"x": "y", "y": "x"}
    for channel in (0, 1):  # h then v
        # the direction the variant differentiates this channel along: h along `responds_to`,
        # v along the other one
        own = responds_to if channel == 0 else other[responds_to]
        for direction, field in (("x", along_x), ("y", along_y)):
            pred = target.clone()
            pred[0, channel] = field
            value = float(losses.msge(pred, target, focus, variant))
            if direction == own:
                assert value > 1e-3, (channel, direction)
            else:
                assert value < 1e-10, (channel, direction)


def test_untyped_pixels_take_no_part(batch):
    out, b = batch
    mixed = dict(b)
    tp = b["tp_map"].clone()
    tp[1] = losses.IGNORE  # the second patch has no type label
    mixed["tp_map"] = tp
    _, terms = losses.hovernet_losses(out, mixed)
    first = {k: v[:1] for k, v in b.items()}
    _, alone = losses.hovernet_losses({k: v[:1] for k, v in out.items()}, first)
    assert float(terms["tp_bce"]) == pytest.approx(float(alone["tp_bce"]), rel=1e-6)
    assert float(terms["tp_dice"]) == pytest.approx(float(alone["tp_dice"]), rel=1e-6)
    # no gradient reaches the type logits of the unlabelled patch
    logits = out["tp"].clone().requires_grad_(True)
    total, _ = losses.hovernet_losses({**out, "tp": logits}, mixed)
    total.backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0
    # a batch without any type label: type terms are 0, the rest unchanged
    none = dict(b, tp_map=torch.full_like(b["tp_map"], losses.IGNORE))
    _, terms0 = losses.hovernet_losses(out, none)
    assert float(terms0["tp_bce"]) == 0 and float(terms0["tp_dice"]) == 0
    assert float(terms0["np_bce"]) == pytest.approx(float(terms["np_bce"]))


def test_class_weights_and_focal(batch):
    out, b = batch
    t = b["tp_map"].numpy()
    w = np.array([0.5, 1.0, 4.0, 1.0, 2.0])
    _, terms = losses.hovernet_losses(out, b, class_weights=torch.tensor(w, dtype=torch.float32))
    p = np.clip(_softmax(out["tp"].numpy().astype(np.float64)), 1e-7, 1 - 1e-7)
    nll = -np.log(np.take_along_axis(p, t[:, None], axis=1)[:, 0])
    expect = (nll * w[t]).sum() / w[t].sum()
    assert float(terms["tp_bce"]) == pytest.approx(expect, rel=1e-5)
    _, terms = losses.hovernet_losses(out, b, losses.LossWeights(tp_focal=1.0))
    picked = np.take_along_axis(p, t[:, None], axis=1)[:, 0]
    focal = (-((1 - picked) ** 2) * np.log(picked)).mean()
    assert float(terms["tp_focal"]) == pytest.approx(focal, rel=1e-5)
