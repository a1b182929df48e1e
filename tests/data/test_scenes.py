"""glimpse-shapes: determinism, geometry, grounding of boxes, answer balance and evidence size."""

import json
import os
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpseprune.data import scenes
from glimpseprune.adapters.qwen2_5_vl import qwen_box_mask
from glimpseprune.data.records import load_records
from glimpseprune.data.scenes import (
    BORDER,
    COLOURS,
    COUNT_WORDS,
    GAP,
    LAYOUTS,
    SHAPES,
    VOCAB_WORDS,
    Layout,
    Scene,
    all_texts,
    generate_benchmark,
    generate_items,
    main,
    object_box,
    render_scene,
)

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout_name(request):
    return request.param


@pytest.fixture(scope="module")
def items(layout_name):
    """500 test-split items of each layout: every property below must hold for the dense variant too."""
    return generate_items(500, seed=0, layout=layout_name)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    generate_benchmark(tmp_path / "a", 3, 2, 2, seed=0)
    generate_benchmark(tmp_path / "b", 3, 2, 2, seed=0)
    generate_benchmark(tmp_path / "c", 3, 2, 2, seed=1)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 7 + 4 and a == b  # 7 PNGs, 3 JSONL files, info.json
    assert a["train.jsonl"] != c["train.jsonl"] and a["test.jsonl"] != c["test.jsonl"]
    assert a["images/train/000000.png"] != c["images/train/000000.png"]
    # Each split has its own stream: the test split does not depend on how many training items were made.
    generate_benchmark(tmp_path / "d", 5, 0, 2, seed=0)
    assert tree_bytes(tmp_path / "d")["test.jsonl"] == a["test.jsonl"]


def test_written_files_load_cleanly_and_rerender(tmp_path):
    records = generate_benchmark(tmp_path, 4, 0, 8, seed=3)
    loaded, report = load_records(tmp_path / "test.jsonl", check_images="decode")
    assert len(loaded) == 8 and report.n_kept == 8
    assert set(report.counts) <= {"no_box"}  # only count-zero questions, which carry "bboxs": []
    assert report.counts["no_box"] == sum(1 for r in records["test"] if not r["bboxs"])
    for rec, raw in zip(loaded, records["test"]):
        assert rec.boxes == [[float(v) for v in box] for box in raw["bboxs"]]
        assert rec.short_answer == raw["short_answer"] and rec.extra["qtype"] == raw["qtype"]
        assert rec.dataset == "shapes" and rec.answer == raw["free_form_answer"]
        on_disk = np.asarray(Image.open(rec.image))
        assert np.array_equal(on_disk, np.asarray(render_scene(Scene.from_dict(raw["scene"]))))
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["splits"] == {"train": 4, "val": 0, "test": 8} and info["seed"] == 3


def test_refuses_to_overwrite_unless_asked(tmp_path):
    generate_benchmark(tmp_path, 3, 0, 0)
    with pytest.raises(FileExistsError):
        generate_benchmark(tmp_path, 1, 0, 0)
    (tmp_path / "notes.txt").write_text("mine")
    generate_benchmark(tmp_path, 1, 0, 0, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "images" / "train").iterdir()) == ["000000.png"]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the generator's own outputs are replaced
    with pytest.raises(ValueError):
        generate_items(1, size=300)


def test_scene_geometry(items, layout_name):
    layout = LAYOUTS[layout_name]
    for scene, record in items:
        objs = scene.objects
        assert layout.min_objects <= len(objs) <= layout.max_objects and scene.width == scene.height == 448
        assert min(scene.background) >= 220
        for i, o in enumerate(objs):
            assert o.shape in SHAPES and o.colour in COLOURS and layout.min_size <= o.size <= layout.max_size
            assert BORDER <= o.x and o.x + o.size <= 448 - BORDER and BORDER <= o.y and o.y + o.size <= 448 - BORDER
            for p in objs[i + 1:]:
                assert (o.x + o.size + GAP <= p.x or p.x + p.size + GAP <= o.x
                        or o.y + o.size + GAP <= p.y or p.y + p.size + GAP <= o.y)
        for x1, y1, x2, y2 in record["bboxs"]:
            assert 0 <= x1 < x2 <= 448 and 0 <= y1 < y2 <= 448


def test_boxes_are_exact_object_pixels(items):
    """Every pixel of a colour lies in the boxes of that colour's objects, and each box is its object's pixel bbox."""
    for scene, _ in items[:60]:
        pixels = np.asarray(render_scene(scene)).astype(int)
        for colour, rgb in COLOURS.items():
            of_colour = (pixels == rgb).all(axis=-1)
            inside = np.zeros_like(of_colour)
            for obj in scene.objects:
                if obj.colour != colour:
                    continue
                x1, y1, x2, y2 = object_box(obj)
                inside[y1:y2, x1:x2] = True
                # Within the object's footprint grown by half the gap (no other object there), the colour's
                # bounding box is exactly the recorded box.
                h = GAP // 2
                region = of_colour[max(y1 - h, 0):y2 + h, max(x1 - h, 0):x2 + h]
                ys, xs = np.nonzero(region)
                ox, oy = max(x1 - h, 0), max(y1 - h, 0)
                assert [xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1] == [x1, y1, x2, y2]
                assert region.mean() > 0.15  # a shape, not a few stray pixels
            assert not (of_colour & ~inside).any()


def test_answers_are_right_and_boxes_point_at_the_evidence(items):
    for scene, rec in items:
        q, short, boxes = rec["question"], rec["short_answer"], rec["bboxs"]
        objs = scene.objects
        if rec["qtype"] == "colour_of_shape":
            shape = re.fullmatch(r"What colour is the (\w+)\?", q).group(1)
            (target,) = [o for o in objs if o.shape == shape]
            assert short == target.colour and boxes == [object_box(target)] and rec["box_role"] == "target"
            # The answer is visible: the box is mostly the answer's colour.
            x1, y1, x2, y2 = boxes[0]
            crop = np.asarray(render_scene(scene))[y1:y2, x1:x2].astype(int)
            assert (crop == COLOURS[short]).all(axis=-1).mean() > 0.3
        elif rec["qtype"] == "shape_of_colour":
            colour = re.fullmatch(r"What shape is the (\w+) object\?", q).group(1)
            (target,) = [o for o in objs if o.colour == colour]
            assert short == target.shape and boxes == [object_box(target)]
        elif rec["qtype"] == "exists":
            colour, shape = re.fullmatch(r"Is there an? (\w+) (\w+)\?", q).groups()
            full = [o for o in objs if o.colour == colour and o.shape == shape]
            partial = [o for o in objs if (o.colour == colour) != (o.shape == shape)]
            assert 1 <= len(partial) <= 2  # hard negatives in both cases
            if short == "yes":
                assert len(full) == 1 and boxes == [object_box(full[0])] and rec["box_role"] == "target"
            else:
                assert short == "no" and not full and rec["box_role"] == "evidence"
                assert boxes == [object_box(o) for o in partial]
        else:
            plural = re.fullmatch(r"How many (\w+) are there\?", q).group(1)
            shape = next(s for s in SHAPES if scenes.PLURALS[s] == plural)
            matching = [o for o in objs if o.shape == shape]
            assert short == COUNT_WORDS[len(matching)] and boxes == [object_box(o) for o in matching]
            assert rec["box_role"] == ("target" if matching else "none")
        assert all(box in [object_box(o) for o in objs] for box in boxes)


def test_answer_balance_over_500(items):
    assert Counter(r["qtype"] for _, r in items) == {q: 125 for q in scenes.QTYPES}
    expected_answers = {
        "colour_of_shape": set(COLOURS), "shape_of_colour": set(SHAPES),
        "exists": {"yes", "no"}, "count": set(COUNT_WORDS),
    }
    for qtype, answers in expected_answers.items():
        counts = Counter(r["short_answer"] for _, r in items if r["qtype"] == qtype)
        assert set(counts) == answers
        uniform = 125 / len(answers)
        assert all(0.8 * uniform <= c <= 1.25 * uniform for c in counts.values()), (qtype, counts)


def test_answers_do_not_follow_from_the_question():
    """For every question text the answers are spread evenly (full decks): a question-only prior is at chance."""
    by_question = defaultdict(Counter)
    for _, rec in generate_items(2000, seed=5):
        by_question[(rec["qtype"], rec["question"])][rec["short_answer"]] += 1
    n_answers = {"colour_of_shape": len(COLOURS), "shape_of_colour": len(SHAPES), "exists": 2, "count": 4}
    for (qtype, question), counts in by_question.items():
        assert len(counts) == n_answers[qtype], question
        assert max(counts.values()) - min(counts.values()) <= 1, (question, counts)


def test_evidence_is_small(items):
    areas, token_fractions = [], []
    for _, rec in items:
        if not rec["bboxs"]:
            continue
        covered = np.zeros((448, 448), dtype=bool)
        for x1, y1, x2, y2 in rec["bboxs"]:
            covered[y1:y2, x1:x2] = True
        areas.append(covered.mean())
        token_fractions.append(qwen_box_mask(rec["bboxs"], 448, 448).mean())
    assert statistics.median(areas) < 0.05
    assert statistics.median(token_fractions) < 0.10  # on Qwen's 16x16 merged grid
    assert sum(1 for _, r in items if not r["bboxs"]) == Counter(r["short_answer"] for _, r in items
                                                                 if r["qtype"] == "count")["zero"]


def test_vocabulary_covers_everything_generated(items):
    texts = set(all_texts())
    for _, rec in items:
        assert {rec["question"], rec["short_answer"], rec["free_form_answer"]} <= texts
    words = {w for t in texts for w in re.findall(r"[A-Za-z]+|[^\sA-Za-z]", t)}
    assert set(VOCAB_WORDS) == words and len(VOCAB_WORDS) < 60
    assert "Is there an orange star?" in texts and "Is there a orange star?" not in texts


def test_default_layout_keeps_its_stream_and_dense_is_crowded(tmp_path):
    """Layouts did not change the default benchmark; the dense one is its own stream and has far more clutter."""
    default = generate_items(40, seed=0, split="test")
    assert default == generate_items(40, seed=0, split="test", layout=Layout(3, 6, 40, 90))
    dense = generate_items(40, seed=0, split="test", layout="dense")
    assert dense == generate_items(40, seed=0, split="test", layout=LAYOUTS["dense"])
    assert all(len(d.objects) >= 12 > len(s.objects) for (d, _), (s, _) in zip(dense, default))

    def touched(items):  # share of merged tokens touched by any object
        return statistics.median(qwen_box_mask([object_box(o) for o in s.objects], 448, 448).mean() for s, _ in items)

    # An 11.1 % budget cannot cover the dense scenes' objects, whatever the pruner does.
    assert touched(dense) > 0.3 and touched(default) < 0.25
    generate_benchmark(tmp_path / "d", 0, 0, 3, seed=0, layout="dense")
    info = json.loads((tmp_path / "d" / "info.json").read_text())
    assert info["layout"] == {"name": "dense", "min_objects": 12, "max_objects": 14, "min_size": 40, "max_size": 60}
    generate_benchmark(tmp_path / "p", 0, 0, 3, seed=0)
    assert "layout" not in json.loads((tmp_path / "p" / "info.json").read_text())


@pytest.mark.parametrize("layout, match", [
    ("crowded", "unknown layout"),
    (Layout(1, 2, 40, 90), "at least 3"),
    (Layout(5, 4, 40, 90), "min_objects <= max_objects"),
    (Layout(3, 6, 10, 90), "min_size"),
    (Layout(3, 6, 60, 50), "min_size"),
    (Layout(20, 24, 40, 90), "do not fit"),
])
def test_bad_layouts_are_refused_clearly(tmp_path, layout, match):
    with pytest.raises(ValueError, match=match):
        generate_items(1, layout=layout)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "info.json").write_text("{}")
    with pytest.raises(ValueError, match=match):  # refused before anything in OUT_DIR is deleted
        generate_benchmark(tmp_path / "old", 1, 0, 0, overwrite=True, layout=layout)
    assert (tmp_path / "old" / "info.json").read_text() == "{}"


def test_cli_layouts(tmp_path, capsys):
    assert main([str(tmp_path / "d"), "--test", "2", "--layout", "dense"]) == 0
    assert json.loads((tmp_path / "d" / "info.json").read_text())["layout"]["name"] == "dense"
    assert main([str(tmp_path / "c"), "--test", "2", "--objects", "7", "8", "--object-size", "30", "50"]) == 0
    info = json.loads((tmp_path / "c" / "info.json").read_text())["layout"]
    assert info == {"name": None, "min_objects": 7, "max_objects": 8, "min_size": 30, "max_size": 50}
    for line in (tmp_path / "c" / "test.jsonl").read_text().splitlines():
        scene = Scene.from_dict(json.loads(line)["scene"])
        assert 7 <= len(scene.objects) <= 8 and all(30 <= o.size <= 50 for o in scene.objects)
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "x"), "--test", "1", "--objects", "30", "30"])
    assert err.value.code == 2 and "do not fit" in capsys.readouterr().err


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "m"), "--train", "2", "--test", "1", "--seed", "4"]) == 0
    assert "train 2" in capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "glimpseprune.data.scenes", str(tmp_path / "s"), "--train", "2", "--test", "1",
         "--seed", "4"],
        capture_output=True, text=True, env=env, check=True,
    )
    assert "Warning" not in done.stderr
    assert tree_bytes(tmp_path / "s") == tree_bytes(tmp_path / "m")
