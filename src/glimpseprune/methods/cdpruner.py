"""CDPruner (Zhang et al., NeurIPS'25, arXiv 2506.10967), on our pre-LLM hook: an instruction-conditioned
determinantal point process over the visual tokens, solved by greedy MAP inference.

- S = cosine similarity of the visual embeddings (LLM input space, after the merger/projector);
- relevance q_i = cosine(v_i, mean embedding of the instruction's text tokens), min-max normalised to [0, 1]
  (uniform q = 1 when the sample has no instruction text);
- kernel L = diag(q) · S · diag(q); pick k tokens greedily maximising log det L_Y.

The instruction = the sample's valid, non-visual tokens after its last image token, minus the tokenizer's special
tokens (so the system prompt is excluded; the chat template's plain-text tail such as "assistant" is included).
Greedy MAP uses the fast incremental Cholesky update of Chen et al. (NeurIPS'18): O(n·k) memory and O(n·k·(D + k))
time, no n×n kernel. S has rank ≤ D, so when no remaining token adds volume (gain ≤ 1e-10) the rest are filled by
relevance. Scores: the marginal gain d_i² when picked (non-increasing), final d_i² for the others.

Knobs: the common budget options (:mod:`glimpseprune.budget`; the cut is at layer 0), ``min_keep``, ``per_image``.
"""

from __future__ import annotations

import torch

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from ..budget import group_sizes, keep_count, resolve_common, select_groups, single_cut_fraction, top_k_mask
from ..flops import ModelDims, budget_groups

_EPS = 1e-10


def dpp_greedy(features: torch.Tensor, quality: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(picked indices in order, scores [n]) of greedy MAP for L = diag(q)·S·diag(q), S = cosine similarity."""
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    q = quality.double()
    n = f.shape[0]
    d2 = q * q  # L_ii (S_ii = 1)
    scores = torch.zeros(n, dtype=torch.float64, device=f.device)
    chosen = torch.zeros(n, dtype=torch.bool, device=f.device)
    c = torch.zeros(max(k, 0), n, dtype=torch.float64, device=f.device)
    picked = []
    for t in range(min(k, n)):
        masked = d2.masked_fill(chosen, float("-inf"))
        j = int(torch.argmax(masked))
        if masked[j] <= _EPS:  # no volume left: fill by relevance (stable)
            rest = top_k_mask(q.masked_fill(chosen, float("-inf")), k - t)
            order = torch.sort(q.masked_fill(~rest, float("-inf")), descending=True, stable=True).indices[: k - t]
            for i in order.tolist():
                picked.append(i)
                chosen[i] = True
                scores[i] = 0.0
            break
        picked.append(j)
        scores[j] = d2[j]
        chosen[j] = True
        row = q[j] * q * (f @ f[j])  # L_{j,:}
        e = (row - c[:t].T @ c[:t, j]) / d2[j].sqrt()
        c[t] = e
        d2 = d2 - e * e
    scores[~chosen] = d2[~chosen].clamp(min=0)
    return torch.tensor(picked, dtype=torch.long, device=f.device), scores.float()


def relevance(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    if text.shape[0] == 0 or visual.shape[0] == 0:
        return visual.new_ones(visual.shape[0], dtype=torch.float32)
    r = torch.nn.functional.cosine_similarity(visual.float(), text.float().mean(0, keepdim=True), dim=-1)
    span = r.max() - r.min()
    return (r - r.min()) / span if span > 0 else torch.ones_like(r)


def dpp_greedy_flops(n: int, k: int, d: int) -> int:
    """:func:`dpp_greedy` (incremental Cholesky, no n×n kernel) on n features of width d picking k.

    Step t (0-based) computes one similarity row f·f_j, 2·n·d, and the correction c[:t]ᵀ·c[:t, j], 2·t·n; over
    s = min(k, n) steps 2·n·d·s + n·s·(s − 1). Every step is counted even if the volume runs out early (the rest is
    then filled by relevance, a sort): an upper bound.
    """
    s = min(max(k, 0), n)
    return 2 * n * d * s + n * s * (s - 1)


def scoring_flops(dims: ModelDims, image_token_counts: list[int], text_len: int, *, kept=None) -> int:
    """Relevance, one cosine of every visual token with the instruction's mean embedding, 2·N·D (when ``text_len``
    > 0), then per budget group (``kept`` as for DivPrune) :func:`dpp_greedy_flops` with d = D."""
    if kept is None:
        raise ValueError("cdpruner: give kept= (int, or one count per image)")
    d = dims.lm.hidden
    relevance_flops = 2 * sum(image_token_counts) * d if text_len > 0 else 0
    return relevance_flops + sum(dpp_greedy_flops(g, k, d) for g, k in budget_groups(kept, image_token_counts))


class CDPruner(PruneMethod):
    name = "cdpruner"
    prune_layer = 0

    def __init__(self, fraction: float, special_ids: list[int], min_keep: int = 1, per_image: bool = False):
        self.fraction, self.min_keep, self.per_image = fraction, min_keep, per_image
        self.special_ids = sorted(set(special_ids))

    def instruction_mask(self, batch, b: int) -> torch.Tensor:
        vis = batch.visual_mask[b]
        valid = batch.attention_mask[b].bool()
        after = torch.zeros_like(vis)
        if vis.any():
            after[int(vis.nonzero().max()) + 1:] = True
        mask = after & valid & ~vis
        if self.special_ids:
            mask &= ~torch.isin(batch.input_ids[b], torch.tensor(self.special_ids, device=vis.device))
        return mask

    def select(self, ctx: SelectContext) -> Selection:
        keep, scores = [], []
        batch = ctx.batch
        for b, images in enumerate(batch.images):
            feats = batch.inputs_embeds[b][batch.visual_mask[b]]
            text = batch.inputs_embeds[b][self.instruction_mask(batch, b)]
            q = relevance(feats, text)
            k, s = select_groups(
                group_sizes(images, self.per_image),
                lambda a, z: dpp_greedy(feats[a:z], q[a:z], keep_count(z - a, self.fraction, self.min_keep)),
                feats.device,
            )
            keep.append(k)
            scores.append(s)
        return Selection(keep=keep, scores=scores)

    def scoring_params(self, image_counts, stages) -> dict:
        if self.per_image:
            return {"kept": [keep_count(n, self.fraction, self.min_keep) for n in image_counts]}
        return {"kept": stages[0][1] if stages else sum(image_counts)}


def special_token_ids(model) -> list[int]:
    tok = getattr(getattr(model, "processor", None), "tokenizer", None)
    return list(getattr(tok, "all_special_ids", []) or []) if tok is not None else []


@register_method("cdpruner", scoring_flops=scoring_flops)
def build(model, prune_layer=None, ratio=None, retention=None, threshold=None, max_keep_ratio=..., min_keep=None,
          per_image=None) -> CDPruner:
    common = resolve_common("cdpruner", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    if prune_layer not in (None, 0):
        raise ValueError(f"cdpruner prunes before the LLM (layer 0); got prune_layer={prune_layer}")
    return CDPruner(single_cut_fraction(common.budget, 0, model.adapter.num_layers), special_token_ids(model),
                    common.min_keep, common.per_image)
