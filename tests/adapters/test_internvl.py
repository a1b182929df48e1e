"""InternVL beyond the family-parametrised suite (test_families.py runs it too: keep-all == stock generate, fixed
masks == the slow reference, batch == alone, stateless, placeholder checks; test_cli_families.py: `answer` on a
saved model): tiles and the thumbnail as per-tile grids, the pixel shuffle's token order for the VIP conditions,
box masks over tiles checked by hand and against the tiles' pixels, multi-image prompts, stage-1 training,
ViT scoring against the stock eager tower, every baseline, FLOPs."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from glimpseprune import GlimpsePrune
from glimpseprune.adapters import adapter_for
from glimpseprune.adapters.base import VitRequest
from glimpseprune.adapters.internvl import internvl_box_mask
from glimpseprune.checkpoint import build_modules
from glimpseprune.engine import prefill
from glimpseprune.eval.flops import dims_from_hf_config, vision_flops
from glimpseprune.methods import FixedKeep, get_method
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import TinyInternVLSpec, tiny_internvl
from glimpseprune.train.collate import Collator, model_inputs
from glimpseprune.train.forward import training_forward
from glimpseprune.train.losses import loc_loss

from ..conftest import scene
from .reference import reference_generate

QUESTION = "is there a red circle?"
SPEC = TinyInternVLSpec()
PER_TILE = SPEC.tokens_per_tile  # 16: a 112 px tile is 8 x 8 patches, 4 x 4 tokens after the 2 x 2 shuffle


@pytest.fixture(scope="module")
def ivl():
    model, processor = tiny_internvl()
    return model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0)


def test_tiles_and_thumbnail_are_separate_grids(ivl):
    """wide 308x196 -> a 2 x 1 canvas + thumbnail (3 tiles); square 224 -> 2 x 2 + thumbnail (5); 100 x 100 -> one
    tile, no thumbnail. Every tile is its own 4 x 4 grid, in prompt order."""
    model, processor, gp = ivl
    images = [scene(308, 196, 2), scene(224, 224, 0), scene(100, 100, 3)]
    inputs = build_inputs(processor, [QUESTION], [images])
    assert inputs["pixel_values"].shape[0] == 3 + 5 + 1
    batch = gp.adapter.prepare(dict(inputs))
    assert [im.grid for im in batch.images[0]] == [(4, 4)] * 9
    assert [im.num_tokens for im in batch.images[0]] == [PER_TILE] * 9
    # <img> ... </img> around every image: text, never candidates
    ids = inputs["input_ids"][0]
    tok = processor.tokenizer
    assert int((ids == tok.start_image_token_id).sum()) == int((ids == tok.end_image_token_id).sum()) == 3
    assert not batch.visual_mask[0, ids == tok.start_image_token_id].any()
    assert int(batch.visual_mask.sum()) == 9 * PER_TILE


def test_conditions_follow_the_pixel_shuffle_order(ivl):
    """The VIP condition of LLM token j is the mean of the ViT patches the stock pixel shuffle joins into token j."""
    model, processor, gp = ivl
    inputs = build_inputs(processor, [QUESTION], [[scene(308, 196, 2)]])
    layers = gp.config.vip_visual_layers
    batch = gp.adapter.prepare(dict(inputs), layers)
    with torch.no_grad():
        hidden = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
    side = SPEC.tile_size // SPEC.patch_size
    for cond, block in zip(batch.vit_features, layers):
        patches = hidden[block + 1][:, 1:]  # hidden_states[i + 1]: output of block i; CLS dropped
        shuffled = model.model.pixel_shuffle(patches.reshape(-1, side, side, patches.shape[-1]), 0.5)
        # the shuffle concatenates 4 patches per token along channels: average them back
        expect = shuffled.reshape(-1, 4, patches.shape[-1]).mean(1)
        torch.testing.assert_close(cond, expect)
    assert [c.shape for c in batch.vit_features] == [(3 * PER_TILE, model.config.vision_config.hidden_size)] * 4


def test_box_mask_over_tiles_by_hand():
    # 224 x 112 -> a 2 x 1 canvas of 112 px tiles (no resize) + the thumbnail (224 x 112 squashed to 112 x 112).
    # Tokens are 28 px cells. Box x 120..170, y 30..60: tile 1 local x 8..58 -> cols 0..2, rows 1..2; tile 0 none;
    # thumbnail x 120/224..170/224 of 4 cols -> cols 2..3, rows 1..2.
    mask = internvl_box_mask([[120, 30, 170, 60]], 224, 112, cols=2, rows=1, thumbnail=True, side=4)
    expect = [16 + r * 4 + c for r in (1, 2) for c in (0, 1, 2)] + [32 + r * 4 + c for r in (1, 2) for c in (2, 3)]
    assert mask.shape == (48,) and sorted(np.flatnonzero(mask).tolist()) == expect
    # 112 x 336 -> 1 x 3 canvas; box y 100..130 crosses the tile 0 / tile 1 border (y = 112)
    mask = internvl_box_mask([[10, 100, 50, 130]], 112, 336, cols=1, rows=3, thumbnail=True, side=4)
    assert np.flatnonzero(mask).tolist() == [12, 13, 16, 17, 52, 53]
    # no box: nothing; a single tile (no thumbnail) is the plain grid rule
    assert not internvl_box_mask([], 224, 112, cols=2, rows=1, thumbnail=True, side=4).any()
    single = internvl_box_mask([[0, 0, 56, 56]], 112, 112, cols=1, rows=1, thumbnail=False, side=4)
    assert np.flatnonzero(single).tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # right/bottom edge on a cell border


def _red_fraction_per_cell(pixel_values, processor) -> np.ndarray:
    """[tiles · 16] share of strongly red pixels in every 28 px token cell of the processed tiles."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean)[:, None, None]
    std = torch.tensor(ip.image_std)[:, None, None]
    rgb = pixel_values * std + mean  # [tiles, 3, 112, 112] in [0, 1]
    red = (rgb[:, 0] > 0.7) & (rgb[:, 1] < 0.3) & (rgb[:, 2] < 0.3)
    cells = red.reshape(red.shape[0], 4, 28, 4, 28).float().mean((2, 4))
    return cells.reshape(-1).numpy()


@pytest.mark.parametrize("size,box", [((224, 112), (120, 30, 170, 60)), ((112, 336), (10, 100, 50, 130)),
                                      ((300, 200), (40, 60, 200, 140))])
def test_box_mask_matches_the_tiles_pixels(ivl, size, box):
    """Paint the box red and run the real processor: every cell that is mostly red is in the mask, every masked
    cell shows some red (the bicubic resize blurs a pixel or two at box edges). The boxes do not end exactly on a
    cell border, where the common rule deliberately marks the next cell too (data.masks.boxes_to_grid_mask)."""
    _, processor, _ = ivl
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
    record = {"question": QUESTION, "answer": "yes", "image": image, "bboxs": [list(box)]}
    batch = Collator(processor, "internvl")([record])
    mask = batch["box_masks"][0].numpy()
    red = _red_fraction_per_cell(batch["pixel_values"], processor)
    assert mask.shape == red.shape
    assert mask[red > 0.5].all()
    assert (red[mask] > 0).all()
    assert 0 < mask.sum() < mask.size


def test_two_images_keep_all_is_stock_and_fixed_mask_matches_reference(ivl):
    model, processor, gp = ivl
    inputs = build_inputs(processor, [QUESTION], [[scene(168, 280, 1), scene(308, 196, 2)]])
    ref = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    out = gp.generate(**inputs, threshold=0.0, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(out.sequences, ref) and out.pruning.keep_ratio == 1.0
    prunable = inputs["input_ids"][0] == model.config.image_token_id
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(5)) < 0.3
    for k in (1, 3):
        ref_tokens, ref_logits = reference_generate(model, dict(inputs), prunable, keep, k, 6, min_new_tokens=6)
        fixed = gp.generate(**inputs, keep_masks=[keep], prune_layer=k, max_new_tokens=6, min_new_tokens=6)
        assert fixed.generated[0].tolist() == ref_tokens
        pre = prefill(gp.adapter, gp.adapter.prepare(dict(inputs)), FixedKeep([keep], k))
        torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)
    assert len(fixed.pruning.samples[0].images) == 3 + 3  # tiles of both images, each thumbnail its own grid


def test_multi_image_batch_rows_equal_single_runs_and_per_tile_policy(ivl):
    _, processor, gp = ivl
    questions = [QUESTION, "what colour is the shape in the image?", "describe the picture in one word."]
    image_lists = [[scene(224, 224, 0), scene(100, 100, 3)], [scene(308, 196, 2)], []]
    kwargs = dict(max_keep_ratio=0.25, per_image=True, max_new_tokens=5, min_new_tokens=5)
    batch_out = gp.generate(**build_inputs(processor, questions, image_lists), **kwargs)
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        single = gp.generate(**build_inputs(processor, [q], [ims]), **kwargs)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep)
        # per_image: the cap applies per tile (and per thumbnail): at most int(0.25 · 16) = 4 of each tile
        assert all(im.total == PER_TILE and 1 <= im.kept <= 4 for im in single.pruning.samples[0].images)
    assert [len(s.images) for s in batch_out.pruning.samples] == [5 + 1, 3, 0]


def test_placeholders_must_be_whole_tiles(ivl):
    model, processor, gp = ivl
    inputs = build_inputs(processor, [QUESTION], [[scene(100, 100, 3)]])
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    ids[0, first + 3] = processor.tokenizer.pad_token_id  # one run of 16 becomes 3 + 12: not whole tiles
    with pytest.raises(ValueError, match="placeholder"):
        gp.generate(**dict(inputs, input_ids=ids), max_new_tokens=2)


@pytest.mark.parametrize("mode", ["box"])
def test_stage1_training_step(mode):
    from glimpseprune.data.scenes import all_texts, generate_items, render_scene

    model, processor = tiny_internvl(corpus=all_texts())
    model.requires_grad_(False)
    adapter = adapter_for(model)
    config = adapter.default_glimpse_config(vip_size=32, vip_cond_size=32, vip_heads=2)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    records = []
    for sc, record in generate_items(6, seed=0, split="train"):
        if record["bboxs"] and len(records) < 2:
            records.append(dict(record, image=render_scene(sc)))
    batch = Collator(processor, adapter.family)(records)
    assert all(m.numel() % PER_TILE == 0 and m.numel() > PER_TILE for m in batch["box_masks"])  # several tiles
    with torch.no_grad():
        prepared = adapter.prepare(model_inputs(batch), config.vip_visual_layers)
    params = [*glimpse.parameters(), *vip.parameters()]
    before = [p.detach().clone() for p in params]
    out = training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer)
    assert [z.numel() for z in out.per_sample()] == [int(m.numel()) for m in batch["box_masks"]]
    loss = loc_loss(out.per_sample(), batch["box_masks"], 1.0, 1.0)["loc"] + out.lm_loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(params, lr=1e-2).step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    assert all(p.grad is None for p in model.parameters())


@torch.no_grad()
def test_vit_scoring_matches_the_stock_eager_tower(ivl):
    model, processor, gp = ivl
    inputs = build_inputs(processor, [QUESTION], [[scene(308, 196, 2)]])
    scoring = gp.adapter.vit_scoring()
    assert scoring.cls_query and scoring.windowed_blocks == () and scoring.default_block == 3
    block = 2
    batch = gp.adapter.prepare(dict(inputs), VitRequest([], block_inputs=[block]))
    scores, keys, windows = scoring.token_scores(batch, block, 2**20)
    model.set_attn_implementation("eager")
    try:
        out = model.model.vision_tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation("sdpa")
    side = SPEC.tile_size // SPEC.patch_size
    cls_row = out.attentions[block][:, :, 0, 1:].float().mean(1)  # [tiles, 64]: CLS -> patch, head mean
    expect = cls_row.reshape(-1, side // 2, 2, side // 2, 2).mean((2, 4)).reshape(-1)
    torch.testing.assert_close(scores, expect, atol=1e-6, rtol=1e-5)
    layer = model.model.vision_tower.encoder.layer[block]
    k = layer.attention.k_proj(layer.layernorm_before(out.hidden_states[block]))[:, 1:]
    torch.testing.assert_close(keys, k.reshape(-1, side // 2, 2, side // 2, 2, k.shape[-1]).mean((2, 4))
                               .reshape(-1, k.shape[-1]).float())
    assert windows is None and scores.numel() == 3 * PER_TILE


@pytest.mark.parametrize("name", ["random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample",
                                  "visionzip", "vscan"])
def test_every_baseline_runs_and_batch_rows_equal_single_runs(ivl, name):
    _, processor, gp = ivl
    questions = [QUESTION, "what colour is the shape in the image?"]
    image_lists = [[scene(224, 224, 0)], [scene(168, 280, 1), scene(100, 100, 3)]]
    method = get_method(name, gp, retention=0.5)
    batch_out = gp.generate(**build_inputs(processor, questions, image_lists), method=method, max_new_tokens=3,
                            min_new_tokens=3)
    assert all(0 < s.kept < s.total for s in batch_out.pruning.samples)
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        single = gp.generate(**build_inputs(processor, [q], [ims]), method=method, max_new_tokens=3,
                             min_new_tokens=3)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"{name} row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep), f"{name} row {i}"


def test_flops_dims(ivl):
    model, _, _ = ivl
    dims = dims_from_hf_config(model.config)
    vc = model.config.vision_config
    assert dims.vision.patches_per_token == 4 and dims.vision.extra_tokens_per_image == 1
    assert dims.vision.projector == ((4 * vc.hidden_size, model.config.text_config.hidden_size),
                                     (model.config.text_config.hidden_size,) * 2)
    assert dims.vision.patch_input == 3 * 14 * 14
    # three tiles cost three times one tile: each tile is its own ViT pass
    assert vision_flops(dims.vision, [PER_TILE] * 3) == 3 * vision_flops(dims.vision, [PER_TILE])


@pytest.mark.parametrize("layers,depth,k,vip", [
    (32, 24, 22, [23, 17, 11, 5]),  # the reference's InternVL2.5 default K for a 32-layer LLM
    (24, 24, 16, [23, 17, 11, 5]),  # other depths: K = round(2L/3)
    (28, 45, 19, [44, 33, 22, 11]),  # a 45-block ViT: spread from the last block
])
def test_size_defaults(layers, depth, k, vip):
    from transformers import InternVLConfig

    from glimpseprune.adapters.internvl import InternVLAdapter

    cfg = InternVLConfig(text_config=dict(model_type="qwen2", num_hidden_layers=layers, hidden_size=64,
                                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
                         vision_config=dict(num_hidden_layers=depth, hidden_size=32, num_attention_heads=2,
                                            intermediate_size=32))

    adapter = InternVLAdapter.__new__(InternVLAdapter)  # the defaults read only the config
    adapter.model = type("M", (), {"config": cfg, "model": type("I", (), {"language_model": type("L", (), {
        "config": cfg.text_config})()})()})()
    config = adapter.default_glimpse_config()
    assert config.prune_layer == k and config.vip_visual_layers == vip


def test_drawing_puts_every_tile_on_its_part_of_the_image(ivl):
    """The kept-token picture: tile (r, c) of a 2 x 1 canvas is drawn on its half of the image; the thumbnail is a
    second view of the whole image and is not drawn over the tiles."""
    from glimpseprune.viz import draw_kept_tokens, grids_per_image, token_cells

    _, processor, gp = ivl
    image = scene(224, 112, 4)
    out = gp.generate(**build_inputs(processor, [QUESTION], [[image]]), max_keep_ratio=0.3, max_new_tokens=2)
    parts = grids_per_image([image.size], out.pruning.samples[0].images,
                            lambda w, h: gp.adapter.grid_regions(w, h, processor))[0]
    assert [region for _, region in parts] == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), None]
    assert token_cells(224, 112, (4, 4), region=(0.5, 0.0, 1.0, 1.0))[5] == (140.0, 28.0, 168.0, 56.0)
    drawn = np.asarray(draw_kept_tokens(image, parts))
    original = np.asarray(image)
    for grid, region in parts[:2]:
        for kept, (x0, y0, x1, y1) in zip(grid.keep.tolist(), token_cells(224, 112, grid.grid, region=region)):
            centre = (int(y0 + y1) // 2, int(x0 + x1) // 2)
            darkened = (drawn[centre] < original[centre]).all()
            assert darkened != kept, (region, x0, y0)


# ---- the authors' InternVL2.5 modules (docs/method.md §17.5) -------------------------------------------------------

F_, C_, HEADS_ = 32, 32, 2  # small VIP sizes for the synthetic files


def write_reference_folder(folder, hidden: int, row_width: int, n_blocks: int = 2, n_le: int = 3, seed: int = 0,
                           **config_fields):
    """A folder in the layout the authors' InternVL2.5 code saves (config.json + new_modules_gp.pt), written by hand
    from that layout: key names and shapes only, random values."""
    import json

    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    fuser = {"attn_in_proj.weight": rand(F_, row_width), "attn_in_proj.bias": rand(F_)}
    for i in range(n_blocks):
        fuser[f"cond_in_projs.{i}.weight"], fuser[f"cond_in_projs.{i}.bias"] = rand(C_, hidden), rand(C_)
        for norm in ("norm1", "norm2"):
            fuser[f"layers.{i}.{norm}.weight"], fuser[f"layers.{i}.{norm}.bias"] = 1 + rand(F_), rand(F_)
        for name in ("q_proj", "k_proj"):
            fuser[f"layers.{i}.attn.{name}.weight"] = rand(F_ + C_, F_ + C_)
        for name in ("v_proj", "o_proj"):
            fuser[f"layers.{i}.attn.{name}.weight"] = rand(F_, F_)
        fuser[f"layers.{i}.mlp.0.weight"], fuser[f"layers.{i}.mlp.0.bias"] = rand(2 * F_, F_), rand(2 * F_)
        fuser[f"layers.{i}.mlp.2.weight"], fuser[f"layers.{i}.mlp.2.bias"] = rand(F_, 2 * F_), rand(F_)
    fuser[f"attn_out_projs.{n_blocks - 1}.weight"], fuser[f"attn_out_projs.{n_blocks - 1}.bias"] = rand(1, F_), rand(1)
    weights = {
        "attn_fuser": fuser,
        "learnable_embeddings": rand(n_le, 1, hidden),
        "le_proj": {"weight": rand(hidden, hidden), "bias": rand(hidden)},
        "le_norm": {"weight": 1 + rand(hidden), "bias": rand(hidden)},
    }
    config = {
        "model_type": "internvl2_5_gp", "selected_layers": [2], "reduce_layer": 2,
        "selected_visual_layers": [-1, -2, -3, -4][:n_blocks], "use_attention_logits": False,
        "attn_fuse_size": F_, "visual_cond_size": C_, "attn_fuse_type": "AttnFuserV1",
        "attn_fuse_num_heads": HEADS_, "attn_fuse_hidden_act": "silu", "attn_fuse_global": False,
        "attn_fuse_use_flash_attn": False, "ori_attn_supervision": False, "deep_supervision": False,
        "le_layers": list(range(n_le)), "le_length": 1, "le_dropout_prob": 0.0, "le_norm_type": "rmsnorm",
        "reduce_threshold": 0.5, "use_ref_masks": False, "use_zero_masks": False, "min_remain_num": 1,
        "max_remain_ratio": None, "fixed_remain_ratio": None,
        "llm_config": {"num_hidden_layers": 4, "hidden_size": hidden}, "vision_config": {"hidden_size": 64},
    }
    config.update(config_fields)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(weights, folder / "new_modules_gp.pt")
    (folder / "config.json").write_text(json.dumps(config))
    return config, weights


def rotate(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def by_hand_fuser(fuser, n_blocks, rows, cond, side):
    """Their fuser's arithmetic, written out here: per tile (side x side tokens, positions restarting per tile),
    LayerNorm pre-norm blocks with conditional attention (Q, K from [x; cond], V from x, 2-D RoPE) and a plain SiLU
    MLP; logits from the last block's output head."""
    import torch.nn.functional as tf

    def lin(x, name):
        return tf.linear(x, fuser[f"{name}.weight"], fuser.get(f"{name}.bias"))

    hd = (F_ + C_) // HEADS_
    dim = hd // 2
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    hpos = torch.arange(side).repeat_interleave(side).float()
    wpos = torch.arange(side).repeat(side).float()
    emb = torch.cat([hpos[:, None] * inv, wpos[:, None] * inv], -1)
    cos, sin = torch.cat([emb, emb], -1).cos()[:, None], torch.cat([emb, emb], -1).sin()[:, None]
    x = lin(rows, "attn_in_proj")
    conds = [lin(cond, f"cond_in_projs.{i}") for i in range(n_blocks)]
    n = side * side
    for i in range(n_blocks):
        p = f"layers.{i}"
        h = tf.layer_norm(x, (F_,), fuser[f"{p}.norm1.weight"], fuser[f"{p}.norm1.bias"])
        qk = torch.cat([h, conds[i]], -1)
        q = lin(qk, f"{p}.attn.q_proj").view(-1, HEADS_, hd)
        k = lin(qk, f"{p}.attn.k_proj").view(-1, HEADS_, hd)
        v = lin(h, f"{p}.attn.v_proj").view(-1, HEADS_, F_ // HEADS_)
        out = []
        for t in range(0, x.shape[0], n):  # one tile at a time
            qt, kt, vt = (z[t:t + n] for z in (q, k, v))
            qt, kt = qt * cos + rotate(qt) * sin, kt * cos + rotate(kt) * sin
            att = torch.softmax(torch.einsum("ihd,jhd->hij", qt, kt) / hd**0.5, -1)
            out.append(torch.einsum("hij,jhd->ihd", att, vt).reshape(n, F_))
        x = x + lin(torch.cat(out), f"{p}.attn.o_proj")
        h = tf.layer_norm(x, (F_,), fuser[f"{p}.norm2.weight"], fuser[f"{p}.norm2.bias"])
        x = x + lin(tf.silu(lin(h, f"{p}.mlp.0")), f"{p}.mlp.2")
    return lin(x, f"attn_out_projs.{n_blocks - 1}").squeeze(-1)


def test_reference_internvl_checkpoint_imports_and_runs(ivl, tmp_path):
    from glimpseprune.adapters.base import condition_request
    from glimpseprune.checkpoint import load_modules, modules_state_dict

    model, processor, gp = ivl
    hidden = model.config.text_config.hidden_size
    heads = model.config.text_config.num_attention_heads
    raw, weights = write_reference_folder(tmp_path / "ref", hidden, heads)
    config, glimpse, vip = load_modules(tmp_path / "ref", gp.adapter.default_glimpse_config())
    assert (config.family, config.prune_layer, config.glimpse_layers) == ("internvl", 3, [0, 1, 2])
    assert (config.vip_block, config.vip_conditions, config.vision_hidden_size) == ("layernorm_plain", "projected",
                                                                                    hidden)
    assert (config.glimpse_norm, config.norm_eps, config.attention_logits) == ("layernorm", 1e-5, False)
    assert (config.vip_size, config.vip_cond_size, config.vip_heads, config.vip_layers) == (F_, C_, HEADS_, 2)
    # every tensor lands where it belongs, unchanged
    state = modules_state_dict(glimpse, vip)
    fuser = weights["attn_fuser"]
    expect = {"glimpse.embeddings": weights["learnable_embeddings"],
              "glimpse.proj.weight": weights["le_proj"]["weight"], "glimpse.proj.bias": weights["le_proj"]["bias"],
              "glimpse.norm.weight": weights["le_norm"]["weight"], "glimpse.norm.bias": weights["le_norm"]["bias"]}
    for key, value in fuser.items():
        ours = (key.replace("attn_in_proj.", "in_proj.").replace("cond_in_projs.", "cond_projs.")
                .replace("layers.", "blocks.").replace("attn_out_projs.1.", "out_proj."))
        expect[f"vip.{ours}"] = value
    assert sorted(state) == sorted(expect)
    for key in expect:
        assert torch.equal(state[key], expect[key]), key
    # the glimpse vector and the VIP compute what their code computes on these weights
    with torch.no_grad():
        e = weights["learnable_embeddings"][0, 0]
        u = torch.nn.functional.layer_norm(e @ weights["le_proj"]["weight"].T + weights["le_proj"]["bias"], (hidden,),
                                           weights["le_norm"]["weight"], weights["le_norm"]["bias"], 1e-5)
        torch.testing.assert_close(glimpse.vectors(3, torch.float32)[0][0], u)
        rows = torch.randn(2 * PER_TILE, heads, generator=torch.Generator().manual_seed(1))
        cond = torch.randn(2 * PER_TILE, hidden, generator=torch.Generator().manual_seed(2))
        ours = vip(rows, [cond, cond], [(4, 4), (4, 4)])
        torch.testing.assert_close(ours, by_hand_fuser(fuser, 2, rows, cond, 4), atol=1e-5, rtol=1e-4)
    # on the engine: the VIP is conditioned on the projected visual tokens, the tokens the LLM receives
    loaded = GlimpsePrune(model, processor, config, glimpse, vip)
    inputs = build_inputs(processor, [QUESTION], [[scene(308, 196, 2)]])
    batch = gp.adapter.prepare(dict(inputs), condition_request(config))
    visual = batch.inputs_embeds[batch.visual_mask]
    assert len(batch.vit_features) == 2 and all(torch.equal(c, visual) for c in batch.vit_features)
    out = loaded.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=3)
    assert 1 <= out.pruning.kept[0] <= int(0.3 * 3 * PER_TILE)
    # saved in our format and loaded again: the same modules and the same answer
    loaded.save_pretrained(tmp_path / "ours")
    again = GlimpsePrune(model, processor, *load_modules(tmp_path / "ours", gp.adapter.default_glimpse_config()))
    assert again.config == config
    assert torch.equal(again.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=3).sequences, out.sequences)


def test_reference_internvl_settings_we_cannot_reproduce_are_refused(ivl, tmp_path):
    from glimpseprune.checkpoint import export_reference, load_modules
    from glimpseprune.errors import ConfigError

    model, _, gp = ivl
    hidden, heads = model.config.text_config.hidden_size, model.config.text_config.num_attention_heads
    write_reference_folder(tmp_path / "global", hidden, heads, attn_fuse_global=True)
    with pytest.raises(ConfigError, match="attn_fuse_global=true"):
        load_modules(tmp_path / "global", gp.adapter.default_glimpse_config())
    # our own ViT-conditioned InternVL modules have no place in that format
    with pytest.raises(ValueError, match="vip_block"):
        export_reference(tmp_path / "export", gp.config, gp.glimpse, gp.vip)


def test_projected_conditions_need_an_adapter_that_offers_them(qwen, gp):
    from dataclasses import replace

    model, processor = qwen
    assert gp.config.vision_hidden_size == gp.config.hidden_size  # so the config itself is valid
    config = replace(gp.config, vip_conditions="projected")
    with pytest.raises(ValueError, match="does not offer"):
        GlimpsePrune(model, processor, config, gp.glimpse, gp.vip)


def test_box_mask_follows_a_pixel_budget(ivl):
    """max_pixels becomes a tile budget (here 2 tiles): the box mask follows the canvas the processor really made
    (336 x 112 is a 3 x 1 canvas by default, 2 x 1 under this budget)."""
    _, processor, _ = ivl
    box = [200, 20, 300, 100]
    record = {"question": QUESTION, "answer": "yes", "image": scene(336, 112, 5), "bboxs": [box]}
    assert Collator(processor, "internvl")([record])["pixel_values"].shape[0] == 3 + 1
    batch = Collator(processor, "internvl", max_pixels=2 * 112 * 112)([record])
    assert batch["pixel_values"].shape[0] == 2 + 1
    expect = internvl_box_mask([box], 336, 112, cols=2, rows=1, thumbnail=True, side=4)
    assert batch["box_masks"][0].tolist() == expect.tolist() and expect[16:32].any() and not expect[:16].any()
