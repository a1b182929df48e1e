"""A slow, family-agnostic reference for pruning at layer K (generalises tests/reference.py).

The embeddings and positions are whatever the *stock* model hands its language model (captured with a forward
pre-hook on ``model.model.language_model``), so nothing family-specific is re-implemented here. Then, with no KV
cache and no gathering, every decode step recomputes the whole sequence through every layer, and pruning is
expressed only as per-layer attention masks:

- layers < K: prompt tokens attend causally to every prompt token;
- layers >= K, and every generated token in every layer: attention only to kept prompt tokens and generated tokens.

Positions are the stock ones, never renumbered; generated token t sits at last + 1 + t on every axis.
"""

import torch


class _Captured(Exception):
    pass


@torch.no_grad()
def stock_embeds_and_positions(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [1, n, D], rotary positions: [1, n] or [3, 1, n]) exactly as the stock forward builds them."""
    lm = model.model.language_model
    seen = {}

    def hook(_module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]
        seen["pos"] = kwargs.get("position_ids")
        raise _Captured  # no need to run the decoder

    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    embeds, pos = seen["embeds"], seen["pos"]
    n = embeds.shape[1]
    if pos is None:
        pos = torch.arange(n)[None]
    if pos.ndim == 3 and pos.shape[0] == 4:  # Qwen: [text row; t; h; w] -> the three mRoPE rows
        pos = pos[1:]
    return embeds, pos


@torch.no_grad()
def reference_generate(model, inputs: dict, prunable: torch.Tensor, keep_visual: torch.Tensor, prune_layer: int,
                       max_new_tokens: int, replace: torch.Tensor | None = None):
    """Greedy tokens and first-step logits for ONE sample (batch 1, no padding).

    ``prunable``: [n] bool, the prompt positions that are pruning candidates; ``keep_visual``: bool over them.
    ``replace``: hidden states [kept, D] that the kept candidates take on entering layer ``prune_layer`` (merging
    baselines).
    """
    lm = model.model.language_model
    assert inputs["input_ids"].shape[0] == 1
    embeds, pos = stock_embeds_and_positions(model, inputs)
    n = embeds.shape[1]
    kept = torch.ones(n, dtype=torch.bool)
    kept[prunable.nonzero().squeeze(1)] = keep_visual
    tokens, first_logits = [], None
    for step in range(max_new_tokens):
        total = n + step
        if tokens:
            embeds_all = torch.cat([embeds, lm.embed_tokens(torch.tensor([tokens]))], dim=1)
            pos_all = torch.cat([pos, pos[..., -1:] + torch.arange(1, step + 1)], dim=-1)
        else:
            embeds_all, pos_all = embeds, pos
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        key_ok = torch.cat([kept, torch.ones(step, dtype=torch.bool)])
        is_generated = torch.arange(total) >= n
        early = causal & (key_ok[None, :] | ~is_generated[:, None])  # prompt queries see all, generated see kept
        late = causal & key_ok[None, :]
        h = embeds_all
        cos_sin = lm.rotary_emb(h, pos_all)
        for i, layer in enumerate(lm.layers):
            if replace is not None and i == prune_layer:
                h = h.clone()
                h[0, prunable.nonzero().squeeze(1)[keep_visual]] = replace.to(h.dtype)
            mask = (early if i < prune_layer else late)[None, None]
            h = layer(h, attention_mask=mask, position_embeddings=cos_sin, position_ids=None)
        logits = model.lm_head(lm.norm(h[:, -1]))[0].float()
        if first_logits is None:
            first_logits = logits
        tokens.append(int(logits.argmax()))
    return tokens, first_logits
