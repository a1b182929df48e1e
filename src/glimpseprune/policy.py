"""Keep policy: importance scores -> which visual tokens stay (docs/method.md §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .budget import top_k_mask  # the one top-k (stable: ties go to the lowest index, so batch and single agree)


@dataclass(frozen=True)
class KeepPolicy:
    """``sigmoid(logit) > threshold``, capped at ``max_keep_ratio`` (top-k), floored at ``min_keep``.

    It works on keep *logits*, never on probabilities: a probability underflows to exactly 0 (or rounds to 1) far
    from the boundary, and a top-k or threshold decision over tied zeros is arbitrary. The threshold is compared in
    logit space (``logit > log(t / (1 - t))``), so ``threshold=0.0`` passes every finite logit and a top-k policy
    (``threshold=0.0, max_keep_ratio=r``, what an exact-budget box-free run saves) keeps exactly its k.

    The cap follows the reference rule: it triggers only when ``kept / N > max_keep_ratio`` and then keeps the top
    ``int(max_keep_ratio * N)`` (both in floating point, so at 0.29 x 100 twenty-nine kept tokens stay, thirty
    become twenty-eight).

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

    def logit_threshold(self) -> float:
        """The threshold in logit space: ``sigmoid(z) > t`` exactly when ``z > log(t / (1 - t))``."""
        t = float(self.threshold)
        if t <= 0.0:
            return -math.inf
        if t >= 1.0:
            return math.inf
        return math.log(t) - math.log1p(-t)

    def select_group(self, logits: torch.Tensor) -> torch.Tensor:
        """Keep mask for one group of tokens (a sample, or one image with ``per_image``), from keep logits.

        An empty group (an image that contributed no visual tokens) keeps nothing: an empty mask, not a ratio of 0/0.
        """
        n = logits.numel()
        if n == 0:
            return torch.zeros(0, dtype=torch.bool, device=logits.device)
        keep = logits > self.logit_threshold()
        if self.max_keep_ratio is not None and int(keep.sum()) / n > self.max_keep_ratio:
            keep = top_k_mask(logits, int(self.max_keep_ratio * n))
        floor = min(self.min_keep, n)
        if int(keep.sum()) < floor:
            keep = keep | top_k_mask(logits, floor)
        return keep

    def select(self, logits: torch.Tensor, image_sizes: list[int]) -> torch.Tensor:
        """Keep mask over one sample's visual tokens from their keep logits; ``image_sizes`` splits them into
        images, in order."""
        if sum(image_sizes) != logits.numel():
            raise ValueError(f"image sizes {image_sizes} do not add up to {logits.numel()} visual tokens")
        if logits.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=logits.device)
        if torch.isnan(logits).any():
            raise FloatingPointError("importance scores contain NaN; refusing to prune on them")
        if not self.per_image:
            return self.select_group(logits)
        return torch.cat([self.select_group(z) for z in logits.split(image_sizes)])
