"""VScan (Zhang et al., TMLR'26, arXiv 2505.22654), two stages on our hooks:

1. **Vision stage** (cut at layer 0, per image): keep ``vision_ratio`` of the tokens by two complementary scans of
   the ViT's attention, then merge every other token into its most similar kept token.
   - global scan: the tokens receiving the most attention (mean over heads and queries; Qwen has no CLS) in a late
     full-attention block (``global_block``, default the last one);
   - local scan: in a window-attention block (``local_block``, default the last windowed block before
     ``global_block``), the most attended tokens *within every ViT window*; when the ViT has no windowed block
     (Qwen2-VL) the global block's scores are used within ``local_window`` × ``local_window`` squares of the token
     grid (default 4, the size of a Qwen2.5-VL window in merged tokens): the tokens the global scan left are taken in order of (rank inside their window, −score, index), so
     the picks spread over all windows;
   - ``local_share`` (default 0.5) of the stage's count comes from the local scan (chosen after the global picks,
     among the rest);
   - merge: every unselected token joins the kept token with the most similar key (global block, pre-RoPE keys,
     cosine); a kept token's embedding becomes the mean of its group (``Selection.replace``).
2. **LLM stage** (cut at ``llm_layer``, default L/2: 14 of 28): keep ``llm_ratio`` (default 0.333) of the survivors,
   ranked by the last prompt token's head-averaged attention at ``llm_layer`` − 1 (one recomputed row).

LLaVA-1.5 (CLIP, which has a CLS token), each part mapped to its CLIP form:
   - global scan: the CLS attention (mean over heads) in the CLIP layer LLaVA takes its features from
     (``vision_feature_layer``, -2: the penultimate layer), the paper's "[CLS] attention at the output layer";
   - local scan: CLIP has no window-attention layers, so there is no ViT window to scan within (no CLIP analogue of
     Qwen2.5-VL's windowed block). As on Qwen2-VL, the windows are ``local_window`` × ``local_window`` squares of
     the token grid (default 4: 36 windows on LLaVA-1.5's 24×24 grid) and the scores are the CLS attention of
     ``local_block`` (default: the global layer; give a shallower CLIP layer to rank by shallow-layer CLS attention,
     which the paper observes to follow local detail);
   - merge: keys of the global layer (CLIP has no RoPE), cosine, as above;
   - the LLM stage is unchanged; the paper's LLaVA-1.5 setting 576 -> 96 at the ViT -> 32 at layer 16 of 32 is
     ``vision_ratio=96/576, llm_ratio=1/3, llm_layer=16``; the default budget (11.1 % layer-averaged) gives the
     same on a 32-layer LLM (0.1665, ×0.333 at layer 16).
   With ``vision_feature_select_strategy="full"`` each image's CLS placeholder is not a candidate (kept, never
   scored or merged); only its h·w patches take part.

ViT attention is scored as in :mod:`.visionzip`: from captured block inputs, in query chunks (bounded memory) on
Qwen, as one CLS query row per image on CLIP; the ViT is never re-run and ``output_attentions`` never set.
Supported families: Qwen2.5-VL, Qwen2-VL, LLaVA-1.5 (CLIP).
Budget (:mod:`glimpseprune.budget`): a layer-averaged retention t -> vision_ratio = :func:`.budget.first_stage_ratio` (on Qwen
28 layers, 11.1 % -> 0.167 then ×0.333 at layer 14, the reference setting of docs/method.md §16.3); a kept ratio r after
the last stage -> vision_ratio = min(1, r/llm_ratio). Or give ``vision_ratio`` (and ``llm_ratio``) explicitly.
Counts: stage 1 keeps floor(vision_ratio·n_image) per image; stage 2 floor(vision_ratio·llm_ratio·n) of the ORIGINAL
tokens per sample (per image with ``per_image``).
"""

from __future__ import annotations

import math

import torch

from ..adapters.base import VitRequest
from . import register_method
from .base import PruneMethod, SelectContext, Selection, split_by_sample
from ..budget import (first_stage_ratio, group_sizes, keep_count, resolve_common, top_fraction, top_k_mask)
from ..flops import ModelDims, cut_rows_flops, default_vit_block, per_image_counts, vit_block_score_flops
from .visionzip import nearest, scoring_of


def local_order_scores(scores: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """A score whose descending order is (rank inside the token's window, −score, index): round-robin over windows.

    The order is built exactly by two stable sorts (score, then rank) and returned as −position: a key such as
    −rank + score/2 would round in float32 and break within-rank ties by index instead of score whenever two
    scores differ by less than the float spacing at the rank (CLS attentions near 1/577 can differ by 1e-8).
    """
    rank = torch.empty(scores.shape, dtype=torch.long, device=scores.device)
    for w in window.unique():
        idx = (window == w).nonzero().squeeze(1)
        order = torch.sort(scores[idx], descending=True, stable=True).indices
        rank[idx[order]] = torch.arange(idx.numel(), device=scores.device)
    by_score = torch.sort(scores, descending=True, stable=True).indices  # ties: lower index first
    final = by_score[torch.sort(rank[by_score], stable=True).indices]  # rank dominates, score order kept within
    out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    out[final] = -torch.arange(scores.numel(), device=scores.device, dtype=torch.float32)
    return out


def grid_windows(batch, size: int, device) -> torch.Tensor:
    """Window id [T] of every visual token of the batch (raster per image or video frame): size × size squares of the
    token grid."""
    ids, offset = [], 0
    for images in batch.images:
        for im in images:
            h, w = im.grid
            r = torch.arange(h, device=device)[:, None] // size
            c = torch.arange(w, device=device)[None, :] // size
            for _ in range(im.frames):  # a video's frames each have their own windows
                ids.append((offset + r * math.ceil(w / size) + c).reshape(-1))
                offset += math.ceil(h / size) * math.ceil(w / size)
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long, device=device)


def merge_into_kept(embeds: torch.Tensor, keys: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Embeddings of the kept tokens after every dropped token joins its most key-similar kept token (mean)."""
    kept, dropped = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
    sums = embeds[kept].float().clone()
    counts = torch.ones(kept.numel(), device=embeds.device)
    if dropped.numel() and kept.numel():
        assign = nearest(keys[dropped], keys[kept])
        sums.index_add_(0, assign, embeds[dropped].float())
        counts.index_add_(0, assign, torch.ones(dropped.numel(), device=embeds.device))
    return (sums / counts[:, None]).to(embeds.dtype)


def scoring_flops(dims: ModelDims, image_token_counts: list[int], text_len: int, *, stages=None, kept_vision=None,
                  global_block: int | None = None, local_block: int | None = None, cls: bool | None = None) -> int:
    """``stages`` = [(0, k1), (llm_layer, k2)] as applied, ``kept_vision`` per image (default: k1 for one image):
    the global block's scores, the local block's when it is another block (a windowed one on Qwen2.5-VL), the merge
    of every dropped token into its most key-similar kept token 2·(n − kept)·kept·D_v per image, and the LLM-stage
    attention row as for FastV. ``global_block`` defaults to the last full-attention ViT block, ``local_block`` to
    the last windowed block before it, or the global block itself (then it is not scored twice); ``cls`` as for
    VisionZip."""
    if stages is None:
        raise ValueError("vscan: give stages=[(0, kept after the ViT stage), (llm_layer, kept)]")
    counts, vision = image_token_counts, dims.vision
    if kept_vision is None:
        if len(counts) != 1:
            raise ValueError("vscan: give kept_vision= per image when a sample has several images")
        kept_vision = int(stages[0][1])
    kv = per_image_counts("kept_vision", kept_vision, counts)
    g = default_vit_block(vision) if global_block is None else int(global_block)
    if local_block is None:
        windowed = [i for i in range(g) if vision.full_attention_blocks and i not in vision.full_attention_blocks]
        local_block = windowed[-1] if windowed else g
    score = vit_block_score_flops(vision, counts, g, cls)
    if int(local_block) != g:
        score += vit_block_score_flops(vision, counts, int(local_block), cls)
    merge = sum(2 * (c - k) * k * vision.hidden for c, k in zip(counts, kv))
    return score + merge + cut_rows_flops(dims.lm, stages, sum(counts), text_len)


class VScan(PruneMethod):
    name = "vscan"

    def __init__(self, adapter, global_block: int, local_block: int, vision_ratio: float, llm_layer: int,
                 llm_ratio: float, local_share: float = 0.5, min_keep: int = 1, per_image: bool = False,
                 max_elems: int = 2**22, local_window: int = 4):
        self.adapter, self.global_block, self.local_block = adapter, global_block, local_block
        self.local_window = local_window
        self.vision_ratio, self.llm_layer, self.llm_ratio, self.local_share = vision_ratio, llm_layer, llm_ratio, local_share
        self.min_keep, self.per_image, self.max_elems = min_keep, per_image, max_elems
        self.prune_layer = 0
        self.vit_layers = VitRequest([], block_inputs=sorted({global_block, local_block}))

    @property
    def prune_layers(self) -> list[int]:
        return [0, self.llm_layer]

    def vision_counts(self, n: int) -> tuple[int, int]:
        """(global, local) picks for an image of n tokens."""
        k = keep_count(n, self.vision_ratio, self.min_keep)
        local = min(k, round(self.local_share * k))
        return k - local, local

    def select_vision(self, ctx: SelectContext) -> Selection:
        batch = ctx.batch
        if not any(batch.images):
            return Selection(keep=[torch.zeros(0, dtype=torch.bool, device=ctx.hidden.device) for _ in batch.images])
        token_scores = scoring_of(self.adapter, "vscan").token_scores
        g_scores, keys, _ = token_scores(batch, self.global_block, self.max_elems)
        if self.local_block == self.global_block:
            l_scores, windows = g_scores, None
        else:
            l_scores, _, windows = token_scores(batch, self.local_block, self.max_elems)
        if windows is None:  # no ViT windows to scan within (CLIP, or no windowed block): squares of the token grid
            windows = grid_windows(batch, self.local_window, g_scores.device)
        keep, replace, scores = [], [], []
        parts = [split_by_sample(t, batch) for t in (g_scores, keys, l_scores, windows)]
        for b, (gs, kb, ls, wb) in enumerate(zip(*parts)):
            embeds = batch.inputs_embeds[b][batch.visual_mask[b]]
            mask = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
            new_parts, start = [], 0
            for im in batch.images[b]:
                part = slice(start, start + im.num_tokens)
                n_global, n_local = self.vision_counts(im.num_tokens)
                m = top_k_mask(gs[part].float(), n_global)
                remaining = ls[part].float().masked_fill(m, float("-inf"))  # ranks among the tokens left
                order = local_order_scores(remaining, wb[part]).masked_fill(m, float("-inf"))
                m |= top_k_mask(order, n_local)
                mask[part] = m
                new_parts.append(merge_into_kept(embeds[part], kb[part], m))
                start += im.num_tokens
            keep.append(mask)
            replace.append(torch.cat(new_parts) if new_parts else embeds[:0])
            scores.append(gs)
        return Selection(keep=keep, scores=scores, replace=replace)

    def select(self, ctx: SelectContext) -> Selection:
        if ctx.layer == 0:
            return self.select_vision(ctx)
        scores = ctx.to_visual(ctx.last_token_row(log_softmax=True).exp().mean(1))
        fraction = self.vision_ratio * self.llm_ratio
        keep = [
            top_fraction(s, group_sizes(images, self.per_image), fraction, self.min_keep, present)
            for s, images, present in zip(scores, ctx.batch.images, ctx.present())
        ]
        return Selection(keep=keep, scores=scores)

    def scoring_params(self, image_counts, stages) -> dict:
        return {"stages": stages, "kept_vision": [sum(self.vision_counts(n)) for n in image_counts],
                "global_block": self.global_block, "local_block": self.local_block}


@register_method("vscan", scoring_flops=scoring_flops)
def build(model, prune_layer=None, llm_layer=None, vision_ratio=None, llm_ratio: float = 0.333,
          local_share: float = 0.5, global_block=None, local_block=None, local_window: int = 4,
          max_elems: int = 2**22, ratio=None,
          retention=None, threshold=None, max_keep_ratio=..., min_keep=None, per_image=None) -> VScan:
    adapter = model.adapter
    scoring = scoring_of(adapter, "vscan")
    L = adapter.num_layers
    if prune_layer is not None and llm_layer is not None and int(prune_layer) != int(llm_layer):
        raise ValueError("vscan: prune_layer and llm_layer both name the LLM-stage layer; give one")
    layer = int(llm_layer if llm_layer is not None else (prune_layer if prune_layer is not None else L // 2))
    if not 1 <= layer < L:
        raise ValueError(f"vscan: the LLM-stage layer must be in [1, {L}), got {layer}")
    if not 0 < llm_ratio <= 1 or not 0 <= local_share <= 1:
        raise ValueError(f"vscan: need 0 < llm_ratio <= 1 and 0 <= local_share <= 1, got {llm_ratio}, {local_share}")
    depth = scoring.depth
    g = scoring.default_block if global_block is None else int(global_block)
    if local_block is None:
        windowed = [i for i in scoring.windowed_blocks if i < g]
        local_block = windowed[-1] if windowed else g
    lb = int(local_block)
    if not (0 <= g < depth and 0 <= lb < depth):
        raise ValueError(f"vscan: ViT blocks {g}, {lb} out of range (0..{depth - 1})")
    if vision_ratio is not None:
        if any(v not in (None, ...) for v in (ratio, retention, max_keep_ratio)):
            raise ValueError("vscan: give either vision_ratio= or a budget, not both")
        common = resolve_common("vscan", float(vision_ratio), None, threshold, ..., min_keep, per_image)
        rv = common.budget.max_keep_ratio
    else:
        common = resolve_common("vscan", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
        b = common.budget
        if b.max_keep_ratio is not None:
            rv = min(1.0, b.max_keep_ratio / llm_ratio)
            llm_ratio = b.max_keep_ratio / rv
        else:
            rv = first_stage_ratio(b.retention, [0, layer], [llm_ratio], L)
    if isinstance(local_window, bool) or not isinstance(local_window, int) or local_window < 1:
        raise ValueError(f"vscan: local_window must be a positive integer, got {local_window!r}")
    return VScan(adapter, g, lb, rv, layer, llm_ratio, local_share, common.min_keep, common.per_image, max_elems,
                 local_window)
