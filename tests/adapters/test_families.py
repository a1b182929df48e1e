"""One exactness suite for every model family on the same engine (issue #3).

Parametrised by the session fixture ``fam`` (tests/adapters/conftest.py): a family joins by adding its tiny
builder there. LLaVA's ``full`` strategy (CLS kept as a placeholder, never a pruning candidate) runs as
``llava_cls``.
"""

import json

import pytest
import torch

from glimpseprune.engine import prefill
from glimpseprune.methods import FixedKeep, GlimpsePruneMethod
from glimpseprune.processing import build_inputs

from .reference import reference_generate

QUESTION = "is there a red circle?"


def stock_generate(model, inputs, n):
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_adapter_and_defaults(fam):
    cfg = fam.gp.config
    assert fam.gp.adapter.family == fam.name.replace("_cls", "")
    assert cfg.family == fam.gp.adapter.family
    layers = cfg.vip_visual_layers
    assert layers == sorted(set(layers), reverse=True)  # distinct, deepest first
    if fam.name != "qwen2_5_vl":  # the tiny Qwen2.5-VL has only 2 full-attention blocks to condition on
        assert len(layers) == 4
    assert cfg.attention_logits is (not fam.name.startswith(("llava", "internvl")))  # log-softmax rows


@pytest.mark.parametrize("prune_layer", [1, 3])
def test_keep_all_reproduces_stock_generate(fam, images, prune_layer):
    """threshold 0 keeps every visual token: the glimpse is inserted, used and removed without a trace."""
    inputs = build_inputs(fam.processor, [QUESTION], [[images["wide"]]])
    ref = stock_generate(fam.model, inputs, 10)
    out = fam.gp.generate(**inputs, threshold=0.0, prune_layer=prune_layer, max_new_tokens=10, min_new_tokens=10)
    assert out.pruning.keep_ratio == 1.0
    assert out.pruning.samples[0].total == int(fam.prunable(inputs["input_ids"][0], inputs).sum())
    assert torch.equal(out.sequences, ref)
    assert len(set(out.generated[0].tolist())) > 1, "degenerate tiny model: equality would be vacuous"
    with torch.no_grad():
        stock_logits = fam.model(**inputs).logits[:, -1].float()
    batch = fam.gp.adapter.prepare(dict(inputs), fam.gp.config.vip_visual_layers)
    pre = prefill(fam.gp.adapter, batch, fam.gp.method("glimpse", threshold=0.0, prune_layer=prune_layer))
    torch.testing.assert_close(pre.logits, stock_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prune_layer,seed", [(0, 0), (2, 1), (3, 2)])
def test_fixed_mask_matches_slow_reference(fam, images, prune_layer, seed):
    inputs = build_inputs(fam.processor, [QUESTION], [[images["tall"]]])
    prunable = fam.prunable(inputs["input_ids"][0], inputs)
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(seed)) < 0.3
    ref_tokens, ref_logits = reference_generate(fam.model, dict(inputs), prunable, keep, prune_layer, 8,
                                                min_new_tokens=8)
    out = fam.gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=8, min_new_tokens=8)
    assert out.generated[0].tolist() == ref_tokens
    pre = prefill(fam.gp.adapter, fam.gp.adapter.prepare(dict(inputs)), FixedKeep([keep], prune_layer))
    torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)
    assert out.pruning.kept == [int(keep.sum())]
    # the kept columns are the caller's own: text + CLS (if any) + exactly the kept candidates
    kept_cols = out.pruning.samples[0].keep_indices
    expect = (~prunable).nonzero().squeeze(1).tolist() + prunable.nonzero().squeeze(1)[keep].tolist()
    assert sorted(kept_cols.tolist()) == sorted(expect)


def test_batch_rows_equal_single_runs(fam, images):
    """Different images, kept counts and a text-only row in one left-padded batch."""
    questions = [QUESTION, "what colour is the shape in the image?", "describe the picture in one word."]
    image_lists = [[images["square"]], [images["tall"]], []]
    kwargs = dict(max_keep_ratio=0.2, max_new_tokens=6, min_new_tokens=6)
    batch_in = build_inputs(fam.processor, questions, image_lists)
    assert not batch_in["attention_mask"].all()
    batch_out = fam.gp.generate(**batch_in, **kwargs)
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        single = fam.gp.generate(**build_inputs(fam.processor, [q], [ims]), **kwargs)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep)
        assert batch_out.pruning.kv_lengths[i] == single.pruning.kv_lengths[0]
    assert batch_out.pruning.samples[2].total == 0


def test_stateless_between_calls(fam, images):
    a = build_inputs(fam.processor, [QUESTION], [[images["square"]]])
    b = build_inputs(fam.processor, ["what shape is the green object?"], [[images["wide"]]])
    first = fam.gp.generate(**a, max_keep_ratio=0.2, max_new_tokens=6)
    fam.gp.generate(**b, max_keep_ratio=0.5, max_new_tokens=6)
    again = fam.gp.generate(**a, max_keep_ratio=0.2, max_new_tokens=6)
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.pruning.samples[0].keep, again.pruning.samples[0].keep)


def test_image_placeholder_mismatch_raises(fam, images):
    with_image = build_inputs(fam.processor, [QUESTION], [[images["square"]]])
    text_only = build_inputs(fam.processor, [QUESTION], [[]])
    pixel_keys = [k for k in with_image if k not in text_only]
    assert pixel_keys
    no_pixels = {k: v for k, v in with_image.items() if k not in pixel_keys}
    with pytest.raises(ValueError, match="placeholder"):
        fam.gp.generate(**no_pixels, max_new_tokens=2)
    extra_pixels = dict(text_only, **{k: with_image[k] for k in pixel_keys})
    with pytest.raises(ValueError, match="placeholder"):
        fam.gp.generate(**extra_pixels, max_new_tokens=2)
    two = build_inputs(fam.processor, [QUESTION], [[images["square"], images["square"]]])
    one_prompt_two_images = dict(two, input_ids=with_image["input_ids"], attention_mask=with_image["attention_mask"])
    one_prompt_two_images.pop("mm_token_type_ids", None)
    with pytest.raises(ValueError, match="placeholder"):
        fam.gp.generate(**one_prompt_two_images, max_new_tokens=2)


def test_qwen_conditions_are_in_placeholder_order(fam, images):
    """The ViT blocks' merge units, as the adapter pools and orders them, line up with the merger's output.

    Feeding ``pool_block_output`` the merger's own per-unit output (each unit's row repeated for its 4 patches)
    must give back ``pooler_output`` (placeholder order): window order (Qwen2.5-VL) or raster order (Qwen2-VL).
    """
    if not fam.name.startswith("qwen"):
        pytest.skip("Qwen-only")
    from glimpseprune.adapters.qwen2_5_vl import capture_block_outputs

    adapter = fam.gp.adapter
    inputs = build_inputs(fam.processor, [QUESTION], [[images["wide"]]])
    visual, last = adapter.visual, len(adapter.visual.blocks) - 1
    with torch.no_grad(), capture_block_outputs(visual.blocks, [last]) as captured:
        out = fam.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        merged = visual.merger(captured[last])  # block order, one row per merge unit
    unit = adapter.merge_size**2
    pooled = adapter.pool_block_output(merged.repeat_interleave(unit, 0), inputs["image_grid_thw"])
    torch.testing.assert_close(pooled, torch.cat(out.pooler_output), atol=1e-5, rtol=1e-5)
    batch = adapter.prepare(dict(inputs), fam.gp.config.vip_visual_layers)
    assert [c.shape for c in batch.vit_features] == [(int(batch.visual_mask.sum()), fam.gp.config.vision_hidden_size)] * len(
        fam.gp.config.vip_visual_layers)


# ---- LLaVA specifics ---------------------------------------------------------------------------------------------


class _RecordRows(GlimpsePruneMethod):
    def select(self, ctx):
        self.rows, self.batch = ctx.glimpse_rows, ctx.batch
        return super().select(ctx)


def test_llava_glimpse_row_is_log_softmax(fam, images):
    if fam.name not in ("llava", "llava_cls"):
        pytest.skip("LLaVA-1.5-only (AnyRes: tests/adapters/test_anyres.py)")
    gp = fam.gp
    assert gp.config.attention_logits is False
    inputs = build_inputs(fam.processor, [QUESTION, "describe the picture in one word."],
                          [[images["square"]], [images["tall"]]])
    assert not inputs["attention_mask"].all()
    base = gp.method("glimpse")
    method = _RecordRows(gp.glimpse, gp.vip, gp.config, base.policy)
    batch = gp.adapter.prepare(dict(inputs), gp.config.vip_visual_layers)
    prefill(gp.adapter, batch, method)
    rows = method.rows  # [bs, H, L + glimpse]
    assert rows.shape[1] == gp.config.num_heads
    assert (rows <= 1e-6).all()
    torch.testing.assert_close(rows.exp().sum(-1), torch.ones(rows.shape[:2]), atol=1e-5, rtol=1e-5)
    pad = ~batch.attention_mask.bool()
    assert pad.any() and torch.isinf(rows[:, :, : pad.shape[1]].transpose(1, 2)[pad]).all()
    # conditions: one CLIP vector per candidate (CLS dropped), deepest layer first
    n = int(batch.visual_mask.sum())
    assert [tuple(c.shape) for c in batch.vit_features] == [(n, fam.model.config.vision_config.hidden_size)] * 4
    side = fam.model.config.vision_config.image_size // fam.model.config.vision_config.patch_size
    assert [im.grid for ims in batch.images for im in ims] == [(side, side)] * 2


def test_llava_conditions_are_clip_hidden_states(fam, images):
    if fam.name not in ("llava", "llava_cls"):
        pytest.skip("LLaVA-1.5-only (AnyRes: tests/adapters/test_anyres.py)")
    inputs = build_inputs(fam.processor, [QUESTION], [[images["wide"]]])
    layers = fam.gp.config.vip_visual_layers
    batch = fam.gp.adapter.prepare(dict(inputs), layers)
    with torch.no_grad():
        hs = fam.model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
    for cond, i in zip(batch.vit_features, layers):
        torch.testing.assert_close(cond, hs[i][0, 1:])
    assert inputs["pixel_values"].shape[-2:] == (224, 224)  # letterboxed to a square


def test_llava_reference_checkpoint_imports(fam, tmp_path):
    """A file in the reference (LLaVA repo) layout: flat Llama config + GP fields, new_modules_gp.pt."""
    if fam.name != "llava":
        pytest.skip("LLaVA-only")
    from glimpseprune import GlimpsePrune
    from glimpseprune.checkpoint import export_reference, load_modules, modules_state_dict

    L = fam.model.config.text_config.num_hidden_layers
    gp = GlimpsePrune(fam.model, fam.processor).with_new_modules(seed=1, glimpse_layers=list(range(L)))
    export_reference(tmp_path, gp.config, gp.glimpse, gp.vip)
    raw = json.loads((tmp_path / "config.json").read_text())
    text = fam.model.config.text_config
    raw.update({  # what the LLaVA repo's config.json carries next to the GP fields
        "architectures": ["LlavaLlamaGPForCausalLM"], "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu", "image_aspect_ratio": "pad",
        "mm_hidden_size": fam.model.config.vision_config.hidden_size, "attn_fuse_global": False,
        "ori_attn_supervision": False, "deep_supervision": False, "torch_dtype": "bfloat16",
    })
    (tmp_path / "config.json").write_text(json.dumps(raw))
    expected = gp.adapter.default_glimpse_config()
    config, glimpse, vip = load_modules(tmp_path, expected)
    assert config.family == "llava" and config.attention_logits is False
    assert config.prune_layer == expected.prune_layer and config.glimpse_layers == list(range(L))
    assert config.vip_visual_layers == expected.vip_visual_layers
    ours = modules_state_dict(gp.glimpse, gp.vip)
    theirs = modules_state_dict(glimpse, vip)
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k].to(torch.bfloat16).float(), atol=0, rtol=0)
    # and the imported modules run on the engine
    loaded = GlimpsePrune(fam.model, fam.processor, config, glimpse, vip)
    inputs = build_inputs(fam.processor, [QUESTION], [[_img()]])
    out = loaded.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=3)
    assert 1 <= out.pruning.kept[0] <= int(0.3 * out.pruning.samples[0].total)


def _img():
    from PIL import Image

    return Image.new("RGB", (300, 200), (200, 30, 30))
