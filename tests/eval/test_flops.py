"""FLOPs against hand counts on tiny dims, the fixed reference defects, and sanity checks on the real model sizes.

Expected values are written out as explicit arithmetic (2 FLOPs per multiply-accumulate), independent of the
module's helpers.
"""

import pytest
from transformers import LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig

from glimpseprune.budget import (
    kept_ratio_for_layer_averaged,
    layer_averaged_retention,
    layer_averaged_retention_schedule,
)
from glimpseprune.flops import (
    LMDims,
    ModelDims,
    VIPDims,
    VisionDims,
    baseline_prefill_flops,
    decode_flops,
    decoder_layer_flops,
    dims_from_hf_config,
    lm_linear_flops_per_token,
    prefill_flops,
    vip_flops,
    vision_flops,
)
from glimpseprune.methods import method_scoring_flops
from glimpseprune.methods.cdpruner import dpp_greedy_flops
from glimpseprune.methods.divprune import maxmin_greedy_flops

# D=8, L=4, H=2, H_kv=1, d_h=4 (so H·d_h = 8, H_kv·d_h = 4), FFN=16, V=10
TINY_LM = LMDims(hidden=8, layers=4, heads=2, kv_heads=1, head_dim=4, ffn=16, vocab=10)
# F=4, C=2 (Q/K width 6), 2 layers, S·H=2, D_v=3
TINY_VIP = VIPDims(input_width=2, vision_width=3, size=4, cond_size=2, layers=2, heads=2)
# D_v=4, 2 blocks, gated MLP of width 8, 4 patches per token, windows of 4 patches, block 1 full attention
TINY_VISION = VisionDims(
    hidden=4,
    depth=2,
    mlp=8,
    gated_mlp=True,
    patches_per_token=4,
    patch_input=6,
    projector=((16, 16), (16, 8)),
    window_patches=4,
    full_attention_blocks=(1,),
)


def test_decoder_layer_hand_count():
    # n = m = 10
    q_o = 2 * (2 * 10 * 8 * 8)  # 2560
    k_v = 2 * (2 * 10 * 8 * 4)  # 1280
    attention = 2 * (2 * 10 * 10 * 8)  # scores + weighted sum, full 10x10 rectangle: 3200
    mlp = 3 * 2 * 10 * 8 * 16  # 7680
    assert decoder_layer_flops(TINY_LM, 10) == q_o + k_v + attention + mlp == 14720
    # causal: query i sees i+1 keys, 55 pairs instead of 100
    assert decoder_layer_flops(TINY_LM, 10, causal=True) == q_o + k_v + 2 * (2 * 55 * 8) + mlp
    # one query over 7 keys (a decode step)
    one = 2 * (2 * 8 * 8) + 2 * (2 * 8 * 4) + 2 * (2 * 1 * 7 * 8) + 3 * 2 * 8 * 16
    assert decoder_layer_flops(TINY_LM, 1, 7) == decoder_layer_flops(TINY_LM, 1, 7, causal=True) == one


def test_vip_hand_count():
    # two images of 4 and 2 tokens, N = 6
    cond = 2 * 6 * 3 * 2  # 72
    q_k = 2 * (2 * 6 * 6 * 6)  # 864
    v_o = 2 * (2 * 6 * 4 * 4)  # 384: the output projection is multiplied by N too
    # per-image blocks 4² and 2²; scores and weighted sum both at the Q/K width F+C = 6 (V is zero-padded to it so
    # a fused kernel runs, and the kernel multiplies the padding too): 480
    attention = (2 * 16 * 6 + 2 * 16 * 6) + (2 * 4 * 6 + 2 * 4 * 6)
    mlp = 3 * 2 * 6 * 4 * 8  # 1152
    per_layer = cond + q_k + v_o + attention + mlp  # 2952
    expected = 2 * per_layer + 2 * 6 * 2 * 4 + 2 * 6 * 4  # + input projection 96 + output head 48
    assert vip_flops(TINY_VIP, [4, 2]) == expected == 6048


def test_vip_scales_with_tokens():
    # Every term of a block-diagonal VIP doubles when the images are duplicated (the reference's o_proj did not).
    assert vip_flops(TINY_VIP, [4, 4]) == 2 * vip_flops(TINY_VIP, [4])


def test_vision_hand_count():
    # image 1: 4 LLM tokens = 16 patches; image 2: 2 tokens = 8 patches
    image1 = (
        2 * 16 * 6 * 4  # patch embedding: 768
        + 2 * (4 * 2 * 16 * 4 * 4 + 3 * 2 * 16 * 4 * 8)  # 2 blocks x (QKVO 2048 + gated MLP 3072)
        + 2 * 2 * 16 * 4 * 4  # block 0: windows of 4 patches
        + 2 * 2 * 16 * 16 * 4  # block 1: full attention over 16 patches
        + 2 * 4 * 16 * 16 + 2 * 4 * 16 * 8  # merger, once per LLM token
    )
    image2 = (
        2 * 8 * 6 * 4
        + 2 * (4 * 2 * 8 * 4 * 4 + 3 * 2 * 8 * 4 * 8)
        + 2 * 2 * 8 * 4 * 4
        + 2 * 2 * 8 * 8 * 4
        + 2 * 2 * 16 * 16 + 2 * 2 * 16 * 8
    )
    assert (image1, image2) == (19200, 8576)
    assert vision_flops(TINY_VISION, [4, 2]) == image1 + image2


def test_vision_window_is_capped_by_image_size():
    # 1 token = 4 patches = exactly one window: windowed and full blocks cost the same attention
    assert vision_flops(TINY_VISION, [1]) == (
        2 * 4 * 6 * 4 + 2 * (4 * 2 * 4 * 4 * 4 + 3 * 2 * 4 * 4 * 8) + 2 * (2 * 2 * 4 * 4 * 4) + 2 * 16 * 16 + 2 * 16 * 8
    )


def test_vision_class_token_runs_through_the_vit_but_is_not_a_patch():
    # CLIP-like: 1 patch per token plus a CLS position that the projector never sees; 3 tokens -> 4 positions
    clip_like = VisionDims(
        hidden=2, depth=1, mlp=4, gated_mlp=False, patches_per_token=1, patch_input=3,
        projector=((2, 4), (4, 4)), extra_tokens_per_image=1,
    )  # fmt: skip
    expected = (
        2 * 3 * 3 * 2  # patch embedding of the 3 patches only
        + 4 * 2 * 4 * 2 * 2 + 2 * 2 * 4 * 2 * 4  # QKVO and 2-matrix MLP over 4 positions
        + 2 * 2 * 4 * 4 * 2  # full attention 4x4
        + 2 * 3 * 2 * 4 + 2 * 3 * 4 * 4  # projector on the 3 LLM tokens
    )
    assert vision_flops(clip_like, [3]) == expected == 564


def test_prefill_hand_count():
    # 3 text tokens, 6 visual tokens in two images (4 + 2), 2 kept, K = 2 of L = 4, glimpse on
    flops = prefill_flops(
        TINY_LM, 3, 6, 2, 2, glimpse=True, vip=TINY_VIP, image_token_counts=[4, 2], vision=TINY_VISION
    )
    full_layer = 2 * (2 * 10 * 8 * 8) + 2 * (2 * 10 * 8 * 4) + 2 * (2 * 10 * 10 * 8) + 3 * 2 * 10 * 8 * 16  # n+1=10
    pruned_layer = 2 * (2 * 5 * 8 * 8) + 2 * (2 * 5 * 8 * 4) + 2 * (2 * 5 * 5 * 8) + 3 * 2 * 5 * 8 * 16  # 3+2=5
    assert flops["llm_full_layers"] == 2 * full_layer == 29440
    assert flops["llm_pruned_layers"] == 2 * pruned_layer == 13120
    assert flops["glimpse_row"] == 2 * 2 * 10 * 4 == 160
    assert flops["lm_head"] == 2 * 8 * 10 == 160
    assert flops["vip"] == 6048  # test_vip_hand_count
    assert flops["vision"] == 19200 + 8576
    without_vision = 29440 + 13120 + 160 + 160 + 6048
    assert flops["total_without_vision"] == without_vision
    assert flops["total"] == without_vision + 19200 + 8576


def test_baseline_hand_count():
    flops = baseline_prefill_flops(TINY_LM, 3, 6)
    layer = 2 * (2 * 9 * 8 * 8) + 2 * (2 * 9 * 8 * 4) + 2 * (2 * 9 * 9 * 8) + 3 * 2 * 9 * 8 * 16
    assert flops["llm_full_layers"] == 4 * layer
    assert flops["llm_pruned_layers"] == flops["glimpse_row"] == flops["vip"] == flops["vision"] == 0
    assert flops["total"] == flops["total_without_vision"] == 4 * layer + 2 * 8 * 10
    assert flops == prefill_flops(TINY_LM, 3, 6, 6, 4, glimpse=False)


def test_text_tokens_count_after_pruning():
    # The reference used only the kept visual count after layer K; the text is still in the sequence.
    with_text = prefill_flops(TINY_LM, 100, 6, 2, 2)
    layer_at_102 = 2 * (2 * 102 * 8 * 8) + 2 * (2 * 102 * 8 * 4) + 2 * (2 * 102 * 102 * 8) + 3 * 2 * 102 * 8 * 16
    assert with_text["llm_pruned_layers"] == 2 * layer_at_102
    assert with_text["llm_pruned_layers"] > prefill_flops(TINY_LM, 0, 6, 2, 2)["llm_pruned_layers"]


def test_glimpse_is_counted():
    with_glimpse = prefill_flops(TINY_LM, 3, 6, 2, 2, glimpse=True)
    without = prefill_flops(TINY_LM, 3, 6, 2, 2, glimpse=False)
    assert with_glimpse["glimpse_row"] > 0 and without["glimpse_row"] == 0
    assert with_glimpse["llm_full_layers"] > without["llm_full_layers"]


def test_decode_hand_count():
    # 3 steps over a cache of 5: key lengths 6, 7, 8
    per_step_linear = 2 * (2 * 8 * 8) + 2 * (2 * 8 * 4) + 3 * 2 * 8 * 16
    attention = sum(2 * (2 * keys * 8) for keys in (6, 7, 8))
    flops = decode_flops(TINY_LM, 5, 3)
    assert flops["llm_layers"] == 4 * (3 * per_step_linear + attention)
    assert flops["lm_head"] == 3 * 2 * 8 * 10
    assert flops["total"] == flops["llm_layers"] + flops["lm_head"]
    assert decode_flops(TINY_LM, 5, 0)["total"] == 0


def test_invalid_arguments():
    with pytest.raises(ValueError):
        prefill_flops(TINY_LM, 3, 6, 7, 2)  # kept > visual
    with pytest.raises(ValueError):
        prefill_flops(TINY_LM, 3, 6, 2, 5)  # K > L
    with pytest.raises(ValueError):
        prefill_flops(TINY_LM, 3, 6, 2, 0, glimpse=True)
    with pytest.raises(ValueError, match="sum to n_visual"):
        prefill_flops(TINY_LM, 3, 6, 2, 2, image_token_counts=[4, 1])
    with pytest.raises(ValueError):
        decoder_layer_flops(TINY_LM, 5, 3, causal=True)


# --------------------------------------------------------------------------------------------------------------------
# Real model sizes (config objects only, no weights)


def qwen25_vl_7b():
    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
        ),
        vision_config=dict(
            hidden_size=1280,
            depth=32,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
    )


def llava_15_7b():
    return LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            patch_size=14,
            image_size=336,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            intermediate_size=11008,
            vocab_size=32000,
        ),
    )


def test_dims_from_qwen2_5_vl_config():
    dims = dims_from_hf_config(qwen25_vl_7b())
    assert dims.lm == LMDims(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, ffn=18944, vocab=152064)
    assert dims.vision == VisionDims(
        hidden=1280,
        depth=32,
        mlp=3420,
        gated_mlp=True,
        patches_per_token=4,
        patch_input=3 * 2 * 14 * 14,
        projector=((5120, 5120), (5120, 3584)),
        window_patches=64,
        full_attention_blocks=(7, 15, 23, 31),
    )
    assert dims.vip == VIPDims(input_width=28, vision_width=1280)


def test_dims_from_qwen2_vl_config():
    config = Qwen2VLConfig(
        text_config=dict(
            hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
            intermediate_size=8960, vocab_size=151936,
        ),
        vision_config=dict(embed_dim=1280, depth=32, mlp_ratio=4, num_heads=16, hidden_size=1536),
    )  # fmt: skip
    dims = dims_from_hf_config(config)
    assert dims.lm == LMDims(hidden=1536, layers=28, heads=12, kv_heads=2, head_dim=128, ffn=8960, vocab=151936)
    assert (dims.vision.hidden, dims.vision.mlp, dims.vision.gated_mlp) == (1280, 5120, False)
    assert dims.vision.projector == ((5120, 5120), (5120, 1536))
    assert dims.vision.window_patches is None
    assert dims.vip.input_width == 12


def test_dims_from_llava_config():
    dims = dims_from_hf_config(llava_15_7b())
    assert dims.lm == LMDims(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, ffn=11008, vocab=32000)
    assert dims.vision == VisionDims(
        hidden=1024,
        depth=24,
        mlp=4096,
        gated_mlp=False,
        patches_per_token=1,
        patch_input=3 * 14 * 14,
        projector=((1024, 4096), (4096, 4096)),
        extra_tokens_per_image=1,
    )
    assert dims.vip == VIPDims(input_width=32, vision_width=1024)


def test_unsupported_config():
    with pytest.raises(TypeError, match="unsupported config"):
        dims_from_hf_config(object())


def test_llm_linear_flops_per_token_match_landscape():
    # docs/method.md §15.4: ≈ 13.1 GFLOP (Qwen2.5-VL-7B) and ≈ 13.0 GFLOP (LLaVA-1.5-7B) per token
    assert lm_linear_flops_per_token(dims_from_hf_config(qwen25_vl_7b()).lm) == pytest.approx(13.1e9, rel=0.02)
    assert lm_linear_flops_per_token(dims_from_hf_config(llava_15_7b()).lm) == pytest.approx(13.0e9, rel=0.02)


def test_vit_flops_per_token_match_landscape():
    # ≈ 5.1 GFLOP per merged token on Qwen2.5-VL (a small image, so the full-attention blocks add little)
    qwen = dims_from_hf_config(qwen25_vl_7b()).vision
    assert vision_flops(qwen, [16]) / 16 == pytest.approx(5.1e9, rel=0.03)
    # ≈ 0.64 GFLOP per token on LLaVA-1.5 for the linear layers; attention over 577 positions adds ≈ 9 %
    llava = dims_from_hf_config(llava_15_7b()).vision
    assert 0.64e9 < vision_flops(llava, [576]) / 576 < 0.64e9 * 1.12


def test_prefill_ceiling_on_qwen2_5_vl_7b():
    # docs/method.md §15.3: ≈ 1.42x (LLM only) and ≈ 1.27x (with the ViT) at 7.4 % kept; ≤ 1.30x with everything pruned
    dims = dims_from_hf_config(qwen25_vl_7b())
    n_text, n_visual = 60, 1400
    kept = round(0.074 * n_visual)
    base = baseline_prefill_flops(dims.lm, n_text, n_visual, vision=dims.vision)
    gp = prefill_flops(dims.lm, n_text, n_visual, kept, 19, vip=dims.vip, vision=dims.vision)
    assert base["total_without_vision"] / gp["total_without_vision"] == pytest.approx(1.40, abs=0.03)
    assert base["total"] / gp["total"] == pytest.approx(1.26, abs=0.03)
    nothing_kept = prefill_flops(dims.lm, n_text, n_visual, 0, 19, vip=dims.vip, vision=dims.vision)
    assert base["total"] / nothing_kept["total"] <= 1.30


# --------------------------------------------------------------------------------------------------------------------
# Retention


def test_layer_averaged_retention():
    assert layer_averaged_retention(0.074, 19, 28) == pytest.approx((19 + 9 * 0.074) / 28)
    assert layer_averaged_retention(0.074, 19, 28) == pytest.approx(0.70, abs=0.005)
    assert layer_averaged_retention(1.0, 19, 28) == 1.0
    assert layer_averaged_retention(0.0, 19, 28) == pytest.approx(19 / 28)


def test_kept_ratio_inverse():
    assert kept_ratio_for_layer_averaged(layer_averaged_retention(0.3, 22, 32), 22, 32) == pytest.approx(0.3)
    assert kept_ratio_for_layer_averaged(19 / 28, 19, 28) == 0.0
    assert kept_ratio_for_layer_averaged(1.0, 19, 28) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unreachable.*K/L = 0.6786"):
        kept_ratio_for_layer_averaged(0.222, 19, 28)
    with pytest.raises(ValueError):
        kept_ratio_for_layer_averaged(1.2, 19, 28)
    with pytest.raises(ValueError):
        kept_ratio_for_layer_averaged(0.9, 28, 28)


def test_multi_stage_schedule():
    # before the LLM: every layer holds 64 of 576 tokens
    assert layer_averaged_retention_schedule([(0, 64 / 576)], 32) == pytest.approx(64 / 576)
    # full for layers 0-7, half for 8-15, a quarter for 16-23, an eighth for 24-31
    stages = [(8, 0.5), (16, 0.25), (24, 0.125)]
    assert layer_averaged_retention_schedule(stages, 32) == pytest.approx((8 + 4 + 2 + 1) / 32)
    assert layer_averaged_retention_schedule([], 32) == 1.0
    with pytest.raises(ValueError):
        layer_averaged_retention_schedule([(16, 0.5), (8, 0.25)], 32)
    with pytest.raises(ValueError):
        layer_averaged_retention_schedule([(8, 0.5), (8, 0.25)], 32)
    with pytest.raises(ValueError):
        layer_averaged_retention_schedule([(8, 1.5)], 32)
    with pytest.raises(ValueError):
        layer_averaged_retention_schedule([(40, 0.5)], 32)


# --------------------------------------------------------------------------------------------------------------------
# The baselines' own scoring (method_scoring_flops): hand counts, then the formulas against torch's FLOP counter run
# on our implementations (aten.mv is registered by hand: the stock counter ignores matrix-vector products).

TINY_DIMS = ModelDims(lm=TINY_LM, vision=TINY_VISION, vip=TINY_VIP)
# A CLIP-like tower (LLaVA): one patch per token, CLS dropped after the ViT; D_v = 4.
TINY_CLIP = VisionDims(hidden=4, depth=2, mlp=8, gated_mlp=False, patches_per_token=1, patch_input=12,
                       projector=((4, 8), (8, 8)), extra_tokens_per_image=1)
TINY_CLIP_DIMS = ModelDims(lm=TINY_LM, vision=TINY_CLIP, vip=TINY_VIP)


def _counted(fn):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mv = {torch.ops.aten.mv: lambda a, b, *args, **kwargs: 2 * a[0] * a[1]}
    with FlopCounterMode(display=False, custom_mapping=mv) as counter:
        fn()
    return counter.get_total_flops()


def test_scoring_fastv_hand_count():
    # 5 text + 10 visual tokens, cut at K=2: one row of the last token at layer 1 over all 15 keys.
    q_proj = 2 * 8 * 8  # D x H·d_h: 128
    scores = 2 * 8 * 15  # H·d_h per key: 240
    assert method_scoring_flops("fastv", TINY_DIMS, [10], 5, stages=[(2, 3)]) == q_proj + scores == 368
    # The row does not depend on how many are kept, nor on how the visual tokens split into images.
    assert method_scoring_flops("fastv", TINY_DIMS, [6, 4], 5, stages=[(2, 9)]) == 368


def test_scoring_pyramiddrop_counts_one_row_per_stage_over_the_tokens_present():
    # cuts at 1 (10 -> 6) and 2 (6 -> 3): rows over 5 + 10 and 5 + 6 keys
    expected = (128 + 2 * 8 * 15) + (128 + 2 * 8 * 11)
    assert method_scoring_flops("pyramiddrop", TINY_DIMS, [10], 5, stages=[(1, 6), (2, 3)]) == expected == 672


def test_scoring_divprune_hand_count():
    # n = 10, k = 3, d = D = 8: full n x n cosine matrix for the first pick, then one row per pick
    assert method_scoring_flops("divprune", TINY_DIMS, [10], 5, kept=3) == 2 * 10 * 10 * 8 + 3 * (2 * 10 * 8) == 2080
    # per image (groups of 6 and 4 keeping 2 and 1)
    per_image = (2 * 6 * 6 * 8 + 2 * (2 * 6 * 8)) + (2 * 4 * 4 * 8 + 1 * (2 * 4 * 8))
    assert method_scoring_flops("divprune", TINY_DIMS, [6, 4], 5, kept=[2, 1]) == per_image == 1088
    assert method_scoring_flops("divprune", TINY_DIMS, [10], 5, kept=0) == 0


def test_scoring_cdpruner_hand_count():
    # relevance 2·N·D, then per step t: one similarity row 2·n·D and the Cholesky correction 2·t·n
    relevance = 2 * 10 * 8
    steps = sum(2 * 10 * 8 + 2 * t * 10 for t in range(3))
    assert method_scoring_flops("cdpruner", TINY_DIMS, [10], 5, kept=3) == relevance + steps == 700
    assert method_scoring_flops("cdpruner", TINY_DIMS, [10], 0, kept=3) == steps  # no text: uniform relevance


def test_scoring_visionzip_qwen_hand_count():
    # one image of 4 tokens = 16 patches, D_v = 4; default block = the last full-attention block (1)
    qkv = 2 * 16 * 4 * 12  # fused q, k, v projection: 1536
    logits = 2 * 16 * 16 * 4  # q·kᵀ over the whole image (no weighted sum): 2048
    merge = 2 * (4 - 2) * 1 * 4  # 2 non-kept tokens against 1 contextual target, key width D_v: 16
    assert method_scoring_flops("visionzip", TINY_DIMS, [4], 5, kept=[2], contextual=[1]) == qkv + logits + merge
    # a windowed block (0): each patch sees its window of 4 patches
    assert method_scoring_flops("visionzip", TINY_DIMS, [4], 5, kept=2, contextual=1, block=0) == (
        qkv + 2 * 16 * 4 * 4 + merge)


def test_scoring_visionzip_clip_hand_count():
    # LLaVA: one image of 9 patches (+ CLS), D_v = 4: the CLS query, the 10 keys, one row over them
    score = 2 * 4 * 4 + 2 * 10 * 4 * 4 + 2 * 10 * 4  # 32 + 320 + 80
    merge = 2 * (9 - 3) * 1 * 4
    assert method_scoring_flops("visionzip", TINY_CLIP_DIMS, [9], 5, kept=3, contextual=1) == score + merge == 480


def test_scoring_vscan_hand_count():
    # Qwen2.5-like dims: global block 1 (full), local block 0 (windowed); image of 4 tokens (16 patches);
    # the ViT stage keeps 2, the LLM stage at layer 2 keeps 1 (its row over 5 text + 2 visual keys).
    global_scores = 2 * 16 * 4 * 12 + 2 * 16 * 16 * 4
    local_scores = 2 * 16 * 4 * 12 + 2 * 16 * 4 * 4
    merge = 2 * (4 - 2) * 2 * 4  # 2 dropped tokens x 2 kept, key width 4
    row = 2 * 8 * 8 + 2 * 8 * (5 + 2)
    assert method_scoring_flops("vscan", TINY_DIMS, [4], 5, stages=[(0, 2), (2, 1)]) == (
        global_scores + local_scores + merge + row)
    # no windowed block: the global block's scores are reused, not recomputed
    assert method_scoring_flops("vscan", TINY_DIMS, [4], 5, stages=[(0, 2), (2, 1)], local_block=1) == (
        global_scores + merge + row)


def test_scoring_free_methods_and_errors():
    for name in ("none", "glimpse", "random", "downsample", "resize"):
        assert method_scoring_flops(name, TINY_DIMS, [10], 5) == 0
    assert method_scoring_flops("fastv", TINY_DIMS, [], 5, stages=[(2, 0)]) == 0  # no image, nothing to score
    with pytest.raises(ValueError, match="unknown method"):
        method_scoring_flops("magic", TINY_DIMS, [10], 5)
    with pytest.raises(ValueError, match="stages"):
        method_scoring_flops("fastv", TINY_DIMS, [10], 5)
    with pytest.raises(ValueError, match="kept"):
        method_scoring_flops("divprune", TINY_DIMS, [6, 4], 5, kept=[2])
    with pytest.raises(ValueError, match="contextual"):
        method_scoring_flops("visionzip", TINY_DIMS, [4], 5, kept=1, contextual=2)


def test_scoring_formulas_match_our_greedy_selectors():
    import torch

    from glimpseprune.methods.cdpruner import dpp_greedy
    from glimpseprune.methods.divprune import maxmin_greedy

    torch.manual_seed(0)
    f = torch.randn(12, 8)
    assert _counted(lambda: maxmin_greedy(f, 4)) == maxmin_greedy_flops(12, 4, 8) == 2 * 12 * 8 * (12 + 4)
    assert _counted(lambda: dpp_greedy(f, torch.rand(12), 4)) == dpp_greedy_flops(12, 4, 8)


def test_scoring_formulas_match_the_attention_row_and_vit_scores():
    import types

    import torch
    from transformers import CLIPVisionConfig, Qwen2Config
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionBlock, apply_rotary_pos_emb_vision

    from glimpseprune.adapters.base import FamilyAdapter
    from glimpseprune.adapters.llava import cls_attention
    from glimpseprune.methods.visionzip import VisionZip, contextual_merge
    from glimpseprune.vit_scoring import VitScoring, packed_block_scores

    torch.manual_seed(0)
    # FastV's row: D = 8, H = 2, H_kv = 1, d_h = 4 (TINY_LM), over 15 cached keys.
    layer = Qwen2DecoderLayer(Qwen2Config(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                          intermediate_size=16), 0)
    fake = types.SimpleNamespace(layers=[layer], apply_rotary=lambda q, cos, sin: q,
                                 row_query=lambda attn, x: FamilyAdapter.row_query(None, attn, x))
    row = lambda: FamilyAdapter.attention_row(fake, 0, torch.randn(1, 1, 8), None, None, torch.randn(1, 1, 15, 4),  # noqa: E731
                                              None, True)
    assert _counted(row) == method_scoring_flops("fastv", TINY_DIMS, [10], 5, stages=[(1, 3)])

    # VisionZip on a Qwen2.5-VL block (D_v = 4, 2 heads), one image of 4 tokens = 16 patches, full attention.
    blk = Qwen2_5_VLVisionBlock(Qwen2_5_VLVisionConfig(hidden_size=4, num_heads=2, intermediate_size=8))
    pool = lambda x: x.view(-1, 4, x.shape[-1]).mean(1)  # noqa: E731
    scores = lambda batch, block, max_elems: packed_block_scores(  # noqa: E731
        blk, *batch.extras["vit_block_inputs"][block], apply_rotary_pos_emb_vision, pool, max_elems)
    adapter = types.SimpleNamespace(vit_scoring=lambda: VitScoring(2, 1, (), False, scores))
    kwargs = {"position_embeddings": (torch.ones(16, 2), torch.zeros(16, 2)), "cu_seqlens": torch.tensor([0, 16])}
    batch = types.SimpleNamespace(extras={"vit_block_inputs": {1: (torch.randn(16, 4), kwargs)}, "image_grid_thw": None})
    zip_ = VisionZip(adapter, 1, 0.5, 0.5)
    keys = {}
    scored = _counted(lambda: keys.setdefault("k", zip_.token_scores(batch)[1]))
    merged = _counted(lambda: contextual_merge(torch.randn(4, 4), keys["k"], torch.tensor([1, 2, 3]), 1))
    # dominant token 0, contextual target among 1..3: 2 others merged into 1 target
    assert scored + merged == method_scoring_flops("visionzip", TINY_DIMS, [4], 5, kept=2, contextual=1)

    # VisionZip on a CLIP layer (LLaVA): D_v = 4, 2 heads, one image of 9 patches + CLS.
    clip = CLIPEncoderLayer(CLIPVisionConfig(hidden_size=4, num_attention_heads=2, intermediate_size=8))
    assert _counted(lambda: cls_attention(clip, torch.randn(1, 10, 4))) == method_scoring_flops(
        "visionzip", TINY_CLIP_DIMS, [9], 5, kept=9, contextual=0)


# --------------------------------------------------------------------------------------------------------------------
# Each baseline owns its scoring FLOPs: registered from its own file, no name switch in the FLOPs model.


def test_every_baseline_registers_its_scoring_flops_from_its_own_file():
    import glimpseprune.methods as methods

    for name in methods.method_names():
        fn = methods._SCORING_FLOPS[name]
        factory = methods._REGISTRY[name]
        assert fn.__module__ in (factory.__module__, "glimpseprune.flops"), (name, fn.__module__)
    # the scored ones carry their own formula (no_scoring_flops only where nothing is scored)
    for name in ("fastv", "pyramiddrop", "divprune", "cdpruner", "visionzip", "vscan"):
        assert methods._SCORING_FLOPS[name].__module__ == f"glimpseprune.methods.{name}"
    with pytest.raises(TypeError):
        methods.register_method("forgot_its_flops")  # scoring_flops is required
    with pytest.raises(TypeError, match="scoring_flops"):
        methods.register_method("bad_flops", scoring_flops=3)
    assert "forgot_its_flops" not in methods.method_names() and "bad_flops" not in methods.method_names()


def test_the_flops_model_names_no_method():
    """The FLOPs model is method-agnostic: no method name appears in it as a string (the old ``if method == ...``)."""
    import ast
    from pathlib import Path

    import glimpseprune.flops as flops_module
    from glimpseprune.methods import method_names

    names = set(method_names()) | {"glimpse", "resize"}
    for path in (Path(flops_module.__file__), Path(flops_module.__file__).parent / "eval" / "flops.py"):
        strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & names, (path.name, strings & names)


def test_method_objects_give_their_scoring_params(gp):
    """``PruneMethod.scoring_params`` (used by benchmarks/compare_methods.py) gives what each method counted before
    the per-file move, and the by-name lookup turns it into the same FLOPs as the explicit keywords."""
    from glimpseprune.flops import dims_from_hf_config

    dims = dims_from_hf_config(gp.model.config)
    images, stages = [16, 8], [(2, 6)]
    fastv = gp.method("fastv", prune_layer=2, ratio=0.25)
    assert fastv.scoring_params(images, stages) == {"stages": stages}
    pdrop = gp.method("pyramiddrop", layers=[1, 2], ratio=0.25)
    assert pdrop.scoring_params(images, [(1, 12), (2, 6)]) == {"stages": [(1, 12), (2, 6)]}
    for name in ("divprune", "cdpruner"):
        assert gp.method(name, ratio=0.25).scoring_params(images, [(0, 6)]) == {"kept": 6}
        assert gp.method(name, ratio=0.25).scoring_params(images, []) == {"kept": 24}
        assert gp.method(name, ratio=0.25, per_image=True).scoring_params(images, [(0, 6)]) == {"kept": [4, 2]}
    zip_ = gp.method("visionzip", ratio=0.5, contextual_share=0.25)  # k = 8 / 4, c = round(k / 4) = 2 / 1
    assert zip_.scoring_params(images, [(0, 12)]) == {"kept": [8, 4], "contextual": [2, 1], "block": zip_.block}
    vscan = gp.method("vscan", vision_ratio=0.5, llm_ratio=0.5, llm_layer=2)
    assert vscan.scoring_params(images, [(0, 12), (2, 6)]) == {
        "stages": [(0, 12), (2, 6)], "kept_vision": [8, 4], "global_block": vscan.global_block,
        "local_block": vscan.local_block}
    for name in ("random", "downsample"):
        assert gp.method(name, ratio=0.25).scoring_params(images, [(0, 6)]) == {}
    assert method_scoring_flops("fastv", dims, images, 7, **fastv.scoring_params(images, stages)) == (
        2 * dims.lm.hidden * dims.lm.heads * dims.lm.head_dim + 2 * dims.lm.heads * dims.lm.head_dim * (7 + 24))
    params = zip_.scoring_params(images, [(0, 12)])
    assert method_scoring_flops("visionzip", dims, images, 7, **params) == method_scoring_flops(
        "visionzip", dims, images, 7, kept=[8, 4], contextual=[2, 1], block=zip_.block) > 0
