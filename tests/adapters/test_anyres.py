"""LLaVA-NeXT and LLaVA-OneVision (AnyRes) beyond the family-parametrised suite (test_families.py runs both: keep-all
== stock generate, fixed masks == the slow reference, batch == alone, stateless, CLI): newline tokens never pruned,
one VIP grid per view, conditions = the ViT states where the LLM's tokens came from, box masks through crops and
unpadding against by-hand numbers and against the processor's own pixels, multi-image prompts (including
OneVision's base-only multi-image path), stage-1 training, every baseline."""

import math

import numpy as np
import pytest
import torch
from transformers.image_processing_utils import select_best_resolution

from glimpseprune import GlimpsePrune
from glimpseprune.adapters import adapter_for
from glimpseprune.adapters.anyres import anyres_box_mask
from glimpseprune.checkpoint import build_modules
from glimpseprune.methods import get_method
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import TinyAnyResSpec, tiny_llava_next, tiny_llava_onevision
from glimpseprune.train.collate import Collator, model_inputs
from glimpseprune.train.forward import training_forward
from glimpseprune.train.losses import loc_loss

from ..conftest import scene
from .reference import reference_generate, stock_language_model_inputs

QUESTION = "is there a red circle?"
BUILDERS = {"llava_next": tiny_llava_next, "llava_onevision": tiny_llava_onevision}
_CACHE: dict = {}


@pytest.fixture(scope="module", params=list(BUILDERS))
def anyres(request):
    if request.param not in _CACHE:
        model, processor = BUILDERS[request.param]()
        _CACHE[request.param] = (model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0))
    return _CACHE[request.param]


def newline_columns(model, inputs) -> torch.Tensor:
    """[n] bool for a batch-1 prompt: where the stock model's embeddings hold its ``image_newline`` vector."""
    embeds = stock_language_model_inputs(model, dict(inputs))["inputs_embeds"][0]
    return (embeds == model.model.image_newline.to(embeds.dtype)).all(-1)


def side(model) -> int:
    return model.config.vision_config.image_size // model.config.vision_config.patch_size


def test_newlines_are_never_candidates_and_always_kept(anyres):
    model, processor, gp = anyres
    inputs = build_inputs(processor, [QUESTION], [[scene(308, 196, 2)]])
    newline = newline_columns(model, inputs)
    placeholders = inputs["input_ids"][0] == model.config.image_token_id
    batch = gp.adapter.prepare(dict(inputs))
    assert newline.any() and bool((newline <= placeholders).all())
    assert torch.equal(batch.visual_mask[0], placeholders & ~newline)
    out = gp.generate(**inputs, max_keep_ratio=0.1, max_new_tokens=2)
    kept_cols = set(out.pruning.samples[0].keep_indices.tolist())
    assert set(newline.nonzero().squeeze(1).tolist()) <= kept_cols  # every newline survives the cut
    assert out.pruning.samples[0].total == int((placeholders & ~newline).sum())
    # one newline after each row of the crops view, nowhere in the base view
    base, crops = out.pruning.samples[0].images
    assert (base.view, crops.view, base.image, crops.image) == ("base", "crops", 0, 0)
    assert base.grid == (side(model), side(model)) and int(newline.sum()) == crops.grid[0]
    cols = placeholders.nonzero().squeeze(1)
    run = newline[cols][base.total:].view(crops.grid[0], crops.grid[1] + 1)
    assert run[:, -1].all() and not run[:, :-1].any()


def stitched_by_hand(states: torch.Tensor, tiles: tuple[int, int], s: int) -> torch.Tensor:
    """Crop patch states [n_tiles, s·s, D] (tiles raster) -> the stitched canvas [rows·s, cols·s, D], by loops."""
    rows, cols = tiles
    canvas = torch.zeros(rows * s, cols * s, states.shape[-1])
    for t in range(rows * cols):
        r, c = divmod(t, cols)
        for p in range(s * s):
            i, j = divmod(p, s)
            canvas[r * s + i, c * s + j] = states[t, p]
    return canvas


def test_conditions_are_the_vit_states_of_each_token(anyres):
    """Base view = crop 0's patches; crops view = the crops' patches stitched, unpadded (and, OneVision, shrunk)
    by hand; the VIP sees one grid per view."""
    model, processor, gp = anyres
    image = scene(308, 196, 2)  # 2 x 2 tiles, unpadded to 8 of 12 token rows
    inputs = build_inputs(processor, [QUESTION], [[image]])
    layers = gp.config.vip_visual_layers
    batch = gp.adapter.prepare(dict(inputs), layers)
    s = side(model)
    with torch.no_grad():
        hs = model.model.vision_tower(inputs["pixel_values"][0], output_hidden_states=True).hidden_states
    cls = int(model.config.vision_feature_select_strategy == "default")
    base, crops = batch.images[0]
    assert base.grid == (s, s) and base.num_tokens + crops.num_tokens == int(batch.visual_mask.sum())
    # the by-hand unpadding of a 12 x 12 canvas for a 308 x 196 image: 196 * 12 / 308 = 7.64 -> 8 rows, 2 cut on top
    kept = int(round(196 * 12 / 308))
    top = (12 - kept) // 2
    for cond, i in zip(batch.vit_features, layers):
        patches = hs[i][:, cls:]
        torch.testing.assert_close(cond[: s * s], patches[0])
        canvas = stitched_by_hand(patches[1:5], (2, 2), s)[top: 12 - top]  # [8, 12, D]
        if crops.grid != tuple(canvas.shape[:2]):  # OneVision's anyres_max_N shrink, bilinear as the stock code
            ratio = math.sqrt(canvas.shape[0] * canvas.shape[1] / (2 * s * s))
            assert ratio > 1.1
            size = [int(canvas.shape[0] // ratio), int(canvas.shape[1] // ratio)]
            canvas = torch.nn.functional.interpolate(canvas.permute(2, 0, 1)[None], size, mode="bilinear")[0]
            canvas = canvas.permute(1, 2, 0)
        assert crops.grid == tuple(canvas.shape[:2])
        torch.testing.assert_close(cond[s * s:], canvas.reshape(-1, canvas.shape[-1]), atol=1e-5, rtol=1e-5)


def test_vip_never_attends_across_views(anyres):
    """Changing the crops view's inputs leaves the base view's keep logits unchanged (and vice versa)."""
    model, processor, gp = anyres
    inputs = build_inputs(processor, [QUESTION], [[scene(224, 224, 0)]])
    batch = gp.adapter.prepare(dict(inputs), gp.config.vip_visual_layers)
    grids = [im.grid for im in batch.images[0]]
    n_base = grids[0][0] * grids[0][1]
    rows = torch.randn(int(batch.visual_mask.sum()), gp.vip.in_proj.in_features,
                       generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = gp.vip(rows, batch.vit_features, grids)
        rows2 = rows.clone()
        rows2[n_base:] += 1.0
        b = gp.vip(rows2, batch.vit_features, grids)
    torch.testing.assert_close(a[:n_base], b[:n_base], atol=0, rtol=0)
    assert (a[n_base:] - b[n_base:]).abs().max() > 1e-4


# ---- boxes ---------------------------------------------------------------------------------------------------------


def grid_mask(rows: int, cols: int, cells: list[tuple[range, range]]) -> list[bool]:
    m = np.zeros((rows, cols), bool)
    for r, c in cells:
        m[r.start: r.stop, c.start: c.stop] = True
    return m.reshape(-1).tolist()


@pytest.mark.parametrize("box,base_cells,crop_cells", [
    # 300 x 200 image, crop 48, patch 8, canvases 48x96 / 96x48 / 96x96 -> 96x96 (2 x 2 tiles, 12 x 12 tokens).
    # Resized to 96 x 64 (scale 0.32), pasted 16 px down; unpadding keeps round(200 * 12 / 300) = 8 token rows,
    # dropping 2 on top. Crops view: x -> 0.32 x / 8, y -> (0.32 y + 16) / 8 - 2 on an 8 x 12 grid.
    ([150, 100, 300, 200], (range(3, 6), range(3, 6)), (range(4, 8), range(6, 12))),  # bottom-right quadrant
    # x 30..90 -> 1.2..3.6 (cols 1-3); y 20..60 -> 0.8..2.4 (rows 0-2); base: 0.6..1.8 (rows, cols 0-1)
    ([30, 20, 90, 60], (range(0, 2), range(0, 2)), (range(0, 3), range(1, 4))),
])
def test_box_mask_by_hand(box, base_cells, crop_cells):
    spec = TinyAnyResSpec()
    pinpoints = [[48, 96], [96, 48], [96, 96]]
    mask = anyres_box_mask([box], 300, 200, (200, 300), spec.image_size, spec.patch_size, pinpoints)
    assert mask.tolist() == grid_mask(6, 6, [base_cells]) + grid_mask(8, 12, [crop_cells])
    # OneVision's anyres_max_1 shrinks the 8 x 12 grid by sqrt(96 / 36) = 1.63 to 4 x 7; fractions carry over:
    # cols 12·(x/12)·(7/12) ..., i.e. the same normalised box on the smaller grid
    shrunk = anyres_box_mask([box], 300, 200, (200, 300), spec.image_size, spec.patch_size, pinpoints, max_crops=1)
    assert shrunk[:36].tolist() == mask[:36].tolist() and shrunk.size == 36 + 4 * 7
    # empty boxes: all False, same length
    assert anyres_box_mask([], 300, 200, (200, 300), 48, 8, pinpoints).tolist() == [False] * (36 + 96)


def token_brightness(model, pixel_values, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: mean normalised pixel value of its patch, base view then the crops view, computed from the
    processor's own crops (pixel level; no adapter code): the truth a box mask must agree with."""
    s = side(model)
    p = model.config.vision_config.patch_size
    crops = pixel_values[0].mean(1)  # [n, H, W] channel mean
    cells = crops.unfold(1, p, p).unfold(2, p, p).mean((-1, -2))  # [n, s, s]
    best = select_best_resolution(image_size, model.config.image_grid_pinpoints)
    tiles = (best[0] // model.config.vision_config.image_size, best[1] // model.config.vision_config.image_size)
    canvas = stitched_by_hand(cells[1: 1 + tiles[0] * tiles[1]].reshape(-1, s * s, 1), tiles, s)[..., 0]
    h, w = image_size
    rows, cols = canvas.shape
    if w / h > cols / rows:
        pad = (rows - int(round(h * cols / w, 7))) // 2
        canvas = canvas[pad: rows - pad]
    else:
        pad = (cols - int(round(w * rows / h, 7))) // 2
        canvas = canvas[:, pad: cols - pad]
    return cells[0].reshape(-1).numpy(), canvas.reshape(-1).numpy()


@pytest.mark.parametrize("size,box", [((300, 200), [150, 100, 300, 200]), ((200, 330), [20, 40, 120, 250]),
                                      ((90, 40), [10, 5, 50, 30])])
def test_box_mask_agrees_with_the_processors_pixels(anyres, size, box):
    """A white box on a black image, through the stock processor: every token whose patch is all white is in the
    mask, and every token in the mask has white pixels or touches one that has (the docs/method.md §11.3 rule marks
    a cell the box overlaps by a fraction of a pixel, which resampling may leave black). A missed paste offset or
    unpadding shift (two or more token rows or columns here) fails both."""
    from PIL import Image, ImageDraw

    model, processor, gp = anyres
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    record = {"question": QUESTION, "answer": "yes", "image": image, "bboxs": [box]}
    batch = Collator(processor, gp.adapter.family)([record])
    mask = batch["box_masks"][0].numpy()
    base, crops = token_brightness(model, batch["pixel_values"], (size[1], size[0]))
    n_base = base.size
    prepared = gp.adapter.prepare(model_inputs(batch))
    views = prepared.images[0]
    assert mask.size == sum(v.num_tokens for v in views)
    white, black = base.max(), base.min()
    for truth, part, grid in ((base, mask[:n_base], views[0].grid), (crops, mask[n_base:], views[1].grid)):
        if truth.size != part.size:  # OneVision shrank the crops view: pixels no longer map one to one
            assert grid[0] * grid[1] == part.size
            continue
        all_white = truth > white - 0.05 * (white - black)
        assert all_white.any() and bool((part[all_white]).all())
        some_white = (truth > black + 0.02 * (white - black)).reshape(grid)
        near = some_white.copy()
        near[1:] |= some_white[:-1]
        near[:-1] |= some_white[1:]
        near[:, 1:] |= some_white[:, :-1]
        near[:, :-1] |= some_white[:, 1:]
        assert bool(near.reshape(-1)[part].all())


# ---- multi-image ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prune_layer", [1, 3])
def test_two_images_in_one_prompt(anyres, prune_layer):
    """Each image gets its own base and crops views (image index 0 / 1); fixed masks == the slow reference;
    keep-all == stock generate. The small wide image has 3 crops, the other 5 (zero-padded crops in the batch)."""
    model, processor, gp = anyres
    inputs = build_inputs(processor, [QUESTION], [[scene(90, 40, 1), scene(224, 224, 2)]])
    prunable = (inputs["input_ids"][0] == model.config.image_token_id) & ~newline_columns(model, inputs)
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(prune_layer)) < 0.4
    ref_tokens, ref_logits = reference_generate(model, dict(inputs), prunable, keep, prune_layer, 6, min_new_tokens=6)
    out = gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens
    views = out.pruning.samples[0].images
    assert [(v.image, v.view) for v in views] == [(0, "base"), (0, "crops"), (1, "base"), (1, "crops")]
    assert views[1].grid[1] == 2 * side(model)  # 1 x 2 tiles, all 12 columns kept
    stock = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(gp.generate(**inputs, threshold=0.0, max_new_tokens=6, min_new_tokens=6).sequences, stock)


def test_onevision_multi_image_prompt_uses_base_views_only():
    """OneVision's own multi-image rule (``batch_num_images`` > 1, from the processor given a nested image list):
    every image is one letterboxed base view + one newline. Keep-all == stock, fixed mask == reference."""
    if "llava_onevision" not in _CACHE:
        model, processor = tiny_llava_onevision()
        _CACHE["llava_onevision"] = (model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0))
    model, processor, gp = _CACHE["llava_onevision"]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[scene(168, 280, 1), scene(308, 196, 2)]], return_tensors="pt")
    assert inputs["batch_num_images"].tolist() == [2]
    stock = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    out = gp.generate(**inputs, threshold=0.0, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(out.sequences, stock)
    s = side(model)
    assert [(v.image, v.view, v.grid) for v in out.pruning.samples[0].images] == [(0, "base", (s, s)),
                                                                                 (1, "base", (s, s))]
    prunable = (inputs["input_ids"][0] == model.config.image_token_id) & ~newline_columns(model, inputs)
    assert int(prunable.sum()) == 2 * s * s
    keep = torch.rand(2 * s * s, generator=torch.Generator().manual_seed(3)) < 0.3
    ref_tokens, _ = reference_generate(model, dict(inputs), prunable, keep, 2, 5, min_new_tokens=5)
    assert gp.generate(**inputs, keep_masks=[keep], prune_layer=2, max_new_tokens=5,
                       min_new_tokens=5).generated[0].tolist() == ref_tokens


def test_batch_rows_with_different_crop_counts_equal_single_runs(anyres):
    model, processor, gp = anyres
    questions = [QUESTION, "what colour is the shape in the image?"]
    image_lists = [[scene(90, 40, 1)], [scene(224, 224, 0), scene(168, 280, 3)]]
    kwargs = dict(max_keep_ratio=0.25, max_new_tokens=5, min_new_tokens=5)
    batch_out = gp.generate(**build_inputs(processor, questions, image_lists), **kwargs)
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        single = gp.generate(**build_inputs(processor, [q], [ims]), **kwargs)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep)


# ---- training and baselines ----------------------------------------------------------------------------------------


def _records(n=2):
    from glimpseprune.data.scenes import generate_items, render_scene

    out = []
    for sc, record in generate_items(6, seed=0, split="train"):
        if record["bboxs"]:
            out.append(dict(record, image=render_scene(sc).resize((160, 120))))
    return out[:n]


def test_stage1_training_step(anyres):
    model, processor, gp = anyres
    adapter = adapter_for(model)
    config = adapter.default_glimpse_config(vip_size=32, vip_cond_size=32, vip_heads=2)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    batch = Collator(processor, adapter.family)(_records())
    with torch.no_grad():
        prepared = adapter.prepare(model_inputs(batch), config.vip_visual_layers)
    params = [*glimpse.parameters(), *vip.parameters()]
    before = [p.detach().clone() for p in params]
    model.requires_grad_(False)  # as the trainer freezes the base model
    try:
        out = training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer)
        assert [z.numel() for z in out.per_sample()] == [int(m.numel()) for m in batch["box_masks"]]
        assert all(0 < int(m.sum()) < m.numel() for m in batch["box_masks"])
        loss = loc_loss(out.per_sample(), batch["box_masks"], 1.0, 1.0)["loc"] + out.lm_loss
        assert torch.isfinite(loss)
        loss.backward()
    finally:
        model.requires_grad_(True)
    torch.optim.SGD(params, lr=1e-2).step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    assert all(p.grad is not None for p in params if p.requires_grad)


@pytest.mark.parametrize("name", ["random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample",
                                  "visionzip", "vscan"])
def test_every_baseline_runs_batch_equals_alone(anyres, name):
    model, processor, gp = anyres
    questions = [QUESTION, "what colour is the shape in the image?"]
    image_lists = [[scene(224, 224, 0)], [scene(168, 280, 1)]]
    method = get_method(name, gp, retention=0.5)
    out = gp.generate(**build_inputs(processor, questions, image_lists), method=method, max_new_tokens=3)
    assert all(0 < s.kept < s.total for s in out.pruning.samples)
    single = gp.generate(**build_inputs(processor, questions[1:], image_lists[1:]), method=method, max_new_tokens=3)
    assert torch.equal(out.pruning.samples[1].keep, single.pruning.samples[0].keep)
    assert out.generated[1].tolist() == single.generated[0].tolist()


def test_vit_scores_are_packed_like_the_tokens(anyres):
    """The ViT score of every candidate is the score of the crop patch its features came from: the base view's
    scores are crop 0's, and the packed scores have one entry per candidate."""
    from glimpseprune.adapters.base import VitRequest

    model, processor, gp = anyres
    inputs = build_inputs(processor, [QUESTION], [[scene(308, 196, 2)]])
    scoring = gp.adapter.vit_scoring()
    assert scoring.cls_query is (model.config.vision_feature_select_strategy == "default")
    batch = gp.adapter.prepare(dict(inputs), VitRequest([], [scoring.default_block]))
    scores, keys, windows = scoring.token_scores(batch, scoring.default_block, 2**22)
    n = int(batch.visual_mask.sum())
    assert scores.shape == (n,) and keys.shape[0] == n and windows is None
    hidden, _ = batch.extras["vit_block_inputs"][scoring.default_block]
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model.model.vision_tower(inputs["pixel_values"][0], output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    a = att[scoring.default_block][0].mean(0)  # crop 0 (the base view), head mean: [T, T]
    s2 = side(model) ** 2
    expect = a[0, 1:] if scoring.cls_query else a.mean(0)  # CLS row, or the mean attention each patch receives
    torch.testing.assert_close(scores[:s2], expect.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,layers,k,vip", [
    ("llava_next", 32, 21, [23, 17, 11, 5]),  # LLaVA-NeXT-7B: CLIP-L/336, features from layer -2
    ("llava_onevision", 24, 16, [27, 20, 13, 6]),  # OneVision-0.5B: SigLIP-so400m (27 layers), features from -1
    ("llava_onevision", 28, 19, [27, 20, 13, 6]),  # OneVision-7B
])
def test_released_size_defaults(family, layers, k, vip):
    from transformers import LlavaNextConfig, LlavaOnevisionConfig

    from glimpseprune.adapters import adapter_class

    if family == "llava_next":
        cfg = LlavaNextConfig(text_config=dict(model_type="llama", num_hidden_layers=layers))
    else:
        cfg = LlavaOnevisionConfig(text_config=dict(model_type="qwen2", num_hidden_layers=layers),
                                   vision_config=dict(model_type="siglip_vision_model", num_hidden_layers=27))
    cls = adapter_class(family)
    fake = cls.__new__(cls)
    fake.model = type("M", (), {"config": cfg, "model": type("I", (), {"language_model": type("L", (), {
        "config": cfg.text_config})()})()})()
    config = fake.default_glimpse_config()
    assert (config.prune_layer, config.vip_visual_layers) == (k, vip)


def test_cli_answer_with_two_images_draws_each_base_view(anyres, tmp_path, capsys):
    from glimpseprune.cli import main

    model, processor, gp = anyres
    base, glimpse = tmp_path / "base", tmp_path / "glimpse"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    gp.save_pretrained(glimpse)
    paths = []
    for i, im in enumerate([scene(308, 196, 2), scene(90, 40, 1)]):
        paths.append(str(tmp_path / f"in{i}.png"))
        im.save(paths[-1])
    code = main(["answer", "--model", str(base), "--glimpse", str(glimpse), "--image", paths[0], "--image", paths[1],
                 "--question", QUESTION, "--max-keep-ratio", "0.25", "--max-new-tokens", "2",
                 "--output", str(tmp_path / "kept.png"), "--device", "cpu", "--dtype", "float32"])
    assert code == 0
    printed = capsys.readouterr().out
    for line in ("image 0 base view", "image 0 crops view", "image 1 base view", "image 1 crops view"):
        assert line in printed
    from PIL import Image

    for i, source in enumerate(paths):  # each drawing is over its own image (same width: the base view's cells)
        drawn = Image.open(tmp_path / f"kept_{i}.png")
        assert drawn.width == Image.open(source).width


def test_bad_inputs_are_one_clear_error(anyres):
    model, processor, gp = anyres
    inputs = dict(build_inputs(processor, [QUESTION], [[scene(224, 224, 0)]]))
    with pytest.raises(ValueError, match="image_sizes"):
        gp.generate(**{k: v for k, v in inputs.items() if k != "image_sizes"}, max_new_tokens=2)
    with pytest.raises(ValueError, match="video inputs are not supported"):
        gp.adapter.prepare(dict(inputs, pixel_values_videos=torch.zeros(1, 2, 3, 48, 48)))
