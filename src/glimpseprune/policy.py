"""Keep policy: importance scores -> which visual tokens stay (method.md §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeepPolicy:
    """``sigmoid(logit) > threshold``, capped at ``max_keep_ratio`` (top-k), floored at ``min_keep``.

    By default the decision is made per *sample* over all its images together (the reference behaviour, and what
    the published numbers use); ``per_image=True`` applies the cap and the floor to every image separately.
    """

    threshold: float = 0.5
    max_keep_ratio: float | None = None
    min_keep: int = 1
    per_image: bool = False

    def validate(self) -> "KeepPolicy":
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a finite probability in [0, 1], got {t!r}")
        r = self.max_keep_ratio
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0.0 < r <= 1.0:
                raise ValueError(f"max_keep_ratio must be in (0, 1] or None, got {r!r}")
        m = self.min_keep
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"min_keep must be a non-negative integer, got {m!r}")
        return self

    def select_group(self, probs: torch.Tensor) -> torch.Tensor:
        """Keep mask for one group of tokens (a sample, or one image with ``per_image``)."""
        n = probs.numel()
        keep = probs > self.threshold
        if self.max_keep_ratio is not None:
            cap = math.floor(self.max_keep_ratio * n)
            if int(keep.sum()) > cap:
                keep = _top_k_mask(probs, cap)
        floor = min(self.min_keep, n)
        if int(keep.sum()) < floor:
            keep = keep | _top_k_mask(probs, floor)
        return keep

    def select(self, probs: torch.Tensor, image_sizes: list[int]) -> torch.Tensor:
        """Keep mask over one sample's visual tokens; ``image_sizes`` splits them into images, in order."""
        if sum(image_sizes) != probs.numel():
            raise ValueError(f"image sizes {image_sizes} do not add up to {probs.numel()} visual tokens")
        if probs.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=probs.device)
        if torch.isnan(probs).any():
            raise FloatingPointError("importance scores contain NaN; refusing to prune on them")
        if not self.per_image:
            return self.select_group(probs)
        return torch.cat([self.select_group(p) for p in probs.split(image_sizes)])


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        # Stable ordering makes ties deterministic (lowest index wins), so batch and single runs agree.
        order = torch.sort(scores, descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask
