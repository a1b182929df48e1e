"""Prefill with a one-shot cut at layer K, then decoding on the short cache (docs/method.md §1, §8, §9).

The whole idea in one loop:

    h = [prompt embeddings ; glimpse]                       # glimpse only if the method uses it
    for i in 0..L-1:                                        # the one loop (layer_loop.run_layers), these hooks:
        if i == K:  keep = method.select(...)               # e.g. VIP(glimpse row at K-1, ViT features) > 0.5
                    h, positions, KV[0..K-1] = gather(keep) # glimpse and dropped tokens gone, no renumbering
        if 0 < i < K: h[glimpse] += u(i)                     # per-layer glimpse injection
        h = layer_i(h, mask of layer i's type)              # masks rebuilt after a cut
        family additions (DeepStack) on the visual tokens still present
        if i == K-1: read the glimpse's attention row
    logits = lm_head(norm(h[last real prompt token]))

Decoding then runs the stock decoder stack one token at a time with explicit positions (last + 1, + 2, ...), so
the dropped tokens never shift positions. No state is kept on any module: everything a call produces is returned.

Hybrid models (Qwen3.5: Gated DeltaNet linear-attention layers between full-attention layers; docs/method.md,
"Hybrid linear-attention models"): only the full-attention caches below K are cut; linear layers below K keep their
running states (which never saw the glimpse); the attention rows are read at the last full-attention layer below K.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .adapters.base import FamilyAdapter, PreparedBatch
from .layer_loop import (KV_LAYER, RECURRENT_LAYER, DecoderSequence, LayerHooks, build_masks, check_cuttable, kv_layers,
                         row_layer, run_layers)
from .methods.base import PruneMethod, SelectContext
from .prune_state import ImagePruning, PruneState, SamplePruning, gather_seq, pack_keep_indices, prune_cache_layers


REBUILD = object()  # decode: this layer type's mask is rebuilt for the step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prefill:
    logits: torch.Tensor  # [bs, V] next-token logits after the last prompt token
    cache: object
    attention_mask: torch.Tensor  # [bs, L'] over the (possibly pruned) cache
    last_positions: torch.Tensor  # position ids of the last real prompt token, [..., bs, 1]
    pruning: PruneState
    seconds: float = 0.0


class _PrefillHooks(LayerHooks):
    """Prefill's hooks on the one layer loop: the cut(s), glimpse injection, and reading the glimpse row at K-1."""

    def __init__(self, adapter, batch, method, cuts, glimpse_vectors, n_glimpse):
        self.adapter, self.batch, self.method, self.cuts = adapter, batch, method, cuts
        self.glimpse_vectors, self.n_glimpse = glimpse_vectors, n_glimpse
        self.glimpse_rows, self.selection, self.stages = None, None, []
        self.types = adapter.layer_types
        self.kv_layers = kv_layers(self.types)
        # (layer, residual stream entering it) of the last full-attention layer run: the rows' query input
        self.row_input = (None, None)
        self.glimpse_row_layer = row_layer(self.types, cuts[0]) if n_glimpse else None

    def before_layer(self, i, seq):
        if i in self.cuts:
            self.cut(i, seq)
        elif self.n_glimpse and 0 < i and i in self.glimpse_vectors:
            # In place on a layer output that no autograd node saved, so it is safe in training too.
            seq.hidden[:, -self.n_glimpse:] += self.glimpse_vectors[i].to(seq.hidden.device)

    def cut(self, i, seq):
        batch = self.batch
        read, read_input = self.row_input
        if read is not None and self.stages and read < self.stages[-1][0]:
            # Its keys were cut at the previous cut, but its query input was not: no consistent row to read.
            read, read_input = None, None
        ctx = SelectContext(
            self.adapter, batch, i, seq.hidden, seq.cache, read_input, seq.cos, seq.sin, seq.attention_mask,
            seq.source, self.glimpse_rows, row_layer=read,
        )
        self.selection = selection = self.method.select(ctx)
        index, am = pack_keep_indices(_keep_columns(batch, seq.source, seq.attention_mask, selection.keep))
        seq.source = seq.source.gather(1, index).masked_fill(am == 0, -1)
        seq.attention_mask = am
        seq.hidden = gather_seq(seq.hidden, index.to(seq.hidden.device), 1)  # a split model's layers sit on several devices
        if selection.replace is not None:
            seq.hidden = _replace_visual(seq.hidden, batch, seq.source, selection.replace)
        seq.cos, seq.sin = gather_seq(seq.cos, index.to(seq.cos.device), 1), gather_seq(seq.sin, index.to(seq.sin.device), 1)
        seq.position_ids = gather_seq(seq.position_ids, index, -1)
        # Only full-attention caches hold per-token entries; linear layers below i keep their states as computed.
        prune_cache_layers(seq.cache, [j for j in self.kv_layers if j < i], index)
        seq.masks = None  # rebuilt for the short sequence by the loop
        self.glimpse_rows, self.n_glimpse, seq.transient = None, 0, 0  # the glimpse is gone after the first cut
        self.stages.append((i, [int(k.sum()) for k in selection.keep]))

    def after_layer(self, i, seq, layer_input):
        if self.types[i] == KV_LAYER:
            self.row_input = (i, layer_input)
        if self.n_glimpse and i == self.glimpse_row_layer:
            width = seq.hidden.shape[1]
            g = slice(width - 1, width)  # only the last glimpse token's row is read
            self.glimpse_rows = self.adapter.attention_row(
                i,
                layer_input[:, g],
                seq.cos[:, g],
                seq.sin[:, g],
                seq.cache.layers[i].keys,
                seq.attention_mask,
                log_softmax=not self.method.config.attention_logits,
            )


def prefill(adapter: FamilyAdapter, batch: PreparedBatch, method: PruneMethod | None = None) -> Prefill:
    device = batch.inputs_embeds.device
    _sync(device)
    start = time.perf_counter()
    h, pos, am = batch.inputs_embeds, batch.position_ids, batch.attention_mask
    bs, width = am.shape
    cuts = sorted(set(method.prune_layers)) if method is not None else []
    if any(not 0 <= c < adapter.num_layers for c in cuts):
        raise ValueError(f"prune layers {cuts} out of range for a {adapter.num_layers}-layer model")
    if cuts:
        check_cuttable(adapter.layer_types)
    # source[b, j]: the prepared-batch column held by current column j (-1: padding or the glimpse).
    source = torch.arange(width, device=device).expand(bs, -1).masked_fill(am == 0, -1)

    glimpse_vectors, n_glimpse = {}, 0
    if method is not None and method.uses_glimpse:
        if cuts[0] < 1:
            raise ValueError("a glimpse-based method needs prune_layer >= 1 (its row is read at layer K-1)")
        glimpse_vectors = method.glimpse.vectors(cuts[0], h.dtype)
        n_glimpse = method.glimpse.length
        # Appended after the generation prompt: causal and last, so no prompt token can see it.
        h = torch.cat([h, glimpse_vectors[0].to(h.device).expand(bs, -1, -1)], dim=1)
        pos = torch.cat([pos, adapter.next_positions(pos, n_glimpse)], dim=-1)
        am = torch.cat([am, am.new_ones(bs, n_glimpse)], dim=1)
        source = torch.cat([source, source.new_full((bs, n_glimpse), -1)], dim=1)

    cos, sin = adapter.rope(h, pos)
    seq = DecoderSequence(h, pos, am, cos, sin, adapter.new_cache(), source, batch.layer_additions,
                          transient=n_glimpse)
    hooks = _PrefillHooks(adapter, batch, method, cuts, glimpse_vectors, n_glimpse)
    run_layers(adapter, seq, hooks)
    h = adapter.text_model.norm(seq.hidden[:, -1:])
    logits = adapter.lm_head(h)[:, -1].float()
    _sync(device)
    state = _prune_state(adapter, batch, method, hooks.selection, seq.attention_mask, seq.source, hooks.stages)
    return Prefill(
        logits=logits,
        cache=seq.cache,
        attention_mask=seq.attention_mask,
        last_positions=batch.position_ids[..., -1:],
        pruning=state,
        seconds=time.perf_counter() - start,
    )


def _keep_columns(batch: PreparedBatch, source, attention_mask, keep: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sorted current-column indices per row that survive a cut: valid text columns plus the kept visual tokens.

    The glimpse and padding (source -1) never survive.
    """
    vis_rank = batch.visual_mask.long().cumsum(1) - 1
    out = []
    for b, keep_b in enumerate(keep):
        n = int(batch.visual_mask[b].sum())
        if keep_b.numel() != n:
            raise ValueError(f"sample {b}: keep mask has {keep_b.numel()} entries for {n} visual tokens")
        src = source[b]
        valid = (src >= 0) & attention_mask[b].bool()
        srcc = src.clamp(min=0)
        is_vis = batch.visual_mask[b, srcc] & valid
        stays = valid & ~is_vis
        if n:  # text-only rows have no visual tokens to look up
            stays |= is_vis & keep_b.to(src.device)[vis_rank[b, srcc].clamp(min=0)]
        out.append(stays.nonzero().squeeze(1))
    return out


def _replace_visual(h, batch, source, replace: list[torch.Tensor]):
    h = h.clone()
    for b, new in enumerate(replace):
        if new is None:
            continue
        src = source[b]
        cols = ((src >= 0) & batch.visual_mask[b, src.clamp(min=0)]).nonzero().squeeze(1)
        if new.shape[0] != cols.numel():
            raise ValueError(f"sample {b}: {new.shape[0]} replacement states for {cols.numel()} kept visual tokens")
        h[b, cols.to(h.device)] = new.to(h.device, h.dtype)
    return h


def _prune_state(adapter, batch, method, selection, attention_mask, source, stages) -> PruneState:
    samples = []
    for b, images in enumerate(batch.images):
        n = sum(im.num_tokens for im in images)
        keep = selection.keep[b].cpu() if selection is not None else torch.ones(n, dtype=torch.bool)
        scores = selection.scores[b].detach().float().cpu() if selection is not None and selection.scores else None
        per_image, start = [], 0
        for im in images:
            part = slice(start, start + im.num_tokens)
            per_image.append(ImagePruning(im.grid, keep[part], None if scores is None else scores[part],
                                          frames=im.frames, kind=im.kind, image=im.image, view=im.view))
            start += im.num_tokens
        seq = source[b][source[b] >= 0].sort().values
        if batch.source_index is not None:
            seq = batch.source_index[b, seq]
        samples.append(SamplePruning(per_image, seq.cpu()))
    return PruneState(
        method=method.name if method is not None else "none",
        prune_layer=stages[0][0] if stages else None,
        num_layers=adapter.num_layers,
        samples=samples,
        kv_lengths=attention_mask.sum(1).tolist(),
        kv_layers=kv_layers(adapter.layer_types),
        stages=stages,
    )


# ---- decoding ---------------------------------------------------------------------------------------------------


@dataclass
class GenerationParams:
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None

    @classmethod
    def resolve(cls, generation_config: GenerationConfig | None, **overrides) -> "GenerationParams":
        """The model's generation config, then explicit keyword overrides (None means 'not given')."""
        gc = generation_config or GenerationConfig()
        unsupported = {k for k in ("num_beams", "num_return_sequences") if (overrides.get(k) or 1) != 1}
        if unsupported:
            raise ValueError(f"unsupported generation options: {sorted(unsupported)} (only greedy/sampling decode)")
        values = dict(
            max_new_tokens=gc.max_new_tokens if gc.max_new_tokens is not None else 32,
            min_new_tokens=gc.min_new_tokens or 0,
            do_sample=bool(gc.do_sample),
            temperature=gc.temperature if gc.temperature is not None else 1.0,
            top_k=gc.top_k,
            top_p=gc.top_p,
            repetition_penalty=gc.repetition_penalty,
            eos_token_id=gc.eos_token_id,
            pad_token_id=gc.pad_token_id,
        )
        values.update({k: v for k, v in overrides.items() if k in values and v is not None})
        eos = values["eos_token_id"]
        values["eos_token_id"] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if values["pad_token_id"] is None and values["eos_token_id"]:
            values["pad_token_id"] = values["eos_token_id"][0]
        params = cls(**values)
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        return params

    def processors(self, prompt_length: int) -> LogitsProcessorList:
        procs = LogitsProcessorList()
        if self.repetition_penalty not in (None, 1.0):
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.min_new_tokens and self.eos_token_id:
            procs.append(MinNewTokensLengthLogitsProcessor(prompt_length, self.min_new_tokens, self.eos_token_id))
        if self.do_sample:
            if self.temperature not in (None, 1.0):
                procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                procs.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs


@dataclass
class Decoded:
    tokens: torch.Tensor  # [bs, T] generated ids (finished rows padded with pad_token_id)
    seconds: float
    steps: int
    # [bs, T] float32 log-prob of each chosen token under the distribution it was drawn from (after the logits
    # processors); only with return_logprobs=True. RL rollouts need it (train/rl_forward.py recomputes it).
    logprobs: torch.Tensor | None = None


def decode(
    adapter: FamilyAdapter,
    pre: Prefill,
    input_ids: torch.Tensor,
    params: GenerationParams,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    on_token=None,
) -> Decoded:
    """Greedy / sampled decoding on the pruned cache. ``on_token(ids [bs])`` is called with every step's tokens as
    soon as they are chosen (how ``generate(streamer=...)`` streams)."""
    device = pre.logits.device
    _sync(device)
    start = time.perf_counter()
    procs = params.processors(input_ids.shape[1])
    # processors (repetition penalty, min length) look at prompt + generated ids, on the logits' device
    history = input_ids.to(device)
    bs = input_ids.shape[0]
    unfinished = torch.ones(bs, dtype=torch.bool, device=device)
    eos = torch.tensor(params.eos_token_id, device=device) if params.eos_token_id else None
    logits, am, cache = pre.logits, pre.attention_mask, pre.cache
    out, logprobs = [], []
    # Per-call, not per-step: the rotary tables of every decode position (last + 1 ... last + T - 1) come from one
    # rope call, and the attention mask is built once at the first step and then grown by one "attend" column per
    # step (a single query sees every cached key; only the prompt's padding columns are masked, and they stay
    # masked). A first-step mask of None (no padding: the kernel needs no mask for one query) stays None, since
    # the appended columns are never padding. Rebuilding both every step cost ~20 % of a decode step on small
    # models (issue 17).
    rope_all, mask_all, mask_len, first_masks, first = None, {}, 0, {}, 0
    for step in range(params.max_new_tokens):
        scores = procs(history, logits)
        if params.do_sample:
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            token = scores.argmax(-1)
        if eos is not None and params.pad_token_id is not None:
            token = torch.where(unfinished, token, torch.full_like(token, params.pad_token_id))
        out.append(token)
        if return_logprobs:
            logprobs.append(torch.log_softmax(scores.float(), dim=-1).gather(1, token[:, None]).squeeze(1))
        if on_token is not None:
            on_token(token)
        history = torch.cat([history, token[:, None]], dim=1)
        if eos is not None:
            unfinished &= ~torch.isin(token, eos)
            if not bool(unfinished.any()):
                break
        if step == params.max_new_tokens - 1:
            break
        pos = pre.last_positions + step + 1
        am = torch.cat([am, am.new_ones(bs, 1)], dim=1)
        h = adapter.embed_tokens(token[:, None])
        if rope_all is None:
            ahead = params.max_new_tokens - 1 - step
            rope_all = adapter.rope(h.expand(-1, ahead, -1), adapter.next_positions(pre.last_positions + step, ahead))
            first_masks = build_masks(adapter, DecoderSequence(h, pos, am, None, None, cache))
            mask_len, first = am.shape[1], step
            for kind, mask in first_masks.items():
                if kind == "full_attention" and torch.is_tensor(mask) and mask.shape[-1] == mask_len:
                    # The newest column (this token's own key) holds the "attend" value in whatever format the
                    # attention implementation uses (bool, additive float, 0/1 ints): later steps append copies.
                    mask_all[kind] = torch.cat([mask, mask[..., -1:].expand(*mask.shape[:-1], ahead - 1)], dim=-1)
        cos, sin = (t[:, step - first : step - first + 1] for t in rope_all)
        if step == first:
            masks = first_masks
        else:
            # Full attention: the grown mask, or None when the first one was None (never padding after it).
            # Linear attention: None, as its stock builder returns for a single token (never padding).
            # Any other layer type (sliding window) or mask format is rebuilt for this step.
            masks = {
                kind: mask_all[kind][..., : mask_len + step - first] if kind in mask_all
                else None if kind == RECURRENT_LAYER or (kind == KV_LAYER and mask is None) else REBUILD
                for kind, mask in first_masks.items()
            }
            if REBUILD in masks.values():
                rebuilt = build_masks(adapter, DecoderSequence(h, pos, am, None, None, cache))
                masks = {kind: rebuilt[kind] if mask is REBUILD else mask for kind, mask in masks.items()}
        # A generated token owns no layer additions, so the step runs the plain loop with no hooks.
        seq = run_layers(adapter, DecoderSequence(h, pos, am, cos, sin, cache, masks=masks))
        logits = adapter.lm_head(adapter.text_model.norm(seq.hidden))[:, -1].float()
    _sync(device)
    return Decoded(
        tokens=torch.stack(out, dim=1),
        seconds=time.perf_counter() - start,
        steps=len(out),
        logprobs=torch.stack(logprobs, dim=1) if return_logprobs else None,
    )
