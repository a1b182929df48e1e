"""The efficiency benchmark on the tiny model: outputs, FLOPs consistency, KV accounting, config-only models."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
import torch

from glimpseprune.eval.bench import (
    ARCH_CONFIGS,
    BenchConfig,
    Variant,
    accuracy_points,
    arch_config,
    peak_memory,
    plot_title,
    replicate_prefill,
    build_config_only,
    cache_bytes,
    measure_interleaved,
    format_table,
    model_dims,
    run_benchmark,
    write_outputs,
)
from glimpseprune.eval.cli import main as cli_main
from glimpseprune.flops import baseline_prefill_flops, decode_flops, prefill_flops

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
                     "--eval-summary", str(summary), "--memory", "off"]) == 0
    printed = capsys.readouterr().out
    assert "pruned / baseline, same run" in printed and "prefill ms" in printed

    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(int(r["batch_size"]), r["method"]) for r in rows] == [(1, "none"), (1, "glimpse"), (2, "none"),
                                                                   (2, "glimpse")]
    data = json.loads((out / "bench.json").read_text())
    assert len(data["rows"]) == 4 and len(data["comparisons"]) == 2
    assert data["environment"]["device"] == "cpu"
    for r in data["rows"]:
        assert r["n_visual"] == 64 and r["new_tokens"] == 3 and r["decode_steps"] == 2
        assert r["prefill_ms"] > 0 and r["decode_ms_per_step"] > 0 and r["decode_tokens_per_s"] > 0
        for key in ("prefill_ms", "ttft_ms", "decode_ms_per_step", "vit_ms"):
            sp = r["spread"][key]
            # median of 2 repeats (ViT: 3, the default --vit-repeats), with its range
            assert sp["min"] <= sp["median"] <= sp["max"] and sp["n"] == (3 if key == "vit_ms" else 2)
        assert r["peak_memory_bytes"] is None and r["memory_kind"] == "not measured"  # --memory off
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
    with pytest.raises(RuntimeError, match="GPU timing"):
        build_config_only("llava-hf/llava-1.5-13b-hf", device="cpu")
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
    from glimpseprune.flops import dims_from_hf_config

    label, spec = arch_config("Qwen/Qwen2.5-VL-7B-Instruct")  # hub ids resolve to the published sizes
    assert label == "qwen2.5-vl-7b" and spec == ARCH_CONFIGS["qwen2.5-vl-7b"]
    dims = dims_from_hf_config(Qwen2_5_VLConfig(text_config=spec["text_config"], vision_config=spec["vision_config"]))
    assert (dims.lm.hidden, dims.lm.layers, dims.lm.heads, dims.lm.kv_heads, dims.lm.ffn, dims.lm.vocab) == (
        3584, 28, 28, 4, 18944, 152064)
    assert dims.lm.layers * 2 * dims.lm.kv_heads * dims.lm.head_dim * 2 == 56 * 1024  # 56 KiB KV per token, bf16
    assert (dims.vision.depth, dims.vision.hidden, dims.vision.mlp) == (32, 1280, 3420)


@pytest.mark.parametrize("name, family, layers, hidden, heads, kv_heads, vision_width", [
    ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", 36, 2048, 16, 2, 1280),
    ("qwen2.5-vl-32b", "qwen2_5_vl", 64, 5120, 40, 8, 1280),
    ("Qwen/Qwen2.5-VL-72B-Instruct", "qwen2_5_vl", 80, 8192, 64, 8, 1280),
    ("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", 28, 1536, 12, 2, 1280),
    ("qwen2-vl-7b", "qwen2_vl", 28, 3584, 28, 4, 1280),
    ("llava-hf/llava-1.5-7b-hf", "llava", 32, 4096, 32, 32, 1024),
    ("llava-1.5-13b", "llava", 40, 5120, 40, 40, 1024),
    ("qwen2.5-vl-0.5b-cpu", "qwen2_5_vl", 24, 896, 14, 2, 1280),
    ("qwen2.5-vl-1.5b-cpu", "qwen2_5_vl", 28, 1536, 12, 2, 1280),
])
def test_published_names_give_their_sizes(name, family, layers, hidden, heads, kv_heads, vision_width):
    """Every published name builds a transformers config (no weights) with the released LLM and ViT sizes."""
    from transformers import AutoConfig

    from glimpseprune.flops import dims_from_hf_config

    _, spec = arch_config(name)
    assert spec["model_type"] == family
    rest = {k: v for k, v in spec.items() if k not in ("model_type",)}
    dims = dims_from_hf_config(AutoConfig.for_model(family, **rest))
    assert (dims.lm.layers, dims.lm.hidden, dims.lm.heads, dims.lm.kv_heads, dims.vision.hidden) == (
        layers, hidden, heads, kv_heads, vision_width)
    if family != "llava":  # mRoPE bands must cover half the head width ([16, 24, 24] at 128-wide heads)
        mrope = spec["text_config"]["rope_parameters"]["mrope_section"]
        assert sum(mrope) == dims.lm.head_dim // 2
        if dims.lm.head_dim == 128:
            assert mrope == [16, 24, 24]


def test_config_json_and_size_overrides(tmp_path):
    label, spec = arch_config("qwen2.5-vl-0.5b-cpu", ["text.num_hidden_layers=2", "vision.depth=4",
                                                      "vision_config.fullatt_block_indexes=[1,3]"])
    assert spec["text_config"]["num_hidden_layers"] == 2 and spec["vision_config"]["fullatt_block_indexes"] == [1, 3]
    assert label.startswith("qwen2.5-vl-0.5b-cpu[") and "text.num_hidden_layers=2" in label
    assert ARCH_CONFIGS["qwen2.5-vl-0.5b-cpu"]["text_config"]["num_hidden_layers"] == 24  # the table is untouched
    with pytest.raises(ValueError, match="KEY=VALUE"):
        arch_config("tiny", ["text.hidden_size"])
    with pytest.raises(ValueError, match="not a section"):
        arch_config("tiny", ["nothing.hidden_size=3"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(ARCH_CONFIGS["tiny"]))
    gp = build_config_only(str(path), device="cpu", dtype=torch.float32, overrides=["text.num_hidden_layers=3"])
    assert gp.model.config.text_config.num_hidden_layers == 3 and gp.config.num_layers == 3
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        arch_config(str(tmp_path / "bad.json"))
    (tmp_path / "t5.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="model_type"):
        arch_config(str(tmp_path / "t5.json"))


def test_bench_cli_config_only_bad_name_is_one_line(capsys):
    with pytest.raises(SystemExit, match="unknown --config-only architecture 'gpt-9'"):
        cli_main(["bench", "--config-only", "gpt-9", "--device", "cpu"])


def test_llava_and_qwen2_vl_config_only_run_shrunk(tmp_path):
    """The LLaVA-1.5 and Qwen2-VL random-weight paths, shrunk by overrides so they run on CPU in a second."""
    small_text = ["text.hidden_size=64", "text.intermediate_size=128", "text.num_hidden_layers=4",
                  "text.num_attention_heads=4", "text.num_key_value_heads=2", "text.vocab_size=null"]
    llava = build_config_only("llava-1.5-7b", device="cpu", dtype=torch.float32, force=True, overrides=small_text + [
        "vision.hidden_size=64", "vision.intermediate_size=128", "vision.num_hidden_layers=4",
        "vision.num_attention_heads=4", "vision.image_size=112"])
    qwen2 = build_config_only("qwen2-vl-2b", device="cpu", dtype=torch.float32, force=True, overrides=small_text + [
        "vision.embed_dim=64", "vision.num_heads=4", "vision.depth=4",
        "text.rope_parameters={\"rope_type\": \"default\", \"rope_theta\": 10000.0, \"mrope_section\": [2, 3, 3]}"])
    for gp, n_visual in ((llava, 64), (qwen2, 16)):
        result = run_benchmark(gp, BenchConfig(batch_sizes=[1], new_tokens=2, warmup=0, repeats=1, vit_repeats=1,
                                               image_size=(112, 112), keep_ratio=0.25, memory="off"))
        base, pruned = result.rows
        assert base["n_visual"] == n_visual and pruned["n_kept"] == n_visual // 4


def test_kv_split_vit_reuse_and_load(gp, monkeypatch):
    """KV bytes split into text and visual (the visual part shrinks exactly to the kept ratio, the total does not),
    the ViT runs only vit_repeats (+1 warm-up) times per method, and the load average is recorded."""
    calls = []
    prepare = gp.adapter.prepare
    monkeypatch.setattr(gp.adapter, "prepare", lambda *a, **k: calls.append(1) or prepare(*a, **k))
    result = run_benchmark(gp, BenchConfig(batch_sizes=[1], new_tokens=2, warmup=1, repeats=3, vit_repeats=2,
                                           image_size=(112, 112), keep_ratio=0.5, memory="off"))
    assert len(calls) == 1 + 2  # warm-up + vit_repeats, shared by both methods: not once per prefill/decode repeat
    base, pruned = result.rows
    for r in (base, pruned):
        assert r["kv_bytes_visual"] + r["kv_bytes_text"] == pytest.approx(r["kv_bytes"])  # batch 1: no padding
        assert r["spread"]["prefill_ms"]["n"] == 3 and r["spread"]["vit_ms"]["n"] == 2
        assert r["spread"]["prefill_cpu_ms"]["n"] == 3 and r["prefill_cpu_ms"] > 0 and r["decode_cpu_ms_per_step"] > 0
        assert len(r["loadavg_before"]) == 3
    ratio = result.comparisons[0]["ratio"]
    assert ratio["kv_bytes_visual"] == pytest.approx(pruned["n_kept"] / base["n_visual"]) == pytest.approx(0.5)
    assert ratio["kv_bytes"] > 0.5  # the text stays in the cache
    assert pruned["vip_ms"] > 0 and base["vip_ms"] == 0.0 and 0 < pruned["vip_share_measured"] < 1
    assert pruned["vip_flops_share"] == pytest.approx(pruned["vip_flops"] / pruned["prefill_flops_without_vit"])
    assert gp.vip._forward_hooks == {} and gp.vip._forward_pre_hooks == {}  # the timing hooks are gone
    title = plot_title(result, "latency")
    assert "visual tokens" in title and "keep 0.5" in title and "cpu" in title and "min-max" in title


def test_replicated_prefill_decodes_like_a_real_batch(gp):
    """Decode on a batch-1 prefill replicated b times gives the same tokens as the prefill of b equal prompts."""
    from glimpseprune.engine import GenerationParams, decode, prefill
    from glimpseprune.eval.bench import _inputs

    cfg = BenchConfig(image_size=(112, 112))
    params = GenerationParams.resolve(gp.model.generation_config, max_new_tokens=4, min_new_tokens=4)
    method = gp.method("glimpse", max_keep_ratio=0.5, threshold=0.0)
    with torch.inference_mode():
        one = gp.adapter.prepare(_inputs(gp, 1, cfg), method.vit_layers)
        three = gp.adapter.prepare(_inputs(gp, 3, cfg), method.vit_layers)
        replicated = replicate_prefill(prefill(gp.adapter, one, method), 3)
        real = prefill(gp.adapter, three, method)
        a = decode(gp.adapter, replicated, one.input_ids.repeat(3, 1), params).tokens
        b = decode(gp.adapter, real, three.input_ids, params).tokens
    assert a.shape == (3, 4) and torch.equal(a, b)


def test_peak_memory_in_a_fresh_subprocess(gp):
    """CPU peak memory comes from a subprocess per configuration that rebuilds the model; it holds at least the
    configuration's own KV cache."""
    cfg = BenchConfig(batch_sizes=[2], new_tokens=3, image_size=(224, 224), keep_ratio=0.25)
    mem = peak_memory({"kind": "tiny", "seed": 0}, gp, "none", 2, cfg)
    assert "clear_refs" in mem["memory_kind"] and "fresh process" in mem["memory_kind"]
    row = run_benchmark(gp, BenchConfig(batch_sizes=[2], new_tokens=3, warmup=0, repeats=1, vit_repeats=1,
                                        image_size=(224, 224), memory="off")).rows[0]
    assert mem["peak_memory_with_vit_bytes"] >= mem["peak_memory_bytes"] >= row["kv_bytes"] > 0
    no_source = peak_memory(None, gp, "none", 1, cfg)
    assert no_source["peak_memory_bytes"] is None and "not measured" in no_source["memory_kind"]


def test_three_variants_interleaved_with_replicated_decode_and_inline_memory(gp):
    """The report's building block: none and two keep ratios on one batch-1 prefill each repeat, decoding at batch 1
    and on the cache replicated to 3 rows; peak memory read inline once per variant."""
    variants = [Variant("none"), Variant("glimpse", 0.25), Variant("glimpse", 0.5)]
    rows = measure_interleaved(gp, variants, 1, BenchConfig(new_tokens=3, warmup=0, repeats=2, vit_repeats=1,
                                                            image_size=(224, 224)),
                               decode_batches=[1, 3], inline_memory=True)
    assert [(r["budget"], r["batch_size"]) for r in rows] == [
        ("full", 1), ("full", 3), ("r0.25", 1), ("r0.25", 3), ("r0.5", 1), ("r0.5", 3)]
    assert [r["n_kept"] for r in rows[::2]] == [64, 16, 32]
    for one, three in zip(rows[::2], rows[1::2]):
        assert three["kv_bytes"] == 3 * one["kv_bytes"] and three["prefill_ms"] == one["prefill_ms"]
        assert three["decode_from"] == "replicated batch-1 prefill" and one["decode_from"] == "own prefill"
        assert one["peak_memory_bytes"] > 0 and "peak_memory_bytes" not in three
        assert one["spread"]["decode_ms_per_step"]["n"] == three["spread"]["decode_ms_per_step"]["n"] == 2


def test_every_shipped_architecture_builds_its_config_through_its_adapter():
    """The published architectures are shipped config files; each family's adapter turns one into a transformers
    config and an offline processor (no weights), with the sizes of the file."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    from glimpseprune.adapters import adapter_class
    from glimpseprune.eval.bench import ARCH_DIR
    from glimpseprune.shipped_configs import shipped_configs

    assert sorted(ARCH_CONFIGS) == sorted(p.stem for p in ARCH_DIR.glob("*.json")) and len(ARCH_CONFIGS) == 12
    assert "architectures/qwen2.5-vl-7b.json" in shipped_configs()
    for name, spec in ARCH_CONFIGS.items():
        hf, processor = adapter_class(spec["model_type"]).config_only(spec, max_pixels=16384 * 28 * 28)
        assert hf.model_type == spec["model_type"], name
        assert hf.text_config.num_hidden_layers == spec["text_config"]["num_hidden_layers"], name
        assert type(hf) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, name
        assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) < hf.text_config.vocab_size, name


CONFIG_ONLY_BUILDERS = {"llava": "tiny_llava", "qwen2_5_vl": "tiny_qwen2_5_vl", "qwen2_vl": "tiny_qwen2_vl",
                        "qwen3_vl": "tiny_qwen3_vl", "qwen3_5": "tiny_qwen3_5"}


def test_the_families_offering_config_only_builds_are_the_tested_ones():
    """A family's adapter offers config-only builds on purpose (subclasses inherit it): each one is built below."""
    from glimpseprune.eval.bench import config_only_families

    assert sorted(config_only_families()) == sorted(CONFIG_ONLY_BUILDERS), (
        "a family offering FamilyAdapter.config_only needs a build test: add its tiny builder to CONFIG_ONLY_BUILDERS, "
        "or set offers_config_only = False in its adapter")


@pytest.mark.parametrize("family", sorted(CONFIG_ONLY_BUILDERS))
def test_config_only_builds_any_family_that_offers_it(tmp_path, family):
    """A transformers config.json of the family reaches a working random-weight model through its adapter."""
    from glimpseprune.testing import tiny

    model, _ = getattr(tiny, CONFIG_ONLY_BUILDERS[family])()
    full = model.config.to_dict()
    spec = {k: full[k] for k in ("model_type", "text_config", "vision_config")}
    if family == "llava":
        spec.update(vision_feature_select_strategy="default", vision_feature_layer=-2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(spec))
    gp = build_config_only(str(path), device="cpu", dtype=torch.float32)
    assert gp.model.config.model_type == family
    text, out = gp.answer([Image.new("RGB", (112, 112), (200, 30, 30))], "what colour?", max_new_tokens=2)
    assert isinstance(text, str) and len(out.sequences[0]) > 0
