"""Record loading: both item formats, image lookup, sampling, and the data report."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from glimpseprune.data.records import BOX_REQUEST, REASONS, load_records, parse_spec


def write_png(path, size=(100, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def row(i, image="img.png", **kw):
    base = {"question": f"q{i}?", "answer": f"a{i}.", "image": image, "width": 100, "height": 50,
            "bboxs": [[10, 5, 60, 40]], "dataset": "gqa", "id": str(i)}
    return {**base, **kw}


def test_parse_spec():
    assert parse_spec("d/x.jsonl").sampling == "all"
    assert parse_spec("d/x.jsonl:all").path.name == "x.jsonl"
    spec = parse_spec("d/x.jsonl:random:2000")
    assert (str(spec.path), spec.mode, spec.n, spec.sampling) == ("d/x.jsonl", "random", 2000, "random:2000")
    assert parse_spec("x.json:first:5").n == 5 and parse_spec("x.json:end:3").mode == "end"
    assert str(parse_spec("dir:with:colon/x.jsonl").path) == "dir:with:colon/x.jsonl"
    for bad in ("x.jsonl:random:0", "x.jsonl:first:abc", "x.jsonl:random:-3"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_training_format_and_image_lookup_order(tmp_path):
    root = tmp_path / "root"
    in_cot = write_png(root / "cot" / "gqa" / "both.png")
    write_png(root / "both.png")  # also at <root>/, but <root>/cot/<dataset>/ wins
    at_root = write_png(root / "only_root.png")
    data_dir = tmp_path / "data"
    beside = write_png(data_dir / "imgs" / "beside.png")
    absolute = write_png(tmp_path / "elsewhere" / "abs.png")
    data = write_jsonl(data_dir / "train.jsonl", [
        row(0, "both.png", short_answer="a", extra_key=7),
        row(1, "only_root.png"),
        row(2, "imgs/beside.png", id=None, question_id=99),
        row(3, str(absolute)),
    ])
    records, report = load_records(data, root=root)
    assert [r.image for r in records] == [str(in_cot), str(at_root), str(beside), str(absolute)]
    first = records[0]
    assert (first.question, first.answer, first.dataset, first.id) == ("q0?", "a0.", "gqa", "0")
    assert (first.width, first.height, first.boxes) == (100, 50, [[10.0, 5.0, 60.0, 40.0]])
    assert first.short_answer == "a" and first.extra == {"extra_key": 7} and first.has_box
    assert records[2].id == "99"
    assert report.n_kept == 4 and not report.counts
    # Without a root only the data file's folder and absolute paths are searched.
    records, report = load_records(data)
    assert [r.id for r in records] == ["99", "3"] and report.counts == {"missing_image": 2}


def test_benchmark_format(tmp_path):
    write_png(tmp_path / "cot" / "flickr30k" / "p.jpg.png", size=(120, 80))
    item = {
        "dataset": "flickr30k", "split": "test", "question_id": 17,
        "image": ["cot/flickr30k/p.jpg.png", "cot/flickr30k/p.jpg.png###[10, 20, 130, 60]"],
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat is the dog doing? {BOX_REQUEST}"},
            {"from": "gpt", "value": "[0.08, 0.25, 1.0, 0.75]"},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": "The dog is running."},
        ],
    }
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([item]), encoding="utf-8")
    records, report = load_records(bench, root=tmp_path)
    (rec,) = records
    assert rec.question == "What is the dog doing?"
    assert rec.answer == "The dog is running."
    assert (rec.width, rec.height) == (120, 80)  # read from the image: benchmark items store no size
    assert rec.boxes == [[10.0, 20.0, 120.0, 60.0]]  # x2 = 130 clamped to the 120 px width
    assert (rec.id, rec.dataset, rec.extra) == ("17", "flickr30k", {"split": "test"})
    assert report.counts == {"box_clamped": 1}


def make_numbered(tmp_path, name, n):
    write_png(tmp_path / "img.png")
    return write_jsonl(tmp_path / name, [row(i) for i in range(n)])


def test_random_sampling_is_seeded_and_matches_the_reference_draw(tmp_path):
    data = make_numbered(tmp_path, "a.jsonl", 50)
    ids = [r.id for r in load_records(f"{data}:random:10")[0]]
    assert ids == [r.id for r in load_records(f"{data}:random:10")[0]]
    # The reference's datasets.Dataset.shuffle(seed=42).select(range(10)), in the shuffled order.
    assert ids == [str(i) for i in np.random.default_rng(42).permutation(50)[:10]]
    assert ids != [r.id for r in load_records(f"{data}:random:10", seed=7)[0]]
    assert len(set(ids)) == 10
    assert [r.id for r in load_records(f"{data}:first:3")[0]] == ["0", "1", "2"]
    assert [r.id for r in load_records(f"{data}:end:2")[0]] == ["48", "49"]
    records, report = load_records(f"{data}:random:80")  # more than the file holds: all of it
    assert sorted(int(r.id) for r in records) == list(range(50)) and report.files[0].n_selected == 50


def test_mixing_files_samples_each_file_on_its_own(tmp_path):
    a = make_numbered(tmp_path, "a.jsonl", 30)
    b = write_jsonl(tmp_path / "b.jsonl", [row(100 + i, dataset="vsr") for i in range(20)])
    alone_a = [r.id for r in load_records(f"{a}:random:5")[0]]
    alone_b = [r.id for r in load_records(f"{b}:random:4")[0]]
    mixed, report = load_records([f"{a}:random:5", f"{b}:random:4", f"{a}:first:2"])
    assert [r.id for r in mixed] == alone_a + alone_b + ["0", "1"]
    assert [r.dataset for r in mixed].count("vsr") == 4
    assert [(f.sampling, f.n_items, f.n_selected, f.n_kept) for f in report.files] == [
        ("random:5", 30, 5, 5), ("random:4", 20, 4, 4), ("first:2", 30, 2, 2)]


def test_every_problem_is_counted(tmp_path):
    good = write_png(tmp_path / "img.png", size=(100, 50))
    png = io.BytesIO()
    Image.new("RGB", (100, 50), (1, 2, 3)).save(png, format="PNG")
    (tmp_path / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    rows = [
        row(0),                                                     # fine
        row(1, "nope.png"),                                         # missing_image
        row(2, "truncated.png"),                                    # unreadable_image (with check_images)
        row(3, answer="  "),                                        # empty_answer
        row(4, question=""),                                        # empty_question
        '{"question": "broken", ',                                  # malformed_json (line 6)
        "[1, 2]",                                                   # malformed_json: not an object (line 7)
        {k: v for k, v in row(5).items() if k != "image"},          # bad_record
        row(6, bboxs=[[-10, 5, 60, 80]]),                           # box_clamped
        row(7, bboxs=[[150, 5, 190, 40], [10, 5, 60, 40]]),         # box_outside, one box left
        row(8, bboxs=[[150, 5, 190, 40]]),                          # box_outside + no_valid_box
        row(9, bboxs=[[60, 5, 10, 40], [1, 2, 3]]),                 # malformed_box + no_valid_box
        row(10, bboxs=[]),                                          # no_box
        row(11, width=0, height="50"),                              # bad_size: size read from the image
    ]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    records, report = load_records(data, check_images=True)
    assert report.counts == {
        "missing_image": 1, "unreadable_image": 1, "empty_answer": 1, "empty_question": 1, "malformed_json": 2,
        "bad_record": 1, "box_clamped": 1, "box_outside": 2, "no_valid_box": 2, "malformed_box": 1, "no_box": 1,
        "bad_size": 1,
    }
    by_id = {r.id: r for r in records}
    assert sorted(by_id, key=int) == ["0", "6", "7", "8", "9", "10", "11"]
    assert by_id["6"].boxes == [[0.0, 5.0, 60.0, 50.0]]
    assert by_id["7"].boxes == [[10.0, 5.0, 60.0, 40.0]] and not by_id["7"].no_valid_box
    assert by_id["8"].boxes == [] and by_id["8"].no_valid_box and not by_id["8"].has_box
    assert by_id["9"].no_valid_box and not by_id["10"].no_valid_box and by_id["10"].boxes == []
    assert (by_id["11"].width, by_id["11"].height) == (100, 50)
    assert all(r.image == str(good) for r in records)
    assert report.files[0].n_items == 12 and report.n_selected == 12 and report.n_kept == 7
    locations = {e.location for e in report.examples if e.reason == "malformed_json"}
    assert locations == {f"{data}:6", f"{data}:7"}
    summary = report.summary()
    assert all(reason in summary for reason in report.counts) and "7 records kept of 12 selected" in summary
    as_dict = json.loads(json.dumps(report.as_dict()))
    assert as_dict["counts"] == dict(report.counts) and as_dict["n_kept"] == 7
    assert set(REASONS) >= set(report.counts)
    # Without the image check the truncated PNG (intact header) is kept: the check is opt-in.
    records, report = load_records(data)
    assert "2" in {r.id for r in records} and "unreadable_image" not in report.counts


def test_decode_check_catches_truncated_jpeg(tmp_path):
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(jpeg, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    data = write_jsonl(tmp_path / "d.jsonl", [row(0, "cut.jpg", width=64, height=64)])
    assert load_records(data, check_images="verify")[1].n_kept == 1  # PIL's verify() does not see it
    records, report = load_records(data, check_images="decode")
    assert records == [] and report.counts == {"unreadable_image": 1}
    with pytest.raises(ValueError):
        load_records(data, check_images="thorough")


def test_malformed_json_list_file_does_not_crash(tmp_path):
    bad = tmp_path / "bench.json"
    bad.write_text('[{"a": 1},\n {"b": ]', encoding="utf-8")
    records, report = load_records(bad)
    assert records == [] and report.counts == {"malformed_json": 1}
    assert report.examples[0].location == f"{bad}:2"


def test_missing_data_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "absent.jsonl")


def test_report_keeps_bounded_examples_but_exact_counts(tmp_path):
    data = write_jsonl(tmp_path / "m.jsonl", [row(i, "missing.png") for i in range(30)])
    records, report = load_records(data, max_examples=3)
    assert records == [] and report.counts["missing_image"] == 30 and len(report.examples) == 3
