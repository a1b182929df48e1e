"""Training scaffolding of the mini base model: the probes on its visual tokens and the losses they feed.

None of this is part of the saved model (a stock Qwen2.5-VL); the probe weights live only in the pretraining
checkpoint. See ``docs/mini_model.md`` for why each term exists.

- a dense probe on the vision tower's merged tokens: per token cell, the covering colour, the covering shape and
  the shape centred in it (:func:`weighted_cross_entropy`, optionally tied to the word embeddings:
  :func:`aligned_logits`);
- a relevance probe on the decoder's visual states (:func:`pointer_loss` or a plain BCE);
- a grounding loss on the decoder's attention (:func:`grounding_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

N_COLOURS, N_SHAPES = 7, 6  # background + 6 colours, background + 5 shapes


def box_attention_shares(attentions, layers, input_ids, labels, box_masks, image_token_id, query_starts=None):
    """Per layer and supervised position: the share of its visual attention (mean over heads) on its answer's box
    tokens. The supervised positions of an answer with boxes: the one that predicts it, or, where ``query_starts``
    gives a start for it, every position from that start to the one that predicts it.

    Returns ``(shares [len(layers), rows], weights [rows], n_answers)``, ``weights`` = 1 / (the answer's number of
    rows), rows in answer order; None when no answer has boxes."""
    import torch

    rows_b, rows_q, box_cols, weights, n_answers = [], [], [], [], 0
    seq = input_ids.shape[1]
    for b, masks in enumerate(box_masks):
        lab = labels[b] != -100
        starts = (lab & ~torch.cat([lab.new_zeros(1), lab[:-1]])).nonzero().squeeze(1).tolist()
        vis = (input_ids[b] == image_token_id).nonzero().squeeze(1)
        firsts = query_starts[b] if query_starts is not None else [None] * len(starts)
        for q_start, mask, first in zip(starts, masks, firsts):
            if mask is None or not mask.any() or len(vis) != len(mask):
                continue
            q = q_start - 1  # the position that predicts the answer's first token
            rows = list(range(q if first is None else first, q + 1))
            cols = torch.zeros(seq, dtype=torch.bool)
            cols[vis[mask]] = True
            rows_b += [b] * len(rows)
            rows_q += rows
            box_cols += [cols] * len(rows)
            weights += [1.0 / len(rows)] * len(rows)
            n_answers += 1
    if not n_answers:
        return None
    rows_b, rows_q = torch.tensor(rows_b), torch.tensor(rows_q)
    on_box = torch.stack(box_cols).to(attentions[0].dtype)  # [rows, seq]
    on_image = (input_ids == image_token_id)[rows_b].to(attentions[0].dtype)
    shares = []
    # One gather per layer (a loop of per-answer slices made backward write a full-size gradient per slice).
    for layer in layers:
        att = attentions[layer].mean(1)[rows_b, rows_q]  # [rows, seq]
        shares.append((att * on_box).sum(-1) / (att * on_image).sum(-1).clamp_min(1e-9))
    return torch.stack(shares), torch.tensor(weights, dtype=attentions[0].dtype), n_answers


def grounding_loss(attentions, layers, input_ids, labels, box_masks, image_token_id, query_starts=None):
    """Mean over answers with boxes and over ``layers`` of -log(share of the visual attention on the box tokens),
    averaged over the answer's supervised positions (:func:`box_attention_shares`)."""
    import torch

    found = box_attention_shares(attentions, layers, input_ids, labels, box_masks, image_token_id, query_starts)
    if found is None:
        return None
    shares, weights, n_answers = found
    return (weights * -torch.log(shares.clamp_min(1e-6))).sum() / (n_answers * len(layers))


def rms_normalised(x):
    """Parameter-free RMS norm over the last dimension: what the probes read (they must not reward large tokens)."""
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def weighted_cross_entropy(logits, targets, object_weight: float = 1.0):
    """Mean cross-entropy over cells (``-100`` ignored) where object cells (target > 0) weigh ``object_weight``."""
    import torch
    from torch import nn

    valid = targets >= 0
    weights = torch.where(targets > 0, float(object_weight), 1.0) * valid
    ce = nn.functional.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1e-9)


def word_class_ids(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids standing for each colour and each shape word (single-token spellings only)."""
    from ..data.scenes import COLOURS, PLURALS, SHAPES

    def ids(words):
        out = []
        for w in words:
            pieces = tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                out.append(pieces[0])
        if not out:
            raise ValueError(f"none of {words} is a single token")
        return out

    colours = [ids([c, " " + c]) for c in COLOURS]
    shapes = [ids([s, " " + s, " " + PLURALS[s]]) for s in SHAPES]
    return colours, shapes


def aligned_logits(merged, logits, embeddings, colour_ids, shape_ids, scale):
    """Replace the object-class logits of the colour and covering-shape probes with scale·cos(token, word)."""
    import torch
    import torch.nn.functional as F

    def classes(groups):
        return torch.stack([embeddings[g].mean(0) for g in groups])

    h = F.normalize(merged, dim=-1)
    colour = scale * h @ F.normalize(classes(colour_ids), dim=-1).T
    shape = scale * h @ F.normalize(classes(shape_ids), dim=-1).T
    c_bg, _, s_bg, rest = torch.split(logits, [1, N_COLOURS - 1, 1, logits.shape[-1] - N_COLOURS - 1], dim=-1)
    return torch.cat([c_bg, colour, s_bg, shape, rest[:, N_SHAPES - 1:]], dim=-1)


def pointer_loss(logits, targets, grid_thw, null_logit):
    """Softmax relevance loss over each image's visual tokens plus a null slot (see ``relevance_loss``).

    logits, targets: [n_visual_total] for the whole batch, images in order; grid_thw: [n_images, 3] patch grids.
    """
    import torch

    counts = (grid_thw.prod(-1) // 4).tolist()  # 2x2 merge
    terms = []
    for z, t in zip(torch.split(logits, counts), torch.split(targets, counts)):
        pos = t > 0.5
        neg_and_null = torch.cat([z[~pos], null_logit.reshape(1)])
        if pos.any():
            # each marked token against every unmarked token and the null slot
            others = torch.logsumexp(neg_and_null, 0)
            terms.append((torch.logaddexp(z[pos], others) - z[pos]).mean())
        else:
            terms.append(torch.logsumexp(neg_and_null, 0) - null_logit)
    return torch.stack(terms).mean()


@dataclass
class TrainingProbes:
    """The probes' trainable parts: the dense probe (``aux_head``), the relevance probe (``rel_head``), the softmax
    relevance loss's "nothing here" logit (``rel_null``) and the aligned probe's temperature (``aux_scale``)."""

    aux_head: object  # nn.Linear(D, N_COLOURS + 2·N_SHAPES)
    rel_head: object  # nn.Linear(D, 1)
    rel_null: object  # nn.Parameter, 0-d
    aux_scale: object  # nn.Parameter, 0-d

    @classmethod
    def create(cls, hidden: int) -> "TrainingProbes":
        import torch
        from torch import nn

        return cls(
            aux_head=nn.Linear(hidden, N_COLOURS + 2 * N_SHAPES),
            rel_head=nn.Linear(hidden, 1),
            rel_null=nn.Parameter(torch.zeros(())),
            aux_scale=nn.Parameter(torch.tensor(10.0)),
        )

    def parameters(self) -> list:
        """In a fixed order (the optimiser state depends on it)."""
        return list(self.aux_head.parameters()) + list(self.rel_head.parameters()) + [self.rel_null, self.aux_scale]


@dataclass
class StepLosses:
    loss: object  # the total that is back-propagated
    lm: object  # the model's output (None in the vision-only phase); ``lm.loss`` is the language-model term
    rel_loss: object = None
    attn_loss: object = None
    aux_loss: object = None


def pretrain_losses(model, probes: TrainingProbes, batch: dict, extras: dict, cfg, captured: dict, word_ids,
                    vision_only: bool) -> StepLosses:
    """One step's objective: the language-model loss on the answers, plus the weighted relevance, grounding and
    dense-probe terms that ``cfg`` (the pretraining config) switches on. ``captured["merged"]`` holds the vision
    tower's merged tokens of this batch (a forward hook); ``vision_only``: the vision tower and its probe alone."""
    import torch
    from torch import nn

    aux_targets, box_masks = extras["aux_targets"], extras["box_masks"]
    query_starts, rel_targets = extras["query_starts"], extras["relevance_targets"]
    if vision_only:  # the vision tower and its probe alone (the hook captures the merged tokens)
        model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        lm = None
        loss = torch.zeros(())
    else:
        lm = model(**batch, output_attentions=bool(cfg.attn_weight),
                   output_hidden_states=bool(cfg.relevance_weight))
        loss = lm.loss
    rel_loss = None
    if cfg.relevance_weight and not vision_only:
        hidden = lm.hidden_states[cfg.relevance_layer][batch["input_ids"] == model.config.image_token_id]
        hidden = rms_normalised(hidden)
        rel_logits = probes.rel_head(hidden).squeeze(-1)
        if cfg.relevance_loss == "softmax":
            rel_loss = pointer_loss(rel_logits, rel_targets, batch["image_grid_thw"],
                                    probes.rel_null)
        else:
            rel_loss = nn.functional.binary_cross_entropy_with_logits(
                rel_logits, rel_targets, pos_weight=torch.tensor(cfg.relevance_pos_weight))
        loss = loss + cfg.relevance_weight * rel_loss
    attn_loss = None
    if cfg.attn_weight and not vision_only:
        attn_loss = grounding_loss(lm.attentions, cfg.attn_layers, batch["input_ids"], batch["labels"],
                                   box_masks, model.config.image_token_id, query_starts)
        if attn_loss is not None:
            loss = loss + cfg.attn_weight * attn_loss
    aux_loss = torch.zeros(())
    if (cfg.aux_weight or vision_only) and (aux_targets >= 0).any():
        merged = rms_normalised(captured["merged"])
        logits = probes.aux_head(merged)
        if cfg.aux_aligned:
            logits = aligned_logits(merged, logits, model.get_input_embeddings().weight, *word_ids,
                                    probes.aux_scale)
        parts = torch.split(logits, [N_COLOURS, N_SHAPES, N_SHAPES], dim=-1)
        aux_loss = sum(weighted_cross_entropy(p, aux_targets[k], cfg.aux_object_weight)
                       for k, p in enumerate(parts)) / 3
        loss = loss + (cfg.aux_weight or 1.0) * aux_loss
    return StepLosses(loss, lm, rel_loss, attn_loss, aux_loss)
