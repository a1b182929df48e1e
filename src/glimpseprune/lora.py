"""GlimpsePrune+ LoRA: merge the published PEFT adapter into the LLM (method.md §17.4).

The adapter's target names use the transformers-4.51 layout (``model.layers.{l}...``); in 5.x the decoder lives at
``model.language_model.layers.{l}``. We merge by hand, W <- W + (alpha / r) * B @ A, so the prefix difference is
handled in one place and no PEFT wrapper stays around the model at inference.
"""

from __future__ import annotations

import json
import os
import re

import torch

_KEY = re.compile(r"^base_model\.model\.(?:model\.)?(?:language_model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


def load_adapter_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from .checkpoint import resolve_directory

    directory = resolve_directory(directory, ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"])
    st, pt = os.path.join(directory, "adapter_model.safetensors"), os.path.join(directory, "adapter_model.bin")
    if os.path.isfile(st):
        from .checkpoint import load_weights

        return load_weights(st), json.load(open(os.path.join(directory, "adapter_config.json")))
    if os.path.isfile(pt):
        from .checkpoint import torch_load_tensors

        return torch_load_tensors(pt, "LoRA adapter weights"), json.load(open(os.path.join(directory, "adapter_config.json")))
    raise FileNotFoundError(f"no adapter_model.safetensors / adapter_model.bin in {directory}")


@torch.no_grad()
def merge_lora_state(model, weights: dict[str, torch.Tensor], scale: float) -> int:
    """Merge LoRA pairs into the decoder Linears; returns how many were merged. Unknown keys fail loudly."""
    pairs: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"unexpected LoRA key {key!r} (expected decoder q/k/v/o/gate/up/down targets)")
        layer, block, proj, ab = m.groups()
        pairs.setdefault((int(layer), block, proj), {})[ab] = value
    layers = model.model.language_model.layers
    for (layer, block, proj), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"layer {layer} {block}.{proj}: LoRA pair incomplete ({sorted(ab)})")
        linear = getattr(getattr(layers[layer], block), proj)
        delta = ab["B"].float() @ ab["A"].float()
        if delta.shape != linear.weight.shape:
            raise ValueError(f"layer {layer} {block}.{proj}: LoRA delta {tuple(delta.shape)} vs weight {tuple(linear.weight.shape)}")
        linear.weight += (scale * delta).to(linear.weight.dtype)
    return len(pairs)


def merge_reference_lora(model, directory) -> int:
    weights, config = load_adapter_weights(directory)
    scale = float(config["lora_alpha"]) / float(config["r"])
    return merge_lora_state(model, weights, scale)
