"""The efficiency benchmark (method.md §15.5): baseline vs a pruning method at a fixed budget, in the same run.

For every batch size and for both the unpruned baseline (method ``none``) and the chosen method it reports:

* visual tokens at the LLM input and after the cut, both retentions (kept-after-K and layer-averaged, §15.1);
* analytic prefill FLOPs with and without the ViT and decode FLOPs, from :mod:`glimpseprune.eval.flops` (per sample;
  the numbers fed to the FLOPs model are in the output, so they can be re-derived);
* measured times: ViT + embedding (``prepare``), LLM prefill (glimpse, VIP and the post-cut layers included, ViT
  excluded: the reference's "prefill" convention), TTFT = both, each the median of ``repeats`` runs after
  ``warmup`` runs with device synchronisation; decode ms/step and generated tokens/s over a fixed number of steps
  (EOS is suppressed so both methods decode the same number of tokens);
* KV-cache bytes right after prefill (sum over cache layers of keys + values ``nbytes``: physical, so a batch of
  ragged pruned rows counts its left padding) and the mean valid KV length per row;
* peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` over the measured passes (reset first), also given
  minus the memory allocated before (weights etc.). On CPU there is no allocator statistic: we report the growth of
  the process's peak RSS (``ru_maxrss``) across the configuration. That is a *process-wide high-water mark*: it only
  grows, so a configuration that needs less than an earlier one shows 0. Treat CPU memory figures as indicative only.

Models: a checkpoint (``GlimpsePrune.from_pretrained``), the tiny offline model, or a full-size architecture with
random weights built from a config in :data:`ARCH_CONFIGS` (timing only, GPU only: its answers are noise).
"""

from __future__ import annotations

import csv
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .flops import VIPDims, baseline_prefill_flops, decode_flops, dims_from_hf_config, prefill_flops

# Full-size Qwen2.5-VL architectures (public config.json values), for random-weight timing runs.
ARCH_CONFIGS: dict[str, dict] = {
    "qwen2.5-vl-7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rope_theta=1000000.0,
                  mrope_section=[16, 24, 24], rms_norm_eps=1e-6),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2, window_size=112, in_chans=3),
        tie_word_embeddings=False,
    ),
    "qwen2.5-vl-3b": dict(
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rope_theta=1000000.0,
                  mrope_section=[16, 24, 24], rms_norm_eps=1e-6),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2, window_size=112, in_chans=3),
        tie_word_embeddings=True,
    ),
    # The tiny test sizes, through the same code path (usable on CPU).
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=None, max_position_embeddings=32768, rope_theta=10000.0,
                  mrope_section=[2, 3, 3], rms_norm_eps=1e-6),
        vision=dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                    fullatt_block_indexes=[1, 3], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                    window_size=112, in_chans=3),
        tie_word_embeddings=True,
    ),
}
CPU_ARCHS = ("tiny",)

MEMORY_NOTES = {
    "cuda": "torch.cuda.max_memory_allocated over the measured passes (reset before); *_increment = minus the "
            "memory allocated before the configuration (weights, inputs)",
    "cpu": "growth of the process peak RSS (ru_maxrss) across the configuration (warm-up included): a monotonic process-wide "
           "high-water mark, 0 when an earlier configuration already needed more; indicative only",
}


# ---- models --------------------------------------------------------------------------------------------------


QWEN_MAX_PIXELS = 16384 * 28 * 28


def build_config_only(name: str, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                      force: bool = False, seed: int = 0):
    """A :class:`GlimpsePrune` with a full-size architecture and random weights (+ fresh modules), for timing.

    The tokenizer/processor are the tiny offline ones (their ids fit any vocabulary). Big architectures refuse to
    build on CPU unless ``force``: 8 B random parameters on two CPU cores is not a benchmark.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ..model import GlimpsePrune
    from ..tiny import build_qwen_processor, build_qwen_tokenizer

    if name not in ARCH_CONFIGS:
        raise ValueError(f"unknown --config-only architecture {name!r}; known: {', '.join(ARCH_CONFIGS)}")
    device = torch.device(device)
    if device.type == "cpu" and name not in CPU_ARCHS and not force:
        raise RuntimeError(
            f"--config-only {name} builds a full-size model with random weights for GPU timing; it is not run on "
            f"CPU (use a CUDA device, or --config-only tiny to exercise the code path)"
        )
    spec = ARCH_CONFIGS[name]
    tok = build_qwen_tokenizer()
    ids = tok.convert_tokens_to_ids
    text = dict(spec["text"])
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta"), "mrope_section": text.pop("mrope_section")}
    text["vocab_size"] = text["vocab_size"] or len(tok)
    text.update(rope_parameters=rope, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(spec["vision"]),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec["tie_word_embeddings"],
    )
    cfg.text_config.eos_token_id = tok.eos_token_id
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(dtype)
            with device:
                model = Qwen2_5_VLForConditionalGeneration(cfg)
        finally:
            torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    # The released Qwen2.5-VL limit (16,384 merged tokens, method.md §11.2): the tiny processor's default (1,280
    # tokens) would silently shrink the 2.3k / 5k-token images the GPU benchmark is about.
    processor = build_qwen_processor(tok, patch_size=spec["vision"]["patch_size"], max_pixels=QWEN_MAX_PIXELS)
    return GlimpsePrune(model, processor).with_new_modules(seed=seed)


def build_tiny(device: str | torch.device = "cpu", seed: int = 0):
    from ..model import GlimpsePrune
    from ..tiny import tiny_qwen2_5_vl

    model, processor = tiny_qwen2_5_vl()
    return GlimpsePrune(model.to(device), processor).with_new_modules(seed=seed)


# ---- measurement ---------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    method: str = "glimpse"
    keep_ratio: float = 0.1  # fixed budget: threshold 0 + this cap = exactly floor(ratio * N) tokens kept
    threshold: float | None = 0.0
    new_tokens: int = 32
    warmup: int = 1
    repeats: int = 5
    image_size: tuple[int, int] = (896, 896)  # width, height
    question: str = "what colour is the shape in the image?"
    seed: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(cache) -> int:
    """Bytes of every cache layer's keys + values (physical tensors, padding included)."""
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()
    return total


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def bench_image(width: int, height: int, seed: int = 0):
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(seed)
    image = Image.fromarray((rng.rand(height, width, 3) * 80 + 150).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        s = max(8, min(width, height) // 6)
        x, y = rng.randint(0, max(1, width - s)), rng.randint(0, max(1, height - s))
        draw.ellipse([x, y, x + s, y + s], fill=tuple(int(c) for c in rng.randint(0, 255, 3)))
    return image


def model_dims(gp):
    """FLOPs dims of the wrapped model (LLM, ViT, VIP from the GlimpsePrune config when present)."""
    dims = dims_from_hf_config(gp.model.config)
    vip = None
    if gp.config is not None:
        c = gp.config
        vip = VIPDims(input_width=c.glimpse_row_width, vision_width=c.vision_hidden_size, size=c.vip_size,
                      cond_size=c.vip_cond_size, layers=c.vip_layers, heads=c.vip_heads)
    return dims, vip


def flops_for(gp, chosen, n_text: int, n_visual: int, n_kept: int, prune_layer: int | None, image_counts: list[int],
              decode_steps: int) -> dict:
    """Per-sample analytic FLOPs for the numbers measured (see :mod:`glimpseprune.eval.flops`)."""
    dims, vip = model_dims(gp)
    if chosen is None or prune_layer is None:
        pre = baseline_prefill_flops(dims.lm, n_text, n_visual, image_token_counts=image_counts, vision=dims.vision)
        context = n_text + n_visual
    else:
        uses_glimpse = bool(getattr(chosen, "uses_glimpse", False))
        pre = prefill_flops(dims.lm, n_text, n_visual, n_kept, prune_layer, glimpse=uses_glimpse,
                            vip=vip if uses_glimpse else None, image_token_counts=image_counts, vision=dims.vision)
        context = n_text + n_kept
    dec = decode_flops(dims.lm, context, decode_steps)
    return {
        "prefill_flops": pre["total"],
        "prefill_flops_without_vit": pre["total_without_vision"],
        "vit_flops": pre["vision"],
        "vip_flops": pre["vip"],
        "decode_flops": dec["total"],
        "decode_context": context,
        "decode_steps": decode_steps,
    }


def _budget_kwargs(method: str, config: BenchConfig) -> dict:
    if method == "none":
        return {}
    out = {"max_keep_ratio": config.keep_ratio}
    if config.threshold is not None:
        out["threshold"] = config.threshold
    return out


@torch.inference_mode()
def measure(gp, method: str, batch_size: int, config: BenchConfig) -> dict:
    """One (method, batch size) configuration: warm-up, ``repeats`` timed passes, FLOPs, KV and memory."""
    from ..engine import GenerationParams, decode, prefill
    from ..processing import build_inputs

    device = next(gp.model.parameters()).device
    image = bench_image(*config.image_size, seed=config.seed)
    inputs = build_inputs(gp.processor, [config.question] * batch_size, [[image]] * batch_size)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    kwargs = _budget_kwargs(method, config)
    chosen = gp.method(method, **kwargs)
    vit_layers = chosen.vit_layers if chosen is not None else None
    params = GenerationParams.resolve(gp.model.generation_config, max_new_tokens=config.new_tokens,
                                      min_new_tokens=config.new_tokens)

    def one_pass():
        _sync(device)
        t0 = time.perf_counter()
        batch = gp.adapter.prepare(inputs, vit_layers)
        _sync(device)
        vit_s = time.perf_counter() - t0
        pre = prefill(gp.adapter, batch, chosen)
        kv = cache_bytes(pre.cache)
        dec = decode(gp.adapter, pre, batch.input_ids, params)
        return vit_s, pre, kv, dec, batch

    rss_before = _peak_rss_bytes()  # before warm-up: the first pass is where a new high-water mark shows
    for _ in range(config.warmup):
        one_pass()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base_alloc = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    vit_times, prefill_times, decode_times, steps = [], [], [], 0
    for _ in range(max(1, config.repeats)):
        vit_s, pre, kv, dec, batch = one_pass()
        vit_times.append(vit_s)
        prefill_times.append(pre.seconds)
        decode_times.append(dec.seconds)
        steps = dec.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        memory = {"peak_memory_bytes": peak, "peak_memory_increment_bytes": peak - base_alloc, "memory_kind": "cuda"}
    else:
        memory = {"peak_memory_bytes": None, "peak_memory_increment_bytes": _peak_rss_bytes() - rss_before,
                  "memory_kind": "cpu"}

    state = pre.pruning
    sample = state.samples[0]
    n_visual, n_kept = sample.total, sample.kept
    n_text = int(batch.attention_mask[0].sum()) - n_visual
    image_counts = [im.total for im in sample.images]
    decode_steps = max(steps - 1, 0)  # the first token comes from the prefill logits
    decode_median = statistics.median(decode_times)
    row = {
        "method": method,
        "budget": "full" if method == "none" else f"r{config.keep_ratio:g}",
        "batch_size": batch_size,
        "n_text": n_text,
        "n_visual": n_visual,
        "n_kept": n_kept,
        "image_token_counts": image_counts,
        "prune_layer": state.prune_layer,
        "num_layers": state.num_layers,
        "kept_ratio": state.keep_ratio,
        "layer_averaged_retention": state.layer_averaged_retention,
        "kv_length": sum(state.kv_lengths) / len(state.kv_lengths),
        "kv_bytes": kv,
        "vit_ms": 1000 * statistics.median(vit_times),
        "prefill_ms": 1000 * statistics.median(prefill_times),
        "ttft_ms": 1000 * statistics.median(v + p for v, p in zip(vit_times, prefill_times)),
        "decode_ms_per_step": 1000 * decode_median / max(decode_steps, 1),
        "decode_tokens_per_s": batch_size * decode_steps / decode_median if decode_median > 0 else None,
        "new_tokens": steps,
        **memory,
        **flops_for(gp, chosen, n_text, n_visual, n_kept, state.prune_layer, image_counts, decode_steps),
    }
    return row


RATIO_KEYS = ("prefill_ms", "ttft_ms", "decode_ms_per_step", "kv_length", "kv_bytes", "peak_memory_bytes",
              "peak_memory_increment_bytes", "prefill_flops", "prefill_flops_without_vit", "decode_flops")


def ratios(baseline: dict, pruned: dict) -> dict:
    """pruned / baseline for the headline quantities (same run, same batch size)."""
    out = {}
    for key in RATIO_KEYS:
        a, b = baseline.get(key), pruned.get(key)
        out[key] = (b / a) if (a and b is not None) else None
    return out


def environment(gp) -> dict:
    param = next(gp.model.parameters())
    info = {
        "device": str(param.device),
        "device_name": torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else "cpu",
        "dtype": str(param.dtype).replace("torch.", ""),
        "attn_implementation": getattr(gp.model.config, "_attn_implementation", None),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


@dataclass
class BenchResult:
    rows: list[dict]
    comparisons: list[dict]
    environment: dict
    config: dict
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"config": self.config, "environment": self.environment, "memory_note": MEMORY_NOTES.get(
            "cuda" if self.environment["device"].startswith("cuda") else "cpu"), "rows": self.rows,
            "comparisons": self.comparisons, "files": self.files}


def run_benchmark(gp, config: BenchConfig, progress=None) -> BenchResult:
    """Baseline (``none``) then ``config.method`` at every batch size, in this process, on this device."""
    if config.method == "none":
        raise ValueError("the benchmark compares a pruning method against 'none'; choose a pruning method")
    if any(b < 1 for b in config.batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {config.batch_sizes}")
    rows, comparisons = [], []
    for bs in config.batch_sizes:
        pair = []
        for method in ("none", config.method):
            if progress:
                progress(f"batch {bs}: {method}")
            pair.append(measure(gp, method, bs, config))
        rows.extend(pair)
        comparisons.append({"batch_size": bs, "method": config.method, "budget": pair[1]["budget"],
                            "ratio": ratios(pair[0], pair[1])})
    cfg = asdict(config)
    cfg["image_size"] = list(config.image_size)
    return BenchResult(rows, comparisons, environment(gp), cfg)


# ---- output --------------------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    ("bs", "batch_size", "{}"), ("method", "method", "{}"), ("N vis", "n_visual", "{}"), ("kept", "n_kept", "{}"),
    ("kept%", "kept_ratio", "{:.1%}"), ("layer-avg", "layer_averaged_retention", "{:.1%}"),
    ("KV len", "kv_length", "{:.0f}"), ("KV MiB", "kv_bytes", "mib"), ("ViT ms", "vit_ms", "{:.1f}"),
    ("prefill ms", "prefill_ms", "{:.1f}"), ("TTFT ms", "ttft_ms", "{:.1f}"),
    ("dec ms/step", "decode_ms_per_step", "{:.2f}"), ("tok/s", "decode_tokens_per_s", "{:.1f}"),
    ("peak MiB", "peak_memory_increment_bytes", "mib"), ("prefill GF", "prefill_flops", "gf"),
    ("w/o ViT GF", "prefill_flops_without_vit", "gf"), ("decode GF", "decode_flops", "gf"),
]


def _cell(value, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "mib":
        return f"{value / 2**20:.2f}"
    if fmt == "gf":
        return f"{value / 1e9:.3f}"
    return fmt.format(value)


def format_table(result: BenchResult) -> str:
    header = [c[0] for c in TABLE_COLUMNS]
    body = [[_cell(r.get(key), fmt) for _, key, fmt in TABLE_COLUMNS] for r in result.rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    lines.append("")
    lines.append("pruned / baseline, same run:")
    for comp in result.comparisons:
        r = comp["ratio"]
        parts = [f"{k}={r[k]:.3f}" for k in ("prefill_ms", "ttft_ms", "decode_ms_per_step", "kv_bytes",
                                             "peak_memory_increment_bytes", "prefill_flops",
                                             "prefill_flops_without_vit", "decode_flops") if r.get(k) is not None]
        lines.append(f"  bs={comp['batch_size']} {comp['method']} {comp['budget']}: " + ", ".join(parts))
    env = result.environment
    lines.append(f"device={env['device_name']} dtype={env['dtype']} attn={env['attn_implementation']} "
                 f"threads={env['threads']}; peak memory: {MEMORY_NOTES['cuda' if env['device'].startswith('cuda') else 'cpu']}")
    return "\n".join(lines)


CSV_FIELDS = ["batch_size", "method", "budget", "n_text", "n_visual", "n_kept", "prune_layer", "num_layers",
              "kept_ratio", "layer_averaged_retention", "kv_length", "kv_bytes", "vit_ms", "prefill_ms", "ttft_ms",
              "decode_ms_per_step", "decode_tokens_per_s", "new_tokens", "peak_memory_bytes",
              "peak_memory_increment_bytes", "memory_kind", "prefill_flops", "prefill_flops_without_vit", "vit_flops",
              "vip_flops", "decode_flops", "decode_context", "decode_steps"]


def write_outputs(result: BenchResult, out_dir: str | Path, eval_summaries: list[str | Path] = (),
                  plots: bool = True) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": str(out / "bench.csv"), "json": str(out / "bench.json")}
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)
    if plots:
        files.update(draw_plots(result, out, eval_summaries))
    result.files = files
    Path(files["json"]).write_text(json.dumps(result.to_dict(), indent=2))
    return files


def draw_plots(result: BenchResult, out: Path, eval_summaries: list[str | Path] = ()) -> dict[str, str]:
    """Latency and memory vs batch size; accuracy vs layer-averaged retention if eval summaries are given.

    matplotlib is imported here only (the ``[eval]`` extra); without it, no plots and a warning.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'glimpseprune[eval]'): no plots drawn", file=sys.stderr)
        return {}
    files = {}
    methods = list(dict.fromkeys(r["method"] for r in result.rows))

    def series(method, key):
        rows = [r for r in result.rows if r["method"] == method]
        return [r["batch_size"] for r in rows], [r[key] for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, label) in zip(axes, [("prefill_ms", "LLM prefill (ms)"), ("ttft_ms", "TTFT incl. ViT (ms)"),
                                       ("decode_ms_per_step", "decode (ms / step)")]):
        for m in methods:
            x, y = series(m, key)
            ax.plot(x, y, marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"latency vs batch size ({result.environment['device_name']})")
    fig.tight_layout()
    files["latency_png"] = str(out / "latency_vs_batch.png")
    fig.savefig(files["latency_png"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (key, label) in zip(axes, [("kv_bytes", "KV cache (MiB)"),
                                       ("peak_memory_increment_bytes", "peak memory increment (MiB)")]):
        for m in methods:
            x, y = series(m, key)
            ax.plot(x, [None if v is None else v / 2**20 for v in y], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    files["memory_png"] = str(out / "memory_vs_batch.png")
    fig.savefig(files["memory_png"], dpi=100)
    plt.close(fig)

    if eval_summaries:
        files["accuracy_png"] = str(out / "accuracy_vs_retention.png")
        plot_accuracy_vs_retention(eval_summaries, files["accuracy_png"])
    return files


def accuracy_points(summaries: list[str | Path]) -> list[dict]:
    """(method, budget, layer-averaged retention, kept ratio, score) from runner summary JSON files."""
    points = []
    for path in summaries:
        summary = json.loads(Path(path).read_text())
        scorer = summary["scorers"][0]
        for g in summary["groups"]:
            avg = g["average"]
            points.append({"method": g["method"], "budget": g["budget"], "scorer": scorer,
                           "layer_averaged_retention": avg["layer_averaged_retention"],
                           "kept_ratio": avg["kept_ratio"], "score": avg["scores"][scorer]})
    return points


def plot_accuracy_vs_retention(summaries: list[str | Path], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = accuracy_points(summaries)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(p["method"] for p in points):
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["layer_averaged_retention"])
        ax.plot([100 * p["layer_averaged_retention"] for p in pts], [p["score"] for p in pts], marker="o",
                label=method)
    ax.set_xlabel("layer-averaged visual-token retention (%)")
    ax.set_ylabel(f"average {points[0]['scorer'] if points else 'score'}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
