"""Inputs: images that may be odd (grayscale, RGBA, tiny, huge, truncated, not images), prompts, processors."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses more; say so before the processor fails deep inside


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB ``PIL.Image`` from a path or an image, or a clear error saying what is wrong with the input."""
    if isinstance(source, Image.Image):
        image = source
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
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    ratio = max(image.width, image.height) / min(image.width, image.height)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image aspect ratio {ratio:.0f}:1 exceeds {MAX_ASPECT_RATIO}:1 ({image.width}x{image.height}); "
            "crop or pad it first"
        )
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
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
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi == lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.astype("uint8"), mode="L").convert("RGB")
    return image.convert("RGB")


def user_message(question: str, num_images: int = 1) -> list[dict]:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string")
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def build_inputs(processor, questions: list[str], images: list[list], device=None):
    """Processor inputs for a batch: one chat prompt per question, each with its own list of images (may be empty).

    Padding is on the left, which is what generation needs.
    """
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions but {len(images)} image lists")
    prompts = [
        processor.apply_chat_template(user_message(q, len(imgs)), add_generation_prompt=True, tokenize=False)
        for q, imgs in zip(questions, images)
    ]
    flat = [load_image(im) for imgs in images for im in imgs]
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    kwargs = dict(text=prompts, return_tensors="pt", padding=True)
    if flat:
        kwargs["images"] = flat
    inputs = processor(**kwargs)
    return inputs.to(device) if device is not None else inputs


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
