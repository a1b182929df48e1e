"""FLOPs against hand counts on tiny dims, the fixed reference defects, and sanity checks on the real model sizes.

Expected values are written out as explicit arithmetic (2 FLOPs per multiply-accumulate), independent of the
module's helpers.
"""

import pytest
from transformers import LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig

from glimpseprune.eval.flops import (
    LMDims,
    VIPDims,
    VisionDims,
    baseline_prefill_flops,
    decode_flops,
    decoder_layer_flops,
    dims_from_hf_config,
    kept_ratio_for_layer_averaged,
    layer_averaged_retention,
    layer_averaged_retention_schedule,
    lm_linear_flops_per_token,
    prefill_flops,
    vip_flops,
    vision_flops,
)

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
    attention = (2 * 16 * 6 + 2 * 16 * 4) + (2 * 4 * 6 + 2 * 4 * 4)  # per-image blocks 4² and 2²: 400
    mlp = 3 * 2 * 6 * 4 * 8  # 1152
    per_layer = cond + q_k + v_o + attention + mlp  # 2872
    expected = 2 * per_layer + 2 * 6 * 2 * 4 + 2 * 6 * 4  # + input projection 96 + output head 48
    assert vip_flops(TINY_VIP, [4, 2]) == expected == 5888


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
    assert flops["vip"] == 5888
    assert flops["vision"] == 19200 + 8576
    without_vision = 29440 + 13120 + 160 + 160 + 5888
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
    # landscape.md §5: ≈ 13.1 GFLOP (Qwen2.5-VL-7B) and ≈ 13.0 GFLOP (LLaVA-1.5-7B) per token
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
    # method.md §15.3: ≈ 1.42x (LLM only) and ≈ 1.27x (with the ViT) at 7.4 % kept; ≤ 1.30x with everything pruned
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
