"""Video inputs pass through unpruned (docs/method.md §10): they are embedded like stock and never pruning candidates.

No torchvision here, so the test builds what a video processor would return: `pixel_values_videos`
[t·h·w patches, 3·2·14·14] and `video_grid_thw` [[t, h, w]], with t·h·w/4 `<|video_pad|>` placeholders.
"""

import torch

from glimpseprune.processing import build_inputs


def _video_inputs(processor, model, question, t=2, h=8, w=8, seed=0):
    tok = processor.tokenizer
    n = t * h * w // 4
    text = f"<|im_start|>user\n<|vision_start|>{'<|video_pad|>' * n}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, return_tensors="pt").input_ids
    assert int((ids == model.config.video_token_id).sum()) == n
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == model.config.video_token_id).int() * 2,
        "pixel_values_videos": torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=g),
        "video_grid_thw": torch.tensor([[t, h, w]]),
    }


def test_video_only_prompt_equals_stock_generate(qwen, gp):
    model, processor = qwen
    inputs = _video_inputs(processor, model, "what happens in the video?")
    stock = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    ours = gp.generate(**inputs, max_keep_ratio=0.1, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(ours.sequences, stock)  # nothing prunable: the glimpse comes and goes without a trace
    assert ours.pruning.samples[0].total == 0
    assert ours.pruning.kv_lengths[0] == inputs["input_ids"].shape[1]


def test_video_tokens_survive_when_the_image_is_pruned(qwen, gp, images):
    model, processor = qwen
    video = _video_inputs(processor, model, "x")
    image = build_inputs(processor, ["compare the picture and the video"], [[images["square"]]])
    n_video = int((video["input_ids"] == model.config.video_token_id).sum())
    # splice the video block in front of the image prompt's user text
    ids = image["input_ids"][0]
    head = processor.tokenizer("<|im_start|>user\n", return_tensors="pt").input_ids[0]
    video_block = video["input_ids"][0][len(head): len(head) + n_video + 2]  # vision_start, pads, vision_end
    spliced = torch.cat([head, video_block, ids[len(head):]])[None]
    inputs = {
        "input_ids": spliced,
        "attention_mask": torch.ones_like(spliced),
        "pixel_values": image["pixel_values"],
        "image_grid_thw": image["image_grid_thw"],
        "pixel_values_videos": video["pixel_values_videos"],
        "video_grid_thw": video["video_grid_thw"],
    }
    out = gp.generate(**inputs, max_keep_ratio=0.1, max_new_tokens=3)
    sample = out.pruning.samples[0]
    n_image = int((spliced == model.config.image_token_id).sum())
    assert sample.total == n_image  # only image tokens are candidates
    assert sample.kept == int(0.1 * n_image)
    kept_ids = spliced[0, sample.keep_indices]
    assert int((kept_ids == model.config.video_token_id).sum()) == n_video  # every video token stays
    assert out.pruning.kv_lengths[0] == spliced.shape[1] - (n_image - sample.kept)
