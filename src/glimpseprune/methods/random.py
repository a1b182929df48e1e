"""Random pruning: a uniform random subset of the visual tokens, seeded (the control of docs/method.md §14.4).

Knobs: ``prune_layer`` (default 0 = before the LLM), ``seed`` (default 0), and the common budget options (see
:mod:`glimpseprune.budget`): ``ratio``/``max_keep_ratio`` = kept fraction, or ``retention`` = layer-averaged retention
(converted through the cut layer), ``min_keep``, ``per_image``. The count is ``floor(fraction·n)`` like
GlimpsePrune's cap, so "same count, same cut point" comparisons are exact.

Same-count control (``kept_counts``): a list with one kept count per sample of the batch, in order. Each sample
then keeps exactly that many tokens, chosen uniformly at random, at ``prune_layer``; ``fraction``, ``min_keep`` and
``per_image`` are not used. With the per-sample counts GlimpsePrune kept on the same prompts and GlimpsePrune's K,
this is random selection at the same cut layer with the same per-sample kept counts: the control a selection
method's accuracy is stated against.

Reproducibility: the subset of a sample is a function of (seed, the sample's own token ids), never of its batch
neighbours, so a batch row keeps the same tokens as the same prompt alone; different prompts get different subsets.
"""

from __future__ import annotations

import hashlib

import torch

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from ..budget import group_sizes, resolve_common, single_cut_fraction, top_fraction, top_k_mask
from ..flops import no_scoring_flops


def sample_generator(seed: int, token_ids: torch.Tensor) -> torch.Generator:
    digest = hashlib.sha256(token_ids.detach().cpu().to(torch.int64).numpy().tobytes()).digest()
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int.from_bytes(digest[:7], "little")) % 2**63)


class RandomPrune(PruneMethod):
    name = "random"

    def __init__(self, prune_layer: int, fraction: float | None, seed: int = 0, min_keep: int = 1,
                 per_image: bool = False, kept_counts: list[int] | None = None):
        self.prune_layer, self.fraction, self.seed = prune_layer, fraction, seed
        self.min_keep, self.per_image = min_keep, per_image
        self.kept_counts = None if kept_counts is None else [int(k) for k in kept_counts]

    def select(self, ctx: SelectContext) -> Selection:
        if self.kept_counts is not None and len(self.kept_counts) != len(ctx.batch.images):
            raise ValueError(f"random: {len(self.kept_counts)} kept counts for a batch of {len(ctx.batch.images)} "
                             "samples; give one count per sample")
        keep, scores = [], []
        for b, images in enumerate(ctx.batch.images):
            n = sum(im.num_tokens for im in images)
            ids = ctx.batch.input_ids[b][ctx.batch.attention_mask[b].bool()]
            s = torch.rand(n, generator=sample_generator(self.seed, ids)).to(ctx.hidden.device)
            if self.kept_counts is None:
                keep.append(top_fraction(s, group_sizes(images, self.per_image), self.fraction, self.min_keep))
            else:
                k = self.kept_counts[b]
                if not 0 <= k <= n:
                    raise ValueError(f"random: sample {b} has {n} visual tokens, cannot keep {k}")
                keep.append(top_k_mask(s, k))
            scores.append(s)
        return Selection(keep=keep, scores=scores)


def same_count_control(model, pruning, seed: int = 0) -> RandomPrune:
    """Random selection at the cut layer of ``pruning`` (a :class:`~glimpseprune.prune_state.PruneState` of one
    batch, e.g. GlimpsePrune's) with its per-sample kept counts, for the same batch in the same order."""
    if pruning.prune_layer is None:
        raise ValueError("same_count_control needs a pruned run (its PruneState has no cut layer)")
    return build(model, prune_layer=pruning.prune_layer, seed=seed, kept_counts=[s.kept for s in pruning.samples])


@register_method("random", scoring_flops=no_scoring_flops)
def build(model, prune_layer=None, seed: int = 0, ratio=None, retention=None, threshold=None, max_keep_ratio=...,
          min_keep=None, per_image=None, kept_counts=None) -> RandomPrune:
    layer = 0 if prune_layer is None else int(prune_layer)
    L = model.adapter.num_layers
    if not 0 <= layer < L:
        raise ValueError(f"random: prune_layer must be in [0, {L}), got {layer}")
    if kept_counts is not None:
        if any(v is not None and v is not Ellipsis for v in (ratio, retention, threshold, max_keep_ratio)):
            raise ValueError("random: kept_counts fixes every sample's count; give no ratio / retention budget")
        counts = list(kept_counts)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in counts):
            raise ValueError(f"random: kept_counts must be non-negative integers, got {counts!r}")
        return RandomPrune(layer, None, seed, kept_counts=counts)
    common = resolve_common("random", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    fraction = single_cut_fraction(common.budget, layer, L)
    return RandomPrune(layer, fraction, seed, common.min_keep, common.per_image)
