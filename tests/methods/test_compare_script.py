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
                 "--title", "SMOKE"]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert rows[("none", "unbounded")]["layer_averaged_retention"] == 1.0
    assert rows[("random", "0.111")]["layer_averaged_retention"] == pytest.approx(0.109, abs=0.01)
    assert "unreachable" in rows[("fastv", "0.111")]["skipped"]  # K=2 of 4 layers: floor 0.5
    assert rows[("fastv", "0.6")]["layer_averaged_retention"] == pytest.approx(0.6, abs=0.01)
    assert rows[("fastv", "0.6")]["prefill_flops"] < rows[("none", "unbounded")]["prefill_flops"]
    assert "SMOKE" in (out / "compare.md").read_text()
