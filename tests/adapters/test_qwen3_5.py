"""Qwen3.5 (hybrid Gated DeltaNet linear attention + full attention) beyond the family-parametrised suite.

test_families.py runs it too on the tiny [full, linear, full, linear] model: keep-all == stock generate (K = 1, 3),
fixed masks == the slow reference (K = 0, 2, 3: cuts on a full and on a linear layer), batch == alone, stateless, CLI.
Here: what the cut does to each kind of cache, the glimpse leaving no trace in the linear states, the attention row
read below a linear layer, a model whose first layer is linear (as released), multi-image, stage-1 training,
baselines, released-size defaults. docs/method.md, "Hybrid linear-attention models", states the rules tested here.
"""

import math

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.adapters import adapter_for
from glimpseprune.checkpoint import build_modules
from glimpseprune.engine import prefill
from glimpseprune.layer_loop import check_cuttable, row_layer
from glimpseprune.methods import FixedKeep, get_method
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import TinyQwen3_5Spec, tiny_qwen3_5
from glimpseprune.train.collate import Collator, model_inputs
from glimpseprune.train.forward import training_forward
from glimpseprune.train.losses import loc_loss

from ..conftest import scene
from .reference import reference_generate

QUESTION = "is there a red circle?"
FULL, LINEAR = "full_attention", "linear_attention"


@pytest.fixture(scope="module")
def q35():
    model, processor = tiny_qwen3_5()
    assert model.config.text_config.layer_types == [FULL, LINEAR, FULL, LINEAR]
    return model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0)


@pytest.fixture(scope="module")
def linear_first():
    """Layer 0 linear, as in the released configs (full attention every 4th layer, starting at layer 3)."""
    model, processor = tiny_qwen3_5(TinyQwen3_5Spec(layer_types=(LINEAR, FULL, LINEAR, FULL)))
    return model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0)


def stock_generate(model, inputs, n):
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_layer_type_rules():
    types = [FULL, LINEAR, FULL, LINEAR]
    assert [row_layer(types, k) for k in (1, 2, 3)] == [0, 0, 2]  # K-1, or the last full layer below K
    with pytest.raises(ValueError, match="full-attention layer below"):
        row_layer([LINEAR, FULL], 1)
    check_cuttable(types)
    with pytest.raises(ValueError, match="sliding_attention"):
        check_cuttable([FULL, "sliding_attention"])


@pytest.mark.parametrize("prune_layer", [2, 3])
def test_keep_all_linear_states_are_stock_and_never_see_the_glimpse(q35, prune_layer):
    """threshold 0: the cache after the glimpse prefill holds, layer by layer, what the stock forward's holds: the
    linear layers' conv/recurrent states (which the glimpse ran through, on a copy) and the full layers' keys."""
    model, processor, gp = q35
    inputs = build_inputs(processor, [QUESTION], [[scene(224, 224, 0)]])
    with torch.no_grad():
        stock = model(**inputs, use_cache=True).past_key_values
    batch = gp.adapter.prepare(dict(inputs), gp.config.vip_visual_layers)
    pre = prefill(gp.adapter, batch, gp.method("glimpse", threshold=0.0, prune_layer=prune_layer))
    assert pre.pruning.keep_ratio == 1.0
    for i, kind in enumerate(gp.adapter.layer_types):
        ours, theirs = pre.cache.layers[i], stock.layers[i]
        if kind == LINEAR:
            torch.testing.assert_close(ours.conv_states[0], theirs.conv_states[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.recurrent_states[0], theirs.recurrent_states[0], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
    ref = stock_generate(model, inputs, 10)
    out = gp.generate(**inputs, threshold=0.0, prune_layer=prune_layer, max_new_tokens=10, min_new_tokens=10)
    assert torch.equal(out.sequences, ref)  # K = 2: the glimpse row is read at layer 0, below the linear layer 1


def test_cut_shortens_only_full_attention_caches_and_says_so(q35):
    model, processor, gp = q35
    inputs = build_inputs(processor, [QUESTION], [[scene(224, 224, 0)]])
    batch = gp.adapter.prepare(dict(inputs))
    n_visual = int(batch.visual_mask.sum())
    keep = torch.zeros(n_visual, dtype=torch.bool)
    keep[::5] = True
    full = prefill(gp.adapter, gp.adapter.prepare(dict(inputs)), None)
    pre = prefill(gp.adapter, batch, FixedKeep([keep], 3))
    length = inputs["input_ids"].shape[1]
    assert full.pruning.kv_lengths == [length] and pre.pruning.kv_lengths == [length - n_visual + int(keep.sum())]
    assert pre.pruning.kv_layers == [0, 2] and pre.pruning.to_dict()["kv_layers"] == [0, 2]
    assert pre.pruning.kv_entries == [2 * pre.pruning.kv_lengths[0]]
    for i, kind in enumerate(gp.adapter.layer_types):
        if kind == FULL:
            assert pre.cache.layers[i].keys.shape[2] == pre.pruning.kv_lengths[0]
        else:  # fixed-size states: the cut changes nothing about their size
            for name in ("conv_states", "recurrent_states"):
                assert getattr(pre.cache.layers[i], name)[0].shape == getattr(full.cache.layers[i], name)[0].shape
            assert not hasattr(pre.cache.layers[i], "keys")


def test_batched_left_padding_is_exact_up_to_rounding_as_stock(q35):
    """Stock transformers zeroes padded inputs of a linear layer (its 2-D mask), which leaves the state at zero, so
    a left-padded row equals the row alone up to float rounding (the chunked delta rule's chunks shift with the
    padding). The engine's padded rows (the prompt's and the cut's) follow the same rule."""
    model, processor, gp = q35
    questions = [QUESTION, "what colour is the shape in the image? tell me now", "describe the picture in one word."]
    image_lists = [[scene(224, 224, 0)], [scene(168, 280, 1)], []]
    batch_in = build_inputs(processor, questions, image_lists)
    assert not batch_in["attention_mask"].all()
    method = gp.method("glimpse", max_keep_ratio=0.3)
    with torch.no_grad():
        stock_rows = model(**batch_in).logits[:, -1]
    pre_rows = prefill(gp.adapter, gp.adapter.prepare(dict(batch_in), gp.config.vip_visual_layers), method).logits
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        alone = build_inputs(processor, [q], [ims])
        with torch.no_grad():
            torch.testing.assert_close(stock_rows[i], model(**alone).logits[0, -1], atol=1e-4, rtol=1e-4)
        pre = prefill(gp.adapter, gp.adapter.prepare(dict(alone), gp.config.vip_visual_layers), method)
        torch.testing.assert_close(pre_rows[i], pre.logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prune_layer", [1, 2, 3])
def test_two_images_fixed_mask_matches_reference(q35, prune_layer):
    model, processor, gp = q35
    inputs = build_inputs(processor, [QUESTION], [[scene(168, 280, 1), scene(224, 224, 2)]])
    prunable = inputs["input_ids"][0] == model.config.image_token_id
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(prune_layer)) < 0.4
    ref_tokens, ref_logits = reference_generate(model, dict(inputs), prunable, keep, prune_layer, 6,
                                                min_new_tokens=6)
    out = gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=6, min_new_tokens=6)
    assert len(out.pruning.samples[0].images) == 2
    assert out.generated[0].tolist() == ref_tokens
    pre = prefill(gp.adapter, gp.adapter.prepare(dict(inputs)), FixedKeep([keep], prune_layer))
    torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prune_layer", [1, 2])
def test_linear_first_model_fixed_mask_matches_reference(linear_first, prune_layer):
    """A linear layer 0 below the cut keeps its state of the whole prompt; K = 2 cuts on a linear layer."""
    model, processor, gp = linear_first
    inputs = build_inputs(processor, [QUESTION], [[scene(224, 224, 3)]])
    prunable = inputs["input_ids"][0] == model.config.image_token_id
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(7)) < 0.3
    ref_tokens, ref_logits = reference_generate(model, dict(inputs), prunable, keep, prune_layer, 6,
                                                min_new_tokens=6)
    out = gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens
    pre = prefill(gp.adapter, gp.adapter.prepare(dict(inputs)), FixedKeep([keep], prune_layer))
    torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)


def test_linear_first_model_glimpse_needs_a_full_layer_below_the_cut(linear_first):
    model, processor, gp = linear_first
    assert gp.config.prune_layer == 2  # the default puts the full-attention layer 1 right below the cut
    inputs = build_inputs(processor, [QUESTION], [[scene(224, 224, 3)]])
    ref = stock_generate(model, inputs, 8)
    out = gp.generate(**inputs, threshold=0.0, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="full-attention layer below"):
        gp.generate(**inputs, prune_layer=1, max_new_tokens=2)


def test_stage1_training_step_and_boxfree_refusal():
    from glimpseprune.data.scenes import all_texts, generate_items, render_scene
    from glimpseprune.train.boxfree import BoxFreeConfig, boxfree_losses

    model, processor = tiny_qwen3_5(corpus=all_texts())
    model.requires_grad_(False)
    adapter = adapter_for(model)
    config = adapter.default_glimpse_config(vip_size=32, vip_cond_size=32, vip_heads=2, prune_layer=2)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    records = [dict(r, image=render_scene(sc)) for sc, r in generate_items(6, seed=0, split="train") if r["bboxs"]]
    batch = Collator(processor, adapter.family, max_pixels=128 * 128)(records[:2])
    with torch.no_grad():
        prepared = adapter.prepare(model_inputs(batch), config.vip_visual_layers)
    params = [*glimpse.parameters(), *vip.parameters()]
    before = [p.detach().clone() for p in params]
    out = training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer)  # row at layer 0
    assert [z.numel() for z in out.per_sample()] == [int(m.numel()) for m in batch["box_masks"]]
    loss = loc_loss(out.per_sample(), batch["box_masks"], 1.0, 1.0)["loc"] + out.lm_loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(params, lr=1e-2).step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    # Box-free soft pruning biases attention logits from K on; a linear layer has none to bias.
    with pytest.raises(ValueError, match="linear_attention"):
        boxfree_losses(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer,
                       config.attention_logits, BoxFreeConfig.from_dict({"target_keep": 0.25}))


@pytest.mark.parametrize("name", ["random", "fastv", "divprune", "cdpruner", "downsample", "visionzip", "vscan",
                                  "pyramiddrop"])
def test_every_baseline_runs_or_says_why(q35, name):
    _, processor, gp = q35
    inputs = build_inputs(processor, [QUESTION, "what colour is the shape in the image?"],
                          [[scene(224, 224, 0)], [scene(168, 280, 1)]])
    if name == "pyramiddrop":
        # Its default stages (layers 1, 2, 3 here) put no full-attention layer between the cuts at 1 and 2.
        with pytest.raises(ValueError, match="no attention row to read"):
            gp.generate(**inputs, method=get_method(name, gp, retention=0.5), max_new_tokens=3)
        method = get_method(name, gp, layers=[1, 3], ratio=0.5)  # rows read at layers 0 and 2
    else:
        method = get_method(name, gp, retention=0.5)
    out = gp.generate(**inputs, method=method, max_new_tokens=3)
    assert all(0 < s.kept < s.total for s in out.pruning.samples)


def test_fastv_reads_stock_eager_attention_at_the_full_layer_below_the_cut(q35):
    """FastV at K = 2: layer 1 is linear, so the last prompt token's attention is read at layer 0, recomputed from
    the cache through the gated query projection; the stock model's eager attention map is the slow version."""
    model, processor, gp = q35
    inputs = build_inputs(processor, [QUESTION], [[scene(308, 196, 2)]])
    vis = inputs["input_ids"][0] == model.config.image_token_id
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions  # one per full-attention layer
    finally:
        model.set_attn_implementation("sdpa")
    expected = attentions[0][0, :, -1].mean(0)[vis]  # full-attention layer 0
    k = math.floor(0.3 * int(vis.sum()))
    order = sorted(range(len(expected)), key=lambda i: (-float(expected[i]), i))
    expected_keep = torch.zeros(len(expected), dtype=torch.bool)
    expected_keep[order[:k]] = True
    method = get_method("fastv", gp, ratio=0.3, prune_layer=2)
    seen = {}

    class Record(type(method)):
        def select(self, ctx):
            seen["sel"] = sel = super().select(ctx)
            return sel

    recorder = Record(method.prune_layer, method.fraction, method.min_keep, method.per_image)
    out = gp.generate(**inputs, method=recorder, max_new_tokens=6, min_new_tokens=6)
    torch.testing.assert_close(seen["sel"].scores[0].float(), expected.float(), atol=1e-6, rtol=1e-4)
    assert torch.equal(seen["sel"].keep[0].cpu(), expected_keep)
    ref_tokens, _ = reference_generate(model, dict(inputs), vis, expected_keep, 2, 6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens


def test_flops_refuse_hybrid_configs(q35):
    from glimpseprune.eval.flops import dims_from_hf_config

    with pytest.raises(ValueError, match="linear_attention"):
        dims_from_hf_config(q35[0].config)


@pytest.mark.parametrize("layers,k", [(24, 16), (32, 20), (48, 32), (64, 44)])
def test_released_size_defaults(layers, k):
    """Released configs put full attention on every 4th layer (3, 7, 11, ...): K - 1 is the one nearest 2L/3 - 1."""
    from transformers import Qwen3_5Config

    from glimpseprune.adapters import adapter_class

    cfg = Qwen3_5Config(text_config=dict(num_hidden_layers=layers), vision_config=dict(depth=27))
    assert cfg.text_config.layer_types[k - 1] == FULL
    cls = adapter_class("qwen3_5")
    fake = cls.__new__(cls)
    fake.model = type("M", (), {"config": cfg, "model": type("I", (), {"language_model": type("L", (), {
        "config": cfg.text_config})()})()})()
    config = fake.default_glimpse_config()
    assert (config.prune_layer, config.vip_visual_layers) == (k, [26, 20, 14, 8])


def test_cli_answer_says_where_the_kv_is(q35, tmp_path, capsys):
    from glimpseprune.cli import main

    model, processor, gp = q35
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    gp.save_pretrained(tmp_path / "glimpse")
    scene(224, 224, 0).save(tmp_path / "scene.png")
    code = main(["answer", "--model", str(tmp_path / "base"), "--glimpse", str(tmp_path / "glimpse"),
                 "--image", str(tmp_path / "scene.png"), "--question", QUESTION, "--max-keep-ratio", "0.25",
                 "--max-new-tokens", "3", "--device", "cpu", "--dtype", "float32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "in each of the 2 full-attention layers (the other 2 keep fixed-size states)" in out


def test_rl_scoring_forward_reproduces_rollout_logprobs(q35):
    """GP+ rollouts share each prompt's prefill over its group (linear states repeated with the KV), and the
    scoring forward replays all steps at once through the linear layers from the kept states."""
    from glimpseprune.engine import GenerationParams
    from glimpseprune.train.rl_forward import completion_logprobs, rollout

    model, processor, gp = q35
    questions = ["is there a red circle?", "what colour is the shape in the image?"]
    inputs = dict(build_inputs(processor, questions, [[scene(112, 112, 0)], [scene(84, 140, 1)]]))
    n_vis = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    g = torch.Generator().manual_seed(3)
    method = FixedKeep([torch.rand(n, generator=g) < 0.4 for n in n_vis], prune_layer=3)
    params = GenerationParams.resolve(None, do_sample=True, temperature=1.3, max_new_tokens=6, eos_token_id=[2])
    r = rollout(gp.adapter, inputs, method, params, torch.Generator().manual_seed(0), group_size=2)
    assert not torch.equal(r.completion[0], r.completion[1])
    torch.testing.assert_close(completion_logprobs(gp.adapter, r), r.logprobs, atol=1e-5, rtol=1e-5)
