"""The efficiency benchmark on the tiny model: outputs, FLOPs consistency, KV accounting, config-only models."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
import torch

from glimpseprune.eval.bench import (
    BenchConfig,
    accuracy_points,
    build_config_only,
    cache_bytes,
    format_table,
    model_dims,
    run_benchmark,
    write_outputs,
)
from glimpseprune.eval.cli import main as cli_main
from glimpseprune.eval.flops import baseline_prefill_flops, decode_flops, prefill_flops

try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:  # pragma: no cover
    HAVE_MPL = False


def test_bench_cli_tiny_writes_outputs(tmp_path, capsys):
    out = tmp_path / "bench"
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"scorers": ["exact_match"], "groups": [
        {"method": "glimpse", "budget": "r0.1", "average": {"layer_averaged_retention": 0.7, "kept_ratio": 0.1,
                                                           "scores": {"exact_match": 0.5}}},
        {"method": "none", "budget": "default", "average": {"layer_averaged_retention": 1.0, "kept_ratio": 1.0,
                                                           "scores": {"exact_match": 0.6}}}]}))
    assert cli_main(["bench", "--tiny", "--batch-sizes", "1,2", "--new-tokens", "3", "--warmup", "1", "--repeats",
                     "2", "--image-size", "224x224", "--keep-ratio", "0.25", "--output", str(out),
                     "--eval-summary", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "pruned / baseline, same run" in printed and "prefill ms" in printed

    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(int(r["batch_size"]), r["method"]) for r in rows] == [(1, "none"), (1, "glimpse"), (2, "none"),
                                                                   (2, "glimpse")]
    data = json.loads((out / "bench.json").read_text())
    assert len(data["rows"]) == 4 and len(data["comparisons"]) == 2
    assert data["environment"]["device"] == "cpu" and "ru_maxrss" in data["memory_note"]
    for r in data["rows"]:
        assert r["n_visual"] == 64 and r["new_tokens"] == 3 and r["decode_steps"] == 2
        assert r["prefill_ms"] > 0 and r["decode_ms_per_step"] > 0 and r["decode_tokens_per_s"] > 0
        if r["method"] == "glimpse":
            assert r["n_kept"] == 16 and r["kept_ratio"] == 0.25  # floor(0.25 * 64), threshold 0
            K, L = r["prune_layer"], r["num_layers"]
            assert r["layer_averaged_retention"] == pytest.approx((K + (L - K) * 0.25) / L)
        else:
            assert r["n_kept"] == 64 and r["layer_averaged_retention"] == 1.0 and r["prune_layer"] is None
    g1, n1 = data["rows"][1], data["rows"][0]
    assert g1["kv_length"] == n1["kv_length"] - 48  # every layer's cache lost the 48 dropped tokens
    assert data["comparisons"][0]["ratio"]["kv_bytes"] == pytest.approx(g1["kv_bytes"] / n1["kv_bytes"])
    if HAVE_MPL:
        for name in ("latency_vs_batch.png", "memory_vs_batch.png", "accuracy_vs_retention.png"):
            assert (out / name).stat().st_size > 1000
    assert [p["score"] for p in accuracy_points([summary])] == [0.5, 0.6]


def test_bench_flops_equal_flops_module(gp):
    result = run_benchmark(gp, BenchConfig(batch_sizes=[1], new_tokens=2, warmup=0, repeats=1,
                                           image_size=(112, 112), keep_ratio=0.5))
    dims, vip = model_dims(gp)
    base, pruned = result.rows
    n_text, n_vis = base["n_text"], base["n_visual"]
    expected = baseline_prefill_flops(dims.lm, n_text, n_vis, vision=dims.vision)
    assert base["prefill_flops"] == expected["total"]
    assert base["prefill_flops_without_vit"] == expected["total_without_vision"]
    assert base["decode_flops"] == decode_flops(dims.lm, n_text + n_vis, 1)["total"]

    K = gp.config.prune_layer
    expected = prefill_flops(dims.lm, n_text, n_vis, pruned["n_kept"], K, glimpse=True, vip=vip, vision=dims.vision)
    assert pruned["n_kept"] == 8 and pruned["prune_layer"] == K
    assert pruned["prefill_flops"] == expected["total"]
    assert pruned["prefill_flops_without_vit"] == expected["total_without_vision"]
    assert pruned["vip_flops"] == expected["vip"] > 0
    assert pruned["decode_flops"] == decode_flops(dims.lm, n_text + 8, 1)["total"]
    assert base["vit_flops"] == pruned["vit_flops"] > 0
    # dims match the tiny model
    assert dims.lm.layers == 4 and dims.lm.hidden == 64 and vip.input_width == gp.config.num_heads
    table = format_table(result)
    assert "glimpse" in table and "w/o ViT GF" in table


def test_cache_bytes_counts_keys_and_values():
    class Layer:
        def __init__(self, n):
            self.keys = torch.zeros(2, 2, n, 4, dtype=torch.bfloat16)
            self.values = torch.zeros(2, 2, n, 4, dtype=torch.bfloat16)

    class Cache:
        layers = [Layer(3), Layer(5)]

    assert cache_bytes(Cache()) == 2 * (2 * 2 * 3 * 4 * 2) + 2 * (2 * 2 * 5 * 4 * 2)


def test_config_only_refuses_big_on_cpu_and_builds_tiny(tmp_path):
    with pytest.raises(RuntimeError, match="GPU timing"):
        build_config_only("qwen2.5-vl-7b", device="cpu")
    with pytest.raises(ValueError, match="unknown"):
        build_config_only("nope", device="cpu")
    gp = build_config_only("tiny", device="cpu", dtype=torch.float32)
    result = run_benchmark(gp, BenchConfig(batch_sizes=[1], new_tokens=2, warmup=0, repeats=1,
                                           image_size=(112, 112)))
    files = write_outputs(result, tmp_path, plots=False)
    assert Path(files["json"]).is_file() and "latency_png" not in files
    assert result.rows[1]["n_kept"] == 1  # floor(0.1 * 16)
    # The GPU benchmark's 5k-token images must reach the model unshrunk (released limit: 16,384 merged tokens).
    from glimpseprune.processing import build_inputs

    big = build_inputs(gp.processor, ["q"], [[Image.new("RGB", (2016, 1960))]])
    assert int(big["image_grid_thw"].prod()) // 4 == 72 * 70


def test_full_size_dims_are_qwen2_5_vl_7b():
    # The 7B architecture table is only built on a GPU; its FLOPs dims can be checked without weights.
    from transformers import Qwen2_5_VLConfig

    from glimpseprune.eval.bench import ARCH_CONFIGS
    from glimpseprune.eval.flops import dims_from_hf_config

    spec = ARCH_CONFIGS["qwen2.5-vl-7b"]
    text = {k: v for k, v in spec["text"].items() if k not in ("rope_theta", "mrope_section")}
    dims = dims_from_hf_config(Qwen2_5_VLConfig(text_config=text, vision_config=spec["vision"]))
    assert (dims.lm.hidden, dims.lm.layers, dims.lm.heads, dims.lm.kv_heads, dims.lm.ffn, dims.lm.vocab) == (
        3584, 28, 28, 4, 18944, 152064)
    assert dims.lm.layers * 2 * dims.lm.kv_heads * dims.lm.head_dim * 2 == 56 * 1024  # 56 KiB KV per token, bf16
    assert (dims.vision.depth, dims.vision.hidden, dims.vision.mlp) == (32, 1280, 3420)
