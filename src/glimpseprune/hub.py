"""Hub-ready GlimpsePrune modules: a model card (``README.md``) written beside the weights, and ``push_to_hub``.

The card says what the folder holds and what is known about it: the base model, the cut layer K, the glimpse and
VIP sizes (parameter counts measured on the modules), the keep policy, and -- when the caller knows them -- the
training data and the measured figures (e.g. the trainer's ``validation.json``). Unknown facts are written as
unknown, never guessed. ``push_to_hub`` uploads such a folder with ``huggingface_hub`` (a kept library: no
hand-written HTTP); tests pass an offline stand-in for its ``HfApi``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CARD_NAME = "README.md"


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_hub_id(name: str | None) -> bool:
    """'owner/name' that is not a local path: what the card's ``base_model`` metadata may name."""
    if not name or os.path.exists(name):
        return False
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "~"))


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    return str(value)


def model_card(config, glimpse=None, vip=None, *, base_model: str | None = None, training: dict | None = None,
               metrics: dict | None = None, repo_id: str | None = None) -> str:
    """The card's markdown (YAML metadata first). ``training``: facts about the training run (data, steps, ...);
    ``metrics``: measured figures, each key a name and each value a number or short text."""
    lines = ["---", "library_name: glimpseprune", "tags:", "- glimpseprune", "- visual-token-pruning",
             "- vision-language-model"]
    if _is_hub_id(base_model):
        lines.append(f"base_model: {base_model}")
    lines += ["---", "", f"# GlimpsePrune modules for {base_model or 'an unrecorded base model'}", ""]
    lines += [
        "A learned glimpse token and a Visual-token Importance Predictor (VIP) for "
        f"`{base_model or 'unknown'}`: per image and question they choose which visual tokens stay; the others "
        f"leave the hidden states and the KV cache after decoder layer K = {config.prune_layer} "
        f"(of {config.num_layers}). The base model's weights are not in this folder.", "",
        "| field | value |", "|---|---|",
        f"| base model | `{base_model or 'not recorded'}` |",
        f"| model family | {config.family} |",
        f"| cut layer K (`prune_layer`) | {config.prune_layer} of {config.num_layers} decoder layers |",
        f"| glimpse injected into layers | {list(config.glimpse_layers)} |",
        f"| VIP | size {config.vip_size}, condition size {config.vip_cond_size}, {config.vip_heads} heads, "
        f"ViT blocks {list(config.vip_visual_layers)} |",
    ]
    if glimpse is not None and vip is not None:
        lines.append(f"| parameters | glimpse {_count(glimpse):,}, VIP {_count(vip):,} (measured on these weights) |")
    cap = "none" if config.max_keep_ratio is None else config.max_keep_ratio
    lines += [f"| keep policy (defaults, overridable per call) | threshold {config.threshold}, cap {cap}, "
              f"min_keep {config.min_keep}, per_image {config.per_image} |", ""]
    lines += ["## Training", ""]
    if training:
        lines += ["| field | value |", "|---|---|"] + [f"| {k} | {_format_value(v)} |" for k, v in training.items()]
    else:
        lines.append("Training data and settings were not recorded with these modules.")
    lines += ["", "## Measured figures", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_format_value(v)} |" for k, v in metrics.items()]
        lines += ["", "As measured by the run that saved these modules; see the project's docs for the margin over "
                      "random selection at the same kept counts."]
    else:
        lines.append("No measured figures were recorded with these modules.")
    where = repo_id or "THIS_FOLDER_OR_HUB_ID"
    lines += ["", "## Use", "", "```python", "from glimpseprune import GlimpsePrune", "",
              f"model = GlimpsePrune.from_pretrained({json.dumps(base_model or 'BASE_MODEL')}, "
              f"glimpse={json.dumps(where)})",
              "```", ""]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, config, glimpse=None, vip=None, **facts) -> Path:
    path = Path(directory) / CARD_NAME
    path.write_text(model_card(config, glimpse, vip, **facts), encoding="utf-8")
    return path


def push_folder(directory: str | os.PathLike, repo_id: str, *, token: str | None = None,
                private: bool | None = None, commit_message: str = "Upload GlimpsePrune modules",
                revision: str | None = None, api=None):
    """Create ``repo_id`` (if missing) and upload ``directory`` to it. ``api``: an ``huggingface_hub.HfApi`` (default
    a new one with ``token``). Returns what ``upload_folder`` returns (the commit info)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message, revision=revision)


def push_modules(model, repo_id: str, *, training: dict | None = None, metrics: dict | None = None, **push_kwargs):
    """Save ``model``'s modules and their card into a temporary folder and push it (see :func:`push_folder`)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, training=training, metrics=metrics, repo_id=repo_id)
        return push_folder(tmp, repo_id, **push_kwargs)
