"""Checkpoint I/O for the GlimpsePrune modules (glimpse token + VIP).

Our format: ``glimpse_config.json`` (GlimpsePrune fields only) + ``glimpse.safetensors`` (keys ``glimpse.*`` and
``vip.*``). The importer also reads the published reference format (docs/method.md §17): the whole base config with GP
fields added (``config.json``) + ``new_modules_gp.pt`` (a ``torch.save`` dict loaded with ``weights_only=True``).
Every key and shape is checked; anything unexpected fails loudly.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pickle

import torch
from safetensors.torch import load_file, save_file

from .config import CONFIG_NAME, GlimpsePruneConfig, check_same_base
from .errors import ConfigError, GlimpsePruneError, UnsafeFileError, read_json
from .modules import VIP, GlimpseToken

WEIGHTS_NAME = "glimpse.safetensors"
REFERENCE_WEIGHTS = "new_modules_gp.pt"


def reference_model_types() -> dict[str, str]:
    """The reference code's config ``model_type`` -> our family, as each family adapter declares it."""
    from .adapters.base import reference_model_types as declared

    return declared()


def build_modules(config: GlimpsePruneConfig) -> tuple[GlimpseToken, VIP]:
    glimpse = GlimpseToken(
        config.hidden_size,
        config.glimpse_layers,
        config.glimpse_length,
        config.glimpse_norm,
        config.norm_eps,
        config.glimpse_dropout,
    )
    vip = VIP(
        row_width=config.glimpse_row_width,
        vision_size=config.vision_hidden_size,
        num_layers=config.vip_layers,
        size=config.vip_size,
        cond_size=config.vip_cond_size,
        heads=config.vip_heads,
        rope_theta=config.vip_rope_theta,
        block=config.vip_block,
    )
    return glimpse, vip


def modules_state_dict(glimpse: GlimpseToken, vip: VIP) -> dict[str, torch.Tensor]:
    state = {f"glimpse.{k}": v for k, v in glimpse.state_dict().items()}
    state.update({f"vip.{k}": v for k, v in vip.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_modules(directory: str | Path, config: GlimpsePruneConfig, glimpse: GlimpseToken, vip: VIP) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory)
    save_file(modules_state_dict(glimpse, vip), str(directory / WEIGHTS_NAME), metadata={"format": "glimpseprune"})
    return directory


def resolve_directory(path_or_id: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id, downloaded (or read from the local HF cache)."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a checkpoint folder")
    text = str(path_or_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"checkpoint folder {text!r} does not exist (and is not a hub id like 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=allow_patterns))
    except Exception as err:  # network, auth, missing repo: say which and how to fix
        raise FileNotFoundError(
            f"could not fetch {text!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Pass a local folder, or check the id and your network / HF_HUB_OFFLINE setting."
        ) from err


def load_modules(
    path_or_id: str | os.PathLike, expected: GlimpsePruneConfig | None = None
) -> tuple[GlimpsePruneConfig, GlimpseToken, VIP]:
    """Load our format or the reference format from a folder or hub id.

    ``expected`` (the adapter's default config for the base model) is used to check that the modules fit the
    base model: LLM width, heads, layers and ViT width must agree.
    """
    directory = resolve_directory(path_or_id, [CONFIG_NAME, WEIGHTS_NAME, "config.json", REFERENCE_WEIGHTS])
    if (directory / CONFIG_NAME).is_file():
        config = GlimpsePruneConfig.load(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
        state = load_weights(weights)
        weights_source = weights
    elif (directory / REFERENCE_WEIGHTS).is_file() and (directory / "config.json").is_file():
        try:
            config, state = import_reference(directory, expected)
        except GlimpsePruneError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as err:  # a field of the wrong type or shape
            raise ConfigError(f"cannot import the reference checkpoint: {err}", directory / "config.json") from None
        weights_source = directory / REFERENCE_WEIGHTS
    else:
        raise FileNotFoundError(
            f"{directory} holds no GlimpsePrune modules: expected {CONFIG_NAME} + {WEIGHTS_NAME}, "
            f"or the reference layout config.json + {REFERENCE_WEIGHTS}"
        )
    if expected is not None:
        check_compatible(config, expected)
        if config.base_model is None and expected.base_model is not None:
            # a config written before the base record existed: check its ViT layers against this base now
            try:
                config = replace(config, base_model=expected.base_model)
            except ValueError as err:
                raise ConfigError(str(err), directory / CONFIG_NAME) from None
    glimpse, vip = build_modules(config)
    load_state(glimpse, vip, state, source=weights_source)
    return config, glimpse, vip


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a ``ConfigError`` naming it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ConfigError(f"unreadable safetensors file (truncated or corrupt?): {err}", path) from None


def check_float_tensor(tensor: torch.Tensor, key: str, source=None) -> None:
    if not tensor.dtype.is_floating_point:
        raise ConfigError(f"weight {key} has dtype {tensor.dtype}; expected a floating-point dtype", source)
    if not bool(torch.isfinite(tensor).all()):
        raise ConfigError(f"weight {key} holds NaN or infinite values", source)


def torch_load_tensors(path: str | os.PathLike, what: str):
    """``torch.load(weights_only=True)``: tensors and plain containers only. A pickle that asks for anything else
    (a function to call, an object to build) is refused before it runs, and reported as ``UnsafeFileError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "disallowed content"
        raise UnsafeFileError(f"refused to load {what}: it is not a plain tensor file ({first})", path) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(f"unreadable {what} (truncated or not a torch file?): {err}", path) from None


def load_state(glimpse: GlimpseToken, vip: VIP, state: dict[str, torch.Tensor], source=None) -> None:
    """Copy checked weights in: every key present, shapes equal, floating dtype, all values finite (a NaN VIP would
    otherwise fail mid-generation; int weights would silently keep one token). ``source`` names the file."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ConfigError("GlimpsePrune weights must map names to tensors", source)
    wanted = modules_state_dict(glimpse, vip)
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise ConfigError(f"GlimpsePrune weights do not match the config: missing {missing}, unexpected {unexpected}",
                          source)
    for key, ref in wanted.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ConfigError(f"shape mismatch for {key}: file {tuple(state[key].shape)}, expected {tuple(ref.shape)}",
                              source)
        check_float_tensor(state[key], key, source)
    split = {"glimpse": {}, "vip": {}}
    for key, value in state.items():
        owner, name = key.split(".", 1)
        split[owner][name] = value.float()
    glimpse.load_state_dict(split["glimpse"])
    vip.load_state_dict(split["vip"])


def check_compatible(config: GlimpsePruneConfig, base: GlimpsePruneConfig) -> None:
    """Modules made for another family or shape are refused (family, LLM width/heads/depth, ViT width/depth)."""
    check_same_base(config, base)


# ---- the reference format ---------------------------------------------------------------------------------------


def import_reference(
    directory: Path, expected: GlimpsePruneConfig | None = None
) -> tuple[GlimpsePruneConfig, dict[str, torch.Tensor]]:
    raw = read_json(directory / "config.json", "reference config")
    if not isinstance(raw, dict):
        raise ConfigError("reference config must be a JSON object", directory / "config.json")
    model_type = raw.get("model_type")
    if model_type not in reference_model_types():
        raise ValueError(f"not a GlimpsePrune reference config: model_type {model_type!r}")
    if "reduce_layer" not in raw:
        raise ValueError("reference config has no reduce_layer")
    r = int(raw["reduce_layer"])
    if list(raw.get("selected_layers", [r])) != [r]:
        raise ValueError(f"selected_layers {raw.get('selected_layers')} != [reduce_layer]: only one row layer is supported")
    if raw.get("attn_fuse_type", "AttnFuserV1") != "AttnFuserV1":
        raise ValueError(f"unsupported VIP type {raw.get('attn_fuse_type')!r}; only AttnFuserV1 was released")
    if raw.get("attn_fuse_hidden_act", "silu") != "silu":
        raise ValueError("only the SiLU VIP MLP is supported")
    from .adapters.base import adapter_class

    family = reference_model_types()[model_type]
    # What this family's reference format fixes beyond the common fields (and the VIP attention scope it allows).
    family_fields = adapter_class(family).reference_config_fields(raw)
    for flag in ("use_ref_masks", "use_zero_masks"):
        if raw.get(flag):
            raise ValueError(f"reference debug switch {flag}=true cannot be imported")
    if raw.get("anchor_positions"):
        raise ValueError("anchor_positions are not supported")

    weights = torch_load_tensors(directory / REFERENCE_WEIGHTS, "GlimpsePrune reference weights")
    if not isinstance(weights, dict) or set(weights) != {"attn_fuser", "learnable_embeddings", "le_proj", "le_norm"}:
        keys = sorted(weights) if isinstance(weights, dict) else type(weights).__name__
        raise ValueError(f"{REFERENCE_WEIGHTS}: expected keys attn_fuser, learnable_embeddings, le_proj, le_norm; got {keys}")
    embeddings = weights["learnable_embeddings"]
    vip_visual_layers = list(family_fields.get("vip_visual_layers", raw.get("selected_visual_layers", [])))
    n_vip = len(vip_visual_layers)
    fuser = weights["attn_fuser"]
    in_w = fuser.get("attn_in_proj.weight")
    cond_w = fuser.get("cond_in_projs.0.weight")
    if in_w is None or cond_w is None:
        raise ValueError("attn_fuser lacks attn_in_proj.weight or cond_in_projs.0.weight")
    text_cfg = raw.get("text_config", raw)  # flat (4.x) or nested layout
    num_layers = int(text_cfg.get("num_hidden_layers", expected.num_layers if expected else 0))
    fields = dict(
        family=family,
        prune_layer=r + 1,
        hidden_size=int(embeddings.shape[-1]),
        num_heads=int(in_w.shape[1]),
        vision_hidden_size=int(cond_w.shape[1]),
        num_layers=num_layers,
        vip_visual_layers=vip_visual_layers,
        glimpse_layers=list(raw.get("le_layers", [0])),
        glimpse_length=int(raw.get("le_length", 1)),
        glimpse_dropout=float(raw.get("le_dropout_prob", 0.0)),
        glimpse_norm=raw.get("le_norm_type", "rmsnorm"),
        norm_eps=float(text_cfg.get("rms_norm_eps", 1e-6)),
        vip_size=int(raw.get("attn_fuse_size", 256)),
        vip_cond_size=int(raw.get("visual_cond_size", 512)),
        vip_heads=int(raw.get("attn_fuse_num_heads", 4)),
        attention_logits=bool(raw.get("use_attention_logits", False)),
        threshold=float(raw.get("reduce_threshold", 0.5)),
        max_keep_ratio=raw.get("max_remain_ratio"),
        min_keep=int(raw.get("min_remain_num", 1)),
    )
    fields.update(family_fields)
    config = GlimpsePruneConfig(**fields)
    if tuple(embeddings.shape[:2]) != (len(config.glimpse_layers), config.glimpse_length):
        raise ValueError(
            f"learnable_embeddings shape {tuple(embeddings.shape)} does not match le_layers/le_length "
            f"({len(config.glimpse_layers)}, {config.glimpse_length}, D)"
        )
    state = {"glimpse.embeddings": embeddings}
    for name, value in weights["le_proj"].items():
        state[f"glimpse.proj.{name}"] = value
    for name, value in weights["le_norm"].items():
        state[f"glimpse.norm.{name}"] = value
    ignored = []
    for key, value in fuser.items():
        mapped = _map_fuser_key(key, n_vip)
        if mapped is None:
            ignored.append(key)
        else:
            state[f"vip.{mapped}"] = value
    if ignored:
        raise ValueError(f"unexpected keys in attn_fuser (deep supervision heads or another VIP variant?): {ignored}")
    return config, state


def _map_fuser_key(key: str, n_layers: int) -> str | None:
    head = f"attn_out_projs.{n_layers - 1}."
    if key.startswith("attn_in_proj."):
        return "in_proj." + key[len("attn_in_proj."):]
    if key.startswith("cond_in_projs."):
        return "cond_projs." + key[len("cond_in_projs."):]
    if key.startswith("layers."):
        return "blocks." + key[len("layers."):]
    if key.startswith(head):
        return "out_proj." + key[len(head):]
    return None


def export_reference(directory: str | Path, config: GlimpsePruneConfig, glimpse: GlimpseToken, vip: VIP) -> Path:
    """Write modules in the reference layout (for round-trip tests and for use with the reference code)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = config.vip_layers
    fuser = {}
    for key, value in vip.state_dict().items():
        for ours, theirs in (("in_proj.", "attn_in_proj."), ("cond_projs.", "cond_in_projs."), ("blocks.", "layers."),
                             ("out_proj.", f"attn_out_projs.{n - 1}.")):
            if key.startswith(ours):
                fuser[theirs + key[len(ours):]] = value.detach().cpu().to(torch.bfloat16)
    g = {k: v.detach().cpu().to(torch.bfloat16) for k, v in glimpse.state_dict().items()}
    torch.save(
        {
            "attn_fuser": fuser,
            "learnable_embeddings": g["embeddings"],
            "le_proj": {"weight": g["proj.weight"], "bias": g["proj.bias"]},
            "le_norm": {k[len("norm."):]: v for k, v in g.items() if k.startswith("norm.")},
        },
        directory / REFERENCE_WEIGHTS,
    )
    model_type = {v: k for k, v in reference_model_types().items()}[config.family]
    from .adapters.base import adapter_class

    fixed = adapter_class(config.family).reference_config_fields({"selected_visual_layers": config.vip_visual_layers})
    for name in ("vip_block", "vip_conditions", "glimpse_norm"):
        if name in fixed and getattr(config, name) != fixed[name]:
            raise ValueError(f"the reference format of {config.family!r} holds {name}={fixed[name]!r} only; "
                             f"these modules have {getattr(config, name)!r}")
    raw = {
        "model_type": model_type,
        "num_hidden_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "rms_norm_eps": config.norm_eps,
        "reduce_layer": config.prune_layer - 1,
        "selected_layers": [config.prune_layer - 1],
        "use_attention_logits": config.attention_logits,
        "attn_fuse_type": "AttnFuserV1",
        "attn_fuse_size": config.vip_size,
        "visual_cond_size": config.vip_cond_size,
        "selected_visual_layers": config.vip_visual_layers,
        "attn_fuse_num_heads": config.vip_heads,
        "attn_fuse_hidden_act": "silu",
        "attn_fuse_global": True,
        "ori_attn_supervision": False,
        "deep_supervision": False,
        "le_layers": config.glimpse_layers,
        "le_length": config.glimpse_length,
        "le_dropout_prob": config.glimpse_dropout,
        "le_norm_type": config.glimpse_norm,
        "reduce_threshold": config.threshold,
        "max_remain_ratio": config.max_keep_ratio,
        "min_remain_num": config.min_keep,
        "anchor_positions": [],
        "use_ref_masks": False,
        "use_zero_masks": False,
    }
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    return directory
