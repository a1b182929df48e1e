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

Layer types and cuts (docs/method.md, "Hybrid linear-attention models"): a full-attention layer's cache holds one
key/value pair per token, which a cut can drop; a linear-attention layer's cache holds a fixed-size running state
(conv window + recurrent matrix) that has absorbed every token it saw and cannot forget one. So a cut drops entries
from the full-attention caches below it only, and linear layers below it keep their states as computed. The
glimpse, which no later token may ever see, is therefore run through a linear layer AFTER the prompt, on a copy of
the prompt's state (``DecoderSequence.transient``).
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
    # Trailing columns (the glimpse) that later tokens must never see: recurrent layers run them on a copy of the
    # state the columns before them left, so the cache keeps the state of the prompt alone.
    transient: int = 0


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


KV_LAYER = "full_attention"  # a per-token key/value cache: a cut drops entries from it
RECURRENT_LAYER = "linear_attention"  # a fixed-size running state (Gated DeltaNet): nothing per token to drop
CUTTABLE_LAYER_TYPES = (KV_LAYER, RECURRENT_LAYER)


def kv_layers(types: list[str]) -> list[int]:
    """The layers whose cache holds one entry per token (the only caches a cut shortens)."""
    return [i for i, kind in enumerate(types) if kind == KV_LAYER]


def check_cuttable(types: list[str]) -> None:
    """Refuse a cut on a model with layer types whose caches can neither drop chosen tokens nor keep a state."""
    other = sorted(set(types) - set(CUTTABLE_LAYER_TYPES))
    if other:
        # A sliding-window cache keeps only its last W-1 entries: it cannot drop chosen tokens the way a full
        # attention KV cache can, so pruning it is refused, not approximated.
        raise ValueError(
            f"pruning needs full-attention layers only (or linear-attention layers, whose states a cut keeps); "
            f"this model also has {other} (use method 'none' to run it unpruned)"
        )


def row_layer(types: list[str], cut: int) -> int:
    """The layer whose attention row a cut at ``cut`` reads (the glimpse's, or FastV's last token's): ``cut - 1``
    when it is a full-attention layer (every all-attention model, as published), otherwise the last full-attention
    layer below the cut (a linear-attention layer has no attention row)."""
    below = [i for i in kv_layers(types) if i < cut]
    if not below:
        raise ValueError(
            f"a cut at layer {cut} needs an attention row from a full-attention layer below it, and layers "
            f"0..{cut - 1} are {sorted(set(types[:cut]))}; choose a prune_layer above the first full-attention "
            f"layer ({kv_layers(types)[0] if kv_layers(types) else 'none'})"
        )
    return below[-1]


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
        if seq.transient and seq.cache is not None and types[i] == RECURRENT_LAYER:
            seq.hidden = _run_recurrent_with_transient_tail(adapter, i, seq)
        else:
            seq.hidden = adapter.run_layer(
                i, seq.hidden, seq.masks[types[i]], (seq.cos, seq.sin), seq.position_ids, seq.cache
            )
        if seq.additions is not None:
            seq.hidden = seq.additions.apply(i, seq.hidden, seq.source)
        hooks.after_layer(i, seq, layer_input)
        if hooks.stop_after(i):
            break
    return seq


def _run_recurrent_with_transient_tail(adapter, i: int, seq: DecoderSequence) -> torch.Tensor:
    """Recurrent layer ``i`` over [head ; transient tail]: the head updates the cache's state exactly as a stock
    forward over the head alone would; the tail continues from that state and its own updates are then undone, so
    the cache holds the head's state. (Causal: no head output depends on the tail.)"""
    n = seq.transient
    mask = seq.masks[RECURRENT_LAYER]
    head, tail = slice(None, -n), slice(-n, None)

    def run(cols):
        return adapter.run_layer(
            i, seq.hidden[:, cols], None if mask is None else mask[..., cols],
            (seq.cos[:, cols], seq.sin[:, cols]), seq.position_ids[..., cols], seq.cache,
        )

    out_head = run(head)
    state = seq.cache.layers[i]
    saved = {name: {k: None if v is None else v.clone() for k, v in getattr(state, name).items()}
             for name in ("conv_states", "recurrent_states")}
    out_tail = run(tail)
    for name, states in saved.items():
        getattr(state, name).update(states)
    return torch.cat([out_head, out_tail], dim=1)
