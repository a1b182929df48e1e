"""VisionZip (Yang et al., CVPR'25, arXiv 2412.04467) on our pre-LLM hook, text-agnostic:

- **dominant** tokens: the most attended visual tokens in a late ViT block.
  - LLaVA (CLIP, the published form): the attention FROM the CLS token to each patch (mean over heads; the softmax
    runs over CLS + all patches) in the CLIP encoder layer whose output LLaVA feeds to its projector
    (``vision_feature_layer``, -2 on LLaVA-1.5: the penultimate layer, ``attentions[-2][:, :, 0, 1:]``);
  - Qwen2.5-VL / Qwen2-VL have no CLS, so the score is the MEAN attention a patch RECEIVES (over heads and over
    every query that can see it in that block: the whole image in a full-attention block), averaged over the 2×2
    patches of each LLM token;
- **contextual** tokens: the remaining tokens are sampled uniformly as c targets, every other remaining token is
  assigned to its most similar target by key cosine similarity (the block's keys, head-concatenated; on Qwen the
  pre-RoPE keys averaged over the 2×2 unit), and each target's embedding becomes the mean of its group
  (``Selection.replace``; a target keeps its own position id).

LLaVA with ``vision_feature_select_strategy="full"``: each image's CLS placeholder is not a pruning candidate (the
adapter leaves it out of ``visual_mask``), so it is always kept and never scored; only the h·w patches are ranked
and merged, exactly as with ``"default"``.

Memory: the reference VisionZip materialises whole attention maps and runs out of memory on document images on
Qwen2.5-VL (docs/method.md §16.2). Here the scores are computed from the block INPUT captured during the normal ViT pass
(``adapters.base.VitRequest``; the block's norm, q/k projections and, on Qwen, the ViT rotary applied here), and the
ViT is not re-run and ``output_attentions`` is never set. Qwen: in chunks of query rows against all keys of one
image, so at most ``max_elems`` (default 2^22) logits exist at once (≈ 16 MiB in fp32, ≈ 2× that with the
softmax), whatever the image size. CLIP: ONE query row (the CLS) against all keys per image and head.

Knobs: ``block`` (default: Qwen the last full-attention ViT block; LLaVA the CLIP layer of ``vision_feature_layer``),
``dominant`` + ``contextual`` (explicit ratios per image, e.g. the reference's Qwen setting 0.061 + 0.05, LLaVA's
54/576 + 10/576) OR a budget (:mod:`glimpseprune.budget`; cut at layer 0) split with ``contextual_share`` (default: the
reference's split, 0.05/0.111 ≈ 0.45 on Qwen, 10/64 on LLaVA where 54 + 10 = 64 is the published setting).
Counts per image: k = floor(f·n) (≥ ``min_keep``), c = round(share·k), dominant = k − c. Always per image.
Supported families: those whose adapter declares ViT scoring (``adapter.vit_scoring()``, see ``vit_scoring.py``):
today Qwen2.5-VL, Qwen2-VL (received attention) and LLaVA-1.5 (CLS attention; both
``vision_feature_select_strategy`` values). Others are refused with a clear error.
"""

from __future__ import annotations

import torch

from ..adapters.base import VitRequest
from . import register_method
from .base import PruneMethod, SelectContext, Selection, split_by_sample
from ..budget import keep_count, resolve_common, single_cut_fraction, top_k_mask
from ..flops import ModelDims, default_vit_block, per_image_counts, vit_block_score_flops

DEFAULT_SHARE = 0.05 / 0.111  # Qwen reference: 0.061 dominant + 0.05 contextual
CLIP_SHARE = 10 / 64  # LLaVA reference: 54 dominant + 10 contextual


def scoring_of(adapter, name: str):
    """The family's declared ViT-scoring capability, or a clear refusal."""
    scoring = adapter.vit_scoring()
    if scoring is None:
        raise ValueError(f"{name} scores ViT attention; the {adapter.family!r} adapter declares no ViT scoring")
    return scoring


def nearest(queries: torch.Tensor, targets: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """Index of the most cosine-similar target for every query row, in row chunks (no full similarity matrix)."""
    qn = torch.nn.functional.normalize(queries.float(), dim=-1)
    tn = torch.nn.functional.normalize(targets.float(), dim=-1)
    out = torch.empty(qn.shape[0], dtype=torch.long, device=qn.device)
    for r in range(0, qn.shape[0], rows):
        out[r:r + rows] = (qn[r:r + rows] @ tn.T).argmax(1)
    return out


def contextual_merge(embeds: torch.Tensor, keys: torch.Tensor, rest: torch.Tensor, c: int):
    """Uniformly sample c targets among ``rest`` (sorted indices), assign the others to the most key-similar target.

    Returns (target indices, merged embeddings [c, D] = mean of each target's group, target included).
    """
    if c <= 0 or rest.numel() == 0:
        return rest[:0], embeds[:0]
    step = max(1, rest.numel() // c)
    targets = rest[::step][:c]
    is_target = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    is_target[targets] = True
    others = rest[~is_target[rest]]
    assign = nearest(keys[others], keys[targets]) if others.numel() else others
    sums = embeds[targets].float().clone()
    counts = torch.ones(targets.numel(), device=embeds.device)
    if others.numel():
        sums.index_add_(0, assign, embeds[others].float())
        counts.index_add_(0, assign, torch.ones(others.numel(), device=embeds.device))
    return targets, (sums / counts[:, None]).to(embeds.dtype)


def scoring_flops(dims: ModelDims, image_token_counts: list[int], text_len: int, *, kept=None, contextual=0,
                  block: int | None = None, cls: bool | None = None) -> int:
    """The ViT block's scores (:func:`glimpseprune.flops.vit_block_score_flops`: the CLS row on CLIP, the qkv
    projection + chunked q·kᵀ on Qwen) plus the contextual merge, a key cosine of every non-kept token with the
    image's c targets, 2·(n − kept)·c·D_v per image. ``kept`` (dominant + contextual) and ``contextual`` per image;
    ``block`` defaults to the last full-attention ViT block (the index does not change the cost on CLIP); ``cls``
    (CLS-row scoring) to ``patches_per_token == 1``."""
    if kept is None:
        raise ValueError("visionzip: give kept= (dominant + contextual per image)")
    counts, vision = image_token_counts, dims.vision
    kept_i = per_image_counts("kept", kept, counts)
    ctx_i = per_image_counts("contextual", contextual, counts)
    if any(c > k for c, k in zip(ctx_i, kept_i)):
        raise ValueError(f"contextual {ctx_i} cannot exceed kept {kept_i}")
    score = vit_block_score_flops(vision, counts, default_vit_block(vision) if block is None else block, cls)
    merge = sum(2 * (c - k) * t * vision.hidden for c, k, t in zip(counts, kept_i, ctx_i))
    return score + merge


class VisionZip(PruneMethod):
    name = "visionzip"
    prune_layer = 0

    def __init__(self, adapter, block: int, fraction: float | None, share: float, dominant: float | None = None,
                 contextual: float | None = None, min_keep: int = 1, max_elems: int = 2**22):
        self.adapter, self.block = adapter, block
        self.fraction, self.share, self.dominant, self.contextual = fraction, share, dominant, contextual
        self.min_keep, self.max_elems = min_keep, max_elems
        self.vit_layers = VitRequest([], block_inputs=[block])

    def counts(self, n: int) -> tuple[int, int]:
        """(dominant, contextual) counts for an image of n tokens."""
        if self.dominant is not None:
            d, c = int(self.dominant * n), int(self.contextual * n)
            if d + c == 0 and n:
                d = min(self.min_keep, n)
            return min(d, n), min(c, n - min(d, n))
        k = keep_count(n, self.fraction, self.min_keep)
        c = min(k, round(self.share * k))
        return k - c, c

    def token_scores(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention score [T], key [T, H·d]) per LLM visual token of the batch, raster order: what the family's
        declared ViT scoring gives (CLS attention on CLIP, received attention on ViTs without CLS)."""
        scores, keys, _ = scoring_of(self.adapter, "visionzip").token_scores(batch, self.block, self.max_elems)
        return scores, keys

    def select(self, ctx: SelectContext) -> Selection:
        batch = ctx.batch
        if not any(batch.images):
            return Selection(keep=[torch.zeros(0, dtype=torch.bool, device=ctx.hidden.device) for _ in batch.images])
        scores, keys = self.token_scores(batch)
        keep, replace = [], []
        for b, (s_b, k_b, images) in enumerate(zip(split_by_sample(scores, batch), split_by_sample(keys, batch),
                                                   batch.images)):
            embeds = batch.inputs_embeds[b][batch.visual_mask[b]]
            new = embeds.clone()
            mask = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
            start = 0
            for im in images:
                part = slice(start, start + im.num_tokens)
                d, c = self.counts(im.num_tokens)
                dom = top_k_mask(s_b[part], d)
                rest = (~dom).nonzero().squeeze(1)
                targets, merged = contextual_merge(embeds[part], k_b[part], rest, c)
                mask[part] |= dom
                mask[start + targets] = True
                new[start + targets] = merged
                start += im.num_tokens
            keep.append(mask)
            replace.append(new[mask])
        return Selection(keep=keep, scores=split_by_sample(scores, batch), replace=replace)

    def scoring_params(self, image_counts, stages) -> dict:
        counts = [self.counts(n) for n in image_counts]
        return {"kept": [d + c for d, c in counts], "contextual": [c for _, c in counts], "block": self.block}


@register_method("visionzip", scoring_flops=scoring_flops)
def build(model, prune_layer=None, block=None, dominant=None, contextual=None, contextual_share=None,
          max_elems: int = 2**22, ratio=None, retention=None, threshold=None, max_keep_ratio=..., min_keep=None,
          per_image=None) -> VisionZip:
    if prune_layer not in (None, 0):
        raise ValueError(f"visionzip prunes before the LLM (layer 0); got prune_layer={prune_layer}")
    adapter = model.adapter
    scoring = scoring_of(adapter, "visionzip")
    if contextual_share is None:
        contextual_share = CLIP_SHARE if scoring.cls_query else DEFAULT_SHARE
    block = scoring.default_block if block is None else int(block)
    depth = scoring.depth
    if not 0 <= block < depth:
        raise ValueError(f"visionzip: ViT block {block} out of range (0..{depth - 1})")
    if (dominant is None) != (contextual is None):
        raise ValueError("visionzip: give dominant= and contextual= together (ratios per image)")
    if dominant is not None:
        if any(v not in (None, ...) for v in (ratio, retention, max_keep_ratio)):
            raise ValueError("visionzip: give either dominant=/contextual= ratios or a budget, not both")
        if not (0 <= dominant <= 1 and 0 <= contextual <= 1 and 0 < dominant + contextual <= 1):
            raise ValueError(f"visionzip: need dominant, contextual >= 0 with 0 < sum <= 1, got {dominant}, {contextual}")
        common = resolve_common("visionzip", None, None, threshold, ..., min_keep, per_image)
        return VisionZip(adapter, block, None, 0.0, float(dominant), float(contextual), common.min_keep, max_elems)
    if not 0 <= contextual_share <= 1:
        raise ValueError(f"visionzip: contextual_share must be in [0, 1], got {contextual_share}")
    common = resolve_common("visionzip", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    fraction = single_cut_fraction(common.budget, 0, adapter.num_layers)
    return VisionZip(adapter, block, fraction, float(contextual_share), None, None, common.min_keep, max_elems)
