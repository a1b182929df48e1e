"""The slow, family-agnostic reference for pruning at layer K (one or several cuts), used by every exactness test.

The embeddings, positions and any per-layer visual additions (Qwen3-VL's DeepStack) are whatever the *stock* model
hands its language model (captured with a forward pre-hook on ``model.model.language_model``), so nothing
family-specific is re-implemented here. Then, with no KV cache and no gathering, every decode step recomputes the
whole sequence through every layer of the one layer loop (``layer_loop.run_layers``), and pruning is expressed only
as per-layer attention masks written out by hand here:

- layers before the first cut: prompt tokens attend causally to every prompt token;
- layers after a cut, and every generated token in every layer: attention only to the prompt tokens present at that
  layer (generated tokens: the final kept set) and to generated tokens;
- linear-attention (recurrent) layers have no attention mask to express a cut: each runs, with no cache, on the
  columns present at that layer only, gathered in order (before the first cut: every prompt token; after a cut: the
  tokens kept there), followed by the generated tokens. So a generated token's state in a linear layer below K has
  seen the whole prompt, and from K on only the kept tokens (docs/method.md, "Hybrid linear-attention models").

Positions are the stock ones, never renumbered; generated token t sits at last + 1 + t on every axis. DeepStack-style
additions go, by hand, to the stock visual positions after the stock layers, on every token whether pruned or not
(a pruned token's state no longer matters to anyone: its keys are masked out).
"""

import torch

from glimpseprune.adapters import adapter_for
from glimpseprune.layer_loop import DecoderSequence, LayerHooks, run_layers


class _Captured(Exception):
    pass


@torch.no_grad()
def stock_language_model_inputs(model, inputs: dict) -> dict:
    """The keyword arguments the stock forward passes its language model: inputs_embeds [1, n, D], position_ids
    (Qwen: [4, 1, n] or [3, 1, n]; LLaVA: None) and, for Qwen3-VL, visual_pos_masks / deepstack_visual_embeds."""
    lm = model.model.language_model
    seen = {}

    def hook(_module, args, kwargs):
        seen.update(kwargs)
        raise _Captured  # no need to run the decoder

    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen


@torch.no_grad()
def stock_embeds_and_positions(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [1, n, D], rotary positions: [1, n] or [3, 1, n]) exactly as the stock forward builds them."""
    seen = stock_language_model_inputs(model, inputs)
    embeds, pos = seen["inputs_embeds"], seen.get("position_ids")
    n = embeds.shape[1]
    if pos is None:
        pos = torch.arange(n)[None]
    if pos.ndim == 3 and pos.shape[0] == 4:  # Qwen: [text row; t; h; w] -> the three mRoPE rows
        pos = pos[1:]
    return embeds, pos


class _PresentColumnsAdapter:
    """The family adapter, except that a linear-attention layer runs on the columns ``present(i)`` only (gathered,
    no cache, no padding) and hands its outputs back to those columns; the other columns pass it unchanged (they
    are gone at that layer: no one reads them again)."""

    def __init__(self, adapter, present):
        self.adapter, self.present = adapter, present

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def run_layer(self, i, hidden, mask, cos_sin, position_ids, cache):
        if self.adapter.layer_types[i] != "linear_attention":
            return self.adapter.run_layer(i, hidden, mask, cos_sin, position_ids, cache)
        cols = self.present(i).nonzero().squeeze(1)
        cos, sin = cos_sin
        out = hidden.clone()
        out[:, cols] = self.adapter.run_layer(i, hidden[:, cols], None, (cos[:, cols], sin[:, cols]),
                                              position_ids[..., cols], None)
        return out


class _ReferenceHooks(LayerHooks):
    """Per-layer hand-written masks, the merging replacement at its cut, stock DeepStack additions by hand."""

    def __init__(self, layer_masks, kinds, replace_at, replace_cols, replace, deepstack):
        self.layer_masks, self.kinds = layer_masks, kinds
        self.replace_at, self.replace_cols, self.replace = replace_at, replace_cols, replace
        self.deepstack = deepstack  # (visual_pos_masks [1, n_prompt], [per layer: [n_vis, D]]) or None

    def before_layer(self, i, seq):
        mask = self.layer_masks(i)[None, None]
        seq.masks = {kind: mask for kind in self.kinds}
        if self.replace is not None and i == self.replace_at:
            seq.hidden = seq.hidden.clone()
            seq.hidden[0, self.replace_cols] = self.replace.to(seq.hidden.dtype)

    def after_layer(self, i, seq, layer_input):
        if self.deepstack is None or i >= len(self.deepstack[1]):
            return
        where, embeds = self.deepstack
        cols = where[0].nonzero().squeeze(1)  # prompt columns only: generated tokens own no additions
        seq.hidden = seq.hidden.clone()
        seq.hidden[0, cols] = seq.hidden[0, cols] + embeds[i].to(seq.hidden.dtype)


@torch.no_grad()
def reference_generate(model, inputs: dict, prunable: torch.Tensor, keep_visual, prune_layer: int,
                       max_new_tokens: int, replace: torch.Tensor | None = None, replace_stage: int = -1,
                       min_new_tokens: int = 0):
    """Greedy tokens and first-step logits for ONE sample (batch 1, no padding).

    ``prunable``: [n] bool, the prompt positions that are pruning candidates; ``keep_visual``: bool over them, or a
    list of (cut layer, keep mask) with nested keep sets for multi-stage methods (``prune_layer`` is then ignored).
    ``replace``: hidden states [kept, D] that the kept candidates take on entering the cut layer of stage
    ``replace_stage`` (merging baselines; default the last stage). ``min_new_tokens``: as ``generate``'s, the
    model's end-of-sequence tokens are not chosen before that many tokens (the returned logits are untouched).
    """
    adapter = adapter_for(model)
    lm = model.model.language_model
    assert inputs["input_ids"].shape[0] == 1
    seen = stock_language_model_inputs(model, inputs)
    embeds, pos = stock_embeds_and_positions(model, inputs)
    deepstack = None
    if seen.get("deepstack_visual_embeds") is not None:
        deepstack = (seen["visual_pos_masks"], list(seen["deepstack_visual_embeds"]))
    stages = keep_visual if isinstance(keep_visual, list) else [(prune_layer, keep_visual)]
    n = embeds.shape[1]
    cand = prunable.nonzero().squeeze(1)
    kept_at = []  # (layer, bool over prompt columns)
    for layer, keep in stages:
        kept = torch.ones(n, dtype=torch.bool)
        kept[cand] = keep
        kept_at.append((layer, kept))
    final = kept_at[-1][1]
    replace_cols = cand[stages[replace_stage][1]] if replace is not None else None
    tokens, first_logits = [], None
    for step in range(max_new_tokens):
        total = n + step
        if tokens:
            embeds_all = torch.cat([embeds, lm.embed_tokens(torch.tensor([tokens]))], dim=1)
            pos_all = torch.cat([pos, pos[..., -1:] + torch.arange(1, step + 1)], dim=-1)
        else:
            embeds_all, pos_all = embeds, pos
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        gen = torch.ones(step, dtype=torch.bool)
        is_generated = torch.arange(total) >= n
        final_ok = torch.cat([final, gen])

        def present(i):
            """Columns present at layer i: the prompt tokens kept by the cuts at or below i, and every generated one."""
            prompt_ok = torch.ones(n, dtype=torch.bool)
            for layer, kept in kept_at:
                if i >= layer:
                    prompt_ok = kept
            return torch.cat([prompt_ok, gen])

        def layer_mask(i):
            # prompt queries see the keys present at this layer; generated queries only ever see the final set
            return causal & torch.where(is_generated[:, None], final_ok[None, :], present(i)[None, :])

        cos, sin = lm.rotary_emb(embeds_all, pos_all)
        hooks = _ReferenceHooks(layer_mask, set(adapter.layer_types), kept_at[replace_stage][0], replace_cols,
                                replace, deepstack)
        if pos_all.ndim == 3:  # the engine's Qwen layout: a 1-D text row first, then the mRoPE rows
            pos_all = torch.cat([torch.arange(total)[None, None], pos_all], dim=0)
        seq = DecoderSequence(embeds_all, pos_all, None, cos, sin)
        h = run_layers(_PresentColumnsAdapter(adapter, present), seq, hooks).hidden
        logits = model.lm_head(lm.norm(h[:, -1]))[0].float()
        if first_logits is None:
            first_logits = logits
        choice = logits.clone()
        if step < min_new_tokens:
            eos = model.generation_config.eos_token_id
            choice[torch.tensor(eos if isinstance(eos, list) else [eos])] = float("-inf")
        tokens.append(int(choice.argmax()))
    return tokens, first_logits
