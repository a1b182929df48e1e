"""glimpse-shapes video (data/video_shapes.py): deterministic clips whose evidence is one object on one frame range,
the box target over a video's tokens, and the clips through the pruning and training mechanics of a tiny Qwen2.5-VL
(mechanics only: no model here has learnt video, docs/method.md §10.1)."""

import json

import numpy as np
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.checkpoint import build_modules
from glimpseprune.data.scenes import COLOURS
from glimpseprune.data.video_shapes import clip_token_masks, generate_clips, main, render_clip
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import tiny_qwen2_5_vl
from glimpseprune.train.forward import training_forward
from glimpseprune.train.losses import loc_loss


def test_clips_are_deterministic_and_the_visitor_is_only_in_its_range():
    a = [r for _, r in generate_clips(6, seed=3, split="test")]
    assert a == [r for _, r in generate_clips(6, seed=3, split="test")]
    assert a != [r for _, r in generate_clips(6, seed=4, split="test")]
    for clip, record in generate_clips(6, seed=3, split="test"):
        first, last = record["frame_range"]
        assert 2 <= last - first + 1 <= 4
        frames = render_clip(clip)
        visitor = clip.visitor
        colour = np.array(COLOURS[visitor.colour])
        for k, (frame, boxes) in enumerate(zip(frames, record["bboxs"])):
            present = bool((np.asarray(frame) == colour).all(-1).any())
            assert present == (first <= k <= last) == bool(boxes)
        # the asked-about shape and colour belong to the visitor alone
        assert all(t.shape != visitor.shape and t.colour != visitor.colour for t in clip.tracks[:-1])
        assert record["answer"] in (visitor.colour, visitor.shape)


def test_clip_token_masks_cover_only_the_range():
    # 224 px on a 4 x 4 grid: 56 px per cell; a box ending at pixel 55 stays in the first cell (docs/method.md §11.3)
    boxes = [[], [], [[0, 0, 55, 55]], [[56, 0, 111, 55]], [], []]
    mask = clip_token_masks(boxes, 224, 224, 4, 4).reshape(3, 16)
    assert not mask[0].any() and not mask[2].any()
    assert mask[1].reshape(4, 4).tolist()[0] == [True, True, False, False]  # union of the patch's two frames
    assert int(mask.sum()) == 2
    three = clip_token_masks(boxes[:3], 224, 224, 4, 4).reshape(2, 16)  # odd count: the last frame repeated
    assert not three[0].any() and three[1].reshape(4, 4)[0, 0] and int(three.sum()) == 1


def test_clips_through_pruning_and_a_training_step(tmp_path):
    """Mechanics on a tiny random Qwen2.5-VL: pruned answers, the target's length equals the video's tokens, one
    stage-1 step with the frame-range target moves the modules."""
    model, processor = tiny_qwen2_5_vl()
    gp = GlimpsePrune(model, processor).with_new_modules(seed=0)
    pairs = generate_clips(2, seed=0, split="train", size=112, frames=4)
    inputs = build_inputs(processor, [r["question"] for _, r in pairs], [[], []],
                          videos=[[render_clip(c)] for c, _ in pairs], model_type=model.config.model_type)
    out = gp.generate(**inputs, threshold=0.0, max_keep_ratio=0.25, max_new_tokens=3)
    assert all(s.images[0].kind == "video" and s.kept == int(0.25 * s.total) for s in out.pruning.samples)
    config = gp.adapter.default_glimpse_config(vip_size=32, vip_cond_size=32, vip_heads=2, prune_layer=2)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    answer = processor.tokenizer([f"{r['answer']}<|im_end|>" for _, r in pairs], return_tensors="pt",
                                 padding=True, padding_side="right")
    ids = torch.cat([inputs["input_ids"], answer.input_ids], dim=1)
    labels = torch.cat([torch.full_like(inputs["input_ids"], -100),
                        answer.input_ids.masked_fill(answer.attention_mask == 0, -100)], dim=1)
    train_inputs = dict(inputs, input_ids=ids, attention_mask=torch.cat([inputs["attention_mask"],
                                                                         answer.attention_mask], dim=1),
                        mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"],
                                                     torch.zeros_like(answer.input_ids)], dim=1))
    with torch.no_grad():
        prepared = gp.adapter.prepare(train_inputs, config.vip_visual_layers)
    targets = []
    for (clip, record), images in zip(pairs, prepared.images):
        (video,) = images
        mask = clip_token_masks(record["bboxs"], clip.size, clip.size, *video.grid)
        assert mask.size == video.num_tokens and mask.any()
        targets.append(torch.from_numpy(mask))
    fwd = training_forward(gp.adapter, prepared, labels, glimpse, vip, config.prune_layer)
    loss = loc_loss(fwd.per_sample(), targets, 1.0, 1.0)["loc"] + fwd.lm_loss
    params = [*glimpse.parameters(), *vip.parameters()]
    before = [p.detach().clone() for p in params]
    loss.backward()
    torch.optim.SGD(params, lr=1e-2).step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


def test_command_line_writes_frames_and_records(tmp_path):
    assert main([str(tmp_path), "--test", "2", "--frames", "4", "--size", "112"]) == 0
    records = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(len(r["frames"]) == 4 == len(r["bboxs"]) for r in records)
    assert all((tmp_path / f).is_file() for r in records for f in r["frames"])


def test_mini_video_evaluation_runs_with_the_same_count_control():
    """The measurement recipe on 4 clips (numbers themselves: docs/method.md §10.1): the control keeps exactly
    GlimpsePrune's per-clip counts, every clip is scored by every method."""
    from glimpseprune import assets
    from glimpseprune.mini.evaluate_video import evaluate

    model, _ = assets.default_model(device="cpu")
    report = evaluate(model, generate_clips(4, seed=0, split="test"), batch_size=2)
    assert report["items"] == len(report["rows"]) == 4
    assert all(0 < row["kept"] < row["total"] == 256 for row in report["rows"])
    assert set(report["accuracy"]) == {"none", "glimpse", "random_same_counts"}
    assert report["glimpse_vs_random"]["n"] == 4


def test_cli_answer_takes_video_frames(tmp_path, capsys):
    """`glimpseprune answer --video FRAME ...` on the embedded mini model: the clip is one pruned unit, listed with
    its frames; only the image is drawn."""
    from glimpseprune.cli import main

    (clip, record), = generate_clips(1, seed=0, split="test")
    frames = []
    for k, frame in enumerate(render_clip(clip)):
        frames.append(str(tmp_path / f"{k}.png"))
        frame.save(frames[-1])
    render_clip(clip)[0].save(tmp_path / "still.png")
    out = tmp_path / "kept.png"
    code = main(["answer", "--video", *frames, "--image", str(tmp_path / "still.png"), "--question",
                 record["question"], "--max-new-tokens", "3", "--output", str(out), "--json", "--device", "cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    items = result["pruning"]["samples"][0]["images"]
    assert sorted(item.get("kind", "image") for item in items) == ["image", "video"]
    assert [item["frames"] for item in items if item.get("kind") == "video"] == [4]
    assert out.is_file()
    assert main(["answer", "--video", frames[0], str(tmp_path / "missing.png"), "--question", "q",
                 "--device", "cpu", "--output", ""]) == 2
