"""GlimpsePrune+ LoRA: merge the published PEFT adapter into the LLM (docs/method.md §17.4).

The adapter's target names use the transformers-4.51 layout (``model.layers.{l}...``); in 5.x the decoder lives at
``model.language_model.layers.{l}``. We merge by hand, W <- W + scale * B @ A with scale = lora_alpha / r (or
lora_alpha / sqrt(r) for rsLoRA), so the prefix difference is handled in one place and no PEFT wrapper stays around
the model at inference. The adapter config and every tensor are checked first: a malformed adapter is refused with
a message naming its file, never half-merged.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from .errors import ConfigError, read_json

_KEY = re.compile(r"^base_model\.model\.(?:model\.)?(?:language_model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")
CONFIG_FILE = "adapter_config.json"
_UNSUPPORTED = {  # PEFT options whose meaning a plain B @ A merge would silently get wrong
    "use_dora": "DoRA adapters",
    "fan_in_fan_out": "fan_in_fan_out layouts",
    "rank_pattern": "per-layer ranks (rank_pattern)",
    "alpha_pattern": "per-layer alphas (alpha_pattern)",
}


def adapter_scale(config, path=None) -> float:
    """The merge scale from a PEFT ``adapter_config.json``, after checking the fields it needs."""
    if not isinstance(config, dict):
        raise ConfigError(f"LoRA config must be a JSON object, got {type(config).__name__}", path)
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"LoRA config: r must be a positive integer, got {r!r}", path)
    if "lora_alpha" not in config:
        raise ConfigError("LoRA config has no lora_alpha", path)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ConfigError(f"LoRA config: lora_alpha must be a finite number, got {alpha!r}", path)
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ConfigError(f"LoRA config uses {what}, which this merge does not support", path)
    rslora = config.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise ConfigError(f"LoRA config: use_rslora must be true or false, got {rslora!r}", path)
    return float(alpha) / (math.sqrt(r) if rslora else r)


@dataclass
class LoraAdapter:
    weights: dict[str, torch.Tensor]
    config: dict  # the adapter_config.json fields
    config_path: str
    weights_path: str

    @property
    def scale(self) -> float:
        return adapter_scale(self.config, self.config_path)


def read_adapter(directory) -> LoraAdapter:
    """A PEFT LoRA folder (or hub id), its config checked; weights read without unpickling anything."""
    from .checkpoint import load_weights, resolve_directory, torch_load_tensors

    directory = resolve_directory(directory, [CONFIG_FILE, "adapter_model.safetensors", "adapter_model.bin"])
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(2, "LoRA adapter folder has no adapter_config.json", str(config_path))
    config = read_json(config_path, "LoRA config")
    adapter_scale(config, config_path)  # check before any weight is read
    st, pt = os.path.join(directory, "adapter_model.safetensors"), os.path.join(directory, "adapter_model.bin")
    if os.path.isfile(st):
        weights, source = load_weights(st), st
    elif os.path.isfile(pt):
        weights, source = torch_load_tensors(pt, "LoRA adapter weights"), pt
    else:
        raise FileNotFoundError(2, "no adapter_model.safetensors / adapter_model.bin in LoRA folder", str(directory))
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise ConfigError("LoRA weights must map names to tensors", source)
    return LoraAdapter(weights, config, config_path, source)


@torch.no_grad()
def merge_lora_state(model, weights: dict[str, torch.Tensor], scale: float, rank: int | None = None, source=None) -> int:
    """Merge LoRA pairs into the decoder Linears; returns how many were merged. Everything is checked before the
    first weight changes: unknown keys, layers the model does not have, incomplete pairs, ranks, shapes, dtypes,
    non-finite values."""
    from .checkpoint import check_float_tensor

    pairs: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        m = _KEY.match(key)
        if m is None:
            raise ConfigError(f"unexpected LoRA key {key!r} (expected decoder q/k/v/o/gate/up/down targets)", source)
        layer, block, proj, ab = m.groups()
        check_float_tensor(value, key, source)
        pairs.setdefault((int(layer), block, proj), {})[ab] = value
    layers = model.model.language_model.layers
    updates = []
    for (layer, block, proj), ab in sorted(pairs.items()):
        if layer >= len(layers):
            raise ConfigError(f"LoRA weights for decoder layer {layer}, but the model has {len(layers)} layers", source)
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"layer {layer} {block}.{proj}: LoRA pair incomplete ({sorted(ab)})", source)
        linear = getattr(getattr(layers[layer], block), proj, None)
        if not isinstance(linear, torch.nn.Linear):
            raise ConfigError(f"layer {layer} {block}.{proj}: the model has no such projection", source)
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (rank is not None and a.shape[0] != rank):
            raise ConfigError(f"layer {layer} {block}.{proj}: LoRA A {tuple(a.shape)} / B {tuple(b.shape)} do not "
                              f"form a rank-{rank if rank is not None else a.shape[0]} pair", source)
        if (b.shape[0], a.shape[1]) != tuple(linear.weight.shape):
            raise ConfigError(f"layer {layer} {block}.{proj}: LoRA delta {(b.shape[0], a.shape[1])} vs weight "
                              f"{tuple(linear.weight.shape)}", source)
        updates.append((linear, a, b))
    for linear, a, b in updates:
        delta = b.float() @ a.float()
        linear.weight += (scale * delta).to(device=linear.weight.device, dtype=linear.weight.dtype)
    return len(pairs)


def merge_reference_lora(model, directory) -> int:
    adapter = read_adapter(directory)
    return merge_lora_state(model, adapter.weights, adapter.scale, rank=adapter.config["r"], source=adapter.weights_path)
