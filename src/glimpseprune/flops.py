"""Analytic FLOPs of GlimpsePrune, of the unpruned baseline and of the building blocks of the baselines' scoring.

This is the corrected FLOPs model of docs/method.md §15.4. Conventions, applied everywhere:

* 2 FLOPs per multiply-accumulate; only matrix products are counted. Biases, norms, activations, softmax, RoPE,
  embedding look-ups and the gathers of the pruning step are ignored (they are linear in the tokens and small).
* Attention at query length n over m keys costs 2·n·m·H·d_h for the scores and the same for the weighted sum. With
  the default ``causal=False`` the full n·m rectangle is counted, not the causal half: that is the reference
  counter's convention, kept so our numbers compare with published ones. ``causal=True`` counts only the
  query/key pairs a causal mask lets through.
* The LM head runs once per token whose logits are needed: in prefill only the last prompt token (the first answer
  token comes from it), in decoding once per generated step.
* Projections use the real widths (H·d_h for Q/O, H_kv·d_h for K/V: grouped-query attention is not rounded to D²),
  and the LLM MLP is the 3-matrix gated one (gate, up, down) of Qwen2 and Llama.

The reference counter had three defects that this model fixes: after pruning it counted only the kept *visual*
tokens (we count text + kept visual), it did not multiply the VIP's output projection by the token count (every
VIP projection here scales with N), and it ignored the glimpse token and its extra attention row (counted here).

What a baseline pruning method computes to decide what to keep (attention rows, ViT block scores, greedy
selections) on top of its forward pass is counted by the method's own file in ``methods/``, which registers it
(``register_method(name, scoring_flops=...)``) from the building blocks at the end of this module;
``methods.method_scoring_flops`` looks it up by name. The forward itself is counted by the functions here with the
token counts present at each layer. This module is a component: the eval and benchmark recipes use it, and it
imports neither.

The ``dims_from_hf_config`` constructor reads the sizes from transformers config objects, so the FLOPs of a model
can be computed without loading weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LMDims:
    """Sizes of the language model."""

    hidden: int  # D
    layers: int  # L
    heads: int  # H, query heads
    kv_heads: int  # H_kv
    head_dim: int  # d_h
    ffn: int  # MLP intermediate width (gated: gate and up are both D x ffn)
    vocab: int  # LM-head output size


@dataclass(frozen=True)
class VisionDims:
    """Sizes of the vision tower and of the projector/merger that turns its output into LLM tokens.

    ``patches_per_token`` ViT positions make one LLM visual token: 4 for Qwen's 2x2 merge, 1 for LLaVA.
    ``extra_tokens_per_image`` are ViT positions that never become LLM tokens (CLIP's CLS, dropped by LLaVA).
    ``projector`` lists the (in, out) widths of the linear layers applied once per LLM visual token.
    ``window_patches`` is the number of patches in one local-attention window; blocks not listed in
    ``full_attention_blocks`` attend only inside their window. ``None`` means every block attends to the whole image.
    """

    hidden: int  # D_v
    depth: int
    mlp: int  # MLP intermediate width
    gated_mlp: bool  # SwiGLU-style 3-matrix MLP (Qwen2.5-VL) or 2-matrix MLP (CLIP, Qwen2-VL)
    patches_per_token: int
    patch_input: int  # values per patch entering the patch embedding: channels x temporal patch x patch^2
    projector: tuple[tuple[int, int], ...]
    extra_tokens_per_image: int = 0
    window_patches: int | None = None
    full_attention_blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class VIPDims:
    """Sizes of the VIP (docs/method.md §6.1). ``input_width`` is S·H, the width of the stacked glimpse rows.

    ``heads`` does not change the FLOPs (the Q/K and V widths are split, not multiplied); it is kept so the dims
    describe the module completely.
    """

    input_width: int  # S·H
    vision_width: int  # D_v, width of the visual conditions
    size: int = 256  # F
    cond_size: int = 512  # C
    layers: int = 4
    heads: int = 4


@dataclass(frozen=True)
class ModelDims:
    lm: LMDims
    vision: VisionDims
    vip: VIPDims


# --------------------------------------------------------------------------------------------------------------------
# Reading sizes from transformers configs


def _lm_dims(text_config) -> LMDims:
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return LMDims(
        hidden=text_config.hidden_size,
        layers=text_config.num_hidden_layers,
        heads=heads,
        kv_heads=text_config.num_key_value_heads or heads,
        head_dim=head_dim,
        ffn=text_config.intermediate_size,
        vocab=text_config.vocab_size,
    )


def dims_from_hf_config(config, selected_layers: int = 1, vip_layers: int = 4) -> ModelDims:
    """Build LLM, ViT and VIP dims from the config of any family with an adapter (the adapter knows its ViT).

    ``selected_layers`` is S, the number of LLM layers whose glimpse row feeds the VIP (1 in every release), so the
    VIP input width is S·H. ``vip_layers`` is the number of VIP blocks (= number of ViT condition layers).
    """
    from .adapters import adapter_class, supported_model_types

    model_type = getattr(config, "model_type", None)
    if model_type not in supported_model_types():
        raise TypeError(f"unsupported config (model_type={model_type!r}); supported: {supported_model_types()}")
    types = set(getattr(config.text_config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        # Linear-attention (Gated DeltaNet) layers cost neither attention's n·m term nor its projections, and
        # sliding layers see a window: counting them as full attention would be a wrong number, so they are refused.
        raise ValueError(f"FLOPs are modelled for full-attention decoders only; this {model_type} config has layer "
                         f"types {sorted(types)}")
    lm = _lm_dims(config.text_config)
    vision = VisionDims(**adapter_class(model_type).flops_vision_dims(config, lm.hidden))
    vip = VIPDims(input_width=selected_layers * lm.heads, vision_width=vision.hidden, layers=vip_layers)
    return ModelDims(lm=lm, vision=vision, vip=vip)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


def _attention_pairs(n: int, m: int, causal: bool) -> int:
    """Query/key pairs for n queries over m keys; causal: the queries are the last n of the m positions."""
    if not causal:
        return n * m
    if m < n:
        raise ValueError(f"causal attention needs at least as many keys as queries (n={n}, m={m})")
    return n * (m - n) + n * (n + 1) // 2


def _lm_linear_flops(lm: LMDims, n: int) -> int:
    q_width, kv_width = lm.heads * lm.head_dim, lm.kv_heads * lm.head_dim
    projections = 2 * n * lm.hidden * (2 * q_width + 2 * kv_width)  # Q, O and K, V
    mlp = 3 * 2 * n * lm.hidden * lm.ffn  # gate, up, down
    return projections + mlp


def decoder_layer_flops(lm: LMDims, n: int, m: int | None = None, causal: bool = False) -> int:
    """One decoder layer with n query tokens over m keys (default m = n, a prefill without cache).

    Q/O projections 2·n·D·(H·d_h) each, K/V 2·n·D·(H_kv·d_h) each, scores and weighted sum 2·n·m·H·d_h each
    (full rectangle unless ``causal``), MLP 3·2·n·D·FFN.
    """
    m = n if m is None else m
    return _lm_linear_flops(lm, n) + 2 * 2 * _attention_pairs(n, m, causal) * lm.heads * lm.head_dim


def lm_linear_flops_per_token(lm: LMDims) -> int:
    """Projection and MLP FLOPs of all L layers for one token, without attention scores and without the LM head."""
    return lm.layers * _lm_linear_flops(lm, 1)


def lm_head_flops(lm: LMDims, tokens: int = 1) -> int:
    return 2 * tokens * lm.hidden * lm.vocab


def _check_counts(image_token_counts: Sequence[int] | None, n_visual: int) -> list[int]:
    counts = [n_visual] if image_token_counts is None else [int(c) for c in image_token_counts]
    if any(c < 0 for c in counts) or sum(counts) != n_visual:
        raise ValueError(f"image_token_counts {counts} must be non-negative and sum to n_visual={n_visual}")
    return counts


def vip_flops(vip: VIPDims, image_token_counts: Sequence[int]) -> int:
    """The VIP over N = sum(image_token_counts) visual tokens; attention is block-diagonal, one block per image.

    Per VIP layer: condition projection 2·N·D_v·C; Q and K projections 2·N·(F+C)² each (they act on [x; condition]);
    V and O projections 2·N·F² each; scores 2·N_img²·(F+C) and weighted sum 2·N_img²·(F+C) per image; gated MLP
    F -> 2F (gate and up) -> F, i.e. 3·2·N·F·2F. Once: input projection 2·N·(S·H)·F and output head 2·N·F.

    The weighted sum is counted at the Q/K width F+C, not F: ``modules/vip.py`` zero-pads V to the Q/K head width so
    a fused attention kernel runs without an N×N map, and that kernel multiplies the padded columns too. This is
    what the module executes (checked against ``torch.utils.flop_counter.FlopCounterMode`` in tests/modules).
    """
    counts = [int(c) for c in image_token_counts]
    n = sum(counts)
    f, qk = vip.size, vip.size + vip.cond_size
    per_layer = (
        2 * n * vip.vision_width * vip.cond_size
        + 2 * (2 * n * qk * qk)
        + 2 * (2 * n * f * f)
        + sum(2 * c * c * qk + 2 * c * c * qk for c in counts)  # scores + weighted sum over V padded to F+C
        + 3 * 2 * n * f * (2 * f)
    )
    return vip.layers * per_layer + 2 * n * vip.input_width * f + 2 * n * f


def vision_flops(vision: VisionDims, image_token_counts: Sequence[int]) -> int:
    """The ViT and projector for images producing the given numbers of LLM visual tokens.

    Per image with p ViT positions (tokens·patches_per_token + extra): patch embedding 2·patches·patch_input·D_v;
    per block the Q, K, V, O projections 4·2·p·D_v² and the MLP (3 or 2)·2·p·D_v·mlp; attention 2·2·p²·D_v in
    full-attention blocks and 2·2·p·w·D_v in windowed blocks (w = patches per window, capped at p). The windowed term
    assumes the image tiles into whole windows; Qwen pads edge windows, which this ignores. The projector runs once per
    LLM token. CLIP's class embedding is not a patch and costs no patch embedding.
    """
    total = 0
    for tokens in image_token_counts:
        patches = tokens * vision.patches_per_token
        p = patches + vision.extra_tokens_per_image
        total += 2 * patches * vision.patch_input * vision.hidden
        mlp_matrices = 3 if vision.gated_mlp else 2
        total += vision.depth * (4 * 2 * p * vision.hidden**2 + mlp_matrices * 2 * p * vision.hidden * vision.mlp)
        for block in range(vision.depth):
            windowed = vision.window_patches is not None and block not in vision.full_attention_blocks
            keys = min(p, vision.window_patches) if windowed else p
            total += 2 * 2 * p * keys * vision.hidden
        total += sum(2 * tokens * d_in * d_out for d_in, d_out in vision.projector)
    return total


# --------------------------------------------------------------------------------------------------------------------
# Prefill and decode


def prefill_flops(
    lm: LMDims,
    n_text: int,
    n_visual: int,
    n_kept: int,
    prune_layer_K: int,
    *,
    glimpse: bool = True,
    vip: VIPDims | None = None,
    image_token_counts: Sequence[int] | None = None,
    vision: VisionDims | None = None,
    causal: bool = False,
) -> dict[str, int]:
    """Prefill FLOPs of a GlimpsePrune forward pass, by part.

    ``n_text`` counts every non-visual prompt token (system prompt, question, chat-template tokens including the
    generation prompt); n = n_text + n_visual. Layers 0..K-1 run on n + 1 tokens (the glimpse is appended when
    ``glimpse``), layers K..L-1 on n' = n_text + n_kept tokens: the text is still there after pruning.
    ``image_token_counts`` splits the visual tokens per image (default: one image); it matters for the block-diagonal
    VIP attention and the per-image ViT attention.

    Parts:

    * ``llm_full_layers``: K layers at length n (+1 with the glimpse);
    * ``llm_pruned_layers``: L - K layers at length n';
    * ``glimpse_row``: the glimpse query against all keys of layer K-1, 2·H·d_h·(n+1). It is computed a second time
      because fused attention kernels do not return probabilities. The glimpse's own Q projection is not added: the
      glimpse is one of the n+1 tokens whose projections ``llm_full_layers`` already counts;
    * ``vip``: see :func:`vip_flops`; ``vision``: see :func:`vision_flops` (0 unless ``vision`` is given);
    * ``lm_head``: the last token's logits;
    * ``total`` and ``total_without_vision``.

    The unpruned baseline is the same call with n_kept = n_visual, K = L, no glimpse and no VIP
    (:func:`baseline_prefill_flops`).
    """
    if not 0 <= prune_layer_K <= lm.layers:
        raise ValueError(f"prune_layer_K must be in [0, {lm.layers}], got {prune_layer_K}")
    if not 0 <= n_kept <= n_visual or n_text < 0:
        raise ValueError(f"need n_text >= 0 and 0 <= n_kept <= n_visual, got {n_text}, {n_kept}, {n_visual}")
    if glimpse and prune_layer_K == 0:
        raise ValueError("the glimpse row is read from layer K-1, so glimpse=True needs prune_layer_K >= 1")
    counts = _check_counts(image_token_counts, n_visual)

    n_full = n_text + n_visual + int(glimpse)
    n_pruned = n_text + n_kept
    parts = {
        "llm_full_layers": prune_layer_K * decoder_layer_flops(lm, n_full, causal=causal),
        "llm_pruned_layers": (lm.layers - prune_layer_K) * decoder_layer_flops(lm, n_pruned, causal=causal),
        "glimpse_row": 2 * lm.heads * lm.head_dim * n_full if glimpse else 0,
        "vip": vip_flops(vip, counts) if vip is not None else 0,
        "lm_head": lm_head_flops(lm, 1),
        "vision": vision_flops(vision, counts) if vision is not None else 0,
    }
    parts["total"] = sum(parts.values())
    parts["total_without_vision"] = parts["total"] - parts["vision"]
    return parts


def baseline_prefill_flops(
    lm: LMDims,
    n_text: int,
    n_visual: int,
    *,
    image_token_counts: Sequence[int] | None = None,
    vision: VisionDims | None = None,
    causal: bool = False,
) -> dict[str, int]:
    """Prefill FLOPs of the unpruned model: every layer at n = n_text + n_visual, no glimpse, no VIP."""
    return prefill_flops(
        lm,
        n_text,
        n_visual,
        n_visual,
        lm.layers,
        glimpse=False,
        vip=None,
        image_token_counts=image_token_counts,
        vision=vision,
        causal=causal,
    )


def decode_flops(lm: LMDims, context_len: int, new_tokens: int) -> dict[str, int]:
    """FLOPs of ``new_tokens`` single-token decode steps over a KV cache that starts at ``context_len`` tokens.

    Step i (0-based) attends to context_len + i + 1 keys (the cache plus itself) in all L layers and computes its
    logits. For GlimpsePrune ``context_len`` is the pruned length n' = n_text + n_kept: every layer's cache is
    pruned. The prefill already produced the first answer token, so T answer tokens take T - 1 decode steps.
    A single query sees every key, so the causal convention does not change decoding.
    """
    if context_len < 0 or new_tokens < 0:
        raise ValueError(f"context_len and new_tokens must be >= 0, got {context_len}, {new_tokens}")
    keys = new_tokens * context_len + new_tokens * (new_tokens + 1) // 2  # sum of the steps' key lengths
    llm = lm.layers * (_lm_linear_flops(lm, new_tokens) + 2 * 2 * keys * lm.heads * lm.head_dim)
    head = lm_head_flops(lm, new_tokens)
    return {"llm_layers": llm, "lm_head": head, "total": llm + head}


# --------------------------------------------------------------------------------------------------------------------
# Building blocks of the baselines' own scoring. Each baseline's file in ``methods/`` registers its scoring FLOPs
# (``register_method(name, scoring_flops=...)``) from these; ``methods.method_scoring_flops`` looks them up by name.


def no_scoring_flops(dims: ModelDims, image_token_counts: Sequence[int], text_len: int, **params) -> int:
    """The scoring FLOPs of a method that scores nothing (random picks, pooling, a resized image, the unpruned model).

    GlimpsePrune's own glimpse row and VIP are not scoring in this sense: :func:`prefill_flops` counts them.
    """
    return 0


def attention_row_flops(lm: LMDims, keys: int) -> int:
    """One query row recomputed from the cache (``adapters.base.attention_row``): Q projection + scores."""
    return 2 * lm.hidden * lm.heads * lm.head_dim + 2 * lm.heads * lm.head_dim * keys


def cut_rows_flops(lm: LMDims, stages: Sequence[tuple[int, int]], n_visual: int, text_len: int) -> int:
    """The last prompt token's attention row at every cut layer >= 1, over the keys present before that cut."""
    layers = [int(layer) for layer, _ in stages]
    if not layers or any(not 0 <= x < lm.layers for x in layers) or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"stages need strictly increasing cut layers within [0, {lm.layers}), got {list(stages)}")
    total, present = 0, n_visual
    for layer, kept in stages:
        if not 0 <= kept <= present:
            raise ValueError(f"stage kept counts must be non-increasing within [0, {n_visual}], got {list(stages)}")
        if layer >= 1:
            total += attention_row_flops(lm, text_len + present)
        present = int(kept)
    return total


def default_vit_block(vision: VisionDims) -> int:
    """The last full-attention ViT block (the last block when no block is windowed)."""
    return max(vision.full_attention_blocks) if vision.full_attention_blocks else vision.depth - 1


def vit_windowed(vision: VisionDims, block: int) -> bool:
    return vision.window_patches is not None and block not in vision.full_attention_blocks


def vit_block_score_flops(vision: VisionDims, counts: Sequence[int], block: int, cls: bool | None = None) -> int:
    """Scores of one ViT block recomputed from its captured input (``methods.visionzip``), all images.

    CLIP (``cls``): the CLS query projection 2·D_v², the keys of CLS + P patches 2·(1+P)·D_v² and the CLS row over
    them 2·(1+P)·D_v (H·d_h = D_v). Qwen: the fused qkv projection 2·p·D_v·3D_v of the p = tokens·patches_per_token
    patches and the scores q·kᵀ, 2·p·keys·D_v with keys = p in a full-attention block, min(p, window) in a windowed one
    (only the logits: received attention sums the softmax, it never multiplies by V). ``cls`` (CLS-row scoring,
    LLaVA) defaults to ``patches_per_token == 1``, which is true of the CLIP towers :func:`dims_from_hf_config` builds.
    """
    if not 0 <= block < vision.depth:
        raise ValueError(f"ViT block {block} out of range (0..{vision.depth - 1})")
    cls = vision.patches_per_token == 1 if cls is None else cls
    d = vision.hidden
    total = 0
    for tokens in counts:
        if tokens == 0:
            continue
        if cls:
            total += 2 * d * d + 2 * (1 + tokens) * d * d + 2 * (1 + tokens) * d
        else:
            p = tokens * vision.patches_per_token
            keys = min(p, vision.window_patches) if vit_windowed(vision, block) else p
            total += 2 * p * d * 3 * d + 2 * p * keys * d
    return total


def per_image_counts(name: str, value, counts: Sequence[int]) -> list[int]:
    """An int (one image) or one value per image -> list matching ``counts``."""
    values = [int(value)] if isinstance(value, int) else [int(v) for v in value]
    if len(values) != len(counts) or any(not 0 <= v <= c for v, c in zip(values, counts)):
        raise ValueError(f"{name} {values} must give one count in [0, n_image] per image {list(counts)}")
    return values


def budget_groups(kept, counts: Sequence[int]) -> list[tuple[int, int]]:
    """(n, k) of every budget group: ``kept`` an int -> one group over all images; a sequence -> one per image."""
    if isinstance(kept, int):
        n = sum(counts)
        if not 0 <= kept <= n:
            raise ValueError(f"kept={kept} must be in [0, {n}]")
        return [(n, kept)]
    return list(zip(counts, per_image_counts("kept", kept, counts)))
