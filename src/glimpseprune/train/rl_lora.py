"""The GlimpsePrune+ LoRA on PEFT: every Linear of the LLM decoder, adapter-only saves, the reference's key layout.

Published setting (method.md §12.1, §17.4): r 32, alpha 64, every q/k/v/o/gate/up/down projection of every decoder
layer; not the embeddings, not ``lm_head``, not the ViT. The targets are found by walking the family adapter's
decoder layers, so a new family needs nothing here.

The published dropout is 0.05. Our default is 0: RL's importance ratio compares the loss's log-probs with the
rollout's, and a dropout mask in one of the two forwards would make them differ by noise (``rl_forward.py`` makes them
the same computation; dropout would undo that).

Layouts: PEFT saves keys as ``base_model.model.<module path>.lora_{A,B}.weight``, i.e. on transformers 5.x
``base_model.model.model.language_model.layers.{l}...``. The reference adapter was written on transformers 4.51,
``base_model.model.model.layers.{l}...``; ``export_reference_adapter`` writes that layout and ``lora.py``'s loader
reads both.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..adapters.base import FamilyAdapter

PUBLISHED_R, PUBLISHED_ALPHA = 32, 64
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
_OURS = re.compile(r"^base_model\.model\.model\.language_model\.layers\.")
_REFERENCE = "base_model.model.model.layers."


def decoder_linear_names(model: nn.Module, adapter: FamilyAdapter) -> list[str]:
    """Full module names of every ``nn.Linear`` inside the LLM decoder layers (PEFT ``target_modules``)."""
    inside = {id(m) for layer in adapter.layers for m in layer.modules() if isinstance(m, nn.Linear)}
    names = [name for name, m in model.named_modules() if id(m) in inside]
    if not names:
        raise ValueError("found no Linear layers in the decoder to put LoRA on")
    return names


def add_lora(model: nn.Module, adapter: FamilyAdapter, r: int = PUBLISHED_R, alpha: int = PUBLISHED_ALPHA,
             dropout: float = 0.0, seed: int | None = None):
    """Wrap ``model`` in a PEFT ``PeftModel`` with LoRA on every decoder Linear; only the LoRA factors train.

    The LoRA layers are injected in place, so ``adapter`` (built on ``model``) runs them; ``disable_adapter()`` on the
    returned model gives the frozen base (the RL reference policy).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=decoder_linear_names(model, adapter),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # PEFT asks the model `is_gradient_checkpointing`, which transformers 5.23 deprecates (a FutureWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if seed is not None:
            torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    return peft_model


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors by parameter name (what a training checkpoint needs)."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def load_lora_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    params = dict(peft_model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(state) != trainable:
        missing, extra = sorted(trainable - set(state))[:3], sorted(set(state) - trainable)[:3]
        raise ValueError(f"LoRA state does not match the model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for n, value in state.items():
            params[n].copy_(value)


def save_adapter(peft_model, directory) -> Path:
    """Adapter-only save (PEFT's own format: adapter_config.json + adapter_model.safetensors)."""
    directory = Path(directory)
    peft_model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def export_reference_adapter(directory, reference_directory) -> Path:
    """Rewrite a PEFT adapter saved on transformers 5.x into the reference's 4.51 key layout (same tensors)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(directory), Path(reference_directory)
    weights = load_file(str(src / ADAPTER_WEIGHTS))
    renamed = {}
    for key, value in weights.items():
        if not _OURS.match(key):
            raise ValueError(f"unexpected adapter key {key!r}: not a LoRA factor of a decoder layer")
        renamed[_OURS.sub(_REFERENCE, key)] = value.contiguous()
    config = json.loads((src / ADAPTER_CONFIG).read_text())
    targets = config.get("target_modules")
    if isinstance(targets, list):
        config["target_modules"] = sorted(t.replace("model.language_model.layers.", "model.layers.") for t in targets)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(dst / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (dst / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return dst
