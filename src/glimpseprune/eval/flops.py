"""Analytic FLOPs of GlimpsePrune and of the unpruned baseline, and layer-averaged token retention.

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

:func:`method_scoring_flops` counts what a baseline pruning method computes to decide what to keep (attention rows,
ViT block scores, greedy selections) on top of its forward pass; the forward itself is counted by the functions
above with the token counts present at each layer.

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
    from ..adapters import adapter_class, supported_model_types

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
# Retention


# The retention arithmetic lives with every other budget rule (glimpseprune/budget.py); re-exported here for the
# FLOPs reports that print it next to the FLOPs.
from ..budget import kept_ratio_for_layer_averaged, layer_averaged_retention, layer_averaged_retention_schedule  # noqa: E402,F401


# --------------------------------------------------------------------------------------------------------------------
# The baselines' own scoring


def _attention_row_flops(lm: LMDims, keys: int) -> int:
    """One query row recomputed from the cache (``adapters.base.attention_row``): Q projection + scores."""
    return 2 * lm.hidden * lm.heads * lm.head_dim + 2 * lm.heads * lm.head_dim * keys


def _cut_rows_flops(lm: LMDims, stages: Sequence[tuple[int, int]], n_visual: int, text_len: int) -> int:
    """The last prompt token's attention row at every cut layer >= 1, over the keys present before that cut."""
    layers = [int(layer) for layer, _ in stages]
    if not layers or any(not 0 <= x < lm.layers for x in layers) or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"stages need strictly increasing cut layers within [0, {lm.layers}), got {list(stages)}")
    total, present = 0, n_visual
    for layer, kept in stages:
        if not 0 <= kept <= present:
            raise ValueError(f"stage kept counts must be non-increasing within [0, {n_visual}], got {list(stages)}")
        if layer >= 1:
            total += _attention_row_flops(lm, text_len + present)
        present = int(kept)
    return total


def _default_vit_block(vision: VisionDims) -> int:
    return max(vision.full_attention_blocks) if vision.full_attention_blocks else vision.depth - 1


def _vit_windowed(vision: VisionDims, block: int) -> bool:
    return vision.window_patches is not None and block not in vision.full_attention_blocks


def _vit_block_score_flops(vision: VisionDims, counts: Sequence[int], block: int, cls: bool) -> int:
    """Scores of one ViT block recomputed from its captured input (``methods.visionzip``), all images.

    CLIP (``cls``): the CLS query projection 2·D_v², the keys of CLS + P patches 2·(1+P)·D_v² and the CLS row over
    them 2·(1+P)·D_v (H·d_h = D_v). Qwen: the fused qkv projection 2·p·D_v·3D_v of the p = tokens·patches_per_token
    patches and the scores q·kᵀ, 2·p·keys·D_v with keys = p in a full-attention block, min(p, window) in a windowed one
    (only the logits: received attention sums the softmax, it never multiplies by V).
    """
    if not 0 <= block < vision.depth:
        raise ValueError(f"ViT block {block} out of range (0..{vision.depth - 1})")
    d = vision.hidden
    total = 0
    for tokens in counts:
        if tokens == 0:
            continue
        if cls:
            total += 2 * d * d + 2 * (1 + tokens) * d * d + 2 * (1 + tokens) * d
        else:
            p = tokens * vision.patches_per_token
            keys = min(p, vision.window_patches) if _vit_windowed(vision, block) else p
            total += 2 * p * d * 3 * d + 2 * p * keys * d
    return total


def _per_image(name: str, value, counts: Sequence[int]) -> list[int]:
    """An int (one image) or one value per image -> list matching ``counts``."""
    values = [int(value)] if isinstance(value, int) else [int(v) for v in value]
    if len(values) != len(counts) or any(not 0 <= v <= c for v, c in zip(values, counts)):
        raise ValueError(f"{name} {values} must give one count in [0, n_image] per image {list(counts)}")
    return values


def _groups(kept, counts: Sequence[int]) -> list[tuple[int, int]]:
    """(n, k) of every budget group: ``kept`` an int -> one group over all images; a sequence -> one per image."""
    if isinstance(kept, int):
        n = sum(counts)
        if not 0 <= kept <= n:
            raise ValueError(f"kept={kept} must be in [0, {n}]")
        return [(n, kept)]
    return list(zip(counts, _per_image("kept", kept, counts)))


def maxmin_greedy_flops(n: int, k: int, d: int) -> int:
    """``methods.divprune.maxmin_greedy`` on n features of width d picking k: 2·n·d·(n + k).

    The first pick needs every token's nearest other token, the full n×n cosine matrix (in row chunks), 2·n²·d;
    then one similarity row 2·n·d for the first pick and for each of the k − 1 later ones.
    """
    return 0 if k <= 0 or n == 0 else 2 * n * d * (n + k)


def dpp_greedy_flops(n: int, k: int, d: int) -> int:
    """``methods.cdpruner.dpp_greedy`` (incremental Cholesky, no n×n kernel) on n features of width d picking k.

    Step t (0-based) computes one similarity row f·f_j, 2·n·d, and the correction c[:t]ᵀ·c[:t, j], 2·t·n; over
    s = min(k, n) steps 2·n·d·s + n·s·(s − 1). Every step is counted even if the volume runs out early (the rest is
    then filled by relevance, a sort): an upper bound.
    """
    s = min(max(k, 0), n)
    return 2 * n * d * s + n * s * (s - 1)


SCORING_FREE = ("none", "glimpse", "random", "downsample", "resize")
SCORED = ("fastv", "pyramiddrop", "divprune", "cdpruner", "visionzip", "vscan")


def method_scoring_flops(
    method: str,
    dims: ModelDims,
    image_token_counts: Sequence[int],
    text_len: int,
    *,
    stages: Sequence[tuple[int, int]] | None = None,
    kept=None,
    contextual=0,
    block: int | None = None,
    global_block: int | None = None,
    local_block: int | None = None,
    kept_vision=None,
    cls: bool | None = None,
) -> int:
    """FLOPs one sample spends deciding what to keep, beyond the forward pass (what OUR implementations compute).

    ``image_token_counts``: LLM visual tokens per image before pruning (N = their sum); ``text_len``: the sample's
    non-visual prompt tokens. Same conventions as the rest of the module: 2 FLOPs per multiply-accumulate, matrix
    products only, so softmax, normalisation (cosine = dot products of normalised rows), RoPE, means, top-k / sorts and
    argmaxes are not counted. Per method (keyword parameters in brackets):

    * ``fastv``, ``pyramiddrop`` [``stages``: (cut layer, visual tokens present after the cut) as applied]: at every
      cut the last prompt token's attention row at layer K − 1 is recomputed from the cache: its Q projection
      2·D·H·d_h (after the input norm) plus scores 2·H·d_h·(text_len + visual tokens present before the cut).
    * ``divprune`` [``kept``: int = one group over all images, or one count per image for ``per_image``]: per group
      :func:`maxmin_greedy_flops` with d = D (LLM input embeddings).
    * ``cdpruner`` [``kept`` as for divprune]: relevance, one cosine of every visual token with the instruction's
      mean embedding, 2·N·D (when ``text_len`` > 0); per group :func:`dpp_greedy_flops` with d = D.
    * ``visionzip`` [``kept`` and ``contextual`` per image, ``block``, ``cls``]: the ViT block's scores
      (:func:`_vit_block_score_flops`: CLS row on CLIP; qkv projection + chunked q·kᵀ on Qwen) plus the contextual
      merge, a key cosine of every non-kept token with the image's c targets, 2·(n − kept)·c·D_v per image.
    * ``vscan`` [``stages`` = [(0, k1), (llm_layer, k2)], ``kept_vision`` per image (default: k1 for one image),
      ``global_block``, ``local_block``, ``cls``]: the global block's scores, the local block's when it is another
      block (a windowed one on Qwen2.5-VL), the merge of every dropped token into its most key-similar kept token
      2·(n − kept)·kept·D_v per image, and the LLM-stage attention row as for FastV.
    * ``none``, ``glimpse``, ``random``, ``downsample``, ``resize``: 0. GlimpsePrune's glimpse row and VIP are already
      in :func:`prefill_flops`; downsample's pooling is additions only (≈ N·D, no matrix product), ``resize``
      shrinks the image before the ViT.

    ``block`` / ``global_block`` default to the last full-attention ViT block (the last block without windows; the
    block index does not change the cost on CLIP); ``local_block`` defaults to the last windowed block before
    ``global_block``, or ``global_block`` itself (then it is not scored twice). ``cls`` (CLS-row scoring, LLaVA)
    defaults to ``patches_per_token == 1``, which is true of the CLIP towers :func:`dims_from_hf_config` builds.
    """
    counts = [int(c) for c in image_token_counts]
    if any(c < 0 for c in counts) or text_len < 0:
        raise ValueError(f"need non-negative counts and text_len, got {counts}, {text_len}")
    n = sum(counts)
    lm, vision = dims.lm, dims.vision
    cls = vision.patches_per_token == 1 if cls is None else cls
    if method not in SCORING_FREE + SCORED:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(SCORING_FREE + SCORED)}")
    if method in SCORING_FREE or n == 0:
        return 0
    if method in ("fastv", "pyramiddrop"):
        if stages is None:
            raise ValueError(f"{method}: give stages=[(cut layer, kept), ...]")
        return _cut_rows_flops(lm, stages, n, text_len)
    if method in ("divprune", "cdpruner"):
        if kept is None:
            raise ValueError(f"{method}: give kept= (int, or one count per image)")
        groups = _groups(kept, counts)
        if method == "divprune":
            return sum(maxmin_greedy_flops(g, k, lm.hidden) for g, k in groups)
        relevance = 2 * n * lm.hidden if text_len > 0 else 0
        return relevance + sum(dpp_greedy_flops(g, k, lm.hidden) for g, k in groups)
    if method == "visionzip":
        if kept is None:
            raise ValueError("visionzip: give kept= (dominant + contextual per image)")
        kept_i = _per_image("kept", kept, counts)
        ctx_i = _per_image("contextual", contextual, counts)
        if any(c > k for c, k in zip(ctx_i, kept_i)):
            raise ValueError(f"contextual {ctx_i} cannot exceed kept {kept_i}")
        score = _vit_block_score_flops(vision, counts, _default_vit_block(vision) if block is None else block, cls)
        merge = sum(2 * (c - k) * t * vision.hidden for c, k, t in zip(counts, kept_i, ctx_i))
        return score + merge
    if method == "vscan":
        if stages is None:
            raise ValueError("vscan: give stages=[(0, kept after the ViT stage), (llm_layer, kept)]")
        if kept_vision is None:
            if len(counts) != 1:
                raise ValueError("vscan: give kept_vision= per image when a sample has several images")
            kept_vision = int(stages[0][1])
        kv = _per_image("kept_vision", kept_vision, counts)
        g = _default_vit_block(vision) if global_block is None else int(global_block)
        if local_block is None:
            windowed = [i for i in range(g) if vision.full_attention_blocks and i not in vision.full_attention_blocks]
            local_block = windowed[-1] if windowed else g
        score = _vit_block_score_flops(vision, counts, g, cls)
        if int(local_block) != g:
            score += _vit_block_score_flops(vision, counts, int(local_block), cls)
        merge = sum(2 * (c - k) * k * vision.hidden for c, k in zip(counts, kv))
        return score + merge + _cut_rows_flops(lm, stages, n, text_len)
    raise AssertionError(method)  # unreachable: every name in SCORED is handled above
