"""The user-facing wrapper: a stock transformers VLM + GlimpsePrune modules, ``generate`` with pruning."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .adapters import adapter_for
from .checkpoint import build_modules, load_modules, save_modules
from .config import GlimpsePruneConfig
from .engine import GenerationParams, decode, prefill
from .layer_loop import RECURRENT_LAYER, kv_layers
from .placement import execution_device
from .methods import FixedKeep, GlimpsePruneMethod, PruneMethod
from .policy import KeepPolicy
from .prune_state import PruneState

_GENERATION_KEYS = (
    "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
    "eos_token_id", "pad_token_id", "num_beams", "num_return_sequences",
)
_MODEL_INPUT_KEYS = (
    "input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "pixel_values_videos",
    "video_grid_thw", "second_per_grid_ts", "image_sizes", "batch_num_images",
)


def check_generate_arguments(num_layers: int, keep_masks=None, prune_layer=None, inputs: dict | None = None) -> None:
    """Type checks at the API boundary, so a wrong argument is a clear error, never a silently different run:
    ``prune_layer=2.5`` or ``True`` is not a layer, a float keep mask is not a decision, NaN pixels are not an image."""
    from .errors import UserError

    if prune_layer is not None:
        if isinstance(prune_layer, bool) or not isinstance(prune_layer, int):
            raise UserError(f"prune_layer must be an integer layer index, got {prune_layer!r} "
                            f"({type(prune_layer).__name__})")
        if not 0 <= prune_layer < num_layers:
            raise UserError(f"prune_layer must be in [0, {num_layers - 1}] for this {num_layers}-layer model, "
                            f"got {prune_layer}")
    if keep_masks is not None:
        if torch.is_tensor(keep_masks) and keep_masks.dim() == 1:
            raise UserError("keep_masks must be a list with one boolean mask per sample, got a single 1-D tensor")
        if not isinstance(keep_masks, (list, tuple)) and not (torch.is_tensor(keep_masks) and keep_masks.dim() == 2):
            raise UserError(f"keep_masks must be a list of boolean masks, got {type(keep_masks).__name__}")
        for i, mask in enumerate(keep_masks):
            dtype = mask.dtype if torch.is_tensor(mask) else torch.as_tensor(mask).dtype
            if dtype != torch.bool:
                raise UserError(f"keep_masks[{i}] must be boolean (True = keep), got dtype {dtype}; "
                                "a float or integer mask is ambiguous")
    for key, value in (inputs or {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{key} contains NaN or infinite values: the image inputs are corrupt")


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [bs, L_in + T]: the caller's input ids followed by the generated ids (like HF)
    pruning: PruneState
    prefill_seconds: float
    decode_seconds: float
    new_tokens: int

    @property
    def generated(self) -> torch.Tensor:
        return self.sequences[:, self.sequences.shape[1] - self.new_tokens:]

    @property
    def decode_ms_per_token(self) -> float:
        return 1000.0 * self.decode_seconds / max(self.new_tokens - 1, 1)


class GlimpsePrune:
    """A stock VLM with GlimpsePrune. Holds weights only: every call's pruning comes back in its output."""

    def __init__(self, model, processor=None, config: GlimpsePruneConfig | None = None, glimpse=None, vip=None):
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter_for(model)
        self.config = config
        self.glimpse, self.vip = glimpse, vip
        if (glimpse is None) != (vip is None) or (glimpse is not None and config is None):
            raise ValueError("glimpse, vip and config must be given together")
        if config is not None and config.vip_conditions == "projected" and not self.adapter.offers_projected_conditions:
            raise ValueError(f"these modules condition the VIP on projected visual tokens, which the "
                             f"{self.adapter.family!r} adapter does not offer")
        if glimpse is not None:
            # Next to the layer whose attention row the VIP reads (on a split model, parameters may read as meta).
            read = max(config.prune_layer - 1, 0)
            if self.adapter.layer_types[read] == RECURRENT_LAYER:  # hybrid: the row comes from a full layer below
                read = max([i for i in kv_layers(self.adapter.layer_types) if i < config.prune_layer], default=read)
            device = execution_device(model, self.adapter.layers[read])
            dtype = next(model.parameters()).dtype
            self.glimpse = glimpse.to(device=device, dtype=dtype).eval()
            self.vip = vip.to(device=device, dtype=dtype).eval()

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike,
        glimpse: str | os.PathLike | None = None,
        *,
        init_glimpse: bool = False,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        adapter: str | os.PathLike | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | os.PathLike | None = None,
        **config_overrides,
    ) -> "GlimpsePrune":
        """Load a base VLM (local folder or hub id) and GlimpsePrune modules (our format or the reference's).

        ``adapter``: a PEFT LoRA folder (GlimpsePrune+) merged into the LLM *before* the modules are attached.
        ``init_glimpse``: create fresh, untrained modules (for training, or to benchmark the mechanics).
        ``device_map`` / ``max_memory`` / ``offload_folder``: passed to transformers (accelerate's big-model
        inference) to spread the base model over devices, CPU RAM and disk ("auto", "balanced", or a dict of module
        name -> device / "cpu" / "disk"); the GlimpsePrune modules go where the decoder layer they read sits
        (docs/scaling.md). Not combinable with ``device``.
        """
        from transformers import AutoConfig, AutoModelForImageTextToText

        from .checkpoint import resolve_directory
        from .processing import load_processor

        base_dir = resolve_directory(base)
        base_config = AutoConfig.from_pretrained(base_dir)
        kwargs = {"dtype": dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if device_map is not None:
            if device is not None:
                raise ValueError("give device or device_map, not both")
            if adapter is not None:
                raise ValueError("a LoRA adapter is merged into resident weights: load with device, not device_map")
            kwargs.update(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        elif max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder need a device_map")
        model = AutoModelForImageTextToText.from_pretrained(base_dir, **kwargs)
        if device is not None:
            model = model.to(device)
        if adapter is not None:
            from .lora import merge_reference_lora

            merge_reference_lora(model, adapter)
        processor = load_processor(base_dir, base_config.model_type)
        wrapper = cls(model, processor)
        if glimpse is not None:
            expected = wrapper.adapter.default_glimpse_config()
            config, g, v = load_modules(glimpse, expected)
            if config_overrides:
                config = replace(config, **config_overrides)
            return cls(model, processor, config, g, v)
        if init_glimpse:
            return wrapper.with_new_modules(**config_overrides)
        return wrapper

    def with_new_modules(self, seed: int | None = None, **config_overrides) -> "GlimpsePrune":
        """This model with freshly initialised (untrained) glimpse + VIP modules."""
        config = self.adapter.default_glimpse_config(**config_overrides)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            g, v = build_modules(config)
        return GlimpsePrune(self.model, self.processor, config, g, v)

    def save_pretrained(self, directory: str | os.PathLike, *, training: dict | None = None,
                        metrics: dict | None = None, repo_id: str | None = None) -> Path:
        """Save the GlimpsePrune modules (not the base model) as safetensors + glimpse_config.json, with a model card
        (README.md: base model, K, VIP size, and the ``training`` facts / measured ``metrics`` when given)."""
        from .hub import write_model_card

        if self.glimpse is None:
            raise ValueError("this model has no GlimpsePrune modules to save")
        directory = save_modules(directory, self.config, self.glimpse, self.vip)
        write_model_card(directory, self.config, self.glimpse, self.vip, base_model=self.base_model_name,
                         training=training, metrics=metrics, repo_id=repo_id)
        return directory

    def push_to_hub(self, repo_id: str, *, training: dict | None = None, metrics: dict | None = None, **kwargs):
        """Upload the modules and their card to the Hugging Face hub (``huggingface_hub``; ``kwargs``: token, private,
        commit_message, revision, api). Returns the commit info."""
        from .hub import push_modules

        return push_modules(self, repo_id, training=training, metrics=metrics, **kwargs)

    @property
    def base_model_name(self) -> str | None:
        """Where the base model was loaded from (hub id or folder), as transformers recorded it; None if unknown."""
        return self.model.config.name_or_path or None

    # ---- device and dtype, like a transformers model --------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, *args, **kwargs) -> "GlimpsePrune":
        """Move / cast the base model and the modules together (``torch.nn.Module.to`` arguments); returns self."""
        self.model.to(*args, **kwargs)
        if self.glimpse is not None:
            self.glimpse.to(*args, **kwargs)
            self.vip.to(*args, **kwargs)
        return self

    # ---- inference -------------------------------------------------------------------------------------------
    def policy(self, threshold=None, max_keep_ratio=..., min_keep=None, per_image=None) -> KeepPolicy:
        """The config's keep policy with per-call overrides (``max_keep_ratio=None`` means 'no cap')."""
        c = self.config
        base = KeepPolicy(c.threshold, c.max_keep_ratio, c.min_keep, c.per_image) if c else KeepPolicy()
        return KeepPolicy(
            threshold=base.threshold if threshold is None else threshold,
            max_keep_ratio=base.max_keep_ratio if max_keep_ratio is ... else max_keep_ratio,
            min_keep=base.min_keep if min_keep is None else min_keep,
            per_image=base.per_image if per_image is None else per_image,
        ).validate()

    def method(self, method="glimpse", keep_masks=None, prune_layer=None, **policy_kwargs) -> PruneMethod | None:
        if isinstance(method, PruneMethod):
            return method
        check_generate_arguments(self.adapter.num_layers, keep_masks, prune_layer)
        if method is not None and not isinstance(method, str):
            from .errors import UserError

            raise UserError(f"method must be a name (str), a PruneMethod or None, got {type(method).__name__}")
        if keep_masks is not None:
            layer = prune_layer if prune_layer is not None else (self.config.prune_layer if self.config else None)
            if layer is None:
                raise ValueError("keep_masks need a prune_layer (no GlimpsePrune config to take it from)")
            return FixedKeep(keep_masks, layer)
        if method in (None, "none"):
            return None
        if method == "glimpse":
            if self.glimpse is None:
                raise ValueError(
                    "no GlimpsePrune modules loaded: pass glimpse=... to from_pretrained, or method='none'"
                )
            config = self.config if prune_layer is None else replace(self.config, prune_layer=prune_layer)
            return GlimpsePruneMethod(self.glimpse, self.vip, config, self.policy(**policy_kwargs))
        from .methods import get_method  # baselines register by name

        return get_method(method, self, prune_layer=prune_layer, **policy_kwargs)

    @torch.inference_mode()
    def generate(
        self,
        method: str | PruneMethod | None = "glimpse",
        keep_masks: list[torch.Tensor] | None = None,
        prune_layer: int | None = None,
        threshold: float | None = None,
        max_keep_ratio: float | None = ...,
        min_keep: int | None = None,
        per_image: bool | None = None,
        generator: torch.Generator | None = None,
        generation_config=None,
        prune_video: bool = True,
        streamer=None,
        **kwargs,
    ) -> GenerateOutput:
        """Generate with pruning. ``kwargs``: processor outputs (input_ids, pixel_values, ...) and generation
        options (max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty, eos_token_id, ...).

        Like transformers' ``generate``: ``generation_config`` (a ``transformers.GenerationConfig``) replaces the
        model's own, and keyword options override it; ``streamer`` (e.g. ``TextStreamer`` /
        ``TextIteratorStreamer``) gets ``put(input_ids)``, then ``put(tokens)`` at every step, then ``end()``.
        Greedy decoding and sampling only: beam search (``num_beams`` > 1) and several sequences per prompt are
        refused with an error. ``prune_video=False`` keeps every video token (videos are then not pruning
        candidates, docs/method.md §10)."""
        if not isinstance(prune_video, bool):
            raise ValueError(f"prune_video must be True or False, got {prune_video!r}")
        gen = {k: kwargs.pop(k) for k in list(kwargs) if k in _GENERATION_KEYS}
        inputs = {k: kwargs.pop(k) for k in list(kwargs) if k in _MODEL_INPUT_KEYS}
        if kwargs:
            raise TypeError(f"unexpected arguments to generate: {sorted(kwargs)}")
        if "input_ids" not in inputs:
            raise ValueError("generate needs input_ids (pass the processor's output: model.generate(**inputs))")
        check_generate_arguments(self.adapter.num_layers, keep_masks, prune_layer, inputs)
        policy_kwargs = dict(threshold=threshold, max_keep_ratio=max_keep_ratio, min_keep=min_keep, per_image=per_image)
        chosen = self.method(method, keep_masks, prune_layer, **policy_kwargs)
        device = execution_device(self.model, self.model.get_input_embeddings())
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        if generation_config is not None:
            beams = {k: getattr(generation_config, k, 1) or 1 for k in ("num_beams", "num_return_sequences")}
            if any(v != 1 for v in beams.values()):
                raise ValueError(f"unsupported generation options in generation_config: {beams} (GlimpsePrune "
                                 "decodes greedily or by sampling; beam search is not supported)")
            # transformers' precedence: keyword options > the given config > the model's own config (for the
            # fields the given config leaves unset, e.g. eos_token_id)
            generation_config = copy.deepcopy(generation_config)
            generation_config.update(**self.model.generation_config.to_dict(), defaults_only=True,
                                     allow_custom_entries=True)
        params = GenerationParams.resolve(generation_config or self.model.generation_config, **gen)
        batch = self.adapter.prepare(inputs, chosen.vit_layers if chosen is not None else None)
        if not prune_video:
            batch = batch.without_video()
        pre = prefill(self.adapter, batch, chosen)
        if streamer is not None:
            streamer.put(inputs["input_ids"].cpu())
        on_token = (lambda tokens: streamer.put(tokens.cpu())) if streamer is not None else None
        dec = decode(self.adapter, pre, batch.input_ids, params, generator, on_token=on_token)
        if streamer is not None:
            streamer.end()
        return GenerateOutput(
            sequences=torch.cat([inputs["input_ids"], dec.tokens.to(device)], dim=1),
            pruning=pre.pruning,
            prefill_seconds=pre.seconds,
            decode_seconds=dec.seconds,
            new_tokens=dec.steps,
        )

    def answer(self, images: list, question: str, videos: list | None = None, fps: float = 2.0,
               **kwargs) -> tuple[str, GenerateOutput]:
        """One question about zero or more images (and videos: each a list of frames sampled at ``fps``, on
        families that take video) -> (answer text, full output)."""
        from .processing import build_inputs

        from .errors import UserError

        if self.processor is None:
            raise ValueError("this model has no processor; build inputs yourself and call generate")
        if not isinstance(question, str):
            raise UserError(f"question must be a string, got {type(question).__name__}")
        if not isinstance(images, (list, tuple)):
            raise UserError(f"images must be a list (of paths or PIL images), got {type(images).__name__}; "
                            "wrap a single image in a list")
        if videos is not None and not isinstance(videos, (list, tuple)):
            raise UserError(f"videos must be a list of videos (each a list of frames), got {type(videos).__name__}")
        inputs = build_inputs(self.processor, [question], [list(images)],
                              videos=None if videos is None else [list(videos)],
                              model_type=self.model.config.model_type, fps=fps)
        out = self.generate(**inputs, **kwargs)
        text = self.processor.batch_decode(out.generated, skip_special_tokens=True)[0]
        return text.strip(), out
