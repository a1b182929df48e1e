"""Comments and docs cite only files inside this repository, and only sections (and table rows) that exist.

A citation is ``<file>.md §N`` (optionally more ``§M`` on the same line, optionally ``row R`` / ``rows R and S``);
``issue N §M`` cites a section of one of the project's issues and is not checked.
The file must exist: as a path from the repository root (``docs/method.md``), or as a bare name that exactly one
markdown file of the repository has. The section must be a numbered heading of that file (``## 15.`` /
``### 15.1``); a cited row must be a row of a table in that section. In Python files every ``§`` must follow a
file name on its line: a bare ``§7`` or a ``landscape §7`` names no file of the repository.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED_CODE = ("src", "tests", "benchmarks")
SKIPPED_PARTS = {".venv", "__pycache__", ".git", "node_modules"}

FILE = re.compile(r"([\w./-]*\w\.md)`?")
ISSUE = re.compile(r"\bissue #?\d+", re.IGNORECASE)  # the project's own tracker: its sections are not checked
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:,?\s+rows?\s+(\d+)(?:\s+(?:and|to)\s+(\d+))?)?")
HEADING = re.compile(r"^(#{1,6})\s+(\d+(?:\.\d+)*)\.?\s")


def _files(suffixes: tuple[str, ...], roots) -> list[Path]:
    out = []
    for root in roots:
        base = ROOT / root
        paths = [base] if base.is_file() else base.rglob("*")
        for path in paths:
            if path.suffix in suffixes and path.is_file() and not SKIPPED_PARTS & set(path.parts) \
                    and not any(p.endswith(".egg-info") for p in path.parts):
                out.append(path)
    return sorted(out)


@lru_cache(maxsize=None)
def _markdown_by_name() -> dict[str, list[Path]]:
    names: dict[str, list[Path]] = {}
    for path in _files((".md",), ["."]):
        names.setdefault(path.name, []).append(path)
    return names


def resolve(name: str) -> Path | None:
    path = (ROOT / name).resolve()
    if path.is_file() and ROOT in path.parents:
        return path
    if "/" not in name:
        found = _markdown_by_name().get(name, [])
        if len(found) == 1:
            return found[0]
    return None


@lru_cache(maxsize=None)
def sections(path: Path) -> dict[str, set[int]]:
    """{section number: table row numbers in that section (first cell an integer)}."""
    out: dict[str, set[int]] = {}
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        m = HEADING.match(line)
        if m:
            level = len(m.group(1))
            stack = [(lvl, num) for lvl, num in stack if lvl < level] + [(level, m.group(2))]
            out.setdefault(m.group(2), set())
            continue
        if line.lstrip().startswith("#"):
            stack = [(lvl, num) for lvl, num in stack if lvl < len(line) - len(line.lstrip("#"))]
            continue
        row = re.match(r"^\|\s*(\d+)\s*\|", line)
        if row:
            for _, num in stack:  # a row belongs to its section and to every enclosing one
                out[num].add(int(row.group(1)))
    return out


def check_line(line: str, own: Path | None = None) -> list[str]:
    """Problems with the citations on one line. ``own``: the markdown file the line is in (bare § cite it)."""
    problems = []
    files = [(m.start(), m.group(1)) for m in FILE.finditer(line)]
    files += [(m.start(), None) for m in ISSUE.finditer(line)]
    files.sort(key=lambda item: item[0])
    for m in SECTION.finditer(line):
        before = [name for start, name in files if start < m.start()]
        if before and before[-1] is None:  # "issue 17 §3"
            continue
        if before:
            name, target = before[-1], resolve(before[-1])
            if target is None:
                problems.append(f"cites {name!r}, which is not a file of this repository")
                continue
        elif own is not None:
            name, target = own.name, own
        else:
            problems.append(f"§{m.group(1)} does not say which file it cites")
            continue
        found = sections(target)
        number = m.group(1)
        if number not in found:
            problems.append(f"{name} has no section §{number}")
            continue
        rows = [int(r) for r in m.group(2, 3) if r]
        if len(rows) == 2 and " to " in m.group(0):
            rows = list(range(rows[0], rows[1] + 1))
        missing = [r for r in rows if r not in found[number]]
        if missing:
            problems.append(f"{name} §{number} has no table row {missing}")
    return problems


def test_code_cites_only_existing_files_and_sections():
    problems = []
    for path in _files((".py",), SCANNED_CODE):
        if path == Path(__file__).resolve():  # its own examples below are wrong on purpose
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "§" in line:
                problems += [f"{path.relative_to(ROOT)}:{i}: {p}" for p in check_line(line)]
    assert not problems, "bad citations:\n" + "\n".join(problems)


def test_markdown_cites_only_existing_files_and_sections():
    paths = _files((".md",), ["docs", "README.md", "src"])
    problems = []
    for path in paths:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "§" not in line:
                continue
            if path == ROOT / "docs" / "method.md":
                found = check_line(line, own=path)  # its bare § are its own sections
            elif FILE.search(line):
                # elsewhere only explicit file citations are checked (bare § there may be prose)
                first = FILE.search(line).start()
                found = check_line(line[first:])
            else:
                found = []
            problems += [f"{path.relative_to(ROOT)}:{i}: {p}" for p in found]
    assert not problems, "bad citations:\n" + "\n".join(problems)


def test_method_doc_is_the_cited_one():
    """The comments cite docs/method.md; it exists and has the sections the code relies on."""
    found = sections(ROOT / "docs" / "method.md")
    for number in ("1", "3.2", "3.4", "4", "6.3", "7", "8", "9", "11.3", "11.5", "15.1", "15.4", "16.3", "17.3", "18"):
        assert number in found, number
    assert {15, 16} <= found["18"]


def test_the_checker_catches_what_it_should():
    assert check_line("see method.md §7 and §8.1") == []
    assert check_line("(docs/method.md §14.1 and §18, rows 7 and 8)") == []
    assert check_line("(docs/method.md §18 row 15 ablation)") == []
    assert check_line("`docs/results.md` §4.2") == []
    assert check_line("(issue 17 §4, §5)") == []
    assert "not a file" in check_line("(landscape.md §7)")[0]
    assert "does not say which file" in check_line("(landscape §7, the trivial anchor)")[0]
    assert "does not say which file" in check_line("the §11.3 formula")[0]
    assert "no section §99" in check_line("docs/method.md §99")[0]
    assert "no section §3.9" in check_line("docs/method.md §3.2, §3.9")[0]
    assert "no table row [40]" in check_line("docs/method.md §18 row 40")[0]
    assert "no table row [20]" in check_line("docs/method.md §18, rows 17 to 20")[0]
