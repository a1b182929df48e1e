"""Docs that stay true: the README's Python example runs as written on the mini model (and prints what its comments
say), and the README's figures are the ones in the result files the project wrote (read from those files, so a
re-trained or re-measured model that changes them fails here until the README follows)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MINI_COMPARISON = ROOT / "benchmarks/results/compare_methods_mini/compare.json"  # benchmarks/compare_methods.py
DEMO_RESULTS = ROOT / "benchmarks/results/demo/results.json"  # glimpseprune demo --output benchmarks/results/demo


def _readme() -> str:
    return " ".join(README.read_text().split())


def test_readme_python_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
        printed = capsys.readouterr().out
        for claimed in re.findall(r"^print\(.*#\s*(.+)$", block, flags=re.M):  # `print(...)  # what it prints`
            assert claimed.strip() in printed


def test_readme_mini_model_figures_match_the_comparison_results():
    results = json.loads(MINI_COMPARISON.read_text())
    rows = {(r["method"], r["budget"]): r for r in results["rows"]}
    unpruned, pruned = rows[("none", "unbounded")], rows[("glimpse", "unbounded")]
    text = _readme()
    m = re.search(r"On the first (\d+) test items \(`benchmarks/results/compare_methods_mini/compare.json`\) it scores "
                  r"\*\*([\d.]+) % exact match unpruned and ([\d.]+) % with GlimpsePrune keeping ([\d.]+) % of the "
                  r"(\d+) visual tokens\*\* \(([\d.]+) tokens on average", text)
    assert m, "the README's sentence with the mini model's figures"
    assert int(m.group(1)) == results["n_records"] == unpruned["n"] == pruned["n"]
    assert float(m.group(2)) == round(100 * unpruned["accuracy"], 1)
    assert float(m.group(3)) == round(100 * pruned["accuracy"], 1)
    assert float(m.group(4)) == round(100 * pruned["kept_ratio"], 1)
    assert float(m.group(5)) == unpruned["visual_tokens_in"]
    assert float(m.group(6)) == round(pruned["visual_tokens_kept"], 1)


def test_readme_parameter_count_is_the_shipped_models():
    from glimpseprune import assets

    model, _ = assets.default_model()
    n = sum(p.numel() for p in model.model.parameters())
    assert f"a {n / 1e6:.2f} M-parameter Qwen2.5-VL" in _readme()


def test_readme_demo_time_is_the_measured_one():
    results = json.loads(DEMO_RESULTS.read_text())
    text = _readme()
    m = re.search(r"The demo \(`glimpseprune demo`, (\d+) scenes\) took ([\d.]+) s on 2 shared CPU cores \(load "
                  r"average ([\d.]+)\)", text)
    assert m, "the README's sentence with the demo's measured time"
    assert int(m.group(1)) == len(results["rows"])
    assert float(m.group(2)) == round(results["seconds"])
    assert float(m.group(3)) == results["load_average"][0]
    assert "few seconds" not in text
