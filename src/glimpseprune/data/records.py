"""Visual-CoT-style records: reading, sampling and validation (docs/method.md §11.2 and §14.1).

Two item formats are understood, per JSON object:

* **Training records** (``viscot_dataset/*_cot_train.jsonl``, also written by :mod:`.scenes`)::

      {"question": "...", "answer": "...", "image": "2371234.jpg", "width": 500, "height": 333,
       "bboxs": [[120, 40, 310, 260]], "dataset": "gqa"}

  plus optional ``id`` (or ``question_id``) and ``short_answer``; any other key lands in ``Record.extra``.

* **Benchmark items** (``viscot_benchmark/benchmark/<name>.json``), recognised by their ``conversations`` key:
  ``image`` is ``[path, "path###[x1,y1,x2,y2]"]``; the question is turn 1 without the box request sentence and the
  ``<image>\\n`` marker, the answer is turn 4, the box is the ``###[...]`` part, the id is ``question_id``.

Files are JSONL (one object per line) or one JSON list; the first non-blank character decides.

**Spec syntax.** ``load_records`` takes one entry or a list of entries; each entry is a path with an optional
sampling suffix:

* ``data.jsonl`` or ``data.jsonl:all`` — every item;
* ``data.jsonl:first:100`` / ``data.jsonl:end:100`` — the first / last 100 items;
* ``data.jsonl:random:2000`` — 2,000 items drawn without replacement with ``seed``. The draw is
  ``numpy.random.default_rng(seed).permutation(n_items)[:2000]``, kept in that (shuffled) order: exactly what the
  reference's ``datasets.Dataset.shuffle(seed).select(range(2000))`` picks, so ``random:20000`` with seed 42 selects
  the reference's training rows. Each entry is drawn on its own with the same seed, so an entry's sample does not
  depend on the other entries; entries are concatenated in the order given ("mixing").

A count larger than the file takes the whole file (the report shows it). Sampling runs over the items that parse
as JSON objects, before validation, as in the reference: validation may then drop some of the selected items, so
``random:N`` can return fewer than N records. The report says how many and why.

**Validation.** Nothing is dropped or changed silently. Every skipped, changed or flagged record is counted in the
:class:`DataReport` under one of :data:`REASONS`. A record is skipped for the first failing check, in this order:
structure, question, answer, image file, image readability. Box problems never skip a record: bad boxes are
dropped, boxes partly outside the image are clamped, and a record left with no box is kept with ``boxes=[]``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "BOX_REQUEST",
    "REASONS",
    "DataReport",
    "FileReport",
    "Issue",
    "Record",
    "SourceSpec",
    "load_records",
    "parse_spec",
]

# Appended to every Visual-CoT benchmark question (turn 1); removed to get the plain query, as the reference does.
BOX_REQUEST = (
    "Please provide the bounding box coordinate of the region that can help you answer the question better."
)

# reason -> (what happened to the record, description). Counts are numbers of records, each reason at most once
# per record.
REASONS: dict[str, tuple[str, str]] = {
    "malformed_json": ("skipped", "not valid JSON or not a JSON object (counted over whole files, before sampling)"),
    "bad_record": ("skipped", "a required field is missing or has the wrong type"),
    "empty_question": ("skipped", "question is empty"),
    "empty_answer": ("skipped", "answer is empty"),
    "missing_image": ("skipped", "image file not found"),
    "unreadable_image": ("skipped", "image file cannot be opened/verified/decoded by PIL"),
    "bad_size": ("changed", "stored width/height invalid; the image's own size is used"),
    "malformed_box": ("changed", "box dropped: not 4 finite numbers, or x2 <= x1 or y2 <= y1"),
    "box_outside": ("changed", "box dropped: entirely outside the image"),
    "box_clamped": ("changed", "box partly outside the image, clamped to it"),
    "no_valid_box": ("flagged", "boxes given but none usable: kept with boxes=[] and no_valid_box=True"),
    "no_box": ("flagged", "record carries no box at all: kept with boxes=[]"),
}

SAMPLING_MODES = ("all", "first", "end", "random")
_CHECK_MODES = ("verify", "decode")


@dataclass
class Record:
    """One question about one image, with its evidence boxes in pixels of the original image."""

    question: str
    answer: str
    image: str  # resolved path of an existing file
    width: int | None
    height: int | None
    boxes: list[list[float]]  # [x1, y1, x2, y2] pixel boxes, inside the image
    dataset: str
    id: str
    short_answer: str | None = None
    no_valid_box: bool = False  # boxes were given but all were malformed or outside the image
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_box(self) -> bool:
        return bool(self.boxes)


@dataclass(frozen=True)
class Issue:
    """One counted event; ``location`` is ``file:line`` (JSONL) or ``file[index]`` (JSON list)."""

    reason: str
    location: str
    detail: str


@dataclass
class FileReport:
    path: str
    sampling: str  # "all", "first:100", "end:100" or "random:2000"
    n_items: int = 0  # JSON objects read from the file
    n_selected: int = 0  # after sampling
    n_kept: int = 0  # after validation


@dataclass
class DataReport:
    """What :func:`load_records` read, selected, kept, skipped and changed, and why.

    ``counts`` is exact; ``examples`` keeps the first ``max_examples`` issues of each reason (with locations) to
    bound memory on large files.
    """

    files: list[FileReport] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    examples: list[Issue] = field(default_factory=list)
    max_examples: int = 20

    def add(self, reason: str, location: str, detail: str) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown report reason {reason!r}")
        self.counts[reason] += 1
        if self.counts[reason] <= self.max_examples:
            self.examples.append(Issue(reason, location, detail))

    @property
    def n_kept(self) -> int:
        return sum(f.n_kept for f in self.files)

    @property
    def n_selected(self) -> int:
        return sum(f.n_selected for f in self.files)

    def summary(self) -> str:
        lines = [f"{self.n_kept} records kept of {self.n_selected} selected from {len(self.files)} file(s)"]
        for f in self.files:
            lines.append(
                f"  {f.path} [{f.sampling}]: {f.n_items} items, {f.n_selected} selected, {f.n_kept} kept"
            )
        for kind in ("skipped", "changed", "flagged"):
            reasons = [r for r, (k, _) in REASONS.items() if k == kind and self.counts[r]]
            if not reasons:
                continue
            lines.append(f"{kind}:")
            for reason in reasons:
                first = next(e for e in self.examples if e.reason == reason)
                lines.append(f"  {reason:<16} {self.counts[reason]:>7}  {REASONS[reason][1]}")
                lines.append(f"  {'':<16} {'':>7}  e.g. {first.location}: {first.detail}")
        if not any(self.counts.values()):
            lines.append("no records skipped, changed or flagged")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_kept": self.n_kept,
            "n_selected": self.n_selected,
            "files": [asdict(f) for f in self.files],
            "counts": {r: self.counts[r] for r in REASONS if self.counts[r]},
            "examples": [asdict(e) for e in self.examples],
        }


@dataclass(frozen=True)
class SourceSpec:
    path: Path
    mode: str  # one of SAMPLING_MODES
    n: int | None  # None for "all"

    @property
    def sampling(self) -> str:
        return self.mode if self.n is None else f"{self.mode}:{self.n}"


def parse_spec(entry: str | os.PathLike) -> SourceSpec:
    """Split ``path[:all | :first:N | :end:N | :random:N]`` (see the module docstring)."""
    text = os.fspath(entry)
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and parts[1] in SAMPLING_MODES[1:]:
        if not parts[2].isdigit() or int(parts[2]) <= 0:
            raise ValueError(f"sampling count must be a positive integer in {text!r}")
        return SourceSpec(Path(parts[0]), parts[1], int(parts[2]))
    if text.endswith(":all"):
        return SourceSpec(Path(text[: -len(":all")]), "all", None)
    return SourceSpec(Path(text), "all", None)


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _read_items(path: Path, report: DataReport) -> list[tuple[str, dict]]:
    """(location, object) for every JSON object of a JSONL or JSON-list file; the rest is counted."""
    text = path.read_text(encoding="utf-8")
    items: list[tuple[str, dict]] = []
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            report.add("malformed_json", f"{path}:{err.lineno}", f"whole file unreadable: {err.msg}")
            return items
        located = [(f"{path}[{i}]", value) for i, value in enumerate(values)]
    else:
        located = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():  # blank lines are not records
                continue
            try:
                located.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                report.add("malformed_json", f"{path}:{lineno}", f"{err.msg}: {line[:80]!r}")
    for location, value in located:
        if isinstance(value, dict):
            items.append((location, value))
        else:
            report.add("malformed_json", location, f"not a JSON object but {type(value).__name__}")
    return items


def _select(items: list, source: SourceSpec, seed: int) -> list:
    if source.mode == "all":
        return items
    if source.mode == "first":
        return items[: source.n]
    if source.mode == "end":
        return items[-source.n :]
    order = np.random.default_rng(seed).permutation(len(items))[: source.n]
    return [items[i] for i in order]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_present(obj: dict, *keys: str) -> Any:
    return next((obj[k] for k in keys if obj.get(k) is not None), None)


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _Skip("bad_record", f"{key!r} missing or not a string")
    return value


def _fields_training(obj: dict) -> dict[str, Any]:
    image = _text(obj, "image")
    known = {"question", "answer", "image", "width", "height", "bboxs", "dataset", "id", "question_id",
             "short_answer"}
    short_answer = obj.get("short_answer")
    return {
        "question": _text(obj, "question"),
        "answer": _text(obj, "answer"),
        "image": image,
        "boxes_raw": obj.get("bboxs"),
        "short_answer": short_answer if isinstance(short_answer, str) else None,
        "id": _first_present(obj, "id", "question_id"),
        "extra": {k: v for k, v in obj.items() if k not in known},
    }


def _fields_benchmark(obj: dict) -> dict[str, Any]:
    turns = obj["conversations"]
    if (not isinstance(turns, list) or len(turns) < 4
            or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:4])):
        raise _Skip("bad_record", "'conversations' must hold at least 4 turns with string 'value's")
    image = obj.get("image")
    if isinstance(image, str):
        image = [image]
    if not isinstance(image, list) or not image or not isinstance(image[0], str):
        raise _Skip("bad_record", "'image' must be [path, 'path###[x1,y1,x2,y2]']")
    boxes_raw = None
    tagged = [part for part in image[1:] if isinstance(part, str) and "###" in part]
    if tagged:
        box_text = tagged[0].split("###", 1)[1]
        try:
            boxes_raw = [json.loads(box_text)]
        except json.JSONDecodeError:
            boxes_raw = [box_text]  # reported as a malformed box
    question = turns[0]["value"].replace(BOX_REQUEST, "").replace("<image>\n", "").strip()
    return {
        "question": question,
        "answer": turns[3]["value"],
        "image": image[0],
        "boxes_raw": boxes_raw,
        "short_answer": None,
        "id": _first_present(obj, "question_id", "id"),
        "extra": {k: v for k, v in obj.items() if k not in ("conversations", "image", "dataset", "question_id")},
    }


def _resolve_image(image: str, dataset: str, root: Path | None, base_dir: Path) -> str | None:
    # Visual-CoT layout first, then the root itself, then the data file's folder. An absolute `image` makes every
    # join return itself, which covers the "absolute path" case.
    candidates = []
    if root is not None:
        if dataset:
            candidates.append(root / "cot" / dataset / image)
        candidates.append(root / image)
    candidates.append(base_dir / image)
    return next((str(c) for c in candidates if c.is_file()), None)


def _stored_size(obj: dict) -> tuple[tuple[int, int] | None, bool]:
    """((width, height) or None, whether a stored size was present but invalid)."""
    width, height = obj.get("width"), obj.get("height")
    if width is None and height is None:
        return None, False
    if all(_is_number(v) and v > 0 and float(v).is_integer() for v in (width, height)):
        return (int(width), int(height)), False
    return None, True


def _open_image(path: str, check: str | None) -> tuple[int, int]:
    """The image's size; with ``check`` also verify (container/CRC checks) or fully decode it."""
    try:
        with Image.open(path) as img:
            size = img.size
            if check == "verify":
                img.verify()
            elif check == "decode":
                img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error... all mean "unusable"
        raise _Skip("unreadable_image", f"{path}: {type(err).__name__}: {err}") from None
    return size


def _is_box(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value)


def _clean_boxes(raw: Any, width: int, height: int) -> tuple[list[list[float]], dict[str, str]]:
    """Valid boxes (clamped to the image) and ``{reason: detail}`` for what was dropped, clamped or missing."""
    if raw is None or raw == []:
        return [], {"no_box": "no 'bboxs' field" if raw is None else "'bboxs' is empty"}
    if _is_box(raw):  # a single flat box instead of a list of boxes
        raw = [raw]
    if not isinstance(raw, list):
        raw = [raw]
    boxes, malformed, outside, clamped = [], [], [], []
    for box in raw:
        if not _is_box(box) or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
            malformed.append(box)
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            outside.append(box)
            continue
        inside = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
        if inside != [x1, y1, x2, y2]:
            clamped.append(box)
        boxes.append(inside)
    notes = {}
    if malformed:
        notes["malformed_box"] = f"{len(malformed)} dropped, e.g. {malformed[0]!r}"
    if outside:
        notes["box_outside"] = f"{len(outside)} dropped for a {width}x{height} image, e.g. {outside[0]!r}"
    if clamped:
        notes["box_clamped"] = f"{len(clamped)} clamped to {width}x{height}, e.g. {clamped[0]!r}"
    if not boxes:
        notes["no_valid_box"] = f"none of {len(raw)} box(es) usable"
    return boxes, notes


def _build_record(
    obj: dict, location: str, base_dir: Path, root: Path | None, check: str | None, report: DataReport
) -> Record | None:
    try:
        fields = _fields_benchmark(obj) if "conversations" in obj else _fields_training(obj)
        if not fields["question"].strip():
            raise _Skip("empty_question", "question is blank")
        if not fields["answer"].strip():
            raise _Skip("empty_answer", "answer is blank")
        dataset = obj.get("dataset") if isinstance(obj.get("dataset"), str) else ""
        path = _resolve_image(fields["image"], dataset, root, base_dir)
        if path is None:
            raise _Skip("missing_image", f"{fields['image']!r} (dataset {dataset!r})")
        size, bad_size = _stored_size(obj)
        if check is not None or size is None:
            actual = _open_image(path, check)
            size = size or actual
    except _Skip as skip:
        report.add(skip.reason, location, skip.detail)
        return None
    if bad_size:
        report.add("bad_size", location, f"width={obj.get('width')!r} height={obj.get('height')!r}")
    boxes, notes = _clean_boxes(fields["boxes_raw"], *size)
    for reason, detail in notes.items():
        report.add(reason, location, detail)
    record_id = fields["id"]
    return Record(
        question=fields["question"],
        answer=fields["answer"],
        image=path,
        width=size[0],
        height=size[1],
        boxes=boxes,
        dataset=dataset,
        id=str(record_id) if record_id is not None else location,
        short_answer=fields["short_answer"],
        no_valid_box="no_valid_box" in notes,
        extra=fields["extra"],
    )


def load_records(
    spec: str | os.PathLike | list[str | os.PathLike],
    root: str | os.PathLike | None = None,
    seed: int = 42,
    check_images: bool | str = False,
    max_examples: int = 20,
) -> tuple[list[Record], DataReport]:
    """Read, sample and validate records from one or several files (syntax in the module docstring).

    ``root`` is the image root (``<root>/cot/<dataset>/<image>``, then ``<root>/<image>``); images are also looked
    up relative to each data file's folder, and absolute image paths are used as they are.

    ``check_images``: ``False`` only checks that the file exists (and reads its header when the record stores no
    size); ``True`` or ``"verify"`` also runs PIL's ``verify()`` (catches truncated PNGs, not truncated JPEGs);
    ``"decode"`` fully decodes every image (catches both, slower).

    A missing data file raises ``FileNotFoundError``; everything wrong *inside* a file is counted in the report.
    """
    if check_images is True:
        check_images = "verify"
    if check_images not in (False, *_CHECK_MODES):
        raise ValueError(f"check_images must be False, True, 'verify' or 'decode', got {check_images!r}")
    check = check_images or None
    entries = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    root_path = Path(root) if root is not None else None
    report = DataReport(max_examples=max_examples)
    records: list[Record] = []
    for entry in entries:
        source = parse_spec(entry)
        file_report = FileReport(path=str(source.path), sampling=source.sampling)
        report.files.append(file_report)
        items = _read_items(source.path, report)
        selected = _select(items, source, seed)
        file_report.n_items, file_report.n_selected = len(items), len(selected)
        for location, obj in selected:
            record = _build_record(obj, location, source.path.parent, root_path, check, report)
            if record is not None:
                records.append(record)
                file_report.n_kept += 1
    return records, report
