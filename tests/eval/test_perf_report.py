"""benchmarks/perf_report.py (the CPU report and the GPU run's Python part) end to end at smoke sizes on CPU."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perf_report.py"


def test_gpu_preset_smoke_on_cpu(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "gpu"
    assert main(["--preset", "gpu-7b", "--smoke", "--device", "cpu", "--tokens", "16", "--repeats", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    # unpruned + two keep ratios, prefill batches 1 and 2 (the smoke stand-ins for 1 / 8 / 32), SDPA only on CPU
    assert {(r["budget"], r["batch_size"]) for r in report["rows"]} == {
        (b, bs) for b in ("full", "r0.04", "r0.111") for bs in (1, 2)}
    assert any("flash_attention_2" in n for n in report["notes"])
    for s in report["summary"]:
        assert s["K_over_L"] == pytest.approx(0.75)  # the 4-layer smoke model, K = 3
        assert s["prefill_ratio"]["min"] <= s["prefill_ratio"]["median"] <= s["prefill_ratio"]["max"]
        assert s["prefill_ratio"]["n"] == 2 and s["peak_memory"]["pruned"] > 0
        assert s["kv_ratio_visual_only"] == pytest.approx(s["n_kept"] / s["n_visual"])
        assert s["kv_ratio_with_text"] > s["kv_ratio_visual_only"]  # the text stays in the cache
    if (out / "report.png").exists():
        assert (out / "report.png").stat().st_size > 1000
    assert "| sdpa | 16 |" in (out / "report.md").read_text()


def test_cpu_preset_smoke_replicates_decode(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "cpu"
    assert main(["--preset", "cpu-midsize", "--smoke", "--tokens", "16", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert {r["prefill_batch_size"] for r in rows} == {1} and {r["batch_size"] for r in rows} == {1, 3}
    assert all(r["decode_from"] == "replicated batch-1 prefill" for r in rows if r["batch_size"] == 3)
    e2e = [s["e2e_tokens_per_s"] for s in report["summary"] if s["batch_size"] == 3]
    assert e2e and all(x["none"] > 0 and x["pruned"] > 0 for x in e2e)
