"""benchmarks/compare_methods.py runs end to end on the tiny model (mechanics only)."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_methods.py"


def test_compare_methods_smoke(tmp_path):
    pytest.importorskip("PIL")
    from glimpseprune.data.scenes import generate_benchmark

    generate_benchmark(tmp_path / "data", 0, 0, 2, seed=1)
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data" / "test.jsonl"), "--methods", "random,fastv", "--budgets",
                 "0.111,0.6", "--batch-size", "2", "--max-new-tokens", "2", "--out", str(out), "--device", "cpu",
                 "--title", "SMOKE", "--equal-placement", ""]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert rows[("none", "unbounded")]["layer_averaged_retention"] == 1.0
    assert rows[("random", "0.111")]["layer_averaged_retention"] == pytest.approx(0.109, abs=0.01)
    assert "unreachable" in rows[("fastv", "0.111")]["skipped"]  # K=2 of 4 layers: floor 0.5
    assert rows[("fastv", "0.6")]["layer_averaged_retention"] == pytest.approx(0.6, abs=0.01)
    assert rows[("fastv", "0.6")]["prefill_flops"] < rows[("none", "unbounded")]["prefill_flops"]
    # the methods' own scoring: counted separately and added into the total (FastV: one attention row per sample)
    for key in ("scoring_flops", "prefill_flops_total"):
        assert all(key in r for r in result["rows"] if "skipped" not in r)
    fastv, random_, none = rows[("fastv", "0.6")], rows[("random", "0.111")], rows[("none", "unbounded")]
    assert fastv["scoring_flops"] > 0
    assert fastv["prefill_flops_total"] == pytest.approx(fastv["prefill_flops"] + fastv["scoring_flops"])
    assert random_["scoring_flops"] == none["scoring_flops"] == 0
    assert random_["prefill_flops_total"] == random_["prefill_flops"]
    table = (out / "compare.md").read_text()
    assert "SMOKE" in table and "scoring GFLOPs" in table and "prefill GFLOPs total" in table


def test_compare_methods_resize_anchor(tmp_path):
    """Qwen resize anchor: per image the ViT makes ≈ budget × the unpruned tokens (within one 28-px row/column)."""
    pytest.importorskip("PIL")
    from glimpseprune.data.scenes import generate_benchmark

    generate_benchmark(tmp_path / "data", 0, 0, 2, seed=1)
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data" / "test.jsonl"), "--methods", "resize", "--budgets", "0.111,0.5",
                 "--no-glimpse", "--max-new-tokens", "2", "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    full = rows[("none", "unbounded")]
    for budget in ("0.111", "0.5"):
        row = rows[("resize", budget)]
        assert row["n"] == 2 and len(row["resize"]) == 2
        for sample in row["resize"]:
            rows_, cols = sample["grid"]
            assert sample["tokens"] == rows_ * cols  # the processor made what smart_resize predicted
            assert sample["tokens_full"] == full["visual_tokens_in"]
            assert abs(sample["tokens"] - sample["target"]) <= max(rows_, cols)  # one 28-px row / column
            assert sample["target"] == pytest.approx(float(budget) * sample["tokens_full"])
        actual = sum(s["tokens"] for s in row["resize"]) / sum(s["tokens_full"] for s in row["resize"])
        assert row["layer_averaged_retention"] == pytest.approx(actual, abs=0.05)
        assert row["visual_tokens_kept"] < full["visual_tokens_in"]
        assert 0 < row["vit_flops"] < full["vit_flops"]  # the ViT runs at the reduced size
        assert row["scoring_flops"] == 0 and row["prefill_flops_total"] == row["prefill_flops"]
    assert rows[("resize", "0.111")]["visual_tokens_kept"] < rows[("resize", "0.5")]["visual_tokens_kept"]


def test_glimpse_kept_caps_place_glimpseprune_by_its_kept_ratio(tmp_path):
    """--glimpse-kept-caps: GlimpsePrune capped after layer K (the paper's placement); both retentions reported."""
    from glimpseprune.data.scenes import generate_benchmark

    generate_benchmark(tmp_path / "data", 0, 0, 4, seed=2, layout="dense")
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "out"
    data = str(tmp_path / "data" / "test.jsonl")
    assert main(["--data", data, "--methods", "random", "--budgets", "0.111", "--glimpse-kept-caps", "0.02",
                 "--batch-size", "4", "--max-new-tokens", "2", "--free-form", "--out", str(out),
                 "--device", "cpu", "--equal-placement", "random"]) == 0
    rows = {(r["method"], r["budget"]): r for r in json.loads((out / "compare.json").read_text())["rows"]}
    capped, free = rows[("glimpse", "kept<=0.02")], rows[("glimpse", "unbounded")]
    layers = capped["cut_layers"]
    assert layers == free["cut_layers"] and len(layers) == 1
    assert capped["kept_ratio"] <= 0.02 + 1e-9 and capped["visual_tokens_kept"] <= 5  # floor(0.02 * 256) = 5
    # The first K layers still see every token, so the layer-averaged retention stays above K / L.
    assert capped["layer_averaged_retention"] >= layers[0] / 6 > rows[("random", "0.111")]["layer_averaged_retention"]
    assert "kept<=0.02" in (out / "compare.md").read_text()
    # per-record scores, paired against GlimpsePrune (unbounded) in the table
    result = json.loads((out / "compare.json").read_text())
    assert len(result["record_ids"]) == 4 and all(len(r["scores"]) == 4 for r in rows.values())
    from glimpseprune.eval.stats import paired_exact_test

    t = paired_exact_test(free["scores"], rows[("random", "0.111")]["scores"])
    random_line = next(line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| random |"))
    assert random_line.endswith(f"| {t['a_only']} / {t['b_only']} (p={t['p_value']:.2g}) |")
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit, match="kept-caps"):
            main(["--data", data, "--methods", "random", "--budgets", "0.5", "--glimpse-kept-caps", bad,
                  "--out", str(out), "--device", "cpu"])


def test_resize_anchor_refuses_llava():
    import types

    settings = runpy.run_path(str(SCRIPT))["qwen_resize_settings"]
    gp = types.SimpleNamespace(model=types.SimpleNamespace(config=types.SimpleNamespace(model_type="llava")))
    with pytest.raises(ValueError, match="Qwen-VL families.*downsample"):
        settings(gp)


def test_choose_pixel_limit_picks_the_closest_count():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    choose = runpy.run_path(str(SCRIPT))["choose_pixel_limit"]
    rule = {"factor": 28, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280, "smart_resize": smart_resize}
    c = choose(560, 840, 0.25, rule)  # unpruned: 20 x 30 = 600 tokens, target 150
    assert c["tokens_full"] == 600 and c["target"] == 150
    h, w = smart_resize(560, 840, 28, c["min_pixels"], c["max_pixels"])
    assert c["tokens"] == (h // 28) * (w // 28) == c["grid"][0] * c["grid"][1]
    assert abs(c["tokens"] - 150) <= max(c["grid"])
    assert c["ratio"] == c["tokens"] / 600

    def count(m):  # tokens at pixel limit m·28²
        h, w = smart_resize(560, 840, 28, min(56 * 56, m * 784), m * 784)
        return (h // 28) * (w // 28)

    assert all(abs(count(m) - 150) >= abs(c["tokens"] - 150) for m in range(1, 601))  # no limit gets closer


def test_compare_methods_equal_placement(tmp_path):
    """Baselines' selection at GlimpsePrune's K with its per-record kept counts; random@glimpse is the control."""
    pytest.importorskip("PIL")
    from glimpseprune.data.scenes import generate_benchmark

    generate_benchmark(tmp_path / "data", 0, 0, 3, seed=1)
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data" / "test.jsonl"), "--methods", "random", "--budgets", "0.6",
                 "--no-full", "--glimpse-kept-caps", "0.05", "--batch-size", "2", "--max-new-tokens", "2",
                 "--equal-placement", "random,fastv,divprune,cdpruner,vscan", "--out", str(out),
                 "--device", "cpu"]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    for budget in ("unbounded", "kept<=0.05"):
        glimpse = rows[("glimpse", budget)]
        K = glimpse["cut_layers"][0]
        for name in ("random", "fastv", "divprune", "cdpruner"):
            row = rows[(f"{name}@glimpse", budget)]
            assert row["counts_match"] and row["kept_counts"] == glimpse["kept_counts"], name
            assert row["cut_layers"] == [K] and row["placed_at"] == K
            assert row["layer_averaged_retention"] == pytest.approx(glimpse["layer_averaged_retention"])
            assert len(row["scores"]) == 3
        assert "no single-cut placement" in rows[("vscan@glimpse", budget)]["skipped"]
    assert max(rows[("glimpse", "kept<=0.05")]["kept_counts"]) <= int(0.05 * 256)
    table = (out / "compare.md").read_text()
    assert "| random@glimpse | unbounded | 3 |" in table
