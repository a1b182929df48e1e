"""Images read as displayed, and API arguments checked: a wrong type is a clear error, never a different run."""

import numpy as np
import pytest
import torch
from PIL import Image

from glimpseprune.errors import UserError
from glimpseprune.processing import build_inputs, load_image


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 40))  # a blue stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone photo held upright, stored sideways
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    shown = load_image(tmp_path / "rot.jpg")
    assert shown.size == (40, 80)  # portrait, as a viewer shows it
    assert shown.getpixel((20, 3))[2] > 200  # the stripe is now on top
    raw = Image.open(tmp_path / "rot.jpg")
    assert raw.size == (80, 40)  # (the file itself is landscape)
    assert load_image(raw).size == (40, 80)  # also for an already opened image


def test_float_image_with_nan_is_refused(tmp_path):
    arr = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    ok = Image.fromarray(arr, mode="F")
    assert load_image(ok).mode == "RGB"
    arr[3, 4] = np.nan
    with pytest.raises(UserError, match="NaN or infinite"):
        load_image(Image.fromarray(arr, mode="F"))
    arr[3, 4] = np.inf
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(UserError, match=r"f\.tiff.*NaN or infinite"):
        load_image(tmp_path / "f.tiff")


def test_multi_frame_gif_uses_first_frame_with_a_warning(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="3 frames; using the first"):
        image = load_image(tmp_path / "a.gif")
    r, g, b = image.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50
    opened = Image.open(tmp_path / "a.gif")
    opened.seek(2)  # even when the caller left it on another frame
    with pytest.warns(UserWarning):
        assert load_image(opened).getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("value", [np.zeros((8, 8, 3), dtype=np.uint8), torch.zeros(3, 8, 8), 3, None])
def test_arrays_and_tensors_are_refused_clearly(value):
    with pytest.raises(UserError, match="file path or a PIL.Image"):
        load_image(value)


def test_strings_where_lists_are_expected(qwen, images):
    processor = qwen[1]
    with pytest.raises(UserError, match="questions must be a list"):
        build_inputs(processor, "what is this?", [[images["square"]]])
    with pytest.raises(UserError, match=r"images\[0\] must be a list.*path string"):
        build_inputs(processor, ["what is this?"], ["/some/image.png"])
    with pytest.raises(UserError, match="images must be a list"):
        build_inputs(processor, ["what is this?"], "/some/image.png")


def test_answer_argument_types(gp, images):
    with pytest.raises(UserError, match="images must be a list"):
        gp.answer("/some/image.png", "what?")
    with pytest.raises(UserError, match="images must be a list"):
        gp.answer(images["square"], "what?")
    with pytest.raises(UserError, match="question must be a string"):
        gp.answer([images["square"]], ["what?"])


@pytest.fixture(scope="module")
def inputs(qwen, images):
    return build_inputs(qwen[1], ["is there a red circle?"], [[images["square"]]])


@pytest.mark.parametrize("prune_layer, needle", [
    (2.5, "must be an integer"), (True, "must be an integer"), ("2", "must be an integer"),
    (-1, "must be in"), (99, "must be in"),
])
@pytest.mark.parametrize("method", ["glimpse", "random", "fastv"])
def test_prune_layer_must_be_an_int_layer(gp, inputs, method, prune_layer, needle):
    with pytest.raises(UserError, match=needle):
        gp.generate(**inputs, method=method, prune_layer=prune_layer, max_new_tokens=1)


def test_keep_masks_must_be_boolean(gp, inputs):
    n = int((inputs["input_ids"][0] == gp.model.config.image_token_id).sum())
    with pytest.raises(UserError, match="must be boolean"):
        gp.generate(**inputs, keep_masks=[torch.full((n,), 0.3)], max_new_tokens=1)
    with pytest.raises(UserError, match="must be boolean"):
        gp.generate(**inputs, keep_masks=[torch.ones(n, dtype=torch.long)], max_new_tokens=1)
    with pytest.raises(UserError, match="one boolean mask per sample"):
        gp.generate(**inputs, keep_masks=torch.ones(n, dtype=torch.bool), max_new_tokens=1)
    out = gp.generate(**inputs, keep_masks=[torch.arange(n) % 2 == 0], max_new_tokens=1)
    assert out.pruning.samples[0].kept == (n + 1) // 2


@pytest.mark.parametrize("method", ["glimpse", "none", "random", "fastv", "visionzip"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_refused_for_every_method(gp, inputs, method, bad):
    corrupt = dict(inputs)
    corrupt["pixel_values"] = inputs["pixel_values"].clone()
    corrupt["pixel_values"][0, 0] = bad
    with pytest.raises(UserError, match="pixel_values contains NaN or infinite"):
        gp.generate(**corrupt, method=method, max_new_tokens=1)


def test_method_must_be_a_name(gp, inputs):
    with pytest.raises(UserError, match="method must be a name"):
        gp.generate(**inputs, method=3, max_new_tokens=1)
