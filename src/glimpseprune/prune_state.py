"""What was kept, per sample and per image, and the one place where sequences and KV caches are cut.

Everything pruning-related that a call produces comes back to the caller in a ``PruneState``; nothing is stored
on modules between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .budget import layer_averaged_retention_schedule


@dataclass
class ImagePruning:
    """What was kept of one image, or of one whole video (``kind``; its frames one after the other)."""

    grid: tuple[int, int]  # merged visual-token grid (rows, cols) of the image or of one video frame
    keep: torch.Tensor  # bool [frames * rows * cols], raster order (frame after frame)
    scores: torch.Tensor | None  # keep probabilities (or a method's scores), same order
    frames: int = 1
    kind: str = "image"  # "image" or "video"
    image: int | None = None  # the sample's image this grid shows, when an image has several views (AnyRes)
    view: str | None = None  # that view's name ("base", "crops"); None: the grid is the whole image

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def total(self) -> int:
        return self.keep.numel()

    @property
    def ratio(self) -> float:
        return self.kept / self.total if self.total else 1.0

    def keep_grid(self) -> torch.Tensor:
        """[rows, cols] for an image, [frames, rows, cols] for a video."""
        return self.keep.view(*self.grid) if self.kind == "image" else self.keep.view(self.frames, *self.grid)


@dataclass
class SamplePruning:
    images: list[ImagePruning]
    keep_indices: torch.Tensor  # long: positions in the caller's input row that stay after the cut (text included)

    @property
    def keep(self) -> torch.Tensor:
        """Bool mask over this sample's visual tokens (all images, in sequence order)."""
        if not self.images:
            return torch.zeros(0, dtype=torch.bool)
        return torch.cat([im.keep for im in self.images])

    @property
    def kept(self) -> int:
        return sum(im.kept for im in self.images)

    @property
    def total(self) -> int:
        return sum(im.total for im in self.images)

    @property
    def ratio(self) -> float:
        return self.kept / self.total if self.total else 1.0


@dataclass
class PruneState:
    method: str
    prune_layer: int | None  # K: first layer that ran on the pruned sequence (None: nothing pruned)
    num_layers: int
    samples: list[SamplePruning] = field(default_factory=list)
    # Valid cache entries per row right after prefill, in each layer of ``kv_layers``.
    kv_lengths: list[int] = field(default_factory=list)
    stages: list[tuple[int, list[int]]] = field(default_factory=list)  # (cut layer, kept per sample after it)
    # The layers whose caches hold one entry per token (full attention): the only caches a cut shortens. Every
    # layer on all-attention models; on hybrid models (Qwen3.5) the linear-attention layers hold fixed-size states
    # instead, whose size no cut changes (docs/method.md, "Hybrid linear-attention models").
    kv_layers: list[int] = field(default_factory=list)

    @property
    def kv_entries(self) -> list[int]:
        """Per row: cached key/value positions summed over the layers that hold them (kv_lengths x |kv_layers|)."""
        return [n * len(self.kv_layers) for n in self.kv_lengths]

    @property
    def kept(self) -> list[int]:
        return [s.kept for s in self.samples]

    @property
    def total(self) -> list[int]:
        return [s.total for s in self.samples]

    @property
    def keep_ratio(self) -> float:
        """Kept visual tokens / visual tokens over the whole batch ("kept after K")."""
        total = sum(self.total)
        return sum(self.kept) / total if total else 1.0

    @property
    def layer_averaged_retention(self) -> float:
        """Mean over all decoder layers of the fraction of visual tokens present (the baselines' axis), batch-wide.

        Multi-stage methods contribute each stage's kept count from its cut layer on.
        """
        return self._retention(sum(self.total), [(cut, sum(kept)) for cut, kept in self.stages])

    def sample_retention(self, b: int) -> float:
        """Layer-averaged retention of sample ``b`` alone, over every cut stage (FastV: one; PyramidDrop, VScan:
        several; GlimpsePrune: the cut at K)."""
        return self._retention(self.samples[b].total, [(cut, kept[b]) for cut, kept in self.stages])

    def _retention(self, total: int, stages: list[tuple[int, int]]) -> float:
        if not stages or not total:
            return 1.0
        return layer_averaged_retention_schedule([(cut, kept / total) for cut, kept in stages], self.num_layers)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "prune_layer": self.prune_layer,
            "num_layers": self.num_layers,
            "keep_ratio": self.keep_ratio,
            "layer_averaged_retention": self.layer_averaged_retention,
            "kv_lengths": list(self.kv_lengths),
            "kv_layers": list(self.kv_layers),
            "stages": [[layer, list(kept)] for layer, kept in self.stages],
            "samples": [
                {
                    "kept": s.kept,
                    "total": s.total,
                    "ratio": s.ratio,
                    "images": [
                        {"grid": list(im.grid), "kept": im.kept, "total": im.total, "ratio": im.ratio,
                         **({"kind": "video", "frames": im.frames} if im.kind == "video" else {}),
                         **({"image": im.image, "view": im.view} if im.view is not None else {})}
                        for im in s.images
                    ],
                }
                for s in self.samples
            ],
        }


def pack_keep_indices(keep_per_row: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ragged, sorted index lists into one rectangular [bs, L'] index plus its 2-D attention mask.

    Padding slots repeat the row's first kept index, so gathered hidden states and keys stay finite (a masked key
    with NaN or garbage values would still poison SDPA's weighted sum); the mask hides them.
    """
    longest = max(int(k.numel()) for k in keep_per_row)
    index = torch.stack(
        [torch.cat([k[:1].expand(longest - k.numel()), k]) if k.numel() else k.new_zeros(longest) for k in keep_per_row]
    )
    mask = torch.stack(
        [torch.cat([k.new_zeros(longest - k.numel()), k.new_ones(k.numel())]) for k in keep_per_row]
    )
    return index, mask


def gather_seq(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather along the sequence dim of ``x`` with a [bs, L'] index; the batch dim is the one before ``dim``
    for hidden states / rotary tables ([bs, L, ·]) and position ids ([P, bs, L])."""
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[dim - 1], shape[dim] = index.shape
    idx = index.view(shape).expand(*[s if i not in (dim - 1, dim) else -1 for i, s in enumerate(x.shape)])
    return x.gather(dim, idx)


def prune_cache_layers(cache, layers, index: torch.Tensor) -> None:
    """Physically drop entries from the KV cache of ``layers`` (full-attention layers: the caller picks them from
    ``config.layer_types``): keys/values [bs, H_kv, L, d] -> [bs, H_kv, L', d]."""
    for i in layers:
        layer = cache.layers[i]
        # each layer's cache sits on its layer's device (a split model spreads them)
        idx = index.to(layer.keys.device)[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        layer.keys = layer.keys.gather(2, idx)
        layer.values = layer.values.gather(2, idx)
