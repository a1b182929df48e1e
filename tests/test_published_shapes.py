"""The released Qwen2.5-VL-7B GlimpsePrune files load unchanged: exact 7B shapes, no hub access.

The base model is built on the meta device (architecture only, no memory); the module file is written in the
reference layout (docs/method.md §17.3) with random bf16 tensors of the published shapes.
"""

import json

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from glimpseprune.adapters import adapter_for
from glimpseprune.checkpoint import load_modules

QWEN_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2),
)


def test_published_7b_defaults_and_reference_file(tmp_path):
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN_7B))
    expected = adapter_for(model).default_glimpse_config()
    assert expected.prune_layer == 19 and expected.vip_visual_layers == [31, 23, 15, 7]  # reduce_layer 18
    assert (expected.hidden_size, expected.num_heads, expected.vision_hidden_size) == (3584, 28, 1280)

    bf = dict(dtype=torch.bfloat16)
    fuser = {"attn_in_proj.weight": torch.zeros(256, 28, **bf), "attn_in_proj.bias": torch.zeros(256, **bf),
             "attn_out_projs.3.weight": torch.zeros(1, 256, **bf), "attn_out_projs.3.bias": torch.zeros(1, **bf)}
    for i in range(4):
        fuser[f"cond_in_projs.{i}.weight"], fuser[f"cond_in_projs.{i}.bias"] = torch.zeros(512, 1280, **bf), torch.zeros(512, **bf)
        p = f"layers.{i}."
        fuser[p + "norm1.weight"] = fuser[p + "norm2.weight"] = torch.ones(256, **bf)
        fuser[p + "attn.q_proj.weight"] = fuser[p + "attn.k_proj.weight"] = torch.zeros(768, 768, **bf)
        fuser[p + "attn.v_proj.weight"] = fuser[p + "attn.o_proj.weight"] = torch.zeros(256, 256, **bf)
        for name in ("gate_proj", "up_proj"):
            fuser[p + f"mlp.{name}.weight"], fuser[p + f"mlp.{name}.bias"] = torch.zeros(512, 256, **bf), torch.zeros(512, **bf)
        fuser[p + "mlp.down_proj.weight"], fuser[p + "mlp.down_proj.bias"] = torch.zeros(256, 512, **bf), torch.zeros(256, **bf)
    assert len(fuser) == 60
    embeddings = torch.randn(28, 1, 3584).to(torch.bfloat16)
    torch.save({"attn_fuser": fuser, "learnable_embeddings": embeddings,
                "le_proj": {"weight": torch.zeros(3584, 3584, **bf), "bias": torch.zeros(3584, **bf)},
                "le_norm": {"weight": torch.ones(3584, **bf)}}, tmp_path / "new_modules_gp.pt")
    # config.json as released: the flat 4.51 base config with the GP fields on top
    cfg = {"model_type": "qwen2_5_vl_gp", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
           "rms_norm_eps": 1e-6, "vision_config": {"hidden_size": 1280, "depth": 32}, "reduce_layer": 18,
           "selected_layers": [18], "use_attention_logits": True, "attn_fuse_type": "AttnFuserV1",
           "attn_fuse_size": 256, "visual_cond_size": 512, "selected_visual_layers": [31, 23, 15, 7],
           "attn_fuse_num_heads": 4, "attn_fuse_hidden_act": "silu", "attn_fuse_global": True,
           "ori_attn_supervision": False, "deep_supervision": False, "le_layers": list(range(28)), "le_length": 1,
           "le_dropout_prob": 0.1, "le_norm_type": "rmsnorm", "reduce_threshold": 0.5, "max_remain_ratio": None,
           "min_remain_num": 1, "anchor_positions": [], "use_ref_masks": False, "use_zero_masks": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    config, glimpse, vip = load_modules(tmp_path, expected)
    assert config.prune_layer == 19 and config.glimpse_layers == list(range(28))
    n_params = sum(p.numel() for p in vip.parameters()) + sum(p.numel() for p in glimpse.parameters())
    assert n_params == 22_406_657  # docs/method.md §6.6
    torch.testing.assert_close(glimpse.embeddings.data, embeddings.float())
