"""Box → token masks: hand-computed grids, the LLaVA letterbox, Qwen's grid, and the mask metrics."""

import numpy as np
import pytest
from PIL import Image

from glimpseprune.adapters.qwen2_5_vl import qwen_box_mask, qwen_token_grid
from glimpseprune.data.masks import boxes_to_grid_mask, llava_box_mask, mask_metrics, normalize_boxes


def cells(mask):
    return set(np.flatnonzero(mask).tolist())


def test_grid_mask_hand_computed_4x4():
    # cols floor(1.2)=1 .. floor(2.4)=2, rows floor(1.2)=1 .. min(floor(3.6), 3)=3 -> rows 1-3 x cols 1-2
    mask = boxes_to_grid_mask([[0.3, 0.3, 0.6, 0.9]], 4, 4)
    assert mask.dtype == bool and mask.shape == (16,)
    assert cells(mask) == {5, 6, 9, 10, 13, 14}


def test_grid_mask_inclusive_end_and_last_cell():
    # x2 = 0.5 on 4 columns -> floor(2.0) = 2 is included (inclusive rule); x2 = 1.0 -> capped at column 3.
    assert cells(boxes_to_grid_mask([0.0, 0.0, 0.5, 0.25], 4, 4)) == {0, 1, 2, 4, 5, 6}
    assert cells(boxes_to_grid_mask([[0.8, 0.8, 1.0, 1.0]], 4, 4)) == {15}


def test_grid_mask_raster_order_non_square_and_or():
    # 2 rows x 3 columns: the right column is indices 2 and 5; the top-left cell is 0.
    mask = boxes_to_grid_mask([[0.7, 0.0, 0.9, 0.9], [0.0, 0.0, 0.2, 0.3]], 2, 3)
    assert cells(mask) == {0, 2, 5}


def test_grid_mask_clamps_and_ignores_boxes_outside():
    inside = boxes_to_grid_mask([[0.0, 0.0, 0.3, 0.2]], 4, 4)
    assert np.array_equal(boxes_to_grid_mask([[-0.2, -0.5, 0.3, 0.2]], 4, 4), inside)
    assert cells(inside) == {0, 1}
    # Entirely right of / left of the image: nothing, not an edge column.
    assert not boxes_to_grid_mask([[1.2, 0.1, 1.5, 0.3], [-0.5, 0.1, -0.1, 0.3]], 4, 4).any()
    assert not boxes_to_grid_mask([], 3, 5).any() and boxes_to_grid_mask([], 3, 5).shape == (15,)


def test_grid_mask_rejects_bad_input():
    with pytest.raises(ValueError):
        boxes_to_grid_mask([[0.1, 0.2, 0.3]], 4, 4)
    with pytest.raises(ValueError):
        boxes_to_grid_mask([[0.1, 0.2, float("nan"), 0.4]], 4, 4)
    with pytest.raises(ValueError):
        boxes_to_grid_mask([[0.1, 0.2, 0.3, 0.4]], 0, 4)


def test_normalize_boxes():
    assert np.allclose(normalize_boxes([[20, 10, 90, 40]], 200, 100), [[0.1, 0.1, 0.45, 0.4]])


def test_llava_letterbox_wide_image_by_hand():
    # 200x100 image, box x 20-90, y 10-40. S = 200, ox = 0, oy = 50.
    # Letterbox: x 0.1-0.45 -> cols 0-1; y (10+50)/200 = 0.3 .. (40+50)/200 = 0.45 -> row 1 only.
    # Reference (no letterbox): y 0.1-0.4 -> rows 0-1.
    box = [[20, 10, 90, 40]]
    assert cells(llava_box_mask(box, 200, 100, grid=4)) == {4, 5}
    assert cells(llava_box_mask(box, 200, 100, grid=4, letterbox=False)) == {0, 1, 4, 5}


def test_llava_letterbox_tall_and_square_images():
    # 100x200 (tall): ox = 50. Box x 10-40 -> (60/200, 90/200) = 0.3-0.45 -> col 1; y 20-90 -> 0.1-0.45 -> rows 0-1.
    assert cells(llava_box_mask([[10, 20, 40, 90]], 100, 200, grid=4)) == {1, 5}
    # Odd padding uses the floor: 101x100 -> oy = floor(1/2) = 0, so a square-ish image is unchanged.
    square = [[30, 30, 70, 70]]
    assert np.array_equal(llava_box_mask(square, 100, 100), llava_box_mask(square, 100, 100, letterbox=False))


def test_llava_letterbox_matches_the_real_processor():
    """Where a red box lands in LlavaImageProcessorPil(do_pad=True)'s 336² output = our letterbox mask."""
    from transformers import LlavaImageProcessorPil

    width, height, box = 200, 100, (20, 10, 90, 40)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((255, 0, 0), box)  # PIL paste box is [x1, x2) x [y1, y2), like our pixel boxes
    # LLaVA-1.5: pad to square with the mean colour, resize to 336, crop 336 -> 24x24 patches of 14 px.
    processor = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    pixels = np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0])  # [3, 336, 336]
    mean, std = np.array(processor.image_mean)[:, None, None], np.array(processor.image_std)[:, None, None]
    rgb = (pixels * std + mean) * 255
    red = (rgb[0] > 180) & (rgb[1] < 100) & (rgb[2] < 100)
    red_per_patch = red.reshape(24, 14, 24, 14).mean(axis=(1, 3)).reshape(-1)

    mask = llava_box_mask([box], width, height, grid=24)
    assert (red_per_patch[mask] > 0).all()  # every masked patch shows the object
    assert not (red_per_patch[~mask] > 0.2).any()  # no patch that is mostly red is missed
    wrong = llava_box_mask([box], width, height, grid=24, letterbox=False)
    assert (red_per_patch[wrong] == 0).sum() > 20  # the reference's mask covers many empty patches


def test_qwen_token_grid_by_hand_and_against_smart_resize():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    assert qwen_token_grid(448, 448) == (16, 16)
    # chelsea-sized 451x300: round(300/28)=11 rows, round(451/28)=16 columns, within the pixel limits.
    assert qwen_token_grid(451, 300) == (11, 16)
    for width, height, max_pixels in [(20, 20, 16384 * 784), (5000, 4000, 16384 * 784), (1280, 720, 2048 * 784),
                                      (333, 999, 256 * 784)]:
        resized_h, resized_w = smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=max_pixels)
        assert qwen_token_grid(width, height, max_pixels=max_pixels) == (resized_h // 28, resized_w // 28)
    grid_h, grid_w = qwen_token_grid(5000, 4000, max_pixels=2048 * 784)
    assert grid_h * grid_w <= 2048 and grid_w > grid_h


def test_qwen_token_grid_matches_the_real_processor():
    from transformers import Qwen2VLImageProcessorPil

    min_pixels, max_pixels = 56 * 56, 28 * 28 * 1280
    processor = Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    image = Image.new("RGB", (451, 300), (128, 128, 128))
    _, grid_h, grid_w = processor(images=image, return_tensors="np")["image_grid_thw"][0].tolist()
    assert qwen_token_grid(451, 300, min_pixels=min_pixels, max_pixels=max_pixels) == (grid_h // 2, grid_w // 2)


def test_qwen_box_mask_normalises_by_the_original_size():
    # 448x448 -> 16x16 grid of 28 px. Box x 28-84, y 56-112: cols 1..floor(3.0)=3, rows 2..floor(4.0)=4 (inclusive).
    mask = qwen_box_mask([[28, 56, 84, 112]], 448, 448).reshape(16, 16)
    assert set(zip(*np.nonzero(mask))) == {(r, c) for r in range(2, 5) for c in range(1, 4)}
    # 451x300 is resized anisotropically to 448x308; a whole-image box must still cover the whole 11x16 grid.
    assert qwen_box_mask([[0, 0, 451, 300]], 451, 300).all()
    assert qwen_box_mask([[0, 0, 451, 300]], 451, 300).shape == (11 * 16,)


def test_mask_metrics_hand_computed():
    m = mask_metrics([1, 1, 0, 0], [1, 0, 1, 0])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["iou"] == pytest.approx(1 / 3) and m["keep_ratio"] == 0.5
    m = mask_metrics(np.array([[True, True], [True, False]]), np.array([[True, False], [False, False]]))
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 1.0 and m["f1"] == 0.5
    assert m["keep_ratio"] == 0.75


def test_mask_metrics_zero_division_conventions():
    both_empty = mask_metrics([0, 0, 0], [0, 0, 0])
    assert all(both_empty[k] == 1.0 for k in ("precision", "recall", "f1", "iou"))
    assert both_empty["keep_ratio"] == 0.0
    nothing_kept = mask_metrics([0, 0, 0], [0, 1, 0])
    assert all(nothing_kept[k] == 0.0 for k in ("precision", "recall", "f1", "iou", "keep_ratio"))
    no_target = mask_metrics([1, 0, 0], [0, 0, 0])
    assert all(no_target[k] == 0.0 for k in ("precision", "recall", "f1", "iou"))
    with pytest.raises(ValueError):
        mask_metrics([1, 0], [1, 0, 0])
