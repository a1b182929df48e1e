"""Prune with keep masks supplied by the caller: box masks (the reference's ``use_ref_masks``), oracle
experiments, and the slow-reference tests of the engine."""

from __future__ import annotations

import torch

from .base import PruneMethod, SelectContext, Selection


class FixedKeep(PruneMethod):
    name = "fixed"

    def __init__(self, keep: list[torch.Tensor], prune_layer: int):
        if prune_layer < 0:
            raise ValueError(f"prune_layer must be >= 0, got {prune_layer}")
        self.keep = [torch.as_tensor(k, dtype=torch.bool) for k in keep]
        self.prune_layer = prune_layer

    def select(self, ctx: SelectContext) -> Selection:
        sizes = [sum(im.num_tokens for im in images) for images in ctx.batch.images]
        if len(self.keep) != len(sizes) or any(k.numel() != n for k, n in zip(self.keep, sizes)):
            raise ValueError(
                f"keep masks have sizes {[k.numel() for k in self.keep]} but the samples have {sizes} visual tokens"
            )
        return Selection(keep=[k.to(ctx.hidden.device) for k in self.keep])
