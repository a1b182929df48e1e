"""VisionZip and VScan on LLaVA-1.5 (CLIP + Llama; issue #7), both ``vision_feature_select_strategy`` values.

The CLS-attention scores are checked against the stock CLIP tower run with eager attention and
``output_attentions=True`` (``attentions[layer][:, :, 0, 1:]``, mean over heads): the slow, obviously-correct
version the methods must reproduce without ever materialising an attention map. The selections are checked against
loops written here, the VisionZip cut end to end against a by-hand masked forward, and every method keeps exactly its
budget with batch rows equal to single runs.
"""

import math

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune import budget as B
from glimpseprune.methods import get_method
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import TinyLlavaSpec, tiny_llava

from ..adapters.reference import reference_generate
from .test_baselines import (QUESTION, merge_into_kept_by_loops, run, visionzip_by_loops,
                             vscan_keep_by_loops)

STRATEGIES = ["default", "full"]  # "full": the projector also sees CLS, one extra never-pruned placeholder per image
_CACHE: dict[str, tuple] = {}


@pytest.fixture(scope="module", params=STRATEGIES)
def llava(request):
    """(model, processor, gp) for the tiny LLaVA with the given feature-select strategy."""
    if request.param not in _CACHE:
        model, processor = tiny_llava(TinyLlavaSpec(vision_feature_select_strategy=request.param))
        _CACHE[request.param] = (model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0))
    return _CACHE[request.param]


def prunable(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[n] bool for one row: the pruning candidates, derived without the adapter (first of each image is CLS if
    the strategy is "full")."""
    mask = input_ids == model.config.image_token_id
    if model.config.vision_feature_select_strategy == "full":
        cols = mask.nonzero().squeeze(1)
        mask[cols[:: model.config.image_seq_length]] = False
    return mask


@torch.no_grad()
def stock_clip(model, pixel_values):
    """The stock CLIP tower with eager attention: (attentions per layer [n, H, 1+P, 1+P], hidden_states)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model.model.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation(previous)
    assert out.attentions is not None and len(out.attentions) == model.config.vision_config.num_hidden_layers
    return out.attentions, out.hidden_states


def reference_cls_scores(model, pixel_values, layer):
    """[n_img · P]: head-averaged attention of the CLS query to every patch, read off the full eager map."""
    attentions, _ = stock_clip(model, pixel_values)
    return attentions[layer][:, :, 0, 1:].float().mean(1).reshape(-1)


def reference_keys(model, pixel_values, layer):
    """[n_img · P, D]: the layer's k_proj of its (layer-normed) input, from the stock tower's hidden states."""
    _, hidden_states = stock_clip(model, pixel_values)
    clip_layer = model.model.vision_tower.encoder.layers[layer]
    with torch.no_grad():
        k = clip_layer.self_attn.k_proj(clip_layer.layer_norm1(hidden_states[layer]))
    return k[:, 1:].reshape(-1, k.shape[-1]).float()


# ---- defaults ---------------------------------------------------------------------------------------------------


def test_defaults_are_the_published_clip_settings(llava):
    model, _, gp = llava
    depth = model.config.vision_config.num_hidden_layers
    assert model.config.vision_feature_layer == -2
    vz = get_method("visionzip", gp, ratio=0.2)
    assert vz.block == depth - 2  # hidden_states[-2] is the output of CLIP layer depth-2 (attentions[-2])
    assert vz.share == pytest.approx(10 / 64)  # LLaVA's 54 dominant + 10 contextual
    assert vz.vit_layers.block_inputs == [depth - 2] and list(vz.vit_layers) == []
    vs = get_method("vscan", gp, ratio=0.2)
    assert vs.global_block == vs.local_block == depth - 2  # CLIP has no windowed layer
    assert vs.vit_layers.block_inputs == [depth - 2]
    with pytest.raises(ValueError, match="out of range"):
        get_method("visionzip", gp, block=depth)


# ---- CLS attention against the stock eager attention maps ---------------------------------------------------------


@pytest.mark.parametrize("name", ["visionzip", "vscan"])
def test_cls_attention_matches_stock_eager_attention_maps(llava, images, name):
    """Two images in one sample (the tower runs them as a batch): the scores of each equal the stock map's row."""
    model, processor, gp = llava
    inputs = build_inputs(processor, [QUESTION], [[images["tall"], images["wide"]]])
    method = get_method(name, gp, ratio=0.2)
    layer = method.block if name == "visionzip" else method.global_block
    _, seen, batch = run(gp, inputs, method)
    ref = reference_cls_scores(model, inputs["pixel_values"], layer)
    assert ref.numel() == sum(im.num_tokens for im in batch.images[0]) == 2 * 256
    torch.testing.assert_close(seen[0].scores[0].float(), ref, atol=1e-6, rtol=1e-5)
    # the captured input is the one the layer really saw; the scores are probabilities over CLS + patches
    got = seen[0].scores[0].detach()
    assert bool((got > 0).all()) and float(got[:256].sum()) < 1


def test_cls_attention_helper_matches_every_layer(llava, images):
    from glimpseprune.adapters.llava import cls_attention

    model, processor, gp = llava
    inputs = build_inputs(processor, [QUESTION, QUESTION], [[images["square"]], [images["tall"]]])
    attentions, hidden_states = stock_clip(model, inputs["pixel_values"])
    layers = gp.adapter.vision_layers
    for i in range(len(layers)):
        with torch.no_grad():
            probs, keys = cls_attention(layers[i], hidden_states[i])  # hidden_states[i] is layer i's input
        torch.testing.assert_close(probs, attentions[i][:, :, 0, 1:].float().mean(1), atol=1e-6, rtol=1e-5)
        assert keys.shape == (2, 256, model.config.vision_config.hidden_size)


def test_vscan_explicit_local_layer_scores(llava, images):
    """A shallower local layer: its CLS attention ranks the local picks (checked by loops over grid windows)."""
    model, processor, gp = llava
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    method = get_method("vscan", gp, vision_ratio=0.3, llm_ratio=0.5, llm_layer=2, local_block=0, local_window=4)
    assert method.vit_layers.block_inputs == [0, 2]
    _, seen, batch = run(gp, inputs, method)
    gs = reference_cls_scores(model, inputs["pixel_values"], 2)
    ls = reference_cls_scores(model, inputs["pixel_values"], 0)
    n, (h, w) = 256, batch.images[0][0].grid
    k1 = math.floor(0.3 * n)
    n_local = round(0.5 * k1)
    keep1 = vscan_keep_by_loops(gs, ls, n, w, 4, k1 - n_local, n_local)
    assert torch.equal(seen[0].keep[0].cpu(), keep1)


# ---- selections by loops + end to end ------------------------------------------------------------------------------


def test_visionzip_matches_loops_and_by_hand_cut(llava, images):
    model, processor, gp = llava
    inputs = build_inputs(processor, [QUESTION], [[images["wide"]]])
    method = get_method("visionzip", gp, dominant=54 / 576, contextual=10 / 576)  # the published 54 + 10 of 576
    _, seen, batch = run(gp, inputs, method)
    layer = model.config.vision_config.num_hidden_layers - 2
    scores = reference_cls_scores(model, inputs["pixel_values"], layer)
    keys = reference_keys(model, inputs["pixel_values"], layer)
    x = batch.inputs_embeds[0][batch.visual_mask[0]]
    n = x.shape[0]
    assert n == 256
    d, c = int(54 / 576 * n), int(10 / 576 * n)
    keep, new = visionzip_by_loops(x, scores, keys, d, c)
    assert torch.equal(seen[0].keep[0].cpu(), keep) and int(keep.sum()) == d + c
    torch.testing.assert_close(seen[0].replace[0], new[keep], atol=1e-6, rtol=1e-5)
    cand = prunable(model, inputs["input_ids"][0])
    ref_tokens, _ = reference_generate(model, dict(inputs), cand, keep, 0, 6, replace=new[keep])
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens
    assert len(set(ref_tokens)) > 1, "degenerate tiny model: equality would be vacuous"
    # the CLS placeholder ("full") is a kept non-candidate: the kept columns are text + CLS + the kept patches
    expect = (~cand).nonzero().squeeze(1).tolist() + cand.nonzero().squeeze(1)[keep].tolist()
    assert sorted(out.pruning.samples[0].keep_indices.tolist()) == sorted(expect)


def test_vscan_stage_one_matches_loops(llava, images):
    model, processor, gp = llava
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    method = get_method("vscan", gp, vision_ratio=0.4, llm_ratio=0.5, llm_layer=2)
    _, seen, batch = run(gp, inputs, method)
    layer = model.config.vision_config.num_hidden_layers - 2
    gs = reference_cls_scores(model, inputs["pixel_values"], layer)
    keys = reference_keys(model, inputs["pixel_values"], layer)
    x = batch.inputs_embeds[0][batch.visual_mask[0]]
    n, (h, w) = x.shape[0], batch.images[0][0].grid
    k1 = math.floor(0.4 * n)
    n_local = round(0.5 * k1)
    keep1 = vscan_keep_by_loops(gs, gs, n, w, 4, k1 - n_local, n_local)
    merged = merge_into_kept_by_loops(x, keys, keep1)
    assert torch.equal(seen[0].keep[0].cpu(), keep1)
    torch.testing.assert_close(seen[0].replace[0], merged, atol=1e-6, rtol=1e-5)
    keep2 = seen[2].keep[0].cpu()
    assert int(keep2.sum()) == math.floor(0.4 * 0.5 * n) and not bool((keep2 & ~keep1).any())


# ---- budgets + batching -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["visionzip", "vscan"])
def test_exact_budget_and_batch_rows_equal_single_runs(llava, images, name):
    model, processor, gp = llava
    questions = [QUESTION, "what colour is the shape in the image?", "describe the picture in one word.", "how many?"]
    image_lists = [[images["square"]], [images["tall"], images["wide"]], [], [images["wide"]]]
    method = get_method(name, gp, ratio=0.2)
    kwargs = dict(method=method, max_new_tokens=5, min_new_tokens=5)
    batch_out = gp.generate(**build_inputs(processor, questions, image_lists), **kwargs)
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        inputs = build_inputs(processor, [q], [ims])
        single = gp.generate(**inputs, **kwargs)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep), f"row {i}"
        sizes = [im.total for im in single.pruning.samples[0].images]
        assert sizes == [256] * len(ims)  # candidates are the h·w patches only, whatever the strategy
        if name == "visionzip":
            expected = sum(sum(method.counts(s)) for s in sizes)
        else:
            expected = B.keep_count(sum(sizes), method.vision_ratio * method.llm_ratio, method.min_keep) if sizes else 0
        assert single.pruning.kept[0] == expected, f"row {i}"
        if ims:  # every CLS placeholder ("full") and every text token is kept
            cand = prunable(model, inputs["input_ids"][0])
            kept_cols = set(single.pruning.samples[0].keep_indices.tolist())
            assert set((~cand).nonzero().squeeze(1).tolist()) <= kept_cols
    if name == "vscan":  # stage 1: floor(vision_ratio · n) per image, of the original tokens
        layer0 = [kept for layer, kept in batch_out.pruning.stages if layer == 0][0]
        assert layer0 == [sum(B.keep_count(256, method.vision_ratio) for _ in ims) for ims in image_lists]
