"""Records -> a processor batch for stage-1 training (docs/method.md §11.2, §11.3).

Each record becomes one user turn (the image, then the raw question) rendered with the model's chat template and
the generation prompt, followed by the answer and the end-of-turn token. Labels are -100 up to and including the
assistant header (and on padding); the answer tokens and the end token are supervised. Rows are left padded.

Box masks are computed on the grid the model actually sees: Qwen's merged grid from ``image_grid_thw`` (a plain
rescale, so boxes normalised by the original size land on the same fraction), LLaVA's square grid through the
letterbox mapping (``data.masks.llava_box_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..adapters import adapter_class
from ..processing import concat_image_tensors, encode_prompt, encode_user_text, load_image
from .forward import IGNORE_INDEX


def _get(record, key: str, default=None):
    if isinstance(record, dict):
        return record.get(key, default)
    return getattr(record, key, default)


@dataclass
class Collator:
    processor: Any
    family: str  # the model's ``model_type``: its adapter knows the image sizing and the box -> token-grid rule
    min_pixels: int | None = None
    max_pixels: int | None = None
    with_answer: bool = True  # False: prompt only (validation through the inference engine)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def _image_kwargs(self) -> dict:
        return adapter_class(self.family).image_size_kwargs(self.processor, self.min_pixels, self.max_pixels)

    def encode(self, record) -> dict:
        image = load_image(_get(record, "image"))
        # dataset text is user text: its control strings stay characters (processing.encode_prompt)
        per_token, enc = encode_prompt(self.processor, _get(record, "question"), [image], **self._image_kwargs())
        ids = per_token["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        if self.with_answer:
            answer = encode_user_text(self.tokenizer, str(_get(record, "answer")).strip())
            eos = self.tokenizer.eos_token_id
            ans = torch.tensor(answer + ([eos] if eos is not None else []), dtype=ids.dtype)
            ids = torch.cat([ids, ans])
            labels = torch.cat([labels, ans])
        out = {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"]}
        for key in ("image_grid_thw", "image_sizes", "batch_num_images"):  # whichever the family's processor gives
            if key in enc:
                out[key] = enc[key]
        out["box_mask"], out["has_box"] = self.box_mask(record, image.size, enc)
        return out

    def box_mask(self, record, image_size, enc) -> tuple[torch.Tensor, bool]:
        boxes = _get(record, "boxes")
        if boxes is None:
            boxes = _get(record, "bboxs") or []
        width = _get(record, "width") or image_size[0]
        height = _get(record, "height") or image_size[1]
        mask = adapter_class(self.family).box_token_mask(boxes, width, height, enc, self.processor)
        return torch.from_numpy(mask.copy()), bool(boxes)

    def __call__(self, records: list) -> dict:
        items = [self.encode(r) for r in records]
        length = max(it["input_ids"].numel() for it in items)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bs = len(items)
        input_ids = torch.full((bs, length), pad, dtype=items[0]["input_ids"].dtype)
        labels = torch.full((bs, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((bs, length), dtype=torch.long)
        for b, it in enumerate(items):  # left padding
            n = it["input_ids"].numel()
            input_ids[b, length - n:] = it["input_ids"]
            labels[b, length - n:] = it["labels"]
            attention_mask[b, length - n:] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": concat_image_tensors([it["pixel_values"] for it in items]),
            "box_masks": [it["box_mask"] for it in items],
            "has_box": [it["has_box"] for it in items],
        }
        for key in ("image_grid_thw", "image_sizes", "batch_num_images"):
            if key in items[0]:
                batch[key] = torch.cat([it[key] for it in items])
        return batch


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "image_sizes", "batch_num_images")


def model_inputs(batch: dict, device=None) -> dict:
    out = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
