"""The interface every pruning method implements: look at the state at the cut layer, return keep masks.

The engine owns the mechanics (where the cut happens, gathering hidden states, positions and KV caches); a method
only decides *which* visual tokens stay. A method that needs the glimpse token sets ``uses_glimpse``; one that
needs ViT block outputs lists them in ``vit_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters.base import FamilyAdapter, PreparedBatch


@dataclass
class SelectContext:
    adapter: FamilyAdapter
    batch: PreparedBatch
    layer: int  # the cut layer K: the first layer that will run on the pruned sequence
    hidden: torch.Tensor  # residual stream entering layer K, [bs, L (+ glimpse), D]
    cache: object  # the DynamicCache after layers 0..K-1
    glimpse_rows: torch.Tensor | None = None  # [bs, H, L + glimpse] attention of the glimpse at layer K-1

    def visual_columns(self, rows: torch.Tensor) -> torch.Tensor:
        """[bs, H, L'] rows -> [T, H]: the image-token columns of every sample, concatenated in batch order."""
        width = self.batch.visual_mask.shape[1]
        rows = rows[..., :width].transpose(1, 2)  # [bs, L, H]
        return rows[self.batch.visual_mask]


@dataclass
class Selection:
    keep: list[torch.Tensor]  # per sample: bool over its visual tokens
    scores: list[torch.Tensor] | None = None  # per sample: the scores the decision was made on


class PruneMethod:
    name: str = "method"
    prune_layer: int = 0
    uses_glimpse: bool = False
    vit_layers: list[int] = []

    def select(self, ctx: SelectContext) -> Selection:
        raise NotImplementedError


def split_by_sample(values: torch.Tensor, batch: PreparedBatch) -> list[torch.Tensor]:
    sizes = [sum(im.num_tokens for im in images) for images in batch.images]
    return list(values.split(sizes))
