"""Bad input gets a clear error or a correct answer, never a crash deep inside or a silent wrong result."""

import numpy as np
import pytest
import torch
from PIL import Image

from glimpseprune.processing import build_inputs, load_image

Q = "what colour is the shape in the image?"


def _answer_ok(gp, images):
    text, out = gp.answer(images, Q, max_new_tokens=3, max_keep_ratio=0.5)
    assert isinstance(text, str)
    return out


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_odd_modes_are_converted(gp, tmp_path, mode):
    rgb = Image.fromarray((np.random.RandomState(0).rand(64, 80, 3) * 255).astype("uint8"))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray((np.arange(64 * 80).reshape(64, 80) * 7).astype("uint16"))
    path = tmp_path / f"img.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == image.size
    _answer_ok(gp, [path])


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_one_pixel_image_works(gp):
    out = _answer_ok(gp, [Image.new("RGB", (1, 1), (200, 10, 10))])
    assert out.pruning.samples[0].total >= 1


def test_huge_image_is_resized_by_the_processor(gp):
    out = _answer_ok(gp, [Image.new("RGB", (3000, 2000), (10, 200, 10))])
    assert out.pruning.samples[0].total <= 1280  # the processor's max_pixels bound


def test_extreme_aspect_ratio_is_a_clear_error():
    with pytest.raises(ValueError, match="aspect ratio"):
        load_image(Image.new("RGB", (4000, 10)))


def test_truncated_file(tmp_path):
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated|corrupt|decoded"):
        load_image(tmp_path / "t.png")


def test_non_image_and_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_image_placeholder_mismatch(gp, qwen, images):
    _, processor = qwen
    good = build_inputs(processor, [Q], [[images["square"], images["wide"]]])
    one = build_inputs(processor, [Q], [[images["square"]]])
    bad = dict(good)
    bad["input_ids"], bad["attention_mask"] = one["input_ids"], one["attention_mask"]
    bad.pop("mm_token_type_ids")
    with pytest.raises(ValueError, match="does not match the image placeholders"):
        gp.generate(**bad, max_new_tokens=2)
    no_pixels = {k: v for k, v in one.items() if k not in ("pixel_values", "image_grid_thw")}
    with pytest.raises(ValueError, match="no image was given"):
        gp.generate(**no_pixels, max_new_tokens=2)


@pytest.mark.parametrize("kwargs", [dict(threshold=float("nan")), dict(max_keep_ratio=0.0), dict(max_keep_ratio=1.5),
                                    dict(min_keep=-2), dict(max_new_tokens=0), dict(prune_layer=99)])
def test_invalid_knobs_are_rejected(gp, qwen, images, kwargs):
    inputs = build_inputs(qwen[1], [Q], [[images["square"]]])
    with pytest.raises(ValueError):
        gp.generate(**inputs, **{"max_new_tokens": 2, **kwargs})


def test_unknown_method_and_missing_modules(qwen, images):
    from glimpseprune import GlimpsePrune

    bare = GlimpsePrune(*qwen)
    inputs = build_inputs(qwen[1], [Q], [[images["square"]]])
    with pytest.raises(ValueError, match="no GlimpsePrune modules"):
        bare.generate(**inputs)
    with pytest.raises(ValueError, match="unknown pruning method"):
        bare.generate(**inputs, method="nonsense")
    with pytest.raises(TypeError, match="unexpected arguments"):
        bare.generate(**inputs, method="none", foo=1)
    assert torch.is_tensor(bare.generate(**inputs, method="none", max_new_tokens=2).sequences)


def test_empty_question_rejected(gp):
    with pytest.raises(ValueError, match="question"):
        gp.answer([], "   ")
