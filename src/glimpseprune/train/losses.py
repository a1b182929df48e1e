"""Stage-1 losses and logged mask metrics (docs/method.md §11.5).

Per sample, with z the VIP logits, p = sigmoid(z) and g the box mask (0/1, length N):

    Dice_s = 1 - (2·Σ p·g + ε) / (Σ p + Σ g + ε),  ε = 1e-6
    BCE_s  = mean over tokens of BCE-with-logits(z, g)   (float32)
    L_loc  = mean over samples of (1.0·Dice_s + 0.1·BCE_s)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    p = torch.sigmoid(logits.float())
    g = target.float()
    return 1.0 - (2.0 * (p * g).sum() + eps) / (p.sum() + g.sum() + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def loc_loss(
    per_sample_logits: list[torch.Tensor],
    per_sample_targets: list[torch.Tensor],
    dice_weight: float = 1.0,
    bce_weight: float = 0.1,
) -> dict[str, torch.Tensor]:
    """{'loc', 'dice', 'bce'}: each the mean over samples (samples without visual tokens are skipped)."""
    dice, bce = [], []
    for z, g in zip(per_sample_logits, per_sample_targets):
        if z.numel() == 0:
            continue
        if z.shape != g.shape:
            raise ValueError(f"VIP gave {z.numel()} logits but the box mask has {g.numel()} entries")
        dice.append(dice_loss(z, g.to(z.device)))
        bce.append(bce_loss(z, g.to(z.device)))
    if not dice:
        zero = sum(z.sum() for z in per_sample_logits) * 0.0 if per_sample_logits else torch.zeros(())
        return {"loc": zero, "dice": zero.detach(), "bce": zero.detach()}
    d, b = torch.stack(dice).mean(), torch.stack(bce).mean()
    return {"loc": dice_weight * d + bce_weight * b, "dice": d, "bce": b}


@torch.no_grad()
def mask_stats(
    per_sample_logits: list[torch.Tensor], per_sample_targets: list[torch.Tensor] | None, threshold: float = 0.5,
    policy=None,
) -> dict[str, float]:
    """Token-level precision / recall / F1 / IoU of the kept mask vs g, and the kept ratio; means over samples.

    The kept mask is ``policy.select_group(z)`` (it decides on logits) when a :class:`~glimpseprune.policy.KeepPolicy`
    is given (what inference with the saved modules would keep; an exact-budget box-free run saves a top-k policy,
    for which "p > 0.5" says nothing), else ``p > threshold``. 0/0 convention as ``data.masks.mask_metrics``: both masks
    empty is a perfect score, one empty is 0.
    """
    out = {"precision": [], "recall": [], "f1": [], "iou": [], "keep_ratio": []}
    targets = per_sample_targets if per_sample_targets is not None else [None] * len(per_sample_logits)
    for z, g in zip(per_sample_logits, targets):
        if z.numel() == 0:
            continue
        pred = policy.select_group(z.float()) if policy is not None else torch.sigmoid(z.float()) > threshold
        out["keep_ratio"].append(pred.float().mean().item())
        if g is None:
            continue
        g = g.to(pred.device).bool()
        tp = (pred & g).sum().item()
        fp = (pred & ~g).sum().item()
        fn = (~pred & g).sum().item()
        both_empty = tp + fp + fn == 0

        def ratio(num, den):
            return (1.0 if both_empty else 0.0) if den == 0 else num / den

        out["precision"].append(ratio(tp, tp + fp))
        out["recall"].append(ratio(tp, tp + fn))
        out["f1"].append(ratio(2 * tp, 2 * tp + fp + fn))
        out["iou"].append(ratio(tp, tp + fp + fn))
    return {k: sum(v) / len(v) for k, v in out.items() if v}
