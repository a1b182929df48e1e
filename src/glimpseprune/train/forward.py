"""The stage-1 training forward (docs/method.md §3.4, §11.4).

One pass over prompt + answer, no KV cache, every one of the L layers:

    h = [prompt ; glimpse ; answer]           glimpse inserted immediately before the first supervised answer token
    positions renumbered                      glimpse takes the first answer token's position, answer shifts by +1
                                              (on Qwen: the text row and all three mRoPE axes)
    labels                                    -100 at the glimpse
    for i in 0..L-1:
        if i > 0: h[glimpse] += u(i)          additive deep prompt, as at inference
        h = layer_i(h)
        if i == K-1: rows = glimpse's attention row over the keys of layer K-1  (adapter.attention_row; on hybrid
                     models the last full-attention layer below K, layer_loop.row_layer)
    VIP(rows[visual columns], ViT features) -> one keep logit per visual token
    LM loss = next-token CE over the answer tokens

The engine's prefill is inference-only (it cuts the sequence at K); this pass runs the same layer loop
(``layer_loop.run_layers``) with its own hooks and never prunes. Nothing is stored on any module.

Options beyond the published recipe:

- ``isolate_glimpse``: no token but the glimpse itself may attend to the glimpse (the docs/method.md §18 row 15 ablation: the
  answer no longer sees the glimpse, as at inference). Needs an explicit 4-D float mask.
- ``shift_answer=False``: the answer keeps its own positions (what decoding does at inference, where the glimpse is
  gone). Only sensible together with ``isolate_glimpse``.
- ``soft_keep_from``/``keep_bias``: box-free training (``boxfree.py``) adds a per-visual-key bias (log p) to the
  attention of every layer >= K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..adapters.base import FamilyAdapter, PreparedBatch
from ..layer_loop import DecoderSequence, LayerHooks, row_layer, run_layers

IGNORE_INDEX = -100


@dataclass
class GlimpseLayout:
    """Where the glimpse went in every row, and the renumbered sequence around it."""

    source: torch.Tensor  # [bs, L+n] column of the original row each new column came from (glimpse: its slot)
    is_glimpse: torch.Tensor  # [bs, L+n] bool
    slot: torch.Tensor  # [bs, L+n] long: glimpse token index at glimpse columns (0 elsewhere)
    start: torch.Tensor  # [bs] column of the first glimpse token (== first answer column of the original row)
    read: torch.Tensor  # [bs] column of the last glimpse token (the one whose row is read)
    position_ids: torch.Tensor  # family layout, sequence last
    attention_mask: torch.Tensor  # [bs, L+n]
    labels: torch.Tensor | None  # [bs, L+n], -100 at the glimpse
    visual_mask: torch.Tensor  # [bs, L+n]

    def new_index(self, old: torch.Tensor) -> torch.Tensor:
        """Map original columns [bs, m] to their columns in the glimpse sequence."""
        n = int(self.is_glimpse[0].sum())
        return old + n * (old >= self.start[:, None]).long()


def first_answer_index(labels: torch.Tensor) -> torch.Tensor:
    """[bs]: the first supervised column of each row; the row length when a row has no answer token."""
    supervised = labels != IGNORE_INDEX
    idx = supervised.int().argmax(1)
    return torch.where(supervised.any(1), idx, torch.full_like(idx, labels.shape[1]))


def insert_glimpse(
    batch: PreparedBatch, labels: torch.Tensor | None, n: int = 1, shift_answer: bool = True
) -> GlimpseLayout:
    """Lay out [prompt ; glimpse x n ; answer] per row (rows may have different answer starts)."""
    bs, length = batch.attention_mask.shape
    device = batch.attention_mask.device
    if labels is None:
        start = torch.full((bs,), length, dtype=torch.long, device=device)
    else:
        start = first_answer_index(labels)
    j = torch.arange(length + n, device=device)[None].expand(bs, -1)
    is_glimpse = (j >= start[:, None]) & (j < start[:, None] + n)
    after = j >= start[:, None] + n
    source = torch.where(after, j - n, j)
    source = torch.where(is_glimpse, start[:, None].expand(-1, length + n), source)  # glimpse: the answer's slot
    slot = torch.where(is_glimpse, j - start[:, None], torch.zeros_like(j))
    clamped = source.clamp(max=length - 1)

    pos = batch.position_ids
    pos_ext = torch.cat([pos, pos[..., -1:] + 1], dim=-1)  # a glimpse after a prompt with no answer: last + 1
    index = source.expand(*pos.shape[:-2], bs, length + n) if pos.dim() > 2 else source
    new_pos = pos_ext.gather(-1, index)
    offset = slot + (n if shift_answer else 0) * after.long()
    new_pos = new_pos + offset.to(new_pos.dtype)

    am = batch.attention_mask.gather(1, clamped).masked_fill(is_glimpse, 1)
    vis = batch.visual_mask.gather(1, clamped) & ~is_glimpse
    new_labels = None
    if labels is not None:
        new_labels = labels.gather(1, clamped).masked_fill(is_glimpse, IGNORE_INDEX)
    return GlimpseLayout(
        source=source,
        is_glimpse=is_glimpse,
        slot=slot,
        start=start,
        read=start + n - 1,
        position_ids=new_pos,
        attention_mask=am,
        labels=new_labels,
        visual_mask=vis,
    )


def float_mask(
    attention_mask: torch.Tensor,
    dtype: torch.dtype,
    isolate: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal + padding additive mask [bs, 1, L, L]; ``isolate`` (bool [bs, L]): columns only those same columns
    may see; ``key_bias`` ([bs, L], <= 0): added on every allowed entry of each key column."""
    bs, length = attention_mask.shape
    device = attention_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    if isolate is not None:
        allowed = allowed & ~(isolate[:, None, :] & ~isolate[:, :, None])
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)[None]  # no fully masked row (left pads)
    low = torch.finfo(dtype).min
    fill = torch.tensor(low, dtype=dtype, device=device)
    bias = torch.zeros((), dtype=dtype, device=device) if key_bias is None else key_bias.to(dtype)[:, None, :]
    out = torch.where(allowed, bias, fill)
    return out[:, None]


def explicit_masks(
    adapter: FamilyAdapter,
    attention_mask: torch.Tensor,
    dtype: torch.dtype,
    isolate: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
) -> dict:
    """``float_mask`` for every layer type of the model: full layers get it as is, sliding-window layers with the
    window applied as the stock sliding mask does (key index > query index - window). Recurrent (linear) layers
    have no attention mask to carry the isolation or the bias, so they are refused."""
    full = float_mask(attention_mask, dtype, isolate, key_bias)
    masks = {}
    for kind in set(adapter.layer_types):
        if kind == "full_attention":
            masks[kind] = full
        elif kind == "sliding_attention":
            length = attention_mask.shape[1]
            q = torch.arange(length, device=full.device)
            outside = (q[None, :] <= q[:, None] - adapter.text_config.sliding_window)  # [L, L] keys too far back
            outside &= ~torch.eye(length, dtype=torch.bool, device=full.device)  # keep float_mask's no-empty-row rule
            masks[kind] = full.masked_fill(outside, torch.finfo(dtype).min)
        else:
            raise ValueError(f"isolate_glimpse / box-free soft keep need attention masks; {kind!r} layers have none")
    return masks


@dataclass
class TrainForward:
    vip_logits: torch.Tensor  # [T] keep logits over every visual token of the batch (samples, images, in order)
    tokens_per_sample: list[int]  # how T splits over the samples
    grids: list[list[tuple[int, ...]]]  # per sample, per image or video: its VIP grid (ImageInfo.vip_grid)
    lm_loss: torch.Tensor | None  # mean next-token CE over answer tokens (None when not computed)
    answer_logits: torch.Tensor | None  # [A, V] float32 logits predicting the answer tokens (when asked)
    layout: GlimpseLayout

    def per_sample(self) -> list[torch.Tensor]:
        return list(self.vip_logits.split(self.tokens_per_sample))


def answer_predictors(labels: torch.Tensor) -> torch.Tensor:
    """bool [bs, L]: columns whose next-token prediction is supervised (labels[:, t+1] != -100)."""
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return out


def answer_logits(adapter: FamilyAdapter, hidden: torch.Tensor, predictors: torch.Tensor) -> torch.Tensor:
    """Float32 logits [A, V] at the selected columns only (the vocabulary projection is the big tensor)."""
    h = adapter.text_model.norm(hidden[predictors])
    return adapter.lm_head(h).float()


class _TrainingHooks(LayerHooks):
    """The training forward's hooks on the one layer loop: glimpse injection at every layer, a cache only at K-1
    (to read the glimpse's attention row there), the VIP's scores right after it, the soft-keep bias from K."""

    def __init__(self, adapter, batch, layout, vip, prune_layer, attention_logits, slot_vectors, gmask, isolate,
                 keep_bias_fn, grids, tokens, stop_at_vip):
        self.adapter, self.batch, self.layout, self.vip = adapter, batch, layout, vip
        self.prune_layer, self.attention_logits = prune_layer, attention_logits
        self.slot_vectors, self.gmask, self.isolate, self.keep_bias_fn = slot_vectors, gmask, isolate, keep_bias_fn
        self.grids, self.tokens, self.stop_at_vip = grids, tokens, stop_at_vip
        self.vip_logits = None
        self.read_layer = row_layer(adapter.layer_types, prune_layer)  # K-1 unless that layer is linear attention

    def before_layer(self, i, seq):
        if i > 0 and i in self.slot_vectors:
            seq.hidden = torch.where(self.gmask, seq.hidden + self.slot_vectors[i], seq.hidden)
        if i == self.prune_layer and self.keep_bias_fn is not None:
            bias = self.keep_bias_fn(self.vip_logits, self.tokens, self.layout)
            seq.masks = explicit_masks(self.adapter, seq.attention_mask, seq.hidden.dtype, self.isolate, bias)
        seq.cache = self.adapter.new_cache() if i == self.read_layer else None

    def after_layer(self, i, seq, layer_input):
        if i != self.read_layer:
            return
        layout = self.layout
        g = layout.read
        rows_ar = torch.arange(g.shape[0], device=g.device)
        new_len = layout.source.shape[1]
        # The glimpse reads only the prompt (and earlier glimpse tokens): never the answer after it.
        visible = seq.attention_mask.bool() & (torch.arange(new_len, device=g.device)[None] <= g[:, None])
        rows = self.adapter.attention_row(
            i,
            layer_input[rows_ar, g][:, None],
            seq.cos[rows_ar, g][:, None],
            seq.sin[rows_ar, g][:, None],
            seq.cache.layers[i].keys,
            visible,
            log_softmax=not self.attention_logits,
        )  # [bs, H, L+n]
        visual = rows.transpose(1, 2)[layout.visual_mask]  # [T, H]
        flat_grids = [grid for per in self.grids for grid in per]
        if visual.shape[0]:
            self.vip_logits = self.vip(visual, self.batch.vit_features, flat_grids)
        else:
            self.vip_logits = visual.new_zeros(0, dtype=torch.float32)
        seq.cache = None

    def stop_after(self, i):
        return self.stop_at_vip and i == self.read_layer


def training_forward(
    adapter: FamilyAdapter,
    batch: PreparedBatch,
    labels: torch.Tensor | None,
    glimpse,
    vip,
    prune_layer: int,
    attention_logits: bool = True,
    compute_lm: bool = True,
    return_answer_logits: bool = False,
    isolate_glimpse: bool = False,
    shift_answer: bool = True,
    keep_bias_fn=None,
) -> TrainForward:
    """The docs/method.md §11.4 pass. ``labels`` are aligned with ``batch.input_ids`` (-100 on the prompt and padding).

    ``keep_bias_fn(per_sample_logits, layout) -> [bs, L+n] bias`` switches on soft pruning at layers >= K
    (box-free mode); it forces an explicit float mask.
    """
    if not 1 <= prune_layer < adapter.num_layers:
        raise ValueError(f"prune_layer {prune_layer} out of range for {adapter.num_layers} layers")
    if batch.source_index is not None and labels is not None:
        labels = labels.gather(1, batch.source_index)  # prepare() left-aligned the rows: move the labels with them
    n = glimpse.length
    layout = insert_glimpse(batch, labels, n, shift_answer=shift_answer)
    embeds = batch.inputs_embeds
    bs, new_len = layout.source.shape
    dtype = embeds.dtype
    vectors = glimpse.vectors(adapter.num_layers, dtype)
    slot_vectors = {layer: v[layout.slot] for layer, v in vectors.items()}  # [bs, L+n, D]
    gmask = layout.is_glimpse[..., None]
    h = embeds.gather(1, layout.source.clamp(max=embeds.shape[1] - 1)[..., None].expand(-1, -1, embeds.shape[-1]))
    h = torch.where(gmask, slot_vectors[0], h)

    pos, am = layout.position_ids, layout.attention_mask
    cos, sin = adapter.rope(h, pos)
    explicit = isolate_glimpse or keep_bias_fn is not None
    isolate = layout.is_glimpse if isolate_glimpse else None
    masks = explicit_masks(adapter, am, dtype, isolate) if explicit else None
    source = torch.where(layout.is_glimpse, torch.full_like(layout.source, -1), layout.source)
    seq = DecoderSequence(h, pos, am, cos, sin, None, source, batch.layer_additions, masks)

    grids = [[im.vip_grid for im in images] for images in batch.images]
    tokens = [sum(im.num_tokens for im in images) for images in batch.images]
    hooks = _TrainingHooks(
        adapter, batch, layout, vip, prune_layer, attention_logits, slot_vectors, gmask, isolate, keep_bias_fn,
        grids, tokens, stop_at_vip=not (compute_lm or return_answer_logits or keep_bias_fn is not None),
    )
    run_layers(adapter, seq, hooks)
    vip_logits, h = hooks.vip_logits, seq.hidden

    lm_loss, logits = None, None
    if (compute_lm or return_answer_logits) and layout.labels is not None:
        if isolate_glimpse:
            # The glimpse is outside the answer chain: the last prompt token predicts the first answer token, as
            # without a glimpse (and as at inference).
            original = answer_predictors(labels)
            predictors = torch.zeros_like(layout.labels, dtype=torch.bool)
            rows, cols = original.nonzero(as_tuple=True)
            predictors[rows, cols + n * (cols >= layout.start[rows]).long()] = True
            targets = labels[:, 1:][original[:, :-1]]
        else:
            # Published recipe (docs/method.md §3.4): the glimpse, labelled -100, predicts the first answer token.
            predictors = answer_predictors(layout.labels)
            targets = layout.labels[:, 1:][predictors[:, :-1]]
        logits = answer_logits(adapter, h, predictors)
        if compute_lm:
            lm_loss = F.cross_entropy(logits, targets) if targets.numel() else logits.sum() * 0.0
    return TrainForward(
        vip_logits=vip_logits,
        tokens_per_sample=tokens,
        grids=grids,
        lm_loss=lm_loss,
        answer_logits=logits if return_answer_logits else None,
        layout=layout,
    )


@torch.no_grad()
def reference_answer_logits(adapter: FamilyAdapter, batch: PreparedBatch, labels: torch.Tensor) -> torch.Tensor:
    """The unpruned base model without any glimpse: float32 logits [A, V] predicting the answer tokens."""
    if batch.source_index is not None:
        labels = labels.gather(1, batch.source_index)
    h, pos, am = batch.inputs_embeds, batch.position_ids, batch.attention_mask
    cos, sin = adapter.rope(h, pos)
    seq = run_layers(adapter, DecoderSequence(h, pos, am, cos, sin, additions=batch.layer_additions))
    return answer_logits(adapter, seq.hidden, answer_predictors(labels))
