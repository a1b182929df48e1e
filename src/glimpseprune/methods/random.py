"""Random pruning: a uniform random subset of the visual tokens, seeded (landscape §7, the trivial anchor).

Knobs: ``prune_layer`` (default 0 = before the LLM), ``seed`` (default 0), and the common budget options (see
:mod:`.budget`): ``ratio``/``max_keep_ratio`` = kept fraction, or ``retention`` = layer-averaged retention
(converted through the cut layer), ``min_keep``, ``per_image``. The count is ``floor(fraction·n)`` like
GlimpsePrune's cap, so "same count, same cut point" comparisons are exact.

Reproducibility: the subset of a sample is a function of (seed, the sample's own token ids), never of its batch
neighbours, so a batch row keeps the same tokens as the same prompt alone; different prompts get different subsets.
"""

from __future__ import annotations

import hashlib

import torch

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from .budget import group_sizes, resolve_common, single_cut_fraction, top_fraction


def sample_generator(seed: int, token_ids: torch.Tensor) -> torch.Generator:
    digest = hashlib.sha256(token_ids.detach().cpu().to(torch.int64).numpy().tobytes()).digest()
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int.from_bytes(digest[:7], "little")) % 2**63)


class RandomPrune(PruneMethod):
    name = "random"

    def __init__(self, prune_layer: int, fraction: float, seed: int = 0, min_keep: int = 1, per_image: bool = False):
        self.prune_layer, self.fraction, self.seed = prune_layer, fraction, seed
        self.min_keep, self.per_image = min_keep, per_image

    def select(self, ctx: SelectContext) -> Selection:
        keep, scores = [], []
        for b, images in enumerate(ctx.batch.images):
            n = sum(im.num_tokens for im in images)
            ids = ctx.batch.input_ids[b][ctx.batch.attention_mask[b].bool()]
            s = torch.rand(n, generator=sample_generator(self.seed, ids)).to(ctx.hidden.device)
            keep.append(top_fraction(s, group_sizes(images, self.per_image), self.fraction, self.min_keep))
            scores.append(s)
        return Selection(keep=keep, scores=scores)


@register_method("random")
def build(model, prune_layer=None, seed: int = 0, ratio=None, retention=None, threshold=None, max_keep_ratio=...,
          min_keep=None, per_image=None) -> RandomPrune:
    common = resolve_common("random", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    layer = 0 if prune_layer is None else int(prune_layer)
    L = model.adapter.num_layers
    if not 0 <= layer < L:
        raise ValueError(f"random: prune_layer must be in [0, {L}), got {layer}")
    fraction = single_cut_fraction(common.budget, layer, L)
    return RandomPrune(layer, fraction, seed, common.min_keep, common.per_image)
