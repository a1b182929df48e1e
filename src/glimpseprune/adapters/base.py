"""What a model family must provide to the engine, and the parts shared by every Llama-style decoder.

A family adapter wraps a *stock* transformers model (no forked modeling code) and answers a few questions:
how to embed a batch and where its visual tokens and grids are (``prepare``), how positions turn into rotary
tables, and how to read ViT features for the VIP. Running decoder layers, recomputing one query's attention row
and decoding are the same for every family whose layers follow the transformers 5.x decoder-layer signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..config import GlimpsePruneConfig
from ..layer_loop import LayerAdditions, layer_types
from ..vit_scoring import VitScoring

_REGISTRY: dict[str, type["FamilyAdapter"]] = {}


def register_adapter(cls: type["FamilyAdapter"]) -> type["FamilyAdapter"]:
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


def _load_family_modules() -> None:
    """Import every module of this package once: each family file registers itself, so a new family is one file."""
    import importlib
    import pkgutil

    from .. import adapters

    for info in pkgutil.iter_modules(adapters.__path__):
        if info.name != "base":
            importlib.import_module(f"{adapters.__name__}.{info.name}")


def adapter_for(model) -> "FamilyAdapter":
    """Pick the adapter from the model's config (``model_type``), never from a user flag."""
    _load_family_modules()
    model_type = model.config.model_type
    if model_type not in _REGISTRY:
        raise ValueError(f"no GlimpsePrune adapter for model_type {model_type!r}; supported: {sorted(_REGISTRY)}")
    return _REGISTRY[model_type](model)


def adapter_class(model_type: str) -> type["FamilyAdapter"]:
    """The adapter class registered for a config's ``model_type`` (family facts that need no model, e.g. FLOPs)."""
    _load_family_modules()
    if model_type not in _REGISTRY:
        raise ValueError(f"no GlimpsePrune adapter for model_type {model_type!r}; supported: {sorted(_REGISTRY)}")
    return _REGISTRY[model_type]


def reference_model_types() -> dict[str, str]:
    """The published GlimpsePrune code's config ``model_type`` -> our family, for families that declare one."""
    _load_family_modules()
    return {cls.reference_model_type: cls.family for cls in _REGISTRY.values() if cls.reference_model_type}


def supported_model_types() -> list[str]:
    _load_family_modules()
    return sorted(_REGISTRY)


class VitRequest(list):
    """A ``vit_layers`` list that also asks for the raw INPUTS of some ViT blocks (opt-in, for baselines that score
    ViT attention themselves, e.g. VisionZip). Adapters that support it put, for every block i in ``block_inputs``,
    ``extras["vit_block_inputs"][i] = (hidden_states, kwargs)``: exactly what the block was called with (Qwen2.5-VL:
    window-order patches and the rotary ``position_embeddings``). A plain list asks for nothing extra."""

    def __init__(self, layers=(), block_inputs=()):
        super().__init__(layers)
        self.block_inputs = list(block_inputs)


class ProjectedConditions(list):
    """A ``vit_layers`` request for VIP conditions that are the projected visual tokens the LLM receives, one copy per
    entry, instead of ViT block outputs (``GlimpsePruneConfig.vip_conditions == "projected"``, the authors'
    InternVL2.5 modules; docs/method.md §17.5). Only adapters with ``offers_projected_conditions`` accept it."""


def condition_request(config) -> list:
    """What ``prepare`` is asked for so that it returns the VIP conditions ``config`` was made with."""
    layers = list(config.vip_visual_layers)
    return ProjectedConditions(layers) if config.vip_conditions == "projected" else layers


@dataclass
class ImageInfo:
    """One pruning unit of a sample: an image, or a whole video (every frame of it, docs/method.md §10)."""

    grid: tuple[int, int]  # merged visual-token grid (rows, cols) of one image or one video frame, as the LLM sees it
    num_tokens: int  # frames * rows * cols
    frames: int = 1  # temporal grid: a video's merged frames (Qwen: video_grid_thw t); 1 for an image
    kind: str = "image"  # "image" or "video"
    # Where one image has several grids (AnyRes: a base view and a stitched crops view), the index of that image in
    # its sample and the view's name; None for families with one grid per image.
    image: int | None = None
    view: str | None = None

    @property
    def vip_grid(self) -> tuple[int, ...]:
        """The grid the VIP's positions follow (modules/vip.py): (rows, cols), or (frames, rows, cols) for a video
        of several frames."""
        return self.grid if self.frames == 1 else (self.frames, *self.grid)


@dataclass
class PreparedBatch:
    """A batch ready for the decoder: embedded, left-aligned, with positions and visual-token bookkeeping."""

    input_ids: torch.Tensor  # [bs, L]
    attention_mask: torch.Tensor  # [bs, L] long
    inputs_embeds: torch.Tensor  # [bs, L, D]
    position_ids: torch.Tensor  # family layout, sequence in the last dim (Qwen [4, bs, L], Llama [bs, L])
    visual_mask: torch.Tensor  # [bs, L] bool: the pruning candidates (image tokens, and video tokens on Qwen)
    images: list[list[ImageInfo]]  # per sample, in sequence order: every image and video (``kind``)
    vit_features: list[torch.Tensor] | None = None  # per VIP layer: [T, D_v], all images of the batch in order
    source_index: torch.Tensor | None = None  # [bs, L]: column in the caller's input row of every position
    # Residual additions after some layers, owned by visual columns (Qwen3-VL's DeepStack); None for most families.
    layer_additions: LayerAdditions | None = None
    extras: dict = field(default_factory=dict)

    @property
    def has_video(self) -> bool:
        return any(im.kind == "video" for images in self.images for im in images)

    def without_video(self) -> "PreparedBatch":
        """The same batch with its videos no longer pruning candidates: their tokens stay like text (the behaviour
        before video pruning existed, ``generate(prune_video=False)``). Embeddings, positions and layer additions
        are untouched; only ``visual_mask``, ``images`` and the VIP conditions lose the video tokens."""
        if not self.has_video:
            return self
        flags = [im.kind == "video" for images in self.images for im in images]
        item_tokens = [im.num_tokens for images in self.images for im in images]
        keep_token = torch.cat([torch.full((n,), not f, dtype=torch.bool) for n, f in zip(item_tokens, flags)])
        video_cols = self.visual_mask.clone()
        video_cols[self.visual_mask] = ~keep_token.to(self.visual_mask.device)
        conds = None if self.vit_features is None else [c[keep_token.to(c.device)] for c in self.vit_features]
        return replace(
            self,
            visual_mask=self.visual_mask & ~video_cols,
            images=[[im for im in images if im.kind != "video"] for images in self.images],
            vit_features=conds,
        )


def hub_identity(name_or_path: str) -> tuple[str | None, str | None]:
    """(name, revision) of a base model: a hub cache folder ``.../models--owner--name/snapshots/<commit>`` gives
    ``("owner/name", commit)``; anything else is its own name, revision unknown."""
    if not name_or_path:
        return None, None
    parts = Path(name_or_path).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/"), parts[-1]
    return name_or_path, None


class FamilyAdapter:
    model_types: tuple[str, ...] = ()
    family: str = ""
    reference_model_type: str | None = None  # the published GlimpsePrune code's model_type for this family
    letterboxes_images: bool = False  # the processor pads every image to a centred square (drawing keep masks)
    # prepare() can condition the VIP on the projected visual tokens (a ``ProjectedConditions`` request)
    offers_projected_conditions: bool = False

    def __init__(self, model):
        self.model = model

    # ---- module access (override where the layout differs) -------------------------------------------------
    @property
    def text_model(self):
        return self.model.model.language_model

    @property
    def text_config(self):
        return self.text_model.config

    @property
    def layers(self):
        return self.text_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def lm_head(self):
        return self.model.lm_head

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embed_tokens(ids)

    # ---- family-specific hooks ------------------------------------------------------------------------------
    def prepare(self, inputs: dict, vit_layers: list[int] | None = None) -> PreparedBatch:
        raise NotImplementedError

    def rope(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [bs, L, head_dim], for the family's position layout."""
        raise NotImplementedError

    def mask_positions(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """The 1-D text positions that transformers passes to mask creation and to the layers."""
        raise NotImplementedError

    def apply_rotary(self, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        raise NotImplementedError

    @classmethod
    def offline_processor(cls, path):
        """The checkpoint's processor assembled without what AutoProcessor needs but this install lacks
        (torchvision), or None when the family has no such fallback."""
        return None

    offers_config_only = False  # config_only below is implemented (random-weight benchmark models)

    @classmethod
    def config_only(cls, config: dict, max_pixels: int | None = None):
        """(transformers config, offline processor) for a random-weight model of this family from a plain config
        dict (``model_type``, ``text_config``, ``vision_config`` and extras, as the benchmark's ``--config-only``
        architectures give it): the ids of the offline tokenizer fill its special-token fields, and a dynamic-grid
        processor allows ``max_pixels``. The model class is transformers' image-text-to-text class for the config."""
        raise NotImplementedError(f"no config-only (random-weight) build for family {cls.family!r}")

    @classmethod
    def image_size_kwargs(cls, processor, min_pixels: int | None, max_pixels: int | None) -> dict:
        """Processor keyword arguments that bound the image size in pixels (families with a dynamic grid)."""
        return {}

    @classmethod
    def encode_video(cls, processor, frames: list, fps: float) -> tuple[dict, dict]:
        """One video (decoded RGB frames sampled at ``fps``) -> (per-token tensors [L] of its placeholders, video
        model inputs); families that take video override it."""
        raise ValueError(f"family {cls.family!r} takes no video input")

    @classmethod
    def box_token_mask(cls, boxes, width: int, height: int, encoding, processor):
        """Bool numpy mask over one image's visual-token grid (raster) covering pixel ``boxes`` of a
        ``width x height`` image, as the processor in ``encoding`` laid it out (empty boxes: all False)."""
        raise NotImplementedError(f"no box -> token-grid rule for family {cls.family!r}")

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        """The fields of ``flops.VisionDims`` for this family's ViT and projector, read from its config."""
        raise NotImplementedError

    @classmethod
    def reference_config_fields(cls, raw: dict) -> dict:
        """GlimpsePruneConfig fields that this family's reference-format checkpoint (``reference_model_type``) fixes
        beyond the common ones read in ``checkpoint.import_reference``; raises on settings it cannot reproduce."""
        # attn_fuse_global=false: VIP attention within ViT windows on Qwen (never released), meaningless on LLaVA.
        if raw.get("attn_fuse_global", True) is False and cls.reference_model_type != "llava_llama_gp":
            raise ValueError(
                "window-local VIP attention (attn_fuse_global=false) was never released and is unsupported")
        return {}

    @classmethod
    def grid_regions(cls, width: int, height: int, processor) -> list[tuple[float, float, float, float] | None]:
        """Per visual-token grid the processor makes from a ``width x height`` image, in order: the part of the
        image it shows as fractions (x0, y0, x1, y1), or None for a grid that is a second, coarser view of the whole
        image (InternVL's thumbnail). Default: one grid showing the whole image."""
        return [(0.0, 0.0, 1.0, 1.0)]

    def vit_scoring(self) -> VitScoring | None:
        """The declared capability to score this family's ViT attention (VisionZip, VScan); None: not offered."""
        return None

    @property
    def vision_depth(self) -> int | None:
        """Blocks of the vision tower; None where a family does not say (its VIP layer indices are then unchecked)."""
        return None

    def vit_layer_range(self) -> tuple[int, int] | None:
        """Valid ``vip_visual_layers`` indices as [low, high): block outputs 0..depth-1 unless a family differs."""
        return None if self.vision_depth is None else (0, self.vision_depth)

    def base_record(self, vision_hidden_size: int) -> dict:
        """What ``glimpse_config.json`` records about the base model, checked when modules are attached again."""
        config, text = self.model.config, self.text_config
        span = self.vit_layer_range()
        name, revision = hub_identity(str(config.name_or_path))
        return dict(
            name_or_path=name,
            revision=revision,
            family=self.family,
            model_type=config.model_type,
            hidden_size=text.hidden_size,
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            vision_hidden_size=vision_hidden_size,
            vision_depth=self.vision_depth,
            vit_layer_range=None if span is None else list(span),
        )

    # ---- shared machinery ------------------------------------------------------------------------------------
    def build_glimpse_config(self, overrides: dict, **family_defaults) -> GlimpsePruneConfig:
        """A GlimpsePruneConfig sized from the LLM's text config: family defaults, then the caller's overrides
        (any field, including the family defaults such as ``prune_layer``)."""
        text = self.text_config
        fields = dict(
            family=self.family,
            hidden_size=text.hidden_size,
            num_heads=text.num_attention_heads,
            num_layers=text.num_hidden_layers,
            norm_eps=text.rms_norm_eps,
        )
        fields.update(family_defaults)
        fields.update(overrides)
        if "base_model" not in overrides:
            fields["base_model"] = self.base_record(fields["vision_hidden_size"])
        return GlimpsePruneConfig(**fields)

    @staticmethod
    def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
        """1-D positions exactly as ``GenerationMixin._prepare_position_ids_for_generation`` makes them."""
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.text_config)

    @property
    def layer_types(self) -> list[str]:
        """Each decoder layer's attention type (full / sliding / linear), from the text config."""
        return layer_types(self.text_config)

    def run_layer(self, i: int, hidden, mask, cos_sin, position_ids, cache) -> torch.Tensor:
        return self.layers[i](
            hidden,
            attention_mask=mask,
            position_embeddings=cos_sin,
            position_ids=self.mask_positions(position_ids),
            past_key_values=cache,
            use_cache=cache is not None,
        )

    def next_positions(self, position_ids: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """Positions of the next ``steps`` tokens after the last one: last + 1, + 2, ... on every axis.

        This is what ``generate`` does, and it never looks at the cache length, so dropped tokens do not shift it.
        """
        offsets = torch.arange(1, steps + 1, device=position_ids.device, dtype=position_ids.dtype)
        return position_ids[..., -1:] + offsets

    def attention_row(
        self,
        layer_idx: int,
        layer_input: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        attention_mask: torch.Tensor | None,
        log_softmax: bool,
    ) -> torch.Tensor:
        """One query's attention over every key of a layer: [bs, H, L] (docs/method.md §4).

        ``layer_input`` is the residual stream entering the layer at the query position ([bs, 1, D]); ``keys``
        are that layer's post-RoPE cached keys [bs, H_kv, L, d]. Only one row is computed, so this works the same
        under eager, SDPA and flash attention and never materialises an attention map.
        """
        layer = self.layers[layer_idx]
        attn = layer.self_attn
        # The layer's cached keys sit on its device; so must the rest (a split model's layers are spread out).
        layer_input, cos, sin, attention_mask = (
            t if t is None else t.to(keys.device) for t in (layer_input, cos, sin, attention_mask))
        x = layer.input_layernorm(layer_input)
        bs = x.shape[0]
        q = self.row_query(attn, x)  # [bs, H, 1, d]
        if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head query norm
            q = attn.q_norm(q)
        q = self.apply_rotary(q, cos, sin)
        n_kv = keys.shape[1]
        groups = q.shape[1] // n_kv  # query head a reads KV head a // groups (repeat_kv grouping)
        q = q.view(bs, n_kv, groups, attn.head_dim).float()
        logits = torch.einsum("bcgd,bcld->bcgl", q, keys.float()).reshape(bs, n_kv * groups, -1) * attn.scaling
        if not log_softmax:
            return logits
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        return torch.log_softmax(logits, dim=-1)


    def row_query(self, attn, x: torch.Tensor) -> torch.Tensor:
        """The attention's query heads for the normed input ``x`` [bs, 1, D], before any q-norm and rotary:
        [bs, H, 1, d] (a family whose query projection carries more, e.g. an output gate, overrides this)."""
        return attn.q_proj(x).view(x.shape[0], 1, -1, attn.head_dim).transpose(1, 2)


def split_images(visual_mask: torch.Tensor, image_tokens: list[int], grids: list[tuple[int, int]]) -> list[list[ImageInfo]]:
    """Assign the batch's images (in order) to samples by walking each row's runs of visual tokens.

    Raises a clear error when the placeholders and the images disagree, instead of scattering features into the
    wrong slots.
    """
    per_sample: list[list[ImageInfo]] = []
    cursor = 0
    for row in visual_mask:
        count = int(row.sum())
        infos = []
        while count > 0:
            if cursor >= len(image_tokens):
                raise ValueError("more image placeholder tokens in the prompts than image features supplied")
            if image_tokens[cursor] > count:
                raise ValueError(
                    f"an image needs {image_tokens[cursor]} placeholder tokens but its prompt has only {count} left; "
                    "the number of images does not match the image placeholders"
                )
            infos.append(ImageInfo(grid=grids[cursor], num_tokens=image_tokens[cursor]))
            count -= image_tokens[cursor]
            cursor += 1
        per_sample.append(infos)
    if cursor != len(image_tokens):
        raise ValueError(
            f"{len(image_tokens)} images supplied but the prompts have placeholders for only {cursor}; "
            "the number of images does not match the image placeholders"
        )
    return per_sample


class PlainRopeMixin:
    """The position hooks of a family whose LLM uses plain rotate-half RoPE over 1-D text positions (a Llama- or
    Qwen2-style decoder behind the projector): cos/sin from the text model's own rotary table, the positions as
    transformers passes them to mask creation, and the stock rotation."""

    def rope(self, hidden, position_ids):
        return self.text_model.rotary_emb(hidden, position_ids)

    def mask_positions(self, position_ids):
        return position_ids

    def apply_rotary(self, q, cos, sin):
        return apply_rotary_pos_emb(q, q, cos, sin)[0]


def left_aligned_prompt(inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(input_ids, attention_mask (long, all ones when not given), source_index) of a batch moved to left padding;
    ``source_index`` is :func:`left_align`'s gather index, None when the rows already were left-padded."""
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.long()
    order = left_align(attention_mask)
    if order is not None:
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
    return input_ids, attention_mask, order


def left_align(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Index [bs, L] that moves every row's valid tokens to the right end (left padding), or None if already so."""
    if attention_mask is None or bool(attention_mask[:, -1].all()):
        return None
    bs, length = attention_mask.shape
    valid = attention_mask.bool()
    # Stable sort on "is valid" puts pads first and keeps the order of valid tokens.
    return torch.sort(valid.to(torch.int8), dim=1, stable=True).indices


def split_visual_items(kinds: torch.Tensor, items: dict[int, list[ImageInfo]], names: dict[int, str]) -> list[list[ImageInfo]]:
    """Assign the batch's images and videos to samples in sequence order (docs/method.md §10).

    ``kinds`` [bs, L]: 0 for text and padding, else the item kind of the placeholder (e.g. 1 image, 2 video);
    ``items[kind]``: that kind's items in the order their features were supplied; ``names[kind]``: its word in
    errors. Each item takes the next ``num_tokens`` placeholders of the row, which must all be of its kind (text
    may sit between them: Qwen3-VL writes a timestamp before every video frame). Any disagreement between
    placeholders and supplied items is one clear error, never features scattered into the wrong slots.
    """
    cursor = {kind: 0 for kind in items}
    per_sample: list[list[ImageInfo]] = []
    for row in kinds:
        seq = row[row > 0].tolist()
        infos, j = [], 0
        while j < len(seq):
            kind = seq[j]
            name = names[kind]
            queue = items.get(kind, [])
            if cursor[kind] >= len(queue):
                raise ValueError(f"more {name} placeholder tokens in the prompts than {name} features supplied; "
                                 f"the number of {name}s does not match the {name} placeholders")
            item = queue[cursor[kind]]
            span = seq[j: j + item.num_tokens]
            if len(span) < item.num_tokens or any(k != kind for k in span):
                raise ValueError(
                    f"a {name} needs {item.num_tokens} placeholder tokens in one prompt but only {span.count(kind)} "
                    f"follow before the prompt or the run ends; the number of {name}s does not match the {name} "
                    "placeholders"
                )
            infos.append(item)
            cursor[kind] += 1
            j += item.num_tokens
        per_sample.append(infos)
    for kind, queue in items.items():
        if cursor[kind] != len(queue):
            name = names[kind]
            raise ValueError(
                f"{len(queue)} {name}s supplied but the prompts have placeholders for only {cursor[kind]}; "
                f"the number of {name}s does not match the {name} placeholders"
            )
    return per_sample
