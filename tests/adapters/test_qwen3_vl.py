"""Qwen3-VL beyond the family-parametrised suite (test_families.py runs it too: keep-all == stock generate, fixed
masks == the slow reference with cuts before / inside / after the DeepStack layers, batch == alone, stateless, CLI):
DeepStack really matters and is cut with the tokens, multi-image, stage-1 training (box and box-free), baselines,
FLOPs."""

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.adapters import adapter_for
from glimpseprune.checkpoint import build_modules
from glimpseprune.data.masks import boxes_to_grid_mask, normalize_boxes
from glimpseprune.eval.flops import dims_from_hf_config, method_scoring_flops, prefill_flops, vision_flops
from glimpseprune.methods import get_method
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import tiny_qwen3_vl
from glimpseprune.train.boxfree import BoxFreeConfig, boxfree_losses
from glimpseprune.train.collate import Collator, model_inputs
from glimpseprune.train.forward import training_forward
from glimpseprune.train.losses import loc_loss

from ..conftest import scene
from .reference import reference_generate

QUESTION = "is there a red circle?"


@pytest.fixture(scope="module")
def qwen3():
    model, processor = tiny_qwen3_vl()
    return model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0)


def test_deepstack_matters_and_is_applied_after_the_first_layers(qwen3):
    model, processor, gp = qwen3
    inputs = build_inputs(processor, [QUESTION], [[scene(224, 224, 0)]])
    batch = gp.adapter.prepare(dict(inputs))
    additions = batch.layer_additions
    assert sorted(additions.values) == [0, 1, 2]  # one ViT level after each of LLM layers 0, 1, 2
    assert torch.equal(additions.columns, batch.visual_mask)
    assert all(v.shape == (int(batch.visual_mask.sum()), model.config.text_config.hidden_size)
               for v in additions.values.values())
    # Without the additions the unpruned prefill gives other logits: a loop that dropped them would be caught.
    from glimpseprune.engine import prefill

    with torch.no_grad():
        stock = model(**inputs).logits[:, -1].float()
        with_ds = prefill(gp.adapter, batch, None).logits
        batch.layer_additions = None
        without = prefill(gp.adapter, batch, None).logits
    torch.testing.assert_close(with_ds, stock, atol=1e-5, rtol=1e-5)
    assert (without - stock).abs().max() > 1e-3


@pytest.mark.parametrize("prune_layer", [1, 2, 3])
def test_two_images_fixed_mask_matches_reference(qwen3, prune_layer):
    model, processor, gp = qwen3
    inputs = build_inputs(processor, [QUESTION], [[scene(168, 280, 1), scene(224, 224, 2)]])
    prunable = inputs["input_ids"][0] == model.config.image_token_id
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(prune_layer)) < 0.4
    ref_tokens, ref_logits = reference_generate(model, dict(inputs), prunable, keep, prune_layer, 6,
                                                min_new_tokens=6)
    out = gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=6, min_new_tokens=6)
    assert len(out.pruning.samples[0].images) == 2
    assert out.generated[0].tolist() == ref_tokens


def _records(n=2):
    from glimpseprune.data.scenes import generate_items, render_scene

    out = []
    for sc, record in generate_items(6, seed=0, split="train"):
        if record["bboxs"]:
            out.append(dict(record, image=render_scene(sc)))
    return out[:n]


@pytest.mark.parametrize("mode", ["box", "boxfree"])
def test_stage1_training_step(mode):
    from glimpseprune.data.scenes import all_texts

    model, processor = tiny_qwen3_vl(corpus=all_texts())
    model.requires_grad_(False)
    adapter = adapter_for(model)
    config = adapter.default_glimpse_config(vip_size=32, vip_cond_size=32, vip_heads=2)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    batch = Collator(processor, adapter.family, max_pixels=128 * 128)(_records())
    with torch.no_grad():
        prepared = adapter.prepare(model_inputs(batch), config.vip_visual_layers)
    params = [p for p in [*glimpse.parameters(), *vip.parameters()]]
    before = [p.detach().clone() for p in params]
    if mode == "box":
        out = training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer)
        assert [z.numel() for z in out.per_sample()] == [int(m.numel()) for m in batch["box_masks"]]
        loss = loc_loss(out.per_sample(), batch["box_masks"], 1.0, 1.0)["loc"] + out.lm_loss
    else:
        parts, _ = boxfree_losses(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer,
                                  config.attention_logits, BoxFreeConfig.from_dict({"target_keep": 0.25}))
        loss = parts["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(params, lr=1e-2).step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


def test_box_mask_follows_the_dynamic_grid(qwen3):
    _, processor, gp = qwen3
    record = {"question": QUESTION, "answer": "yes", "image": scene(320, 192, 3), "bboxs": [[0, 0, 160, 96]]}
    batch = Collator(processor, gp.adapter.family)([record])
    _, gh, gw = batch["image_grid_thw"][0].tolist()
    expect = boxes_to_grid_mask(normalize_boxes([[0, 0, 160, 96]], 320, 192), gh // 2, gw // 2)
    assert batch["box_masks"][0].tolist() == expect.tolist() and 0 < expect.sum() < expect.size


@pytest.mark.parametrize("name", ["random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample",
                                  "visionzip", "vscan"])
def test_every_baseline_runs(qwen3, name):
    _, processor, gp = qwen3
    inputs = build_inputs(processor, [QUESTION, "what colour is the shape in the image?"],
                          [[scene(224, 224, 0)], [scene(168, 280, 1)]])
    out = gp.generate(**inputs, method=get_method(name, gp, retention=0.5), max_new_tokens=3)
    assert all(0 < s.kept < s.total for s in out.pruning.samples)


def test_flops_dims_and_counts(qwen3):
    model, _, gp = qwen3
    dims = dims_from_hf_config(model.config)
    vc = model.config.vision_config
    merged = 4 * vc.hidden_size
    # main merger + one per DeepStack level, each Linear(4·D_v -> 4·D_v) then Linear(4·D_v -> D)
    assert dims.vision.projector == ((merged, merged), (merged, model.config.text_config.hidden_size)) * 4
    assert dims.vision.hidden == vc.hidden_size and not dims.vision.gated_mlp and dims.vision.window_patches is None
    assert dims.vision.patch_input == 3 * 2 * vc.patch_size**2
    assert vision_flops(dims.vision, [16]) > 0
    full = vision_flops(dims.vision, [16])
    parts = prefill_flops(dims.lm, 20, 64, 8, gp.config.prune_layer, vip=dims.vip, image_token_counts=[64],
                          vision=dims.vision)
    k, layers = gp.config.prune_layer, dims.lm.layers
    assert parts["llm_pruned_layers"] / (layers - k) < parts["llm_full_layers"] / k  # 8 of 64 visual tokens after K
    assert full > 0
    scoring = gp.adapter.vit_scoring()
    assert scoring.windowed_blocks == () and scoring.default_block == vc.depth - 1 and not scoring.cls_query
    assert method_scoring_flops("visionzip", dims, [16], 10, kept=[4], contextual=[1]) > 0


@pytest.mark.parametrize("layers,depth,deepstack,k,vip", [
    (28, 24, [5, 11, 17], 19, [23, 17, 11, 5]),  # Qwen3-VL-2B
    (36, 24, [5, 11, 17], 24, [23, 17, 11, 5]),  # 4B
    (36, 27, [8, 16, 24], 24, [26, 24, 16, 8]),  # 8B
    (64, 27, [8, 16, 24], 43, [26, 24, 16, 8]),  # 32B
])
def test_released_size_defaults(layers, depth, deepstack, k, vip):
    from transformers import Qwen3VLConfig

    from glimpseprune.adapters import adapter_class

    cfg = Qwen3VLConfig(text_config=dict(num_hidden_layers=layers),
                        vision_config=dict(depth=depth, deepstack_visual_indexes=deepstack))
    fake = adapter_class("qwen3_vl").__new__(adapter_class("qwen3_vl"))
    fake.model = type("M", (), {"config": cfg, "model": type("I", (), {"language_model": type("L", (), {
        "config": cfg.text_config})()})()})()
    config = fake.default_glimpse_config()
    assert (config.prune_layer, config.vip_visual_layers) == (k, vip)
    assert config.prune_layer > len(deepstack)  # the glimpse reads a row after every DeepStack addition
