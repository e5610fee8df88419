"""HoVer-Net's training losses: NP and NC cross-entropy + Dice, HV MSE + MSGE.

All functions take the network's raw outputs (logits for NP/TP, the HV regression as it comes
out) in N x C x H x W layout and the targets of `hovernet.data.dataset.PatchDataset`:

- NP: cross-entropy on the softmax (clamped to [1e-7, 1 - 1e-7], as the original) + a Dice
  loss summed over both channels, computed over the whole batch;
- HV: mean squared error over all pixels + MSGE, the squared error of the HV gradients inside
  nuclei (true NP map), with the original's 5 x 5 kernels k[y, x] = d / (x^2 + y^2);
- TP (nucleus type): cross-entropy + Dice as NP. Pixels whose type target is `IGNORE` (-1,
  patches without a type label) take no part; a batch with no typed pixel gives 0.

Point patches (`inst_valid` 0 in the batch, see `hovernet.data.dataset`): the NP and HV terms
are computed over the other samples of the batch only (a batch of point patches alone gives 0
and no gradient to those branches); their type targets (disks around the points) count as any.

MSGE direction. The paper differentiates the horizontal map along x and the vertical map along y
(`msge_variant="paper"`, the default). The original code builds its kernels with
`meshgrid(..., indexing="ij")`, so its "h" kernel varies along rows: it differentiates the
horizontal map along y and the vertical map along x. `msge_variant="original"` reproduces that
(its released weights were trained with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hovernet.errors import HoverNetError

IGNORE = -1  # type target of pixels without a type label
EPS = 1.0e-7  # the original clamps probabilities to [EPS, 1 - EPS] before the log
DICE_SMOOTH = 1.0e-3  # the original's Dice smoothing
MSGE_VARIANTS = ("paper", "original")
TERMS = ("np_bce", "np_dice", "hv_mse", "hv_msge", "tp_bce", "tp_dice", "tp_focal")


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term; defaults as the original (all 1, no focal term)."""

    np_bce: float = 1.0
    np_dice: float = 1.0
    hv_mse: float = 1.0
    hv_msge: float = 1.0
    tp_bce: float = 1.0
    tp_dice: float = 1.0
    tp_focal: float = 0.0  # focal loss (gamma 2) on the types, for rare classes


def sobel_kernels(size: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(kx, ky), size x size: kx[y, x] = x / (x^2 + y^2), ky[y, x] = y / (x^2 + y^2), 0 at 0.

    Offsets run from -(size // 2) to size // 2, x along columns and y along rows.
    """
    if size < 3 or size % 2 == 0:
        raise HoverNetError(f"gradient kernel size must be odd and >= 3, got {size}")
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32)
    y, x = torch.meshgrid(r, r, indexing="ij")
    denom = x * x + y * y + 1.0e-15
    return x / denom, y / denom


def hv_gradients(hv: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """N x 2 x H x W HV map -> its N x 2 x H x W gradients (zero padding, cross-correlation).

    paper: [dh/dx, dv/dy]; original: [dh/dy, dv/dx] (see the module docstring).
    """
    if variant not in MSGE_VARIANTS:
        raise HoverNetError(f"unknown MSGE variant {variant!r}: use one of {MSGE_VARIANTS}")
    kx, ky = sobel_kernels(5)
    kh, kv = (kx, ky) if variant == "paper" else (ky, kx)
    weight = torch.stack([kh, kv])[:, None].to(device=hv.device, dtype=hv.dtype)
    return F.conv2d(hv, weight, padding=2, groups=2)


def xentropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None):
    """Mean over (valid) pixels of -log p(target), p the clamped softmax (the original's)."""
    prob = torch.softmax(logits.float(), dim=1).clamp(EPS, 1.0 - EPS)
    picked = prob.gather(1, target.clamp(min=0)[:, None])[:, 0]
    nll = -torch.log(picked)
    if valid is None:
        return nll.mean()
    n = valid.sum()
    return (nll * valid).sum() / n.clamp(min=1)


def focal(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, gamma: float = 2.0):
    """Focal loss (Lin et al.): mean over valid pixels of -(1 - p)^gamma log p."""
    prob = torch.softmax(logits.float(), dim=1).clamp(EPS, 1.0 - EPS)
    picked = prob.gather(1, target.clamp(min=0)[:, None])[:, 0]
    loss = -((1.0 - picked) ** gamma) * torch.log(picked)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None):
    """Sum over classes of 1 - (2 |P.T| + s) / (|P| + |T| + s), over the batch (the original's)."""
    prob = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.clamp(min=0), prob.shape[1]).permute(0, 3, 1, 2).float()
    if valid is not None:
        mask = valid[:, None].float()
        prob, onehot = prob * mask, onehot * mask
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return (1.0 - (2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)).sum()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred.float() - target.float()) ** 2).mean()


def msge(
    pred: torch.Tensor, target: torch.Tensor, focus: torch.Tensor, variant: str = "paper"
) -> torch.Tensor:
    """Squared error of the HV gradients, averaged over nucleus pixels of both channels."""
    diff = hv_gradients(pred.float(), variant) - hv_gradients(target.float(), variant)
    mask = focus[:, None].float().expand_as(diff)
    return (mask * diff * diff).sum() / (mask.sum() + 1.0e-8)


def hovernet_losses(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: LossWeights = LossWeights(),
    msge_variant: str = "paper",
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, {term: unweighted value}) for one batch.

    `class_weights` (nr_types floats) scales each pixel's type cross-entropy by the weight of
    its true class (the seed's rare classes); terms with weight 0 are not computed.
    """
    terms = instance_terms(out, batch, msge_variant)
    if "tp" in out:
        if "tp_map" not in batch:
            raise HoverNetError(
                "the model has a type branch but the batch has no type targets: train with "
                "typed patches (extract-patches with --type-info) or a model without types"
            )
        tp_t = batch["tp_map"]
        valid = (tp_t != IGNORE).float()
        if class_weights is not None:
            pixel_w = class_weights.to(out["tp"].device)[tp_t.clamp(min=0)] * valid
            terms["tp_bce"] = _weighted_xentropy(out["tp"], tp_t, pixel_w)
        else:
            terms["tp_bce"] = xentropy(out["tp"], tp_t, valid)
        terms["tp_dice"] = dice_loss(out["tp"], tp_t, valid)
        if weights.tp_focal:
            terms["tp_focal"] = focal(out["tp"], tp_t, valid)
        if not bool(valid.any()):  # no typed pixel here: keep the graph, add nothing
            zero = out["tp"].sum() * 0.0
            terms = {k: (zero if k.startswith("tp_") else v) for k, v in terms.items()}
    total = sum(getattr(weights, k) * v for k, v in terms.items() if getattr(weights, k))
    return total, terms


def instance_terms(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], msge_variant: str = "paper"
) -> dict[str, torch.Tensor]:
    """NP and HV terms over the samples with instance targets (`inst_valid`, default all)."""
    np_out, hv_out, np_t, hv_t = out["np"], out["hv"], batch["np_map"], batch["hv_map"]
    if "inst_valid" in batch:
        keep = batch["inst_valid"].to(np_out.device).bool()
        if not bool(keep.any()):  # point patches only: keep the graph, add nothing
            zero = np_out.sum() * 0.0 + hv_out.sum() * 0.0
            return dict.fromkeys(("np_bce", "np_dice", "hv_mse", "hv_msge"), zero)
        if not bool(keep.all()):
            np_out, hv_out, np_t, hv_t = np_out[keep], hv_out[keep], np_t[keep], hv_t[keep]
    return {
        "np_bce": xentropy(np_out, np_t),
        "np_dice": dice_loss(np_out, np_t),
        "hv_mse": mse(hv_out, hv_t),
        "hv_msge": msge(hv_out, hv_t, np_t, msge_variant),
    }


def _weighted_xentropy(logits: torch.Tensor, target: torch.Tensor, pixel_w: torch.Tensor):
    prob = torch.softmax(logits.float(), dim=1).clamp(EPS, 1.0 - EPS)
    picked = prob.gather(1, target.clamp(min=0)[:, None])[:, 0]
    return (-torch.log(picked) * pixel_w).sum() / pixel_w.sum().clamp(min=1.0e-8)
