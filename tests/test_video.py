"""Video inputs are pruned like images on Qwen2.5-VL and Qwen3-VL (docs/method.md §10).

Each video is one pruning unit (like one image): its tokens are candidates, the VIP scores them on the video's
temporal grid, the keep policy treats it as one group. Checked here on both families: keep-all == stock
``generate`` token for token; fixed masks == the slow by-hand reference (tests/adapters/reference.py) with cuts
before / after Qwen3-VL's DeepStack layers; mixed image + video prompts; a batch row == the same prompt alone;
stateless; the VIP's positions; per-video policy; a stage-1 training step; the baselines; bad inputs; and
``prune_video=False`` (the old pass-through).

Most prompts here are composed by hand at the token level (random pixels, any grid): what a video processor returns
is `pixel_values_videos` [t·h·w patches, 3·2·p·p] and `video_grid_thw` [[t, h, w]], with t·h·w/4 `<|video_pad|>`
placeholders (Qwen2.5-VL: one run; Qwen3-VL: one run per frame, each after a ``<x.x seconds>`` timestamp). The last
tests go through ``build_inputs(videos=...)``, which lays out real frames without torchvision.
"""

import numpy as np
import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.checkpoint import build_modules
from glimpseprune.data.masks import boxes_to_grid_mask, frame_range_mask
from glimpseprune.engine import prefill
from glimpseprune.methods import FixedKeep, get_method
from glimpseprune.adapters.qwen2_5_vl import video_patches
from glimpseprune.errors import UserError
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl
from glimpseprune.train.forward import training_forward
from glimpseprune.train.losses import loc_loss

from .adapters.reference import reference_generate
from .conftest import scene

# Qwen2-VL shares Qwen2.5-VL's adapter (no absolute-time positions): its videos are pruned the same way.
FAMILIES = {"qwen2_5_vl": (tiny_qwen2_5_vl, 14), "qwen3_vl": (tiny_qwen3_vl, 16), "qwen2_vl": (tiny_qwen2_vl, 14)}
_CACHE = {}


class Fam:
    def __init__(self, name):
        build, self.patch = FAMILIES[name]
        self.name = name
        self.model, self.processor = build()
        self.gp = GlimpsePrune(self.model, self.processor).with_new_modules(seed=0)
        self.tok = self.processor.tokenizer
        cfg = self.model.config
        self.image_id, self.video_id = cfg.image_token_id, cfg.video_token_id

    def video_block(self, t, h, w):
        per_frame = h * w // 4
        if self.name == "qwen3_vl":  # one run per merged frame, each after its timestamp (text tokens)
            return "".join(f"<{0.5 + 2 * i:.1f} seconds><|vision_start|>{'<|video_pad|>' * per_frame}<|vision_end|>"
                           for i in range(t))
        return f"<|vision_start|>{'<|video_pad|>' * (t * per_frame)}<|vision_end|>"

    def prompt(self, parts, question="what happens?"):
        """One prompt from parts: ("video", t, h, w, seed) or ("image", PIL image); returns processor-like inputs."""
        text, pixels, grids, vpixels, vgrids = "", [], [], [], []
        for part in parts:
            if part[0] == "video":
                _, t, h, w, seed = part
                text += self.video_block(t, h, w)
                g = torch.Generator().manual_seed(seed)
                vpixels.append(torch.randn(t * h * w, 3 * 2 * self.patch ** 2, generator=g))
                vgrids.append([t, h, w])
            else:
                enc = self.processor.image_processor(images=[part[1]], return_tensors="pt")
                n = int(enc["image_grid_thw"][0].prod()) // 4
                text += f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>"
                pixels.append(enc["pixel_values"])
                grids.append(enc["image_grid_thw"])
        text = f"<|im_start|>user\n{text}{question}<|im_end|>\n<|im_start|>assistant\n"
        ids = self.tok(text, return_tensors="pt").input_ids
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": self.types(ids)}
        if pixels:
            inputs.update(pixel_values=torch.cat(pixels), image_grid_thw=torch.cat(grids))
        if vpixels:
            inputs.update(pixel_values_videos=torch.cat(vpixels), video_grid_thw=torch.tensor(vgrids))
        return inputs

    def types(self, ids):
        return (ids == self.image_id).int() + 2 * (ids == self.video_id).int()

    def prunable(self, ids):
        return (ids == self.image_id) | (ids == self.video_id)


def batch_of(rows, pad_id):
    """Left-pad single-prompt inputs into one batch (pixels concatenated in row order)."""
    length = max(r["input_ids"].shape[1] for r in rows)
    out = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        out[key] = torch.cat([torch.cat([torch.full((1, length - r[key].shape[1]), fill, dtype=r[key].dtype), r[key]],
                                        dim=1) for r in rows])
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        parts = [r[key] for r in rows if key in r]
        if parts:
            out[key] = torch.cat(parts)
    return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    if request.param not in _CACHE:
        _CACHE[request.param] = Fam(request.param)
    return _CACHE[request.param]


def stock(fam, inputs, n):
    return fam.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)


@pytest.mark.parametrize("prune_layer", [1, 3])
def test_keep_all_video_equals_stock_generate(fam, prune_layer):
    inputs = fam.prompt([("video", 2, 8, 8, 0)])
    out = fam.gp.generate(**inputs, threshold=0.0, prune_layer=prune_layer, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(out.sequences, stock(fam, inputs, 8))
    assert len(set(out.generated[0].tolist())) > 1, "degenerate tiny model: equality would be vacuous"
    video = out.pruning.samples[0].images[0]
    assert (video.kind, video.frames, video.grid, video.total) == ("video", 2, (4, 4), 32)
    assert out.pruning.to_dict()["samples"][0]["images"][0]["frames"] == 2
    with torch.no_grad():
        stock_logits = fam.model(**inputs).logits[:, -1].float()
    batch = fam.gp.adapter.prepare(dict(inputs), fam.gp.config.vip_visual_layers)
    pre = prefill(fam.gp.adapter, batch, fam.gp.method("glimpse", threshold=0.0, prune_layer=prune_layer))
    torch.testing.assert_close(pre.logits, stock_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prune_layer,seed", [(0, 0), (2, 1), (3, 2)])
def test_video_fixed_mask_matches_slow_reference(fam, prune_layer, seed):
    inputs = fam.prompt([("video", 3, 8, 8, seed)])
    prunable = fam.prunable(inputs["input_ids"][0])
    assert int(prunable.sum()) == 48
    keep = torch.rand(48, generator=torch.Generator().manual_seed(seed)) < 0.3
    ref_tokens, ref_logits = reference_generate(fam.model, dict(inputs), prunable, keep, prune_layer, 8,
                                                min_new_tokens=8)
    out = fam.gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=8, min_new_tokens=8)
    assert out.generated[0].tolist() == ref_tokens
    pre = prefill(fam.gp.adapter, fam.gp.adapter.prepare(dict(inputs)), FixedKeep([keep], prune_layer))
    torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)
    expect = (~prunable).nonzero().squeeze(1).tolist() + prunable.nonzero().squeeze(1)[keep].tolist()
    assert sorted(out.pruning.samples[0].keep_indices.tolist()) == sorted(expect)
    assert out.pruning.kv_lengths == [len(expect)]


@pytest.mark.parametrize("order", ["image_first", "video_first"])
def test_mixed_image_and_video_fixed_mask_matches_reference(fam, order):
    parts = [("image", scene(112, 168, 3)), ("video", 2, 8, 12, 4)]
    if order == "video_first":
        parts = parts[::-1]
    inputs = fam.prompt(parts, "compare the picture and the video")
    ids = inputs["input_ids"][0]
    prunable = fam.prunable(ids)
    keep = torch.rand(int(prunable.sum()), generator=torch.Generator().manual_seed(5)) < 0.4
    ref_tokens, _ = reference_generate(fam.model, dict(inputs), prunable, keep, 2, 6, min_new_tokens=6)
    out = fam.gp.generate(**inputs, keep_masks=[keep], prune_layer=2, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens
    items = out.pruning.samples[0].images
    kinds = [im.kind for im in items]
    assert kinds == (["image", "video"] if order == "image_first" else ["video", "image"])
    n_image, n_video = int((ids == fam.image_id).sum()), int((ids == fam.video_id).sum())
    assert [im.total for im in items] == ([n_image, n_video] if order == "image_first" else [n_video, n_image])
    assert out.pruning.kept == [int(keep.sum())]


def test_vip_conditions_follow_the_prompt_order(fam):
    """Mixed prompts interleave the image tower's and the video tower's conditions in placeholder order."""
    layers = fam.gp.config.vip_visual_layers
    adapter = fam.gp.adapter
    image, video = ("image", scene(112, 168, 3)), ("video", 2, 8, 12, 4)
    alone_image = adapter.prepare(fam.prompt([image]), layers).vit_features
    alone_video = adapter.prepare(fam.prompt([video]), layers).vit_features
    mixed = adapter.prepare(fam.prompt([video, image, ("video", 1, 8, 8, 9)]), layers)
    n_video = alone_video[0].shape[0]
    for level, (im, vi) in enumerate(zip(alone_image, alone_video)):
        torch.testing.assert_close(mixed.vit_features[level][:n_video], vi)
        torch.testing.assert_close(mixed.vit_features[level][n_video: n_video + im.shape[0]], im)
    assert [(im.kind, im.frames) for im in mixed.images[0]] == [("video", 2), ("image", 1), ("video", 1)]


def test_batch_rows_equal_single_runs(fam):
    rows = [
        fam.prompt([("video", 2, 8, 8, 0)], "what moves?"),
        fam.prompt([("image", scene(112, 112, 0))], "what colour is the shape?"),
        fam.prompt([("video", 1, 8, 12, 1), ("image", scene(168, 112, 2))], "same shape in both?"),
        fam.prompt([], "describe nothing."),
    ]
    kwargs = dict(max_keep_ratio=0.3, max_new_tokens=6, min_new_tokens=6)
    batch = fam.gp.generate(**batch_of(rows, fam.tok.pad_token_id), **kwargs)
    for b, row in enumerate(rows):
        alone = fam.gp.generate(**row, **kwargs)
        assert batch.generated[b].tolist() == alone.generated[0].tolist()
        assert batch.pruning.samples[b].kept == alone.pruning.samples[0].kept
        assert torch.equal(batch.pruning.samples[b].keep, alone.pruning.samples[0].keep)
    assert batch.pruning.samples[0].kept == int(0.3 * 32)


def test_stateless_between_calls(fam):
    a = fam.prompt([("video", 2, 8, 8, 0)], "what moves?")
    b = fam.prompt([("image", scene(112, 112, 0)), ("video", 2, 8, 8, 1)], "what else?")
    first = fam.gp.generate(**a, max_keep_ratio=0.3, max_new_tokens=5)
    fam.gp.generate(**b, max_keep_ratio=0.5, max_new_tokens=5)
    again = fam.gp.generate(**a, max_keep_ratio=0.3, max_new_tokens=5)
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.pruning.samples[0].keep, again.pruning.samples[0].keep)


def test_vip_positions_follow_the_temporal_grid(fam):
    """A video is one VIP block whose frames stack in time order: (t, h, w) is positioned as a (t·h) × w grid; a
    one-frame video is an image; splitting the frames into separate images changes the scores."""
    vip = fam.gp.vip
    g = torch.Generator().manual_seed(0)
    t, h, w = 3, 4, 5
    n = t * h * w
    rows = torch.randn(n, fam.gp.config.glimpse_row_width, generator=g)
    conds = [torch.randn(n, fam.gp.config.vision_hidden_size, generator=g) for _ in fam.gp.config.vip_visual_layers]
    with torch.no_grad():
        video = vip(rows, conds, [(t, h, w)])
        tall = vip(rows, conds, [(t * h, w)])
        frames = vip(rows, conds, [(h, w)] * t)
        one = vip(rows[: h * w], [c[: h * w] for c in conds], [(1, h, w)])
        image = vip(rows[: h * w], [c[: h * w] for c in conds], [(h, w)])
    torch.testing.assert_close(video, tall)
    torch.testing.assert_close(one, image)
    assert (video - frames).abs().max() > 1e-4  # frames see each other: not t separate images
    # time order matters: reversing the frames (and their tokens) does not just reverse the scores
    rev = torch.arange(n).view(t, h * w).flip(0).reshape(-1)
    with torch.no_grad():
        reversed_video = vip(rows[rev], [c[rev] for c in conds], [(t, h, w)])
    assert (reversed_video[rev] - video).abs().max() > 1e-4
    # the engine hands the VIP the video's temporal grid
    inputs = fam.prompt([("video", 3, 8, 8, 0)])
    batch = fam.gp.adapter.prepare(inputs, fam.gp.config.vip_visual_layers)
    assert [im.vip_grid for im in batch.images[0]] == [(3, 4, 4)]


def test_per_video_policy_caps_each_unit(fam):
    inputs = fam.prompt([("video", 2, 8, 8, 0), ("image", scene(112, 112, 1)), ("video", 1, 8, 12, 2)])
    out = fam.gp.generate(**inputs, threshold=0.0, max_keep_ratio=0.25, per_image=True, max_new_tokens=2)
    items = out.pruning.samples[0].images
    assert [im.kind for im in items] == ["video", "image", "video"]
    assert [im.kept for im in items] == [int(0.25 * im.total) for im in items]
    joint = fam.gp.generate(**inputs, threshold=0.0, max_keep_ratio=0.25, max_new_tokens=2)
    assert joint.pruning.kept == [int(0.25 * sum(im.total for im in items))]


def test_prune_video_false_keeps_every_video_token(fam):
    """The old behaviour on request: video tokens stay like text, images are still pruned."""
    inputs = fam.prompt([("video", 2, 8, 8, 0), ("image", scene(112, 168, 1))], "compare them")
    ids = inputs["input_ids"][0]
    n_image, n_video = int((ids == fam.image_id).sum()), int((ids == fam.video_id).sum())
    out = fam.gp.generate(**inputs, max_keep_ratio=0.1, prune_video=False, max_new_tokens=3)
    sample = out.pruning.samples[0]
    assert [im.kind for im in sample.images] == ["image"] and sample.total == n_image
    assert sample.kept == int(0.1 * n_image)
    assert int((ids[sample.keep_indices] == fam.video_id).sum()) == n_video
    # the same image keep mask by hand (video not a candidate) == the slow reference
    keep = sample.keep
    ref_tokens, _ = reference_generate(fam.model, dict(inputs), ids == fam.image_id, keep, fam.gp.config.prune_layer,
                                       3)
    assert out.generated[0].tolist() == ref_tokens
    video_only = fam.prompt([("video", 2, 8, 8, 0)])
    kept_all = fam.gp.generate(**video_only, max_keep_ratio=0.1, prune_video=False, max_new_tokens=6,
                               min_new_tokens=6)
    assert torch.equal(kept_all.sequences, stock(fam, video_only, 6))
    with pytest.raises(ValueError, match="prune_video"):
        fam.gp.generate(**video_only, prune_video="no", max_new_tokens=2)


@pytest.mark.parametrize("name", ["random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample"])
def test_baselines_prune_video(fam, name):
    inputs = batch_of([fam.prompt([("video", 2, 8, 8, 0)]),
                       fam.prompt([("image", scene(112, 112, 1)), ("video", 2, 8, 12, 2)], "which one?")],
                      fam.tok.pad_token_id)
    out = fam.gp.generate(**inputs, method=get_method(name, fam.gp, retention=0.5), max_new_tokens=3)
    assert all(0 < s.kept < s.total for s in out.pruning.samples)
    assert [[im.kind for im in s.images] for s in out.pruning.samples] == [["video"], ["image", "video"]]


@pytest.mark.parametrize("name", ["visionzip", "vscan"])
def test_vit_scoring_baselines_refuse_video_clearly(fam, name):
    inputs = fam.prompt([("image", scene(112, 112, 1)), ("video", 2, 8, 8, 2)])
    method = get_method(name, fam.gp, retention=0.5)
    with pytest.raises(ValueError, match="prune_video=False"):
        fam.gp.generate(**inputs, method=method, max_new_tokens=2)
    out = fam.gp.generate(**inputs, method=method, prune_video=False, max_new_tokens=2)
    assert [im.kind for im in out.pruning.samples[0].images] == ["image"]


def test_video_placeholder_mismatch_raises(fam):
    inputs = fam.prompt([("video", 2, 8, 8, 0)])
    no_pixels = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    with pytest.raises(ValueError, match="video placeholder"):
        fam.gp.generate(**no_pixels, max_new_tokens=2)
    with pytest.raises(ValueError, match="given together"):
        fam.gp.generate(**dict(no_pixels, pixel_values_videos=inputs["pixel_values_videos"]), max_new_tokens=2)
    text_only = fam.prompt([])
    extra = dict(text_only, pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"])
    with pytest.raises(ValueError, match="placeholder"):
        fam.gp.generate(**extra, max_new_tokens=2)
    wrong_grid = dict(inputs, video_grid_thw=torch.tensor([[1, 8, 8], [1, 8, 8], [1, 8, 8]]),
                      pixel_values_videos=torch.cat([inputs["pixel_values_videos"]] * 2)[: 3 * 64])
    with pytest.raises(ValueError, match="placeholder"):
        fam.gp.generate(**wrong_grid, max_new_tokens=2)


def test_frame_range_mask():
    frame = boxes_to_grid_mask([[0.0, 0.0, 0.4, 0.4]], 4, 4)  # top-left 2 x 2 cells
    mask = frame_range_mask(frame, 3, 1, 2).reshape(3, 16)
    assert not mask[0].any() and (mask[1] == frame).all() and (mask[2] == frame).all() and frame.sum() == 4
    for bad in [(0, 0, 0), (3, 2, 1), (3, 1, 3), (3, -1, 0)]:
        with pytest.raises(ValueError, match="frame"):
            frame_range_mask(frame, *bad)


def test_stage1_training_step_with_video(fam):
    """A mixed image + video prompt with an answer: the VIP scores every image and video token, a box target on
    one frame range of the video trains it, the gradient reaches the glimpse and the VIP."""
    inputs = fam.prompt([("image", scene(112, 112, 0)), ("video", 3, 8, 8, 1)], "when is the square red?")
    answer = fam.tok("yes<|im_end|>", return_tensors="pt").input_ids
    ids = torch.cat([inputs["input_ids"], answer], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -answer.shape[1]:] = answer
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=fam.types(ids))
    adapter = fam.gp.adapter
    config = adapter.default_glimpse_config(vip_size=32, vip_cond_size=32, vip_heads=2, prune_layer=2)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    with torch.no_grad():
        prepared = adapter.prepare(inputs, config.vip_visual_layers)
    out = training_forward(adapter, prepared, labels, glimpse, vip, config.prune_layer)
    (logits,) = out.per_sample()
    gh, gw = prepared.images[0][0].grid
    assert out.grids == [[(gh, gw), (3, 4, 4)]]
    image_target = boxes_to_grid_mask([[0.5, 0.5, 1.0, 1.0]], gh, gw)
    video_target = frame_range_mask(boxes_to_grid_mask([[0.0, 0.0, 0.5, 0.5]], 4, 4), 3, 1, 1)
    target = torch.from_numpy(np.concatenate([image_target, video_target]))
    assert logits.shape == target.shape == (gh * gw + 48,)
    loss = loc_loss([logits], [target], 1.0, 1.0)["loc"] + out.lm_loss
    assert torch.isfinite(loss)
    params = [*glimpse.parameters(), *vip.parameters()]
    before = [p.detach().clone() for p in params]
    loss.backward()
    assert all(p.grad is not None for p in vip.parameters())
    torch.optim.SGD(params, lr=1e-2).step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


def test_video_patches_follow_the_stock_video_layout(fam):
    """Frames through the image processor, paired into temporal patches: a video of two copies of one frame is
    that frame's image patches; otherwise slot k of temporal patch j holds input frame 2j + k; an odd last frame
    is repeated."""
    ip = fam.processor.image_processor
    a, b, c = scene(112, 84, 0), scene(112, 84, 1), scene(112, 84, 2)
    image = {name: ip(images=[f], return_tensors="pt")["pixel_values"] for name, f in (("a", a), ("b", b), ("c", c))}
    same = video_patches(ip, [a, a])
    assert torch.equal(same["pixel_values_videos"], image["a"])
    out = video_patches(ip, [a, b, c])
    n = image["a"].shape[0]
    assert out["video_grid_thw"].tolist() == [[2, *ip(images=[a], return_tensors="pt")["image_grid_thw"][0, 1:].tolist()]]
    pix = out["pixel_values_videos"].view(2, n, 3, 2, -1)
    for j, k, frame in [(0, 0, "a"), (0, 1, "b"), (1, 0, "c"), (1, 1, "c")]:
        assert torch.equal(pix[j, :, :, k], image[frame].view(n, 3, 2, -1)[:, :, 0])
    with pytest.raises(ValueError, match="one size"):
        video_patches(ip, [a, scene(84, 112, 3)])


def test_build_inputs_with_videos_equals_stock_generate(fam):
    """Real frames laid out by build_inputs: keep-all == stock generate on a batch with an image + video row and a
    two-video row; pruned rows == alone; each video is one unit with its frames."""
    frames = [scene(112, 84, s) for s in range(5)]
    questions = ["what moves?", "which clip is brighter?"]
    kwargs = dict(model_type=fam.model.config.model_type, fps=2.0)
    inputs = build_inputs(fam.processor, questions, [[scene(112, 112, 9)], []],
                          videos=[[frames], [frames[:2], frames[2:4]]], **kwargs)
    ours = fam.gp.generate(**inputs, threshold=0.0, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(ours.sequences, stock(fam, inputs, 6))
    assert [[(im.kind, im.frames) for im in s.images] for s in ours.pruning.samples] == \
        [[("image", 1), ("video", 3)], [("video", 1), ("video", 1)]]
    pruned = fam.gp.generate(**inputs, max_keep_ratio=0.2, max_new_tokens=4)
    alone = fam.gp.generate(**build_inputs(fam.processor, questions[1:], [[]], videos=[[frames[:2], frames[2:4]]],
                                           **kwargs), max_keep_ratio=0.2, max_new_tokens=4)
    assert pruned.generated[1].tolist() == alone.generated[0].tolist()
    assert torch.equal(pruned.pruning.samples[1].keep, alone.pruning.samples[0].keep)
    text = fam.tok.decode(inputs["input_ids"][0])
    assert text.index("<|image_pad|>") < text.index("<|video_pad|>") < text.index("what moves?")
    if fam.name == "qwen3_vl":  # frames 0-1, 2-3, 4-4 at 2 fps: the stock rule's mean times
        assert "<0.2 seconds>" in text and "<1.2 seconds>" in text and "<2.0 seconds>" in text


def test_build_inputs_video_errors_are_one_line(fam):
    frames = [scene(112, 84, 0), scene(112, 84, 1)]
    mt = fam.model.config.model_type
    with pytest.raises(UserError, match="model_type"):
        build_inputs(fam.processor, ["q"], [[]], videos=[[frames]])
    with pytest.raises(UserError, match="fps"):
        build_inputs(fam.processor, ["q"], [[]], videos=[[frames]], model_type=mt, fps=0)
    with pytest.raises(UserError, match="videos"):
        build_inputs(fam.processor, ["q", "r"], [[], []], videos=[[frames]], model_type=mt)
    with pytest.raises(UserError, match="list of frames"):
        build_inputs(fam.processor, ["q"], [[]], videos=[[[]]], model_type=mt)
    with pytest.raises(ValueError, match="one size"):
        build_inputs(fam.processor, ["q"], [[]], videos=[[[frames[0], scene(84, 112, 2)]]], model_type=mt)


def test_families_without_video_say_so():
    model, processor = tiny_llava()
    with pytest.raises(ValueError, match="takes no video input"):
        build_inputs(processor, ["q"], [[]], videos=[[[scene(64, 64, 0)]]], model_type=model.config.model_type)


def test_answer_takes_videos(fam):
    frames = [scene(112, 84, s) for s in range(4)]
    text, out = fam.gp.answer([scene(84, 84, 5)], "what moves?", videos=[frames], max_keep_ratio=0.3, max_new_tokens=3)
    assert isinstance(text, str)
    assert [(im.kind, im.frames) for im in out.pruning.samples[0].images] == [("image", 1), ("video", 2)]
    with pytest.raises(UserError, match="videos must be a list"):
        fam.gp.answer([], "what moves?", videos=frames[0])
