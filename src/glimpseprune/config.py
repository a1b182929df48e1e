"""The GlimpsePrune configuration: only the fields of the method, never a copy of the base model's config."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CONFIG_NAME = "glimpse_config.json"
FORMAT_VERSION = 1


@dataclass
class GlimpsePruneConfig:
    """Sizes and defaults of the glimpse token, the VIP and the keep policy.

    ``prune_layer`` is K: layers ``0..K-1`` run on the full sequence (with the glimpse token), the glimpse's
    attention row is read from layer ``K-1`` (the reference's ``reduce_layer``), and layers ``K..L-1`` as well as
    all decoding run on the pruned sequence.
    """

    family: str
    prune_layer: int
    hidden_size: int  # D, the LLM width
    num_heads: int  # H, query heads of the LLM: the width of one glimpse attention row
    vision_hidden_size: int  # D_v, width of the ViT features used as VIP conditions
    num_layers: int  # L, decoder layers of the base model (consistency check on load)
    vip_visual_layers: list[int] = field(default_factory=list)  # ViT blocks for the conditions, deepest first
    glimpse_layers: list[int] | None = None  # layers receiving the glimpse vector; default 0..K-1
    glimpse_length: int = 1
    glimpse_dropout: float = 0.0  # 0.1 in the published training runs; inactive at inference
    glimpse_norm: str = "rmsnorm"  # or "layernorm" (a Qwen-only option of the reference)
    norm_eps: float = 1e-6
    vip_size: int = 256  # F
    vip_cond_size: int = 512  # C
    vip_heads: int = 4
    vip_rope_theta: float = 10000.0
    # True: raw q·k/sqrt(d) logits (Qwen releases); False: log-softmax over all keys (LLaVA releases).
    attention_logits: bool = True
    # Keep-policy defaults; every one can be overridden per generate() call.
    threshold: float = 0.5
    max_keep_ratio: float | None = None
    min_keep: int = 1
    per_image: bool = False

    def __post_init__(self):
        if self.glimpse_layers is None:
            # Layers >= K never see the glimpse at inference; the reference's injections there are dead weight.
            self.glimpse_layers = list(range(self.prune_layer))
        self.glimpse_layers = [int(x) for x in self.glimpse_layers]
        self.vip_visual_layers = [int(x) for x in self.vip_visual_layers]
        self.validate()

    def validate(self) -> None:
        if not 1 <= self.prune_layer < self.num_layers:
            raise ValueError(
                f"prune_layer (K) must be in [1, {self.num_layers - 1}] for a {self.num_layers}-layer model, "
                f"got {self.prune_layer}"
            )
        if 0 not in self.glimpse_layers:
            raise ValueError("glimpse_layers must contain layer 0: the glimpse's input embedding is its layer-0 vector")
        if max(self.glimpse_layers) >= self.num_layers or min(self.glimpse_layers) < 0:
            raise ValueError(f"glimpse_layers {self.glimpse_layers} out of range for {self.num_layers} layers")
        if len(set(self.glimpse_layers)) != len(self.glimpse_layers):
            raise ValueError(f"glimpse_layers has duplicates: {self.glimpse_layers}")
        if not self.vip_visual_layers:
            raise ValueError("vip_visual_layers must name at least one ViT block (one VIP layer per entry)")
        qk = self.vip_size + self.vip_cond_size
        if qk % self.vip_heads or self.vip_size % self.vip_heads or (qk // self.vip_heads) % 4:
            raise ValueError(
                f"VIP sizes incompatible: (vip_size + vip_cond_size)={qk} and vip_size={self.vip_size} must split "
                f"into {self.vip_heads} heads, and the Q/K head dim must be divisible by 4 for the 2-D RoPE"
            )
        if self.glimpse_norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"glimpse_norm must be 'rmsnorm' or 'layernorm', got {self.glimpse_norm!r}")
        if self.glimpse_length < 1:
            raise ValueError("glimpse_length must be >= 1")
        from .policy import KeepPolicy  # local import: policy validation lives in one place

        KeepPolicy(self.threshold, self.max_keep_ratio, self.min_keep, self.per_image).validate()

    @property
    def glimpse_row_width(self) -> int:
        return self.num_heads

    @property
    def vip_layers(self) -> int:
        return len(self.vip_visual_layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GlimpsePruneConfig":
        d = dict(d)
        version = d.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"glimpse config format {version} is newer than this library supports ({FORMAT_VERSION})")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GlimpsePrune config fields: {sorted(unknown)}")
        return cls(**d)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "GlimpsePruneConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
        return cls.from_dict(json.loads(path.read_text()))


def default_prune_layer(num_layers: int) -> int:
    """K ~ 2/3 L, the paper's rule (Qwen2.5-VL-7B: 19 of 28; LLaVA-1.5-7B: 22 of 32)."""
    return max(1, min(num_layers - 1, math.floor(2 * num_layers / 3 + 0.5)))
