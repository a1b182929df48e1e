"""The demo report tells the truth: warm-up excluded and medians over repeats with the batch size stated, accuracy
of the layout actually shown (not the default layout's figure), a caption on every image, and the batched
measurement of what pruning buys (KV length, prefill, decode)."""

import json
import re

from PIL import Image

from glimpseprune.cli import main


def test_dense_demo_report_is_honest(tmp_path, capsys):
    out = tmp_path / "dense"
    assert main(["demo", "--n", "2", "--layout", "dense", "--repeats", "2", "--max-new-tokens", "3", "--output",
                 str(out), "--threads", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "dense layout, 2 scenes" in printed and "kept" not in printed.split("exact match")[0]  # --quiet
    results = json.loads((out / "results.json").read_text())
    html = (out / "index.html").read_text()
    rows = results["rows"]
    assert results["layout"] == "dense" and results["timing"]["repeats"] == 2
    assert results["timing"]["batch_size"] == 1
    # accuracy in the header is this report's layout, counted from its rows; no default-layout figure is repeated
    n_ok = sum(r["correct_pruned"] for r in rows)
    assert f"2 glimpse-shapes test scenes of this report (dense layout)" in html
    assert f"GlimpsePrune {n_ok}/2" in html
    assert "93.4" not in html and "exact match on its test split" not in html
    assert "medians over 2 identical runs" in html and "batch size 1" in html
    for r in rows:
        lo, hi = r["prefill_ms_range_pruned"]
        assert lo <= r["prefill_ms_pruned"] <= hi  # a median of the repeats, not a single shot
        assert r["kv_length_pruned"] < r["kv_length_unpruned"]
    # what pruning buys, at a batch of all scenes
    b = results["batched"]
    assert b["batch_size"] == 2 and b["repeats"] == 2 and (b["prune_layer"], b["num_layers"]) == (3, 6)
    assert b["glimpse"]["kv_length_mean"] < b["none"]["kv_length_mean"]
    assert b["glimpse"]["new_tokens"] == b["none"]["new_tokens"] == 3  # same decode steps in both runs
    assert "batch size 2" in html and "KV length after prefill" in html and "decoder layer K = 3 of 6" in " ".join(
        html.split())
    # every image has a caption: in the HTML ...
    figures = re.findall(r"<figure>(.*?)</figure>", html, flags=re.S)
    assert len(figures) == 4 and html.count("<img") == 4
    assert all(re.search(r"<figcaption>\s*\S", f) for f in figures)
    assert "ground-truth boxes" in html and "outlined in yellow" in html
    # ... and in the PNG files (a caption strip below the 448 px scene)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and all(Image.open(p).height > 448 for p in pngs)
