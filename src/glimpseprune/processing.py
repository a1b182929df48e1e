"""Inputs: images that may be odd (grayscale, RGBA, tiny, huge, truncated, rotated by EXIF, multi-frame, not
images), prompts whose user text stays text, processors.

Images are read as a person sees them: the EXIF orientation is applied; a multi-frame GIF/TIFF/WebP uses its first
frame, with a warning; float images with NaN/inf values are refused. Tensors and arrays are refused with a hint
(their channel order and value range are ambiguous): pass a path or a ``PIL.Image``.

User text never becomes control tokens: the question is tokenised on its own with special-token parsing off, so a
typed ``<|im_end|>`` or ``<image>`` is plain characters, never the chat template's or the image's token.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses more; say so before the processor fails deep inside


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB ``PIL.Image`` from a path or an image, or a clear error saying what is wrong with the input."""
    if isinstance(source, Image.Image):
        image = source
    elif not isinstance(source, (str, os.PathLike)):
        kind = type(source).__module__.split(".")[0] + "." + type(source).__name__
        raise UserError(f"an image must be a file path or a PIL.Image, got {kind}; convert arrays with "
                        "PIL.Image.fromarray(uint8 HxWx3 array) (a tensor's layout and value range are ambiguous)")
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        if not path.is_file():
            raise ValueError(f"not an image file: {path} is a directory")
        try:
            image = Image.open(path)
            image.load()  # decode now: a truncated file must fail here, not inside the processor
        except UnidentifiedImageError as err:
            raise ValueError(f"{path} is not an image PIL can read") from err
        except Image.DecompressionBombError as err:
            raise ValueError(f"{path} is too large to decode safely ({err}); downscale it first") from err
        except (OSError, SyntaxError) as err:
            raise ValueError(f"{path} could not be decoded (truncated or corrupt?): {err}") from err
    if getattr(image, "n_frames", 1) > 1:  # PIL's attribute for animated/multi-page formats
        warnings.warn(f"{getattr(image, 'filename', '') or 'image'} has {image.n_frames} frames; using the first",
                      stacklevel=2)
        image.seek(0)
        image = image.copy()  # the first frame alone
    # As displayed: a phone photo stored sideways with EXIF orientation 6 is upright after this.
    image = ImageOps.exif_transpose(image)
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    ratio = max(image.width, image.height) / min(image.width, image.height)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image aspect ratio {ratio:.0f}:1 exceeds {MAX_ASPECT_RATIO}:1 ({image.width}x{image.height}); "
            "crop or pad it first"
        )
    return to_rgb(image, name=str(source) if not isinstance(source, Image.Image) else None)


def to_rgb(image: Image.Image, name: str | None = None) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: dropping alpha would expose arbitrary colours under transparent pixels.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: rescale to 8 bits instead of clipping.
        import numpy as np

        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise UserError(f"{name or getattr(image, 'filename', '') or 'image'} (mode {image.mode}) contains NaN or "
                            "infinite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi == lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.astype("uint8"), mode="L").convert("RGB")
    return image.convert("RGB")


def user_message(question: str, num_images: int = 1, num_videos: int = 0) -> list[dict]:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string")
    # A video is a text item holding its slot marker (replaced by its placeholder tokens in encode_prompt), so a
    # chat template needs no video support of its own; it sits where the template puts text, before the question.
    content = [{"type": "image"} for _ in range(num_images)]
    content += [{"type": "text", "text": _video_slot(i)} for i in range(num_videos)]
    return [{"role": "user", "content": content + [{"type": "text", "text": question}]}]


# Stands for the question while the chat template is rendered: private-use characters no template emits.
_QUESTION_SLOT = "\ue000glimpseprune-question\ue001"


def _video_slot(i: int) -> str:
    return f"\ue000glimpseprune-video-{i}\ue001"


def encode_prompt(processor, question: str, images: list, videos: list | None = None,
                  **processor_kwargs) -> tuple[dict, dict]:
    """One chat prompt (user turn with ``images``, ``videos`` and ``question``, generation prompt added) as
    (per-token tensors [L] such as input_ids / attention_mask / mm_token_type_ids, visual tensors such as
    pixel_values / image_grid_thw / pixel_values_videos). The question is tokenised with special-token parsing off.
    ``videos``: encoded videos, each the (per-token tensors, video tensors) pair of ``video_encoder`` output."""
    import torch

    tokenizer = getattr(processor, "tokenizer", processor)
    videos = list(videos or [])
    user_message(question)  # the question's own checks
    prompt = processor.apply_chat_template(user_message(_QUESTION_SLOT, len(images), len(videos)),
                                           add_generation_prompt=True, tokenize=False)
    slots = [_QUESTION_SLOT] + [_video_slot(i) for i in range(len(videos))]
    if any(prompt.count(slot) != 1 for slot in slots):
        raise ValueError("the chat template must place the question text (and every video) exactly once")
    # The prompt as pieces: template text (through the processor, with the images it holds), each video's
    # placeholder tokens, and the question (user text).
    pieces = re.split("(" + "|".join(map(re.escape, slots)) + ")", prompt)
    q = pieces.index(_QUESTION_SLOT)
    # Whitespace before the question belongs to its first word for byte-level BPE ("USER: what" -> "Ġwhat"):
    # tokenise it with the question so ordinary prompts get exactly the ids of the whole string.
    before = pieces[q - 1]
    lead = before[len(before.rstrip(" ")):]
    pieces[q - 1] = before[:len(before) - len(lead)]
    image_token = getattr(processor, "image_token", None)
    remaining = list(images)
    per_token_parts, visual_part, first = [], {}, True
    for j, piece in enumerate(pieces):
        if piece == _QUESTION_SLOT:
            per_token_parts.append({"input_ids": torch.tensor(encode_user_text(tokenizer, lead + question),
                                                              dtype=torch.long)})
            continue
        if piece in slots:
            tokens, tensors = videos[slots.index(piece) - 1]
            per_token_parts.append(tokens)
        else:
            if not piece and not first:
                continue
            # The images sit in the pieces whose text holds their tokens (without an image token: the first).
            n = piece.count(image_token) if image_token and remaining else (len(remaining) if first else 0)
            tokens, tensors = _encode_piece(processor, piece, remaining[:n], first, processor_kwargs)
            remaining = remaining[n:]
            first = False
            per_token_parts.append(tokens)
        for key, value in tensors.items():
            visual_part[key] = torch.cat([visual_part[key], value]) if key in visual_part else value
    if remaining:
        raise ValueError(f"the chat template placed {len(images) - len(remaining)} of {len(images)} images")
    per_token = {}
    for key in dict.fromkeys(k for part in per_token_parts for k in part):
        like = next(part[key] for part in per_token_parts if key in part)
        fill = 1 if key == "attention_mask" else 0  # a key a piece lacks (e.g. mm_token_type_ids): plain text
        per_token[key] = torch.cat([
            part[key].to(like.dtype) if key in part
            else torch.full((len(part["input_ids"]), *like.shape[1:]), fill, dtype=like.dtype)
            for part in per_token_parts
        ])
    return per_token, visual_part


def _encode_piece(processor, text: str, images: list, first: bool, processor_kwargs: dict) -> tuple[dict, dict]:
    """A piece of the template (no user text) through the processor: (per-token tensors [L], image tensors)."""
    import torch

    kwargs = dict(text=[text], return_tensors="pt", **processor_kwargs)
    if not first:
        kwargs["add_special_tokens"] = False  # no second BOS in the middle of a prompt
    if images:
        kwargs["images"] = images
    part = processor(**kwargs)
    n = part["input_ids"].shape[1]
    per_token = {k: v[0] for k, v in part.items() if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == (1, n)}
    return per_token, {k: v for k, v in part.items() if k not in per_token}


def encode_user_text(tokenizer, text: str) -> list[int]:
    """Token ids of text a user (or a dataset) wrote: control strings such as ``<|im_end|>`` stay characters."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def build_inputs(processor, questions: list[str], images: list[list], device=None, videos: list[list] | None = None,
                 model_type: str | None = None, fps: float = 2.0):
    """Processor inputs for a batch: one chat prompt per question, each with its own list of images (may be empty)
    and, optionally, its own list of videos (``videos[i]``: videos of prompt i, each a list of frames: paths or
    PIL images of one size, sampled at ``fps`` frames per second). Videos need the base model's ``model_type``:
    its adapter knows the video placeholders and tensors (``FamilyAdapter.encode_video``); they go where the chat
    template puts text, after the images and before the question.

    Each prompt is pieces: the template around the question (with its images, through the processor), each
    video's placeholder tokens, and the question (tokenised with special-token parsing off: user text stays
    text). Padding is on the left, which is what generation needs.
    """
    if isinstance(questions, str) or not isinstance(questions, (list, tuple)):
        raise UserError(f"questions must be a list of strings, got {type(questions).__name__}"
                        + ("; wrap a single question in a list" if isinstance(questions, str) else ""))
    if isinstance(images, (str, os.PathLike, Image.Image)) or not isinstance(images, (list, tuple)):
        raise UserError(f"images must be a list with one list of images per question, got {type(images).__name__}")
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions but {len(images)} image lists")
    for i, imgs in enumerate(images):
        if not isinstance(imgs, (list, tuple)):
            raise UserError(f"images[{i}] must be a list of images (paths or PIL images), got {type(imgs).__name__}"
                            + ("; a path string is not a list of images" if isinstance(imgs, str) else ""))
    import torch
    from transformers import BatchFeature

    encode_video = _video_encoder(questions, videos, model_type, fps)
    tokenizer = getattr(processor, "tokenizer", processor)
    rows, image_parts = [], []
    for i, (question, imgs) in enumerate(zip(questions, images)):
        encoded = [encode_video(processor, [load_image(frame) for frame in video], fps)
                   for video in (videos[i] if videos is not None else [])]
        per_token, image_part = encode_prompt(processor, question, [load_image(im) for im in imgs], encoded)
        rows.append(per_token)
        image_parts.append(image_part)
    length = max(r["input_ids"].shape[0] for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = {}
    for key in rows[0]:
        padded = []
        for r in rows:  # left padding: generation continues from the last column
            value = r[key]
            fill = pad_id if key == "input_ids" else 0
            pad = torch.full((length - value.shape[0], *value.shape[1:]), fill, dtype=value.dtype)
            padded.append(torch.cat([pad, value]))
        data[key] = torch.stack(padded)
    for key in dict.fromkeys(k for part in image_parts for k in part):
        values = [part[key] for part in image_parts if key in part]
        data[key] = concat_image_tensors(values) if torch.is_tensor(values[0]) else [x for v in values for x in v]
    inputs = BatchFeature(data=data)
    return inputs.to(device) if device is not None else inputs


def concat_image_tensors(values: list):
    """Per-prompt image tensors joined along the image dim. Where they differ in a later dim (AnyRes processors
    give each image [crops, C, H, W], crops varying with the image) the shorter ones are zero-padded at the end, as
    the processor pads within one call; the model reads each image's own crops and never the padding."""
    import torch

    shape = [max(v.shape[d] for v in values) for d in range(values[0].dim())]
    padded = []
    for v in values:
        missing = [size - have for size, have in zip(shape[1:], v.shape[1:])]
        if any(missing):
            pad = [p for m in reversed(missing) for p in (0, m)]  # F.pad order: last dim first
            v = torch.nn.functional.pad(v, pad)
        padded.append(v)
    return torch.cat(padded)


def _video_encoder(questions, videos, model_type, fps):
    """The family's ``encode_video`` after checking the ``videos`` argument's shape (None: no videos)."""
    if videos is None:
        return None
    if not isinstance(videos, (list, tuple)) or len(videos) != len(questions):
        raise UserError(f"videos must be a list with one list of videos per question ({len(questions)})")
    for i, row in enumerate(videos):
        if not isinstance(row, (list, tuple)) or any(not isinstance(v, (list, tuple)) or not v for v in row):
            raise UserError(f"videos[{i}] must be a list of videos, each a non-empty list of frames (paths or PIL "
                            "images)")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise UserError(f"fps must be a positive number, got {fps!r}")
    if model_type is None:
        raise UserError("videos need model_type= (the base model's config.model_type): its adapter lays them out")
    from .adapters import adapter_class

    return adapter_class(model_type).encode_video


def load_processor(path: str | os.PathLike, model_type: str):
    """The checkpoint's processor; where AutoProcessor fails (e.g. Qwen-VL without torchvision), the family
    adapter's offline fallback."""
    from transformers import AutoProcessor

    from .adapters import adapter_class, supported_model_types

    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, ValueError, TypeError, OSError, AttributeError) as err:
        if model_type not in supported_model_types():
            raise
        first_error = err
    try:
        processor = adapter_class(model_type).offline_processor(path)
    except Exception as err:
        raise OSError(f"could not load a processor from {path}: {first_error}; fallback also failed: {err}") from err
    if processor is None:
        raise first_error
    return processor
