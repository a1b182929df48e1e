"""The interface every pruning method implements: look at the state at a cut layer, return what stays.

The engine owns the mechanics (where cuts happen, gathering hidden states, positions and KV caches); a method only
decides *which* visual tokens stay, and optionally what their hidden states become (token merging). Keep masks are
always over the sample's ORIGINAL visual tokens (all images, sequence order), whatever earlier cuts removed, so a
multi-stage method reasons in one coordinate system.

A method that needs the glimpse token sets ``uses_glimpse``; one that needs ViT block outputs lists them in
``vit_layers``; a multi-stage method lists its cut layers in ``prune_layers`` (``select`` is called at each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters.base import FamilyAdapter, PreparedBatch


@dataclass
class SelectContext:
    adapter: FamilyAdapter
    batch: PreparedBatch
    layer: int  # the cut layer: the first layer that will run on the pruned sequence
    hidden: torch.Tensor  # residual stream entering `layer`, [bs, L_cur (+ glimpse), D]
    cache: object  # DynamicCache after layers 0..layer-1, in the current columns
    prev_input: torch.Tensor | None  # residual stream that entered the row layer (below); None: no row to read
    cos: torch.Tensor  # rotary tables of the current columns, [bs, L_cur, d]
    sin: torch.Tensor
    attention_mask: torch.Tensor  # [bs, L_cur] current 2-D mask
    source: torch.Tensor  # [bs, L_cur]: column in the prepared batch of every current column; -1 for pads/glimpse
    glimpse_rows: torch.Tensor | None = None  # [bs, H, L_cur + glimpse]: the glimpse's attention at layer K-1
    # The layer whose attention rows this cut reads: layer-1, or on hybrid models the last full-attention layer
    # below the cut (layer_loop.row_layer); None: layer-1.
    row_layer: int | None = None

    def visual_columns(self, rows: torch.Tensor) -> torch.Tensor:
        """[bs, H, L] rows at the FIRST cut (original columns) -> [T, H] over every visual token, batch order."""
        width = self.batch.visual_mask.shape[1]
        return rows[..., :width].transpose(1, 2)[self.batch.visual_mask]

    def to_visual(self, values: torch.Tensor, fill: float = float("-inf")) -> list[torch.Tensor]:
        """Per-column values [bs, L_cur] -> per sample [N_b] over its original visual tokens.

        Visual tokens already removed by an earlier cut get ``fill``.
        """
        out = []
        vis_rank = self.batch.visual_mask.long().cumsum(1) - 1
        for b, images in enumerate(self.batch.images):
            n = sum(im.num_tokens for im in images)
            row = values.new_full((n,), fill)
            src = self.source[b]
            ok = src >= 0
            cols = ok.nonzero().squeeze(1)
            is_vis = self.batch.visual_mask[b, src[cols]]
            row[vis_rank[b, src[cols[is_vis]]]] = values[b, cols[is_vis]].to(row.dtype)
            out.append(row)
        return out

    def present(self) -> list[torch.Tensor]:
        """Per sample: bool over its original visual tokens still in the sequence."""
        flags = self.to_visual(torch.ones_like(self.source, dtype=torch.float32), fill=0.0)
        return [f > 0 for f in flags]

    def last_token_row(self, log_softmax: bool = False) -> torch.Tensor:
        """Attention of the last prompt token over every current key at layer-1, [bs, H, L_cur] (FastV's signal).

        Only one query row is recomputed from the cached keys, so any attention backend works.
        """
        if self.prev_input is None:
            raise ValueError(
                f"the cut at layer {self.layer} has no attention row to read: no full-attention layer ran before it "
                "(since the previous cut, if any). All-attention models: cut at layer >= 1; hybrid models: put a "
                "full-attention layer below every cut, after the previous one")
        i = self.layer - 1 if self.row_layer is None else self.row_layer
        last = slice(self.prev_input.shape[1] - 1, self.prev_input.shape[1])
        if self.glimpse_rows is not None:
            raise ValueError("last_token_row is not defined while a glimpse token is in the sequence")
        return self.adapter.attention_row(
            i, self.prev_input[:, last], self.cos[:, last], self.sin[:, last], self.cache.layers[i].keys,
            self.attention_mask, log_softmax,
        )


@dataclass
class Selection:
    keep: list[torch.Tensor]  # per sample: bool over its original visual tokens
    scores: list[torch.Tensor] | None = None  # per sample: the scores the decision was made on
    # Optional per sample [kept_b, D]: new hidden states for the kept visual tokens, in order (token merging).
    replace: list[torch.Tensor] | None = None


class PruneMethod:
    name: str = "method"
    prune_layer: int = 0
    uses_glimpse: bool = False
    vit_layers: list[int] = []

    @property
    def prune_layers(self) -> list[int]:
        return [self.prune_layer]

    def select(self, ctx: SelectContext) -> Selection:
        raise NotImplementedError

    def scoring_params(self, image_counts: list[int], stages: list[tuple[int, int]]) -> dict:
        """Keyword parameters of this method's registered scoring FLOPs (``methods.method_scoring_flops``) for one
        sample: ``image_counts`` visual tokens per image before pruning, ``stages`` the cut schedule it went through,
        [(cut layer, visual tokens present after the cut)]. None by default."""
        return {}


def split_by_sample(values: torch.Tensor, batch: PreparedBatch) -> list[torch.Tensor]:
    sizes = [sum(im.num_tokens for im in images) for images in batch.images]
    return list(values.split(sizes))
