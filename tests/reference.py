"""A slow, obviously-correct reference for pruning at layer K, written without the engine's machinery.

No KV cache and no gathering: every decode step recomputes the whole sequence (prompt + generated so far) through
every layer by hand, and pruning is expressed only as attention masks:

- layers < K: prompt tokens attend causally to every valid prompt token (the full-length layers);
- layers >= K, and every generated token in every layer: attention only to kept prompt tokens and generated tokens.

Positions are the stock ones (get_rope_index), never renumbered; generated token t sits at last + 1 + t.
This is exactly the computation the pruned engine must reproduce.
"""

import torch


@torch.no_grad()
def reference_generate(model, inputs: dict, keep_visual, prune_layer: int, max_new_tokens: int, replace=None,
                       replace_stage: int = -1):
    """Greedy tokens and first-step logits for ONE sample (batch 1, no padding).

    Multi-stage: pass ``keep_visual`` as a list of (layer, keep mask) with nested keep sets; ``prune_layer`` is then
    ignored. ``replace``: hidden states [kept, D] that the kept visual tokens take on entering the cut layer of stage
    ``replace_stage`` (default the last).
    """
    stages = keep_visual if isinstance(keep_visual, list) else [(prune_layer, keep_visual)]
    vlm = model.model
    lm = vlm.language_model
    ids = inputs["input_ids"]
    assert ids.shape[0] == 1
    embeds = lm.embed_tokens(ids)
    image_mask = ids == model.config.image_token_id
    feats = torch.cat(vlm.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output)
    embeds = embeds.masked_scatter(image_mask[..., None], feats)
    pos, _ = vlm.get_rope_index(
        ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )  # [3, 1, n]
    n = ids.shape[1]
    visual_cols = image_mask[0].nonzero().squeeze(1)
    kept_at = []  # (layer, bool over prompt columns)
    for layer, keep in stages:
        kept = torch.ones(n, dtype=torch.bool)
        kept[visual_cols] = keep
        kept_at.append((layer, kept))
    final = kept_at[-1][1]
    tokens, first_logits = [], None
    for step in range(max_new_tokens):
        total = n + step
        if tokens:
            embeds_all = torch.cat([embeds, lm.embed_tokens(torch.tensor([tokens]))], dim=1)
            new_pos = pos[:, :, -1:] + torch.arange(1, step + 1).view(1, 1, -1)
            pos_all = torch.cat([pos, new_pos], dim=2)
        else:
            embeds_all, pos_all = embeds, pos
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        gen = torch.ones(step, dtype=torch.bool)
        is_generated = torch.arange(total) >= n
        final_ok = torch.cat([final, gen])

        def layer_mask(i):
            prompt_ok = torch.ones(n, dtype=torch.bool)
            for layer, kept in kept_at:
                if i >= layer:
                    prompt_ok = kept
            ok = torch.cat([prompt_ok, gen])
            # prompt queries see the keys present at this layer; generated queries only ever see the final set
            return causal & torch.where(is_generated[:, None], final_ok[None, :], ok[None, :])

        h = embeds_all
        cos_sin = lm.rotary_emb(h, pos_all)
        for i, layer in enumerate(lm.layers):
            if replace is not None and i == kept_at[replace_stage][0]:
                h = h.clone()
                h[0, visual_cols[stages[replace_stage][1]]] = replace
            h = layer(h, attention_mask=layer_mask(i)[None, None], position_embeddings=cos_sin, position_ids=None)
        logits = model.lm_head(lm.norm(h[:, -1]))[0].float()
        if first_logits is None:
            first_logits = logits
        tokens.append(int(logits.argmax()))
    return tokens, first_logits
