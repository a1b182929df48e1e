"""DivPrune (Alvar et al., CVPR'25, arXiv 2503.02175), implemented from the paper's DESCRIPTION only (its code is
CC BY-NC 4.0 and was not read): before the LLM, choose the subset of visual embeddings that maximises the minimum
pairwise distance (a Max-Min Diversity Problem), solved greedily; distance = 1 − cosine similarity. No attention.

Greedy (our formulation of the max-min heuristic):
1. start with the token whose nearest other token is farthest (argmax_i min_{j≠i} d(i, j));
2. repeatedly add the token whose distance to its nearest selected token is largest (argmax_i min_{j∈S} d(i, j)).
Ties go to the lowest index. Memory is O(n): the first step is computed in row chunks, later steps keep one
running min-distance vector, so no n×n matrix is ever held.

Scores: a selected token's score is its min-distance when picked; an unselected one's is its final min-distance to
the set (so the selection is the top-k of the scores). Knobs: the common budget options (:mod:`glimpseprune.budget`; the cut is
at layer 0, so kept ratio = layer-averaged retention), ``min_keep``, ``per_image`` (run the greedy per image),
``chunk`` (rows per block in step 1, default 1024).
"""

from __future__ import annotations

import torch

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from ..budget import group_sizes, keep_count, resolve_common, select_groups, single_cut_fraction
from ..flops import ModelDims, budget_groups


def maxmin_greedy(features: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(picked indices in order, scores [n]) of the greedy max-min-diversity subset of size k."""
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    n = f.shape[0]
    scores = torch.zeros(n, device=f.device)
    if k <= 0 or n == 0:
        return torch.zeros(0, dtype=torch.long, device=f.device), scores
    nearest = torch.empty(n, device=f.device)
    for start in range(0, n, chunk):
        sims = f[start:start + chunk] @ f.T
        rows = torch.arange(sims.shape[0], device=f.device)
        sims[rows, rows + start] = float("-inf")
        nearest[start:start + chunk] = 1 - sims.max(1).values
    if n == 1:
        nearest.fill_(0.0)
    first = int(torch.argmax(nearest))
    picked, chosen = [first], torch.zeros(n, dtype=torch.bool, device=f.device)
    chosen[first] = True
    scores[first] = nearest[first]
    mind = 1 - f @ f[first]
    for _ in range(k - 1):
        j = int(torch.argmax(mind.masked_fill(chosen, float("-inf"))))
        picked.append(j)
        scores[j] = mind[j]
        chosen[j] = True
        mind = torch.minimum(mind, 1 - f @ f[j])
    scores[~chosen] = mind[~chosen]
    return torch.tensor(picked, device=f.device), scores


def maxmin_greedy_flops(n: int, k: int, d: int) -> int:
    """:func:`maxmin_greedy` on n features of width d picking k: 2·n·d·(n + k).

    The first pick needs every token's nearest other token, the full n×n cosine matrix (in row chunks), 2·n²·d;
    then one similarity row 2·n·d for the first pick and for each of the k − 1 later ones.
    """
    return 0 if k <= 0 or n == 0 else 2 * n * d * (n + k)


def scoring_flops(dims: ModelDims, image_token_counts: list[int], text_len: int, *, kept=None) -> int:
    """Per budget group (``kept``: an int = one group over all images, or one count per image for ``per_image``)
    :func:`maxmin_greedy_flops` with d = D (the LLM input embeddings)."""
    if kept is None:
        raise ValueError("divprune: give kept= (int, or one count per image)")
    return sum(maxmin_greedy_flops(g, k, dims.lm.hidden) for g, k in budget_groups(kept, image_token_counts))


class DivPrune(PruneMethod):
    name = "divprune"
    prune_layer = 0

    def __init__(self, fraction: float, min_keep: int = 1, per_image: bool = False, chunk: int = 1024):
        self.fraction, self.min_keep, self.per_image, self.chunk = fraction, min_keep, per_image, chunk

    def select(self, ctx: SelectContext) -> Selection:
        keep, scores = [], []
        for b, images in enumerate(ctx.batch.images):
            feats = ctx.batch.inputs_embeds[b][ctx.batch.visual_mask[b]]
            k, s = select_groups(
                group_sizes(images, self.per_image),
                lambda a, z: maxmin_greedy(feats[a:z], keep_count(z - a, self.fraction, self.min_keep), self.chunk),
                feats.device,
            )
            keep.append(k)
            scores.append(s)
        return Selection(keep=keep, scores=scores)

    def scoring_params(self, image_counts, stages) -> dict:
        if self.per_image:
            return {"kept": [keep_count(n, self.fraction, self.min_keep) for n in image_counts]}
        return {"kept": stages[0][1] if stages else sum(image_counts)}


@register_method("divprune", scoring_flops=scoring_flops)
def build(model, prune_layer=None, ratio=None, retention=None, threshold=None, max_keep_ratio=..., min_keep=None,
          per_image=None, chunk: int = 1024) -> DivPrune:
    common = resolve_common("divprune", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    if prune_layer not in (None, 0):
        raise ValueError(f"divprune prunes before the LLM (layer 0); got prune_layer={prune_layer}")
    return DivPrune(single_cut_fraction(common.budget, 0, model.adapter.num_layers), common.min_keep,
                    common.per_image, chunk)
