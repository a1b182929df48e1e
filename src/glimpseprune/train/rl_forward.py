"""Pruned rollouts and the pruned scoring forward of GlimpsePrune+ RL (stage 2, Run A).

A rollout is our batched pruned generation with sampling: ``engine.prefill`` cuts the prompt at layer K (kept set from
the VIP or from ground-truth boxes), ``engine.decode`` samples on the short cache and returns the log-prob of every
sampled token under the distribution it was drawn from.

The loss needs the same log-probs again, with gradients through the LoRA weights. ``completion_logprobs`` computes
them with exactly the rollout's computation:

    prefill(prompt, FixedKeep(rollout's kept set, K))      same cut layer, same kept tokens, same positions
        -> logits predicting completion token 0            (the rollout's first sampled token)
    completion[:-1] in one pass on the pruned cache        positions last + 1, + 2, ... (as decode feeds them)
        -> logits predicting completion tokens 1..T-1
    log_softmax(logits / temperature)[token]

The glimpse token of a VIP rollout is appended after the prompt, so no prompt token ever sees it, and it leaves the
sequence at the cut: replaying the kept set without it gives the same completion logits (tested against the
rollout's own log-probs, batched with left padding). The reference implementation instead rescored completions on a
sequence pruned at layer 0 (a train/rollout mismatch); here the two are the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters.base import FamilyAdapter, PreparedBatch
from ..engine import GenerationParams, Prefill, decode, prefill
from ..layer_loop import DecoderSequence, run_layers
from ..methods import FixedKeep, PruneMethod

KEEP_SOURCES = ("vip", "boxes")


@dataclass
class Rollout:
    """G completions of each of P prompts: completion rows p*G .. p*G+G-1 belong to prompt p."""

    batch: PreparedBatch  # the P prepared prompts (embeddings carry no gradient: LoRA never touches them)
    keep: list[torch.Tensor]  # per prompt: bool over its visual tokens, the kept set of the rollout's cut
    prune_layer: int
    group_size: int
    completion: torch.Tensor  # [P*G, T] sampled ids (pad after the end-of-turn token)
    completion_mask: torch.Tensor  # [P*G, T] float: 1 up to and including the first end token
    logprobs: torch.Tensor  # [P*G, T] float32 sampling log-probs of the completion tokens
    temperature: float

    @property
    def kept_ratios(self) -> list[float]:
        """Per prompt: the kept share of its visual tokens."""
        return [float(k.float().mean()) if k.numel() else 1.0 for k in self.keep]


def expand_prefill(pre: Prefill, group_size: int) -> Prefill:
    """Each prompt's prefill repeated for its G completions (rows p*G .. p*G+G-1): the prompt, its kept set and
    therefore its logits and KV cache are the same for every completion of a group, so the prefill runs once."""
    if group_size == 1:
        return pre
    rows = torch.arange(pre.logits.shape[0], device=pre.logits.device).repeat_interleave(group_size)
    for layer in pre.cache.layers:
        # Each cache layer repeats what it holds: keys and values, or a linear-attention layer's states.
        layer.reorder_cache(rows)
    return Prefill(
        logits=pre.logits.repeat_interleave(group_size, 0),
        cache=pre.cache,
        attention_mask=pre.attention_mask.repeat_interleave(group_size, 0),
        last_positions=pre.last_positions.repeat_interleave(group_size, -2),
        pruning=pre.pruning,
        seconds=pre.seconds,
    )


def check_sampling(params: GenerationParams) -> None:
    """RL scores tokens under softmax(logits / temperature); any other processor would change the distribution the
    tokens were drawn from, so the loss's log-probs would no longer be the sampling log-probs."""
    if not params.do_sample:
        raise ValueError("RL rollouts must sample (do_sample=True)")
    extra = {
        "top_k": params.top_k not in (None, 0),
        "top_p": params.top_p not in (None, 1.0),
        "repetition_penalty": params.repetition_penalty not in (None, 1.0),
        "min_new_tokens": bool(params.min_new_tokens),
    }
    bad = sorted(k for k, v in extra.items() if v)
    if bad:
        raise ValueError(f"RL rollouts support temperature sampling only; unsupported: {bad}")
    if not params.temperature or params.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {params.temperature}")


def completion_mask(tokens: torch.Tensor, eos_token_id: list[int]) -> torch.Tensor:
    """[N, T] float: 1 on every token up to and including the first end token (all ones without one)."""
    if not eos_token_id:
        return torch.ones_like(tokens, dtype=torch.float32)
    is_end = torch.isin(tokens, torch.tensor(eos_token_id, device=tokens.device))
    ended_before = (is_end.long().cumsum(1) - is_end.long()) > 0
    return (~ended_before).float()


@torch.no_grad()
def rollout(
    adapter: FamilyAdapter,
    inputs: dict,
    method: PruneMethod,
    params: GenerationParams,
    generator: torch.Generator | None = None,
    group_size: int = 1,
) -> Rollout:
    """Sample ``group_size`` completions per prompt of ``inputs`` with the cut at ``method``'s layer.

    ``method``: ``GlimpsePruneMethod`` (the VIP's own selection) or ``FixedKeep`` (e.g. ground-truth box masks, one
    per prompt). The prompt is prefilled once and its cache shared by its completions.
    """
    check_sampling(params)
    batch = adapter.prepare(inputs, method.vit_layers)
    pre = expand_prefill(prefill(adapter, batch, method), group_size)
    input_ids = batch.input_ids.repeat_interleave(group_size, 0)
    dec = decode(adapter, pre, input_ids, params, generator, return_logprobs=True)
    keep = [s.keep.to(batch.input_ids.device) for s in pre.pruning.samples]
    if method.uses_glimpse:  # the scoring forward replays the kept set without the glimpse: drop its ViT features
        batch.vit_features = None
    return Rollout(
        batch=batch,
        keep=keep,
        prune_layer=method.prune_layer,
        group_size=group_size,
        completion=dec.tokens,
        completion_mask=completion_mask(dec.tokens, params.eos_token_id),
        logprobs=dec.logprobs,
        temperature=float(params.temperature),
    )


def select_prompts(r: Rollout, prompts: list[int]) -> Rollout:
    """The sub-rollout of some prompts with all their completions (a micro-batch of the loss)."""
    b = r.batch
    dev = b.input_ids.device
    idx = torch.as_tensor(prompts, dtype=torch.long, device=dev)
    rows = (idx[:, None] * r.group_size + torch.arange(r.group_size, device=dev)).reshape(-1)
    batch = PreparedBatch(
        input_ids=b.input_ids[idx],
        attention_mask=b.attention_mask[idx],
        inputs_embeds=b.inputs_embeds[idx],
        position_ids=b.position_ids.index_select(-2, idx),
        visual_mask=b.visual_mask[idx],
        images=[b.images[i] for i in prompts],
        vit_features=None,
        source_index=None if b.source_index is None else b.source_index[idx],
        extras={},
    )
    return Rollout(
        batch=batch,
        keep=[r.keep[i] for i in prompts],
        prune_layer=r.prune_layer,
        group_size=r.group_size,
        completion=r.completion[rows],
        completion_mask=r.completion_mask[rows],
        logprobs=r.logprobs[rows],
        temperature=r.temperature,
    )


def completion_logprobs(adapter: FamilyAdapter, r: Rollout) -> torch.Tensor:
    """[P*G, T] float32 log-probs of ``r.completion`` under the current weights, computed the rollout's way.

    Differentiable with respect to every weight of the decoder (the LoRA factors in RL); run it under
    ``torch.no_grad()`` for the frozen reference (adapter disabled).
    """
    pre = expand_prefill(prefill(adapter, r.batch, FixedKeep(r.keep, r.prune_layer)), r.group_size)
    logits = [pre.logits[:, None]]
    steps = r.completion.shape[1]
    if steps > 1:
        ids = r.completion[:, :-1]
        bs = ids.shape[0]
        offsets = torch.arange(1, steps, device=ids.device, dtype=pre.last_positions.dtype)
        pos = pre.last_positions + offsets  # decode feeds generated token j at last + j + 1
        # decode extends the mask with ones for every row (finished rows included), so the replay does the same
        am = torch.cat([pre.attention_mask, pre.attention_mask.new_ones(bs, steps - 1)], dim=1)
        h = adapter.embed_tokens(ids)
        cos, sin = adapter.rope(h, pos)
        # the one decoder-layer loop, no hooks: all steps at once on the pruned cache (masks per layer type)
        h = run_layers(adapter, DecoderSequence(h, pos, am, cos, sin, pre.cache)).hidden
        logits.append(adapter.lm_head(adapter.text_model.norm(h)).float())
    logits = torch.cat(logits, dim=1) / r.temperature
    return torch.log_softmax(logits, dim=-1).gather(2, r.completion[..., None]).squeeze(2)
