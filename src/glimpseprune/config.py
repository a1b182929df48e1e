"""The GlimpsePrune configuration: only the fields of the method, never a copy of the base model's config."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError, read_json

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
    # The VIP block variant (modules/vip.py): "rmsnorm_gated" (ours and the Qwen / LLaVA releases) or
    # "layernorm_plain" (the authors' InternVL2.5 modules, docs/method.md §17.5).
    vip_block: str = "rmsnorm_gated"
    # What conditions the VIP blocks: "vit" = the ViT blocks in vip_visual_layers (one per block); "projected" = the
    # projected visual tokens the LLM receives, the same tensor for every block (width hidden_size; the entries of
    # vip_visual_layers then only count the blocks), as in the authors' InternVL2.5 modules. Only families whose
    # adapter offers them (``FamilyAdapter.projected_conditions``) accept "projected".
    vip_conditions: str = "vit"
    # True: raw q·k/sqrt(d) logits (Qwen releases); False: log-softmax over all keys (LLaVA releases).
    attention_logits: bool = True
    # Keep-policy defaults; every one can be overridden per generate() call.
    threshold: float = 0.5
    max_keep_ratio: float | None = None
    min_keep: int = 1
    per_image: bool = False
    # The base model the modules were made for (``FamilyAdapter.base_record``): name/path, revision when known,
    # family and the shape facts that matter. None in configs written before it existed (then only the fields
    # above are checked against the base).
    base_model: dict | None = None

    def __post_init__(self):
        check_field_types(self)
        if self.glimpse_layers is None:
            # Layers >= K never see the glimpse at inference; the reference's injections there are dead weight.
            self.glimpse_layers = list(range(self.prune_layer))
        self.glimpse_layers = [int(x) for x in self.glimpse_layers]
        self.vip_visual_layers = [int(x) for x in self.vip_visual_layers]
        self.validate()

    def validate(self) -> None:
        if not 1 <= self.prune_layer < self.num_layers:
            raise ConfigError(
                f"prune_layer (K) must be in [1, {self.num_layers - 1}] for a {self.num_layers}-layer model, "
                f"got {self.prune_layer}"
            )
        if 0 not in self.glimpse_layers:
            raise ConfigError("glimpse_layers must contain layer 0: the glimpse's input embedding is its layer-0 vector")
        if max(self.glimpse_layers) >= self.num_layers or min(self.glimpse_layers) < 0:
            raise ConfigError(f"glimpse_layers {self.glimpse_layers} out of range for {self.num_layers} layers")
        if len(set(self.glimpse_layers)) != len(self.glimpse_layers):
            raise ConfigError(f"glimpse_layers has duplicates: {self.glimpse_layers}")
        if not self.vip_visual_layers:
            raise ConfigError("vip_visual_layers must name at least one ViT block (one VIP layer per entry)")
        if self.vip_block not in ("rmsnorm_gated", "layernorm_plain"):
            raise ConfigError(f"vip_block must be 'rmsnorm_gated' or 'layernorm_plain', got {self.vip_block!r}")
        if self.vip_conditions not in ("vit", "projected"):
            raise ConfigError(f"vip_conditions must be 'vit' or 'projected', got {self.vip_conditions!r}")
        if self.vip_conditions == "projected" and self.vision_hidden_size != self.hidden_size:
            raise ConfigError(f"projected-token conditions have the LLM width {self.hidden_size}, but "
                              f"vision_hidden_size is {self.vision_hidden_size}")
        if len(set(self.vip_visual_layers)) != len(self.vip_visual_layers):
            raise ConfigError(f"vip_visual_layers has duplicates: {self.vip_visual_layers}")
        if self.base_model is not None:
            check_base_record(self.base_model)
            lo, hi = self.base_model.get("vit_layer_range") or (-math.inf, math.inf)
            bad = [x for x in self.vip_visual_layers if not lo <= x < hi]
            if bad and self.vip_conditions == "vit":  # projected conditions name no ViT block
                raise ConfigError(
                    f"vip_visual_layers {bad} do not exist in the vision tower of the base model "
                    f"(valid indices: {lo}..{hi - 1})"
                )
        if self.vip_size < 1 or self.vip_cond_size < 1 or self.vip_heads < 1:
            raise ConfigError("vip_size, vip_cond_size and vip_heads must be positive")
        if not math.isfinite(self.norm_eps) or self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be a positive number, got {self.norm_eps}")
        if not 0.0 <= self.glimpse_dropout < 1.0:
            raise ConfigError(f"glimpse_dropout must be in [0, 1), got {self.glimpse_dropout}")
        qk = self.vip_size + self.vip_cond_size
        if qk % self.vip_heads or self.vip_size % self.vip_heads or (qk // self.vip_heads) % 4:
            raise ConfigError(
                f"VIP sizes incompatible: (vip_size + vip_cond_size)={qk} and vip_size={self.vip_size} must split "
                f"into {self.vip_heads} heads, and the Q/K head dim must be divisible by 4 for the 2-D RoPE"
            )
        if self.glimpse_norm not in ("rmsnorm", "layernorm"):
            raise ConfigError(f"glimpse_norm must be 'rmsnorm' or 'layernorm', got {self.glimpse_norm!r}")
        if self.glimpse_length < 1:
            raise ConfigError("glimpse_length must be >= 1")
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
        raw = read_json(path, "GlimpsePrune config")
        if not isinstance(raw, dict):
            raise ConfigError(f"GlimpsePrune config must be a JSON object, got {type(raw).__name__}", path)
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid GlimpsePrune config: {err}", path) from None


# ---- field types: a JSON file may hold anything ---------------------------------------------------------------

_BASE_RECORD_INTS = ("hidden_size", "num_layers", "num_heads", "vision_hidden_size")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (_is_real, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list[int]": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v), "a list of integers"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
}


def check_field_types(config) -> None:
    """Every field has the type its annotation names (``"4"`` is not an int, ``True`` is not a layer index)."""
    for f in fields(config):
        value = getattr(config, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        checks = [_CHECKS[k] for k in kinds if k in _CHECKS]
        if checks and not any(ok(value) for ok, _ in checks):
            wanted = " or ".join(d for _, d in checks) + (" or null" if "None" in kinds else "")
            raise ConfigError(f"field {f.name!r} must be {wanted}, got {value!r} ({type(value).__name__})")


def check_base_record(record: dict) -> None:
    if not isinstance(record, dict):
        raise ConfigError(f"base_model must be a mapping, got {type(record).__name__}")
    for key in _BASE_RECORD_INTS:
        if not _is_int(record.get(key)):
            raise ConfigError(f"base_model.{key} must be an integer, got {record.get(key)!r}")
    if not isinstance(record.get("family"), str):
        raise ConfigError(f"base_model.family must be a string, got {record.get('family')!r}")
    span = record.get("vit_layer_range")
    if span is not None and not (isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_int(x) for x in span) and span[0] < span[1]):
        raise ConfigError(f"base_model.vit_layer_range must be [low, high), got {span!r}")


def check_same_base(config: GlimpsePruneConfig, base: GlimpsePruneConfig) -> None:
    """Refuse modules made for another family or shape (the checks PEFT makes for an adapter's base model)."""
    for name in ("family", "hidden_size", "num_heads", "vision_hidden_size", "num_layers"):
        # projected-token conditions have the LLM's width, whatever the ViT's
        source = "hidden_size" if name == "vision_hidden_size" and config.vip_conditions == "projected" else name
        if getattr(config, name) != getattr(base, source):
            raise ConfigError(
                f"these GlimpsePrune modules were made for {name}={getattr(config, name)!r}, "
                f"but the base model has {source}={getattr(base, source)!r}"
                + _made_for(config)
            )
    saved, actual = config.base_model, base.base_model
    if saved is None or actual is None:
        return
    for name in ("family", *_BASE_RECORD_INTS, "vision_depth"):
        if saved.get(name) is not None and actual.get(name) is not None and saved[name] != actual[name]:
            raise ConfigError(
                f"these GlimpsePrune modules were made for a base with {name}={saved[name]!r}, "
                f"but this base model has {name}={actual[name]!r}" + _made_for(config)
            )


def _made_for(config: GlimpsePruneConfig) -> str:
    record = config.base_model or {}
    name = record.get("name_or_path")
    if not name:
        return ""
    revision = record.get("revision")
    return f" (trained on {name}" + (f" @ {revision}" if revision else "") + ")"


def default_prune_layer(num_layers: int) -> int:
    """K ~ 2/3 L, the paper's rule (Qwen2.5-VL-7B: 19 of 28; LLaVA-1.5-7B: 22 of 32)."""
    return max(1, min(num_layers - 1, math.floor(2 * num_layers / 3 + 0.5)))
