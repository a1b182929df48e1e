"""Held-out pass through the *inference* engine (docs/method.md §1): prompt only, glimpse appended after the
generation prompt, VIP + keep policy at layer K — exactly what ``GlimpsePrune.generate`` prunes.

Reports the kept-ratio distribution (min / median / max / mean over samples) and, where samples carry boxes, the
token-level IoU / precision / recall / F1 of the kept mask against the box mask.
"""

from __future__ import annotations

import statistics

import torch

from ..engine import prefill
from ..methods import GlimpsePruneMethod
from ..policy import KeepPolicy
from .collate import Collator, model_inputs
from .losses import mask_stats


@torch.no_grad()
def validate(adapter, processor, config, glimpse, vip, records, policy: KeepPolicy | None = None,
             batch_size: int = 1, min_pixels=None, max_pixels=None) -> dict:
    if not records:
        return {"n": 0}
    was_training = glimpse.training, vip.training
    glimpse.eval(), vip.eval()
    try:
        method = GlimpsePruneMethod(glimpse, vip, config, policy or KeepPolicy(config.threshold, config.max_keep_ratio,
                                                                              config.min_keep, config.per_image))
        collate = Collator(processor, adapter.family, min_pixels, max_pixels, with_answer=False)
        device = next(adapter.model.parameters()).device
        ratios, per_sample = [], {"iou": [], "precision": [], "recall": [], "f1": []}
        for i in range(0, len(records), batch_size):
            chunk = records[i:i + batch_size]
            batch = collate(chunk)
            prepared = adapter.prepare(model_inputs(batch, device), method.vit_layers)
            state = prefill(adapter, prepared, method).pruning
            for b, sample in enumerate(state.samples):
                keep = torch.cat([im.keep for im in sample.images])
                ratios.append(keep.float().mean().item())
                if batch["has_box"][b]:
                    # mask_stats thresholds logits at 0.5 after a sigmoid: feed +-1 logits for the kept mask
                    stats = mask_stats([keep.float() * 2 - 1], [batch["box_masks"][b]], threshold=0.5)
                    for k in per_sample:
                        per_sample[k].append(stats[k])
        report = {
            "n": len(ratios),
            "keep_ratio_min": min(ratios),
            "keep_ratio_median": statistics.median(ratios),
            "keep_ratio_max": max(ratios),
            "keep_ratio_mean": sum(ratios) / len(ratios),
            "n_with_box": len(per_sample["iou"]),
        }
        for k, v in per_sample.items():
            if v:
                report[f"mask_{k}"] = sum(v) / len(v)
        return report
    finally:
        glimpse.train(was_training[0]), vip.train(was_training[1])
