"""GlimpsePrune: the glimpse's attention row at layer K-1 and multi-level ViT features -> VIP -> keep policy."""

from __future__ import annotations

import torch

from ..adapters.base import condition_request
from ..config import GlimpsePruneConfig
from ..modules import VIP, GlimpseToken
from ..policy import KeepPolicy
from .base import PruneMethod, SelectContext, Selection, split_by_sample


class GlimpsePruneMethod(PruneMethod):
    name = "glimpse"
    uses_glimpse = True

    def __init__(self, glimpse: GlimpseToken, vip: VIP, config: GlimpsePruneConfig, policy: KeepPolicy):
        self.glimpse = glimpse
        self.vip = vip
        self.config = config
        self.policy = policy.validate()
        self.prune_layer = config.prune_layer
        # ViT blocks, or the projected visual tokens (docs/method.md §17.5)
        self.vit_layers = condition_request(config)

    def logits(self, ctx: SelectContext) -> torch.Tensor:
        """Keep logits [T] over every visual token of the batch (all samples, all images, in order)."""
        rows = ctx.visual_columns(ctx.glimpse_rows)
        if rows.shape[0] == 0:  # text-only batch: nothing to score
            return rows.new_zeros(0, dtype=torch.float32)
        grids = [im.vip_grid for images in ctx.batch.images for im in images]
        device = self.vip.in_proj.weight.device  # rows come from layer K-1's device, ViT features from the ViT's
        return self.vip(rows.to(device), [c.to(device) for c in ctx.batch.vit_features], grids)

    def select(self, ctx: SelectContext) -> Selection:
        # The policy decides on logits (probabilities underflow); the scores handed on stay probabilities.
        per_sample = split_by_sample(self.logits(ctx), ctx.batch)
        keep = [
            self.policy.select(z, [im.num_tokens for im in images])
            for z, images in zip(per_sample, ctx.batch.images)
        ]
        return Selection(keep=keep, scores=[torch.sigmoid(z) for z in per_sample])
