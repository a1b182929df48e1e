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


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def test_ksweep_table_matches_ksweep_json():
    report = json.loads((ROOT / "benchmarks/results/ksweep_mini/ksweep.json").read_text())
    doc = _section("### The K trade-off recipe")
    lines = [ln for ln in doc.splitlines() if ln.startswith(("| box |", "| box-free |"))]
    assert len(lines) == len(report["rows"]["test"]) == 10
    for r in report["rows"]["test"]:
        mode = "box-free" if r["mode"] == "boxfree" else "box"
        line = next(ln for ln in lines if ln.startswith(f"| {mode} | {r['k']} |"))
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert cells[2] == _pct(r["em_pruned"]) and cells[3] == _pct(r["em_random"]), line
        assert cells[4].startswith(f"{100 * r['margin_over_random']:+.1f}".replace("-", "−")), line
        assert f"({r['discordant_vs_random'][0]} / {r['discordant_vs_random'][1]}, p = " in line
        assert cells[5] == _pct(r["kept_ratio_mean"]) and cells[6] == f"{r['kept_tokens_median']:g}"
        assert cells[7] == f"{r['layer_averaged_retention_mean']:.3f}" and cells[8] == f"{r['prefill_flops_ratio']:.3f}"
        q25, q75 = r["prefill_time_ratio_q25_q75"]
        assert cells[9] == f"{r['prefill_time_ratio']:.3f} [{q25:.3f}, {q75:.3f}]"
        assert r["em_unpruned"] == 0.934 and "unpruned 93.4 %" in doc
    assert report["choice"]["chosen_k"] is None  # "K = 3 stays" is the fallback the docs explain


def test_shipped_modules_table_matches_their_evaluation():
    r = json.loads((ROOT / "benchmarks/results/mini_shipped/eval_test500.json").read_text())
    doc = _section("### The choice: K = 3 stays")
    assert r["n"] == 500 and r["prune_layer"] == 3
    line = next(ln for ln in doc.splitlines() if ln.startswith("| exact match, all"))
    assert line == f"| exact match, all | {_pct(r['em_unpruned'])} | **{_pct(r['em_pruned'])}** | {_pct(r['em_random'])} |"
    for q, v in r["per_qtype"].items():
        line = next(ln for ln in doc.splitlines() if ln.startswith(f"| {q} (n = {v['n']})"))
        assert line.endswith(f"| {_pct(v['em_unpruned'])} | {_pct(v['em_pruned'])} | {_pct(v['em_random'])} |"), line
    p = r["paired_vs_random"]
    assert f"+{100 * r['margin_over_random']:.1f} points** (items only GlimpsePrune / only random got right: " \
           f"{p['a_only']} / {p['b_only']}" in doc
    assert f"FLOPs ratio **{r['prefill_flops_ratio']:.3f}**" in doc
    t = r["prefill_time"]["glimpse"]
    assert f"time ratio {t['median_batch_ratio']:.3f} [q25\n  {t['batch_ratio_q25_q75'][0]:.3f}, q75 " \
           f"{t['batch_ratio_q25_q75'][1]:.3f}]" in doc
    assert f"IoU {r['mask_iou_mean']:.3f}" in doc


def test_boxfree_variant_table_matches_the_val_reports():
    doc = _section("### Box-free (KL) mode")
    folder = ROOT / "benchmarks/results/boxfree_k3_val300"
    rows = {"exact80": "| exact budget, 80 steps, lr 2e-3", "exact240": "| **exact budget, 240 steps, lr 2e-3**",
            "exact240lr4": "| exact budget, 240 steps, lr 4e-3", "pen": "| penalty budget"}
    for name, label in rows.items():
        r = json.loads((folder / f"{name}.json").read_text())
        assert r["n"] == 300 and r["prune_layer"] == 3
        line = next(ln for ln in doc.splitlines() if ln.startswith(label))
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert cells[1] == _pct(r["em_pruned"]) and cells[2].startswith(_pct(r["kept_ratio_mean"]))
        assert cells[3] == f"{r['mask_iou_mean']:.3f}"
    box = json.loads((folder / "boxk3.json").read_text())
    assert f"box mode on the same items: {_pct(box['em_pruned'])} at {_pct(box['kept_ratio_mean'])} kept " \
           f"(unpruned {_pct(box['em_unpruned'])})" in " ".join(doc.split())
