"""docs/results.md §5 figures come from the result files the recipes wrote (benchmarks/results/)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (ROOT / "docs" / "results.md").read_text()
    start = text.index(title)
    return text[start:text.index("\n### ", start + 1)]


def test_k3_baseline_table_matches_compare_json():
    report = json.loads((ROOT / "benchmarks/results/compare_methods_mini_k3/compare.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in report["rows"]}
    doc = _section("### Baselines at K = 3")
    assert report["n_records"] == 500 and "500 test items" in doc
    gp = rows[("glimpse", "unbounded")]["scores"]

    def paired(scores):
        return sum(a > b for a, b in zip(gp, scores)), sum(b > a for a, b in zip(gp, scores))

    labels = {("none", "unbounded"): "| unpruned |", ("random@glimpse", "unbounded"): "random@glimpse |",
              ("divprune@glimpse", "unbounded"): "divprune@glimpse (",
              ("divprune", "0.528"): "DivPrune 0.528", ("vscan", "0.528"): "VScan 0.528 |"}
    lines = doc.splitlines()
    for key, label in labels.items():
        line = next(ln for ln in lines if ln.startswith("|") and label in ln)
        row = rows[key]
        assert f"| {100 * row['accuracy']:.1f} % |" in line, line
        assert f"| {row['layer_averaged_retention']:.3f} |" in line, line
        a_only, b_only = paired(row["scores"])
        assert f"| {a_only} / {b_only} (p = " in line, line
    gp_line = next(ln for ln in lines if ln.startswith("| **GlimpsePrune, K = 3**"))
    assert f"**{100 * rows[('glimpse', 'unbounded')]['accuracy']:.1f} %**" in gp_line
    best = max(rows[("divprune", "0.528")]["accuracy"], rows[("vscan", "0.528")]["accuracy"])
    assert f"+{100 * (rows[('glimpse', 'unbounded')]['accuracy'] - best):.1f} points over VScan" in doc
