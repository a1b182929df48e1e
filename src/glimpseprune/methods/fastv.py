"""FastV (Chen et al., ECCV'24, arXiv 2403.06764), re-implemented from the paper's description (its repository has
no licence): after layer K−1, rank the image tokens by the head-averaged attention the LAST prompt token pays them
at layer K−1 and drop the lowest; layers K.. run on the shorter sequence (hidden states and KV cache pruned).

The attention row is recomputed as one query row from the cache (``SelectContext.last_token_row``), so any
attention backend works (no eager layer, no attention map).

Knobs: ``prune_layer`` = K (default 2, must be ≥ 1) and the common budget options (:mod:`glimpseprune.budget`). A
layer-averaged budget is converted through K: on a 28-layer model, 11.1 % at K = 2 keeps (0.111·28 − 2)/26 ≈ 4.3 %;
at 32 layers ≈ 5.2 %. The paper's own setting is K = 2, keep 50 % (``ratio=0.5``).
"""

from __future__ import annotations

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from ..budget import group_sizes, resolve_common, single_cut_fraction, top_fraction
from ..flops import ModelDims, cut_rows_flops


def scoring_flops(dims: ModelDims, image_token_counts: list[int], text_len: int, *, stages=None) -> int:
    """At the cut (``stages``: [(K, kept)] as applied) the last prompt token's attention row at layer K − 1 is
    recomputed from the cache: its Q projection 2·D·H·d_h (after the input norm) plus scores 2·H·d_h·(text_len + N)."""
    if stages is None:
        raise ValueError("fastv: give stages=[(cut layer, kept), ...]")
    return cut_rows_flops(dims.lm, stages, sum(image_token_counts), text_len)


class FastV(PruneMethod):
    name = "fastv"

    def __init__(self, prune_layer: int, fraction: float, min_keep: int = 1, per_image: bool = False):
        self.prune_layer, self.fraction, self.min_keep, self.per_image = prune_layer, fraction, min_keep, per_image

    def select(self, ctx: SelectContext) -> Selection:
        attention = ctx.last_token_row(log_softmax=True).exp().mean(1)  # [bs, L_cur], head-averaged
        scores = ctx.to_visual(attention)
        keep = [
            top_fraction(s, group_sizes(images, self.per_image), self.fraction, self.min_keep)
            for s, images in zip(scores, ctx.batch.images)
        ]
        return Selection(keep=keep, scores=scores)

    def scoring_params(self, image_counts, stages) -> dict:
        return {"stages": stages}


@register_method("fastv", scoring_flops=scoring_flops)
def build(model, prune_layer=None, ratio=None, retention=None, threshold=None, max_keep_ratio=..., min_keep=None,
          per_image=None) -> FastV:
    common = resolve_common("fastv", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    K = 2 if prune_layer is None else int(prune_layer)
    L = model.adapter.num_layers
    if not 1 <= K < L:
        raise ValueError(f"fastv: K (prune_layer) must be in [1, {L}) - it reads the attention at layer K-1; got {K}")
    return FastV(K, single_cut_fraction(common.budget, K, L), common.min_keep, common.per_image)
