"""Our safetensors format, the reference importer (on a file the test writes in the reference layout), LoRA merge."""

import json

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.checkpoint import export_reference, load_modules
from glimpseprune.processing import build_inputs


@pytest.fixture(scope="module")
def inputs(qwen, images):
    return build_inputs(qwen[1], ["is there a red circle?", "what shape is the green object?"],
                        [[images["square"]], [images["wide"]]])


def test_save_load_same_outputs(gp, qwen, inputs, tmp_path):
    gp.save_pretrained(tmp_path)
    assert (tmp_path / "glimpse_config.json").is_file() and (tmp_path / "glimpse.safetensors").is_file()
    saved = json.loads((tmp_path / "glimpse_config.json").read_text())
    assert "vocab_size" not in saved and saved["prune_layer"] == gp.config.prune_layer  # GP fields only
    config, g, v = load_modules(tmp_path, gp.adapter.default_glimpse_config())
    loaded = GlimpsePrune(qwen[0], qwen[1], config, g, v)
    a = gp.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=6)
    b = loaded.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=6)
    assert torch.equal(a.sequences, b.sequences)
    for sa, sb in zip(a.pruning.samples, b.pruning.samples):
        assert torch.equal(sa.keep, sb.keep)


def _reference_files(tmp_path, gp):
    """Write new_modules_gp.pt + config.json by hand, with the exact key set of docs/method.md §17.3."""
    c = gp.config
    D, Dv, H, F, C = c.hidden_size, c.vision_hidden_size, c.num_heads, c.vip_size, c.vip_cond_size
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g).to(torch.bfloat16)  # noqa: E731
    fuser = {"attn_in_proj.weight": r(F, H), "attn_in_proj.bias": r(F), "attn_out_projs.1.weight": r(1, F),
             "attn_out_projs.1.bias": r(1)}
    for i in range(2):
        fuser[f"cond_in_projs.{i}.weight"], fuser[f"cond_in_projs.{i}.bias"] = r(C, Dv), r(C)
        p = f"layers.{i}."
        fuser[p + "norm1.weight"], fuser[p + "norm2.weight"] = r(F), r(F)
        fuser[p + "attn.q_proj.weight"], fuser[p + "attn.k_proj.weight"] = r(F + C, F + C), r(F + C, F + C)
        fuser[p + "attn.v_proj.weight"], fuser[p + "attn.o_proj.weight"] = r(F, F), r(F, F)
        for name in ("gate_proj", "up_proj"):
            fuser[p + f"mlp.{name}.weight"], fuser[p + f"mlp.{name}.bias"] = r(2 * F, F), r(2 * F)
        fuser[p + "mlp.down_proj.weight"], fuser[p + "mlp.down_proj.bias"] = r(F, 2 * F), r(F)
    L = c.num_layers
    weights = {"attn_fuser": fuser, "learnable_embeddings": r(L, 1, D),
               "le_proj": {"weight": r(D, D), "bias": r(D)}, "le_norm": {"weight": r(D)}}
    torch.save(weights, tmp_path / "new_modules_gp.pt")
    config = {"model_type": "qwen2_5_vl_gp", "hidden_size": D, "num_hidden_layers": L, "rms_norm_eps": 1e-6,
              "reduce_layer": c.prune_layer - 1, "selected_layers": [c.prune_layer - 1], "use_attention_logits": True,
              "attn_fuse_type": "AttnFuserV1", "attn_fuse_size": F, "visual_cond_size": C,
              "selected_visual_layers": c.vip_visual_layers, "attn_fuse_num_heads": 4, "attn_fuse_hidden_act": "silu",
              "attn_fuse_global": True, "ori_attn_supervision": False, "deep_supervision": False,
              "le_layers": list(range(L)), "le_length": 1, "le_dropout_prob": 0.1, "le_norm_type": "rmsnorm",
              "reduce_threshold": 0.5, "max_remain_ratio": None, "min_remain_num": 1, "anchor_positions": []}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return weights


def test_import_reference_layout_written_by_hand(gp, tmp_path):
    weights = _reference_files(tmp_path, gp)
    config, g, v = load_modules(tmp_path, gp.adapter.default_glimpse_config())
    assert config.prune_layer == gp.config.prune_layer and config.glimpse_layers == list(range(config.num_layers))
    assert config.glimpse_dropout == 0.1 and config.attention_logits is True
    torch.testing.assert_close(g.embeddings.data, weights["learnable_embeddings"].float())
    torch.testing.assert_close(v.out_proj.weight.data, weights["attn_fuser"]["attn_out_projs.1.weight"].float())
    torch.testing.assert_close(v.blocks[1].attn.q_proj.weight.data,
                               weights["attn_fuser"]["layers.1.attn.q_proj.weight"].float())
    assert len(weights["attn_fuser"]) == 4 + 2 * 14  # in/out + 14 per layer incl. its cond proj (60 for 4 layers)


def test_import_rejects_bad_files(gp, tmp_path):
    weights = _reference_files(tmp_path, gp)
    expected = gp.adapter.default_glimpse_config()
    del weights["attn_fuser"]["layers.0.mlp.up_proj.bias"]
    torch.save(weights, tmp_path / "new_modules_gp.pt")
    with pytest.raises(ValueError, match="missing"):
        load_modules(tmp_path, expected)
    weights = _reference_files(tmp_path, gp)
    weights["attn_fuser"]["layers.0.attn.v_proj.weight"] = torch.zeros(3, 3)
    torch.save(weights, tmp_path / "new_modules_gp.pt")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_modules(tmp_path, expected)
    _reference_files(tmp_path, gp)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["attn_fuse_type"] = "AttnFuserWinAttnV1"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="AttnFuserV1"):
        load_modules(tmp_path, expected)


def test_import_rejects_modules_for_another_base(gp, tmp_path):
    _reference_files(tmp_path, gp)
    other = gp.adapter.default_glimpse_config()
    other.hidden_size = 128
    with pytest.raises(ValueError, match="hidden_size"):
        load_modules(tmp_path, other)


def test_reference_round_trip_same_keep_masks(gp, qwen, inputs, tmp_path):
    export_reference(tmp_path, gp.config, gp.glimpse, gp.vip)
    config, g, v = load_modules(tmp_path, gp.adapter.default_glimpse_config())
    # The reference stores bf16: compare against our modules rounded the same way.
    rounded = gp.with_new_modules(seed=0)
    for src, dst in ((gp.glimpse, rounded.glimpse), (gp.vip, rounded.vip)):
        dst.load_state_dict({k: t.to(torch.bfloat16).float() for k, t in src.state_dict().items()})
    imported = GlimpsePrune(qwen[0], qwen[1], config, g, v)
    a = rounded.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=4)
    b = imported.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=4)
    for sa, sb in zip(a.pruning.samples, b.pruning.samples):
        assert torch.equal(sa.keep, sb.keep)


def test_missing_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_modules(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no GlimpsePrune modules"):
        load_modules(tmp_path)


def test_from_pretrained_local_folders(qwen, gp, inputs, tmp_path):
    model, processor = qwen
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    gp.save_pretrained(tmp_path / "glimpse")
    loaded = GlimpsePrune.from_pretrained(tmp_path / "base", tmp_path / "glimpse", dtype=torch.float32)
    a = gp.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=5)
    b = loaded.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=5)
    assert torch.equal(a.sequences, b.sequences)
    text, out = loaded.answer([], "describe the picture in one word.", max_new_tokens=3)  # text-only works
    assert isinstance(text, str) and out.pruning.samples[0].total == 0


def test_lora_merge_remaps_reference_prefix(qwen, tmp_path):
    from safetensors.torch import save_file

    from glimpseprune.lora import merge_reference_lora
    from glimpseprune.testing.tiny import tiny_qwen2_5_vl

    model, _ = tiny_qwen2_5_vl()
    layer = model.model.language_model.layers[1]
    before_q, before_down = layer.self_attn.q_proj.weight.clone(), layer.mlp.down_proj.weight.clone()
    a_q, b_q = torch.randn(4, 64), torch.randn(64, 4)
    a_d, b_d = torch.randn(4, 256), torch.randn(64, 4)
    save_file({"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": a_q,
               "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight": b_q,
               "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight": a_d,
               "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight": b_d}, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    assert merge_reference_lora(model, tmp_path) == 2
    torch.testing.assert_close(layer.self_attn.q_proj.weight, before_q + 2 * b_q @ a_q)
    torch.testing.assert_close(layer.mlp.down_proj.weight, before_down + 2 * b_d @ a_d)
