"""Down-sampling anchor (docs/method.md §16.2, VTC-Bench): fewer, coarser visual tokens instead of pruning.

On our hooks, before the LLM (layer 0): every image's merged-token grid (h × w) is split into s × s cells
(partial cells at the right/bottom edges); each cell keeps ONE token - its top-left token, so it keeps that
token's position id - whose embedding becomes the mean of the cell's embeddings (``Selection.replace``).

- On LLaVA (fixed 24 × 24 = 576 tokens) this is exactly the anchor of docs/method.md §16.3: 3 × 3 average pooling
  -> 8 × 8 = 64 tokens = 11.1 %.
- On Qwen2.5-VL the alternative anchor is to resize the input image (a smaller ``max_pixels``) so the ViT itself
  makes ≈ budget tokens (which also saves ViT FLOPs). This method does not: it pools after the ViT. The resize
  anchor is the pseudo-method ``resize`` of ``benchmarks/compare_methods.py`` (Qwen-VL families only): per image
  it picks the pixel limit whose smart-resized image gives the closest token count, re-runs the processor with it
  and runs the model unpruned.

Budget: s is chosen per image so that ceil(h/s)·ceil(w/s) is as close as possible to fraction·n (ties: the larger
s, i.e. fewer tokens), so the kept count only approximates the budget (the reported ratio is the actual one);
``cell=s`` fixes s instead. Knobs: ``cell``, the common budget options (:mod:`glimpseprune.budget`; cut at layer 0). Always
per image; ``per_image`` / ``min_keep`` are accepted and have no further effect (every image keeps ≥ 1 token).
"""

from __future__ import annotations

import math

import torch

from . import register_method
from .base import PruneMethod, SelectContext, Selection
from ..budget import resolve_common, single_cut_fraction
from ..flops import no_scoring_flops


def cells(h: int, w: int, s: int) -> int:
    return math.ceil(h / s) * math.ceil(w / s)


def choose_cell(h: int, w: int, target: float) -> int:
    """The s whose pooled count ceil(h/s)·ceil(w/s) is closest to ``target`` (ties -> the larger s)."""
    best = min(range(1, max(h, w) + 1), key=lambda s: (abs(cells(h, w, s) - target), -s))
    return best


def pool_grid(x: torch.Tensor, h: int, w: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [h·w, D] raster -> (keep mask [h·w] at each cell's top-left token, pooled [cells, D] in raster order)."""
    grid = x.view(h, w, -1).permute(2, 0, 1)[None].float()  # [1, D, h, w]
    pooled = torch.nn.functional.avg_pool2d(grid, s, s, ceil_mode=True, count_include_pad=False)
    pooled = pooled[0].permute(1, 2, 0).reshape(-1, x.shape[-1]).to(x.dtype)
    keep = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    keep[::s, ::s] = True
    return keep.view(-1), pooled


class Downsample(PruneMethod):
    name = "downsample"
    prune_layer = 0

    def __init__(self, fraction: float | None, cell: int | None = None):
        self.fraction, self.cell = fraction, cell

    def cell_for(self, h: int, w: int) -> int:
        return self.cell if self.cell is not None else choose_cell(h, w, self.fraction * h * w)

    def select(self, ctx: SelectContext) -> Selection:
        keep, replace = [], []
        for b, images in enumerate(ctx.batch.images):
            feats = ctx.batch.inputs_embeds[b][ctx.batch.visual_mask[b]]
            k_parts, r_parts = [], []
            for part, im in zip(feats.split([im.num_tokens for im in images]), images):
                h, w = im.grid
                for frame in part.split(h * w):  # a video pools every frame on its own grid
                    k, r = pool_grid(frame, h, w, self.cell_for(h, w))
                    k_parts.append(k)
                    r_parts.append(r)
            keep.append(torch.cat(k_parts) if k_parts else feats.new_zeros(0, dtype=torch.bool))
            replace.append(torch.cat(r_parts) if r_parts else feats[:0])
        return Selection(keep=keep, replace=replace)


# Pooling is additions only (about N·D, no matrix product): nothing counted as scoring.
@register_method("downsample", scoring_flops=no_scoring_flops)
def build(model, prune_layer=None, cell: int | None = None, ratio=None, retention=None, threshold=None,
          max_keep_ratio=..., min_keep=None, per_image=None) -> Downsample:
    if prune_layer not in (None, 0):
        raise ValueError(f"downsample pools before the LLM (layer 0); got prune_layer={prune_layer}")
    if cell is not None:
        if any(v not in (None, ...) for v in (ratio, retention, max_keep_ratio)):
            raise ValueError("downsample: give either cell=s or a budget, not both")
        if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
            raise ValueError(f"downsample: cell must be a positive integer, got {cell!r}")
        resolve_common("downsample", None, None, threshold, ..., min_keep, per_image)
        return Downsample(None, cell)
    common = resolve_common("downsample", ratio, retention, threshold, max_keep_ratio, min_keep, per_image)
    return Downsample(single_cut_fraction(common.budget, 0, model.adapter.num_layers))
