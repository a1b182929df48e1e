"""PyramidDrop (Xing et al., CVPR'25, arXiv 2410.17247), on our multi-stage cuts: the LLM is split into stages;
at every stage boundary the image tokens still present are ranked by the attention the last instruction token
(here: the last prompt token, head-averaged, recomputed as one row from the cache) pays them in the layer just
before the boundary, and only λ of them survive. Hidden states and KV caches are pruned at every boundary.

Knobs:
- ``layers``: stage boundaries (cut layers). Default ``{2, L/4, L/2, 3L/4}`` - the paper's L/4, L/2, 3L/4 plus an
  early first stage at FastV's K = 2, without which 11.1 % layer-averaged is unreachable (docs/method.md §16.3: the
  paper's default ×0.5 at 8/16/24 of 32 layers averages 46.9 %).
- ``ratios``: λ per stage, each relative to the tokens present (the paper: 0.5 at every stage). Overrides the
  budget when given.
- budget (:mod:`glimpseprune.budget`): a kept ratio r (after the last stage) -> λ = r^(1/S); a layer-averaged retention ->
  the common λ that hits it (bisection, :func:`.budget.uniform_stage_ratio`).
Counts at stage s are ``floor(λ_1⋯λ_s · n)`` of the ORIGINAL n (non-increasing), with ``min_keep``, ``per_image``.
"""

from __future__ import annotations

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from ..budget import cumulative, given, group_sizes, resolve_common, top_fraction, uniform_stage_ratio
from ..flops import ModelDims, cut_rows_flops


def default_layers(num_layers: int) -> list[int]:
    L = num_layers
    return sorted({layer for layer in (2, L // 4, L // 2, 3 * L // 4) if 1 <= layer < L})


def scoring_flops(dims: ModelDims, image_token_counts: list[int], text_len: int, *, stages=None) -> int:
    """At every cut (``stages``: [(cut layer, visual tokens present after it)] as applied) the last prompt token's
    attention row at the layer before is recomputed from the cache: Q projection 2·D·H·d_h plus scores
    2·H·d_h·(text_len + visual tokens present before the cut)."""
    if stages is None:
        raise ValueError("pyramiddrop: give stages=[(cut layer, kept), ...]")
    return cut_rows_flops(dims.lm, stages, sum(image_token_counts), text_len)


class PyramidDrop(PruneMethod):
    name = "pyramiddrop"

    def __init__(self, layers: list[int], fractions: list[float], min_keep: int = 1, per_image: bool = False):
        self.layers, self.fractions = list(layers), list(fractions)  # fractions of the ORIGINAL tokens
        self.prune_layer = self.layers[0]
        self.min_keep, self.per_image = min_keep, per_image

    @property
    def prune_layers(self) -> list[int]:
        return self.layers

    def select(self, ctx: SelectContext) -> Selection:
        fraction = self.fractions[self.layers.index(ctx.layer)]
        scores = ctx.to_visual(ctx.last_token_row(log_softmax=True).exp().mean(1))
        keep = [
            top_fraction(s, group_sizes(images, self.per_image), fraction, self.min_keep, present)
            for s, images, present in zip(scores, ctx.batch.images, ctx.present())
        ]
        return Selection(keep=keep, scores=scores)

    def scoring_params(self, image_counts, stages) -> dict:
        return {"stages": stages}


@register_method("pyramiddrop", scoring_flops=scoring_flops)
def build(model, prune_layer=None, layers=None, ratios=None, ratio=None, retention=None, threshold=None,
          max_keep_ratio=..., min_keep=None, per_image=None) -> PyramidDrop:
    L = model.adapter.num_layers
    if prune_layer is not None and layers is not None:
        raise ValueError("pyramiddrop: give the stage layers as layers=[...]; prune_layer would be the first one")
    layers = list(layers) if layers is not None else (default_layers(L) if prune_layer is None else None)
    if layers is None:  # prune_layer given: the first stage there, the defaults after it
        layers = [int(prune_layer)] + [x for x in default_layers(L) if x > int(prune_layer)]
    layers = [int(x) for x in layers]
    if not layers or any(not 1 <= x < L for x in layers) or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"pyramiddrop: stage layers must be strictly increasing within [1, {L}), got {layers}")
    if ratios is not None:
        if given(ratio) or given(retention) or given(max_keep_ratio):
            raise ValueError("pyramiddrop: give either per-stage ratios=[...] or a budget, not both")
        common = resolve_common("pyramiddrop", 1.0, None, threshold, ..., min_keep, per_image)
        ratios = [float(r) for r in ratios]
        if len(ratios) != len(layers) or any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"pyramiddrop: need one ratio in (0, 1] per stage layer {layers}, got {ratios}")
        lam = ratios
    else:
        common = resolve_common("pyramiddrop", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
        b = common.budget
        if b.max_keep_ratio is not None:
            lam = [b.max_keep_ratio ** (1 / len(layers))] * len(layers)
        else:
            lam = [uniform_stage_ratio(b.retention, layers, L)] * len(layers)
    return PyramidDrop(layers, cumulative(lam), common.min_keep, common.per_image)
