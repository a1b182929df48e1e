"""The one decoder-layer loop: prefill, decoding, the stage-1 training forward and the test reference all run it.

    for i in 0..L-1:
        hooks.before_layer(i, seq)      # a cut (select + gather hidden, positions, rotary, KV) or glimpse injection
        masks rebuilt if the sequence changed (one per layer TYPE, as the stock model builds them)
        h = layer_i(h, mask[layer_types[i]])
        family additions after layer i  # e.g. DeepStack: visual features added to the visual tokens still present
        hooks.after_layer(i, seq, layer_input)   # e.g. read the glimpse's attention row at K-1

The sequence being run (``DecoderSequence``) carries everything a layer needs plus ``source``, the prepared-batch
column each current column came from, so additions that belong to visual tokens land on the right tokens whatever
earlier cuts removed. Masks come from ``config.layer_types`` through transformers' own mask builders
(``LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING``: full -> causal, sliding -> sliding-window causal, linear -> 2-D
padding), so a family with sliding or linear layers gets the masks its stock forward would build.
Nothing is stored on any module: the sequence object belongs to one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.masking_utils import LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING


@dataclass
class LayerAdditions:
    """Residual additions after some decoder layers, owned by some prepared-batch columns (DeepStack-style).

    ``columns`` [bs, L_prepared] bool marks the owning columns; ``values[layer]`` [n_owned, D] holds their additions
    in row-major (batch, column) order. Columns removed by a cut simply receive nothing.
    """

    columns: torch.Tensor
    values: dict[int, torch.Tensor]

    def apply(self, layer: int, hidden: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        if layer not in self.values:
            return hidden
        rank = self.columns.long().flatten().cumsum(0).view_as(self.columns) - 1  # row-major rank of owned columns
        if source is None:  # columns are the prepared batch's own
            owned, index = self.columns, rank
        else:
            src = source.clamp(min=0)
            owned = (source >= 0) & self.columns.gather(1, src)
            index = rank.gather(1, src)
        if not bool(owned.any()):
            return hidden
        add = self.values[layer].to(hidden.dtype)[index[owned]]
        # Out of place: the layer output may be saved by autograd in training.
        return hidden.index_put((owned.nonzero(as_tuple=True)), hidden[owned] + add)


@dataclass
class DecoderSequence:
    """The sequence the loop runs on; hooks may replace any field (a cut replaces most of them)."""

    hidden: torch.Tensor  # [bs, L, D]
    position_ids: torch.Tensor  # family layout, sequence in the last dim
    attention_mask: torch.Tensor  # [bs, L] (or the whole KV length when decoding)
    cos: torch.Tensor
    sin: torch.Tensor
    cache: object | None = None
    source: torch.Tensor | None = None  # [bs, L]: prepared-batch column per current column (-1: pad/glimpse)
    additions: LayerAdditions | None = None
    masks: dict | None = None  # per layer type; None = build from attention_mask with the stock builders
    extras: dict = field(default_factory=dict)  # whatever a hook wants to hand to the caller (e.g. glimpse rows)


class LayerHooks:
    """No-op hooks; prefill, training and the test reference override what they need."""

    def before_layer(self, i: int, seq: DecoderSequence) -> None:
        pass

    def after_layer(self, i: int, seq: DecoderSequence, layer_input: torch.Tensor) -> None:
        pass

    def stop_after(self, i: int) -> bool:
        """True to end the loop after layer ``i`` (e.g. training only needs layers up to K-1)."""
        return False


NO_HOOKS = LayerHooks()


def _shape_on(hidden: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A zero-stride stand-in with ``hidden``'s shape and dtype on ``device``, for mask creation (which reads only
    those): on a split model the hidden states sit on the last layer's device, the attention mask on the input
    device (src/glimpseprune/placement.py)."""
    if hidden.device == device:
        return hidden
    return hidden.new_zeros((), device=device).expand(hidden.shape)


def layer_types(text_config) -> list[str]:
    """Each decoder layer's attention type; configs without ``layer_types`` are all full attention (as stock)."""
    types = getattr(text_config, "layer_types", None)
    return list(types) if types else ["full_attention"] * text_config.num_hidden_layers


def build_masks(adapter, seq: DecoderSequence, first_layer: int = 0) -> dict:
    """One mask per layer type used from ``first_layer`` on, each built by the stock builder for that type and for
    the first such layer (so the KV length of that layer's cache is the one measured)."""
    types = adapter.layer_types
    masks = {}
    for j in range(first_layer, len(types)):
        kind = types[j]
        if kind in masks:
            continue
        builder = LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING.get(kind)
        if builder is None or isinstance(builder, dict):
            raise ValueError(f"layer type {kind!r} has no single stock mask builder; this family is not supported")
        masks[kind] = builder(
            config=adapter.text_config,
            inputs_embeds=_shape_on(seq.hidden, seq.attention_mask.device),
            attention_mask=seq.attention_mask,
            past_key_values=seq.cache,
            position_ids=adapter.mask_positions(seq.position_ids),
            layer_idx=j,
        )
    return masks


def run_layers(adapter, seq: DecoderSequence, hooks: LayerHooks = NO_HOOKS) -> DecoderSequence:
    """Run every decoder layer over ``seq`` (in place on the object), calling the hooks around each layer."""
    types = adapter.layer_types
    for i in range(adapter.num_layers):
        hooks.before_layer(i, seq)
        if seq.masks is None:
            seq.masks = build_masks(adapter, seq, i)
        layer_input = seq.hidden
        seq.hidden = adapter.run_layer(
            i, seq.hidden, seq.masks[types[i]], (seq.cos, seq.sin), seq.position_ids, seq.cache
        )
        if seq.additions is not None:
            seq.hidden = seq.additions.apply(i, seq.hidden, seq.source)
        hooks.after_layer(i, seq, layer_input)
        if hooks.stop_after(i):
            break
    return seq
