"""The efficiency benchmark (docs/method.md §15.5): baseline vs a pruning method at a fixed budget, in the same run.

For every batch size and for both the unpruned baseline (method ``none``) and the chosen method it reports:

* visual tokens at the LLM input and after the cut, both retentions (kept-after-K and layer-averaged, docs/method.md §15.1);
* analytic prefill FLOPs with and without the ViT, the VIP's FLOPs and decode FLOPs, from
  :mod:`glimpseprune.flops` (per sample; the numbers fed to the FLOPs model are in the output);
* measured times, each as the median with min and max over ``repeats`` passes after ``warmup`` passes, with device
  synchronisation. The two methods' passes are **interleaved** (none, pruned, pruned, none, ...) so that a change in
  machine load hits both alike and the ratios stay fair. Times: ViT + embedding (``vit_ms``: ``vit_repeats``
  passes; the ViT features are then computed once and reused by every prefill/decode repeat), LLM prefill
  (glimpse, VIP and the post-cut layers included, ViT excluded: the reference's "prefill" convention), TTFT = both,
  the VIP alone inside the prefill (``vip_ms``, from forward hooks on the VIP module, next to its FLOP share),
  decode ms/step and generated tokens/s over a fixed number of steps (EOS is suppressed so both methods decode the
  same number of tokens);
* KV-cache bytes right after prefill: physical (``kv_bytes``: keys + values ``nbytes`` of every cache layer, so a
  batch of ragged pruned rows counts its left padding), and split into the visual tokens' and the text tokens'
  share (``kv_bytes_visual`` / ``kv_bytes_text``): the text stays in the cache, so the with-text ratio is above the
  kept ratio, the visual-only one equals it;
* peak memory per configuration, measured cleanly (``memory="auto"``): on CUDA the allocator's peak
  (``torch.cuda.reset_peak_memory_stats`` before one pass, ``max_memory_allocated`` after); on CPU one
  **subprocess per configuration**, which loads the model, builds its inputs, returns freed heap to the system
  (``malloc_trim``), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and reads ``VmHWM`` after one
  pass. Two figures: ``peak_memory_bytes`` (LLM prefill + decode on ready ViT features) and
  ``peak_memory_with_vit_bytes`` (the whole pass), both above the memory held before the pass (weights, inputs);
* the machine's load average (``/proc/loadavg``) before and after every configuration.

Models: a checkpoint (``GlimpsePrune.from_pretrained``), the tiny offline model, or an architecture with random
weights (``--config-only``): any published name in :data:`ARCH_CONFIGS` (Qwen2.5-VL 3B/7B/32B/72B, Qwen2-VL
2B/7B/72B, LLaVA-1.5 7B/13B, the CPU settings ``qwen2.5-vl-0.5b-cpu`` / ``qwen2.5-vl-1.5b-cpu``, ``tiny``), a
transformers ``config.json`` of a family whose adapter offers a config-only build, and ``KEY=VALUE`` size overrides (``text.num_hidden_layers=4``).
Random-weight answers are noise: they are for timing only.
"""

from __future__ import annotations

import copy
import csv
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..flops import VIPDims, baseline_prefill_flops, decode_flops, dims_from_hf_config, prefill_flops

# ---- architectures ---------------------------------------------------------------------------------------------
# Public config.json values of the released checkpoints (LLM and vision tower sizes only; token ids come from the
# offline tokenizer, whose ids fit any of these vocabularies), one shipped file per architecture in
# configs/architectures/ (``glimpseprune configs`` lists them). mRoPE splits half the head width into (t, h, w) bands:
# [16, 24, 24] at the released 128-wide heads, the same 1:1.5:1.5 proportions at other widths ([8, 12, 12] at the
# 0.5B LLM's 64-wide heads). The CPU settings are the Qwen2.5 0.5B / 1.5B LLMs with a 4-block ViT of the released
# width (1280), so the VIP is exactly the published-size one (F=256, C=512, 4 layers conditioned on 4 ViT blocks)
# while the ViT stays affordable on a CPU; their VIP conditions come from all four blocks (windowed blocks 0-2,
# full-attention block 3). ``tiny`` is the tiny test size, through the same code path.
ARCH_DIR = Path(__file__).resolve().parents[1] / "configs" / "architectures"
ARCH_CONFIGS: dict[str, dict] = {p.stem: json.loads(p.read_text()) for p in sorted(ARCH_DIR.glob("*.json"))}
CPU_GLIMPSE_OVERRIDES = {"qwen2.5-vl-0.5b-cpu": {"vip_visual_layers": [3, 2, 1, 0]},
                         "qwen2.5-vl-1.5b-cpu": {"vip_visual_layers": [3, 2, 1, 0]}}
CPU_ARCHS = ("tiny", "qwen2.5-vl-0.5b-cpu", "qwen2.5-vl-1.5b-cpu")
CPU_MAX_LLM_PARAMETERS = 2.5e9  # larger random-weight LLMs are refused on CPU unless forced
MAX_PIXELS = 16384 * 28 * 28  # the released Qwen2.5-VL limit: 16,384 merged tokens (docs/method.md §11.2)


def llm_parameters(text: dict) -> int:
    """Parameters of the decoder stack and embeddings (norms and biases ignored) from a text config dict."""
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    head_dim = text.get("head_dim") or hidden // heads
    kv = text.get("num_key_value_heads") or heads
    layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * text["intermediate_size"]
    return text["num_hidden_layers"] * layer + (text.get("vocab_size") or 0) * hidden


def canonical_arch_name(name: str) -> str:
    """``Qwen/Qwen2.5-VL-7B-Instruct`` or ``llava-hf/llava-1.5-7b-hf`` -> the :data:`ARCH_CONFIGS` key."""
    key = name.strip().lower().rsplit("/", 1)[-1]
    for suffix in ("-instruct", "-hf"):
        key = key.removesuffix(suffix)
    return key


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_only_families() -> list[str]:
    """The model types whose adapter can build a random-weight model offline (``FamilyAdapter.config_only``)."""
    from ..adapters import adapter_class, supported_model_types

    return [t for t in supported_model_types() if adapter_class(t).offers_config_only]


def arch_config(name: str, overrides: list[str] | dict | None = None) -> tuple[str, dict]:
    """(architecture label, config dict in transformers' layout) for a published name or a config.json path, with
    ``KEY=VALUE`` overrides on dotted paths (``text_config.num_hidden_layers=4``; ``text.`` / ``vision.`` are
    accepted for ``text_config.`` / ``vision_config.``). Values are JSON (numbers, lists) or plain strings."""
    path = Path(name)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"--config-only {name}: no such config file")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--config-only {name}: not valid JSON ({e.msg} at line {e.lineno})") from None
        label = path.stem if path.name != "config.json" else path.parent.name or "config"
    else:
        key = canonical_arch_name(name)
        if key not in ARCH_CONFIGS:
            raise ValueError(f"unknown --config-only architecture {name!r}; known: {', '.join(ARCH_CONFIGS)} "
                             f"(or a transformers config.json path)")
        cfg, label = copy.deepcopy(ARCH_CONFIGS[key]), key
    buildable = config_only_families()
    if not isinstance(cfg, dict) or cfg.get("model_type") not in buildable:
        raise ValueError(f"--config-only {name}: model_type must be one of {', '.join(buildable)}, "
                         f"got {cfg.get('model_type') if isinstance(cfg, dict) else type(cfg).__name__!r}")
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides or []]
    applied = []
    for dotted, value in items:
        parts = dotted.split(".")
        parts[0] = {"text": "text_config", "vision": "vision_config"}.get(parts[0], parts[0])
        node = cfg
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"size override {dotted!r}: {part!r} is not a section of the config")
            node = node[part]
        node[parts[-1]] = value
        applied.append(f"{dotted}={json.dumps(value)}")
    return label + (f"[{','.join(applied)}]" if applied else ""), cfg


def _split_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"size override {text!r} must look like KEY=VALUE (e.g. text.num_hidden_layers=4)")
    return key.strip(), _parse_value(value.strip())


def build_config_only(name: str, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                      force: bool = False, seed: int = 0, overrides: list[str] | dict | None = None,
                      attn_implementation: str | None = None):
    """A :class:`GlimpsePrune` with a published (or given) architecture and random weights (+ fresh modules).

    The family's adapter builds the config and its offline tokenizer/processor (``FamilyAdapter.config_only``: the
    tiny offline ones, whose ids fit any vocabulary); dynamic-grid processors allow the released 16,384-token
    limit, so 2.3k / 5k-token images reach the model unshrunk. Architectures other than the CPU settings refuse to
    build on CPU unless ``force``: billions of random parameters on a few CPU cores are not a benchmark.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    from ..model import GlimpsePrune

    label, cfg = arch_config(name, overrides)
    device = torch.device(device)
    params = llm_parameters(cfg["text_config"])
    if device.type == "cpu" and params > CPU_MAX_LLM_PARAMETERS and not force:
        raise RuntimeError(
            f"--config-only {name} builds a {params / 1e9:.1f} B-parameter LLM with random weights for GPU timing; "
            f"it is not run on CPU (use a CUDA device, a CPU setting ({', '.join(CPU_ARCHS)}), size overrides, or "
            f"--force-cpu)"
        )
    from ..adapters import adapter_class

    hf, processor = adapter_class(cfg["model_type"]).config_only(cfg, max_pixels=MAX_PIXELS)
    tok = processor.tokenizer
    model_cls = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(hf)]
    hf.text_config.eos_token_id = tok.eos_token_id
    if attn_implementation:
        hf._attn_implementation = attn_implementation
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(dtype)
            with device:
                model = model_cls(hf)
        finally:
            torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    gp = GlimpsePrune(model, processor)
    return gp.with_new_modules(seed=seed, **CPU_GLIMPSE_OVERRIDES.get(canonical_arch_name(name), {}))


def build_tiny(device: str | torch.device = "cpu", seed: int = 0):
    from ..model import GlimpsePrune
    from ..offline_models import tiny_qwen2_5_vl  # the explicit "tiny" benchmark model

    model, processor = tiny_qwen2_5_vl()
    return GlimpsePrune(model.to(device), processor).with_new_modules(seed=seed)


def load_source(source: dict):
    """A model from a JSON-serialisable description (what a memory subprocess rebuilds):
    ``{"kind": "config_only", "name", "overrides", "device", "dtype", "seed", "attn_implementation"}``,
    ``{"kind": "tiny", "device", "seed"}`` or ``{"kind": "cli", "args": {...}}`` (the model options of ``bench``)."""
    kind = source["kind"]
    if kind == "config_only":
        return build_config_only(source["name"], device=source.get("device", "cpu"),
                                 dtype=getattr(torch, source.get("dtype", "float32")), force=True,
                                 seed=source.get("seed", 0), overrides=source.get("overrides"),
                                 attn_implementation=source.get("attn_implementation"))
    if kind == "tiny":
        return build_tiny(source.get("device", "cpu"), seed=source.get("seed", 0))
    if kind == "cli":
        import argparse

        from .cli import load_model

        return load_model(argparse.Namespace(**source["args"]))[0]
    raise ValueError(f"unknown model source kind {kind!r}")


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
    vit_repeats: int = 3  # ViT timings; its features are computed once and reused by all prefill/decode repeats
    image_size: tuple[int, int] = (896, 896)  # width, height
    question: str = "what colour is the shape in the image?"
    seed: int = 0
    memory: str = "auto"  # auto (CUDA: allocator peak; CPU: a subprocess per configuration), inline, subprocess, off
    # Decode-only batch sizes: their decode runs on the cache of the batch-1 prefill replicated b times (same KV
    # length and content as a batch of b equal prompts, without paying b prefills: for CPU runs).
    replicated_decode_batch_sizes: list[int] = field(default_factory=list)


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


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:  # not Linux
        return None


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
    """Per-sample analytic FLOPs for the numbers measured (see :mod:`glimpseprune.flops`)."""
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
        "vip_flops_share": pre["vip"] / pre["total_without_vision"] if pre["total_without_vision"] else 0.0,
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


def spread(values: list[float], scale: float = 1.0) -> dict:
    """Median with min and max (scaled), the form every timing is reported in."""
    return {"median": scale * statistics.median(values), "min": scale * min(values), "max": scale * max(values),
            "n": len(values), "values": [scale * v for v in values]}


def replicate_prefill(pre, copies: int):
    """The prefill of one row as a batch of ``copies`` identical rows (cache, mask, logits, positions)."""
    from ..engine import Prefill

    if copies == 1:
        return pre
    if pre.logits.shape[0] != 1:
        raise ValueError("only a batch-1 prefill can be replicated")
    pre.cache.batch_repeat_interleave(copies)
    return Prefill(logits=pre.logits.repeat(copies, 1), cache=pre.cache,
                   attention_mask=pre.attention_mask.repeat(copies, 1),
                   last_positions=pre.last_positions.repeat_interleave(copies, dim=-2), pruning=pre.pruning,
                   seconds=pre.seconds)


class _VIPTimer:
    """Seconds spent inside the VIP's forward, from a pre/post forward-hook pair that the benchmark attaches for the
    duration of its own passes and removes afterwards."""

    def __init__(self, vip, device):
        self.device, self.seconds, self._t0, self.handles = device, 0.0, None, []
        self.cpu_seconds, self._c0 = 0.0, None
        if vip is not None:
            self.handles = [vip.register_forward_pre_hook(self._start), vip.register_forward_hook(self._stop)]

    def _start(self, *_):
        _sync(self.device)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def _stop(self, *_):
        _sync(self.device)
        self.seconds += time.perf_counter() - self._t0
        self.cpu_seconds += time.process_time() - self._c0

    def take(self) -> tuple[float, float]:
        """(wall, process CPU) seconds since the last take."""
        out = (self.seconds, self.cpu_seconds)
        self.seconds, self.cpu_seconds = 0.0, 0.0
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


@dataclass(frozen=True)
class Variant:
    """What one configuration prunes with: a method name and its fixed keep ratio (ignored for ``none``)."""

    method: str
    keep_ratio: float | None = None

    @property
    def budget(self) -> str:
        return "full" if self.method == "none" else f"r{self.keep_ratio:g}"


class _Config:
    """One variant at one prefill batch size: its method, and the timings of its passes. Decoding runs at every
    batch size in ``decode_batches``: the prefill's own batch, or (a batch-1 prefill) the cache replicated."""

    def __init__(self, gp, variant: Variant, batch_size: int, config: BenchConfig, decode_batches: list[int]):
        from ..engine import GenerationParams

        self.gp, self.variant, self.batch_size, self.config = gp, variant, batch_size, config
        self.decode_batches = decode_batches
        if any(b != batch_size for b in decode_batches) and batch_size != 1:
            raise ValueError("decode batches other than the prefill's need a batch-1 prefill to replicate")
        kwargs = _budget_kwargs(variant.method, replace(config, keep_ratio=variant.keep_ratio))
        self.chosen = gp.method(variant.method, **kwargs)
        self.vit_layers = self.chosen.vit_layers if self.chosen is not None else None
        self.params = GenerationParams.resolve(gp.model.generation_config, max_new_tokens=config.new_tokens,
                                               min_new_tokens=config.new_tokens)
        self.prefill_times, self.vip_times, self.prefill_cpu, self.vip_cpu = [], [], [], []
        self.decode_times: dict[int, list[float]] = {b: [] for b in decode_batches}
        self.decode_cpu: dict[int, list[float]] = {b: [] for b in decode_batches}
        self.pre, self.kv, self.steps, self.memory = None, 0, 0, {}

    def run(self, batch, timer: _VIPTimer | None = None, timed: bool = True, after_prefill=None):
        from ..engine import decode, prefill

        if timer:
            timer.take()
        cpu0 = time.process_time()
        pre = prefill(self.gp.adapter, batch, self.chosen)
        prefill_cpu = time.process_time() - cpu0
        vip_s, vip_cpu = timer.take() if timer else (0.0, 0.0)
        kv = cache_bytes(pre.cache)
        if after_prefill:
            after_prefill()
        for i, b in enumerate(self.decode_batches):
            if b == self.batch_size:
                source = pre if len(self.decode_batches) == 1 else _copy_prefill(pre)
                input_ids = batch.input_ids
            else:
                source = replicate_prefill(pre if i == len(self.decode_batches) - 1 else _copy_prefill(pre), b)
                input_ids = batch.input_ids.repeat(b, 1)
            cpu0 = time.process_time()
            dec = decode(self.gp.adapter, source, input_ids, self.params)
            if timed:
                self.decode_times[b].append(dec.seconds)
                self.decode_cpu[b].append(time.process_time() - cpu0)
            self.steps = dec.steps
        if timed:
            self.prefill_times.append(pre.seconds)
            self.vip_times.append(vip_s)
            self.prefill_cpu.append(prefill_cpu)
            self.vip_cpu.append(vip_cpu)
        self.pre, self.kv = pre, kv


def _copy_prefill(pre):
    from ..engine import Prefill

    return Prefill(logits=pre.logits, cache=copy.deepcopy(pre.cache), attention_mask=pre.attention_mask,
                   last_positions=pre.last_positions, pruning=pre.pruning, seconds=pre.seconds)


def _kv_split(pre, kv_bytes: int) -> dict:
    """Physical KV bytes split into visual and text tokens (per-token bytes from the physical cache)."""
    am = pre.attention_mask
    per_token = kv_bytes / am.numel()  # bytes per cached position (all layers, keys + values)
    visual_kept = sum(s.kept for s in pre.pruning.samples)
    valid = int(am.sum())
    return {"kv_bytes_visual": per_token * visual_kept, "kv_bytes_text": per_token * (valid - visual_kept),
            "kv_bytes_per_token": per_token}


def _rows(gp, cfg: _Config, batch, vit_times: list[float]) -> list[dict]:
    """One row per decode batch size of a configuration (prefill figures shared)."""
    pre = cfg.pre
    state = pre.pruning
    sample = state.samples[0]
    n_visual, n_kept = sample.total, sample.kept
    n_text = int(batch.attention_mask[0].sum()) - n_visual
    image_counts = [im.total for im in sample.images]
    decode_steps = max(cfg.steps - 1, 0)  # the first token comes from the prefill logits
    vit = spread(vit_times, 1000)
    prefill_ms = spread(cfg.prefill_times, 1000)
    ttft = spread([statistics.median(vit_times) + p for p in cfg.prefill_times], 1000)
    vip = spread(cfg.vip_times, 1000)
    prefill_cpu, vip_cpu = spread(cfg.prefill_cpu, 1000), spread(cfg.vip_cpu, 1000)
    flops = flops_for(gp, cfg.chosen, n_text, n_visual, n_kept, state.prune_layer, image_counts, decode_steps)
    rows = []
    for b in cfg.decode_batches:
        scale = b / cfg.batch_size
        dec = spread(cfg.decode_times[b], 1000 / max(decode_steps, 1))
        dec_cpu = spread(cfg.decode_cpu[b], 1000 / max(decode_steps, 1))
        decode_median = statistics.median(cfg.decode_times[b])
        row = {
            "method": cfg.variant.method,
            "budget": cfg.variant.budget,
            "batch_size": b,
            "prefill_batch_size": cfg.batch_size,
            "decode_from": "own prefill" if b == cfg.batch_size else "replicated batch-1 prefill",
            "n_text": n_text,
            "n_visual": n_visual,
            "n_kept": n_kept,
            "image_token_counts": image_counts,
            "prune_layer": state.prune_layer,
            "num_layers": state.num_layers,
            "kept_ratio": state.keep_ratio,
            "layer_averaged_retention": state.layer_averaged_retention,
            "kv_length": sum(state.kv_lengths) / len(state.kv_lengths),
            "kv_bytes": cfg.kv * scale,
            **{k: v * scale for k, v in _kv_split(pre, cfg.kv).items()},
            "vit_ms": vit["median"], "prefill_ms": prefill_ms["median"], "ttft_ms": ttft["median"],
            "decode_ms_per_step": dec["median"], "vip_ms": vip["median"] if cfg.chosen is not None else 0.0,
            # Process CPU time next to wall time: on a shared CPU, waiting for a core inflates wall time but not
            # CPU time (threads' CPU times add up: a ratio of two CPU times compares work, not latency).
            "prefill_cpu_ms": prefill_cpu["median"], "decode_cpu_ms_per_step": dec_cpu["median"],
            "spread": {"vit_ms": vit, "prefill_ms": prefill_ms, "ttft_ms": ttft, "decode_ms_per_step": dec,
                       "vip_ms": vip, "prefill_cpu_ms": prefill_cpu, "decode_cpu_ms_per_step": dec_cpu,
                       "vip_cpu_ms": vip_cpu},
            "decode_tokens_per_s": b * decode_steps / decode_median if decode_median > 0 else None,
            "new_tokens": cfg.steps,
            **flops,
            **(cfg.memory if b == cfg.decode_batches[0] else {}),
        }
        row["vip_share_measured"] = row["vip_ms"] / row["prefill_ms"] if row["prefill_ms"] else None
        row["vip_share_measured_cpu"] = (vip_cpu["median"] / prefill_cpu["median"]
                                         if cfg.chosen is not None and prefill_cpu["median"] else 0.0)
        rows.append(row)
    return rows


def _inputs(gp, batch_size: int, config: BenchConfig):
    from ..processing import build_inputs

    device = next(gp.model.parameters()).device
    image = bench_image(*config.image_size, seed=config.seed)
    inputs = build_inputs(gp.processor, [config.question] * batch_size, [[image]] * batch_size)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def _timed_prepare(gp, inputs, vit_layers, device, times: list[float] | None):
    _sync(device)
    t0 = time.perf_counter()
    batch = gp.adapter.prepare(inputs, vit_layers)
    _sync(device)
    if times is not None:
        times.append(time.perf_counter() - t0)
    return batch


@torch.inference_mode()
def measure_interleaved(gp, variants: list[Variant], batch_size: int, config: BenchConfig,
                        decode_batches: list[int] | None = None, inline_memory: bool = False) -> list[dict]:
    """Several variants at one prefill batch size, their passes interleaved (A B C, C B A, A B C, ...).

    The ViT runs ``vit_repeats`` times (after one untimed warm-up when ``warmup`` > 0) and its features are reused by
    every prefill/decode repeat of every variant (``none`` uses the features prepared for the first method that needs
    ViT layers; it ignores them). With ``inline_memory`` each variant first runs one untimed pass with its peak memory
    read around it (:func:`_inline_peak`): clean on CUDA, and on CPU when large allocations are returned to the
    system on free (see the module docstring).
    """
    decode_batches = decode_batches or [batch_size]
    device = next(gp.model.parameters()).device
    inputs = _inputs(gp, batch_size, config)
    cfgs = [_Config(gp, v, batch_size, config, decode_batches) for v in variants]
    vit_layers = next((c.vit_layers for c in cfgs if c.vit_layers is not None), None)
    if any(c.vit_layers not in (None, vit_layers) for c in cfgs):
        raise ValueError("variants that need different ViT layers cannot share prepared features; measure apart")
    load_before = load_average()
    vit_times: list[float] = []
    timer = _VIPTimer(gp.vip, device)
    try:
        if config.warmup > 0:
            _timed_prepare(gp, inputs, vit_layers, device, None)
        for _ in range(max(1, config.vit_repeats)):
            batch = _timed_prepare(gp, inputs, vit_layers, device, vit_times)
        if inline_memory:
            for c in cfgs:
                c.memory = _inline_peak(lambda after, c=c: c.run(batch, timed=False, after_prefill=after), device)
        for _ in range(config.warmup):
            for c in cfgs:
                c.run(batch, timer, timed=False)
        for r in range(max(1, config.repeats)):
            for c in (cfgs if r % 2 == 0 else cfgs[::-1]):
                c.run(batch, timer)
    finally:
        timer.remove()
    load_after = load_average()
    rows = [row for c in cfgs for row in _rows(gp, c, batch, vit_times)]
    for row in rows:
        row["loadavg_before"], row["loadavg_after"] = load_before, load_after
    return rows


def measure_pair(gp, methods: tuple[str, str], batch_size: int, config: BenchConfig,
                 decode_batch: int | None = None) -> list[dict]:
    """Baseline and one method at the config's keep ratio, interleaved."""
    variants = [Variant(m, None if m == "none" else config.keep_ratio) for m in methods]
    return measure_interleaved(gp, variants, batch_size, config, [decode_batch] if decode_batch else None)


def measure(gp, method: str, batch_size: int, config: BenchConfig) -> dict:
    """One configuration alone (no interleaving partner)."""
    variant = Variant(method, None if method == "none" else config.keep_ratio)
    return measure_interleaved(gp, [variant], batch_size, config)[0]


# ---- clean peak memory ---------------------------------------------------------------------------------------


def _status_bytes(name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{name} missing from /proc/self/status")


def _release_and_reset_peak() -> int:
    """Give freed heap back to the system, reset the peak-RSS mark; return the resident bytes now."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: freed memory may stay resident, the baseline is then higher
        pass
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_bytes("VmRSS")


CPU_MEMORY_KIND = ("cpu resident high-water mark (VmHWM after /proc/self/clear_refs) above the resident memory before "
                   "the pass")
CUDA_MEMORY_KIND = "cuda allocator peak (torch.cuda.max_memory_allocated) above the memory allocated before the pass"


def _inline_peak(run_pass, device) -> dict:
    """Peak memory of ``run_pass(after_prefill)`` above what is held before it (weights, inputs, ViT features)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_pass(None)
        torch.cuda.synchronize(device)
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device) - base, "memory_kind": CUDA_MEMORY_KIND}
    base = _release_and_reset_peak()
    run_pass(None)
    return {"peak_memory_bytes": _status_bytes("VmHWM") - base, "memory_kind": CPU_MEMORY_KIND}


@torch.inference_mode()
def peak_memory_inline(gp, method: str, batch_size: int, config: BenchConfig, decode_batch: int | None = None) -> dict:
    """One pass of one configuration with the peak read around its two parts: the ViT (``prepare``) and the LLM
    (prefill + decode on the ready features). On CPU this is only clean in a fresh process (see :func:`peak_memory`)."""
    device = next(gp.model.parameters()).device
    variant = Variant(method, None if method == "none" else config.keep_ratio)
    c = _Config(gp, variant, batch_size, config, [decode_batch or batch_size])
    inputs = _inputs(gp, batch_size, config)
    holder = {}
    vit = _inline_peak(lambda _: holder.setdefault("batch", gp.adapter.prepare(inputs, c.vit_layers)), device)
    llm = _inline_peak(lambda _: c.run(holder["batch"], timed=False), device)
    kind = llm["memory_kind"] + ("" if device.type == "cuda" else ", one fresh process per configuration")
    vit_with_inputs = vit["peak_memory_bytes"]
    return {"peak_memory_bytes": llm["peak_memory_bytes"],
            "peak_memory_with_vit_bytes": max(vit_with_inputs, llm["peak_memory_bytes"] + _features_bytes(holder["batch"])),
            "memory_kind": kind}


def _features_bytes(batch) -> int:
    """Bytes the prepared batch holds (embeddings, ViT features) while the LLM part runs."""
    tensors = [batch.inputs_embeds] + list(batch.vit_features or [])
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory(source: dict | None, gp, method: str, batch_size: int, config: BenchConfig,
                decode_batch: int | None = None) -> dict:
    """Clean peak memory of one configuration: inline on CUDA; on CPU in a fresh subprocess that rebuilds the model
    from ``source`` (see :func:`load_source`), so no earlier configuration's allocations are counted or reused."""
    device = next(gp.model.parameters()).device
    mode = config.memory
    if mode == "off":
        return {"peak_memory_bytes": None, "peak_memory_with_vit_bytes": None, "memory_kind": "not measured"}
    if mode == "inline" or (mode == "auto" and device.type == "cuda"):
        return peak_memory_inline(gp, method, batch_size, config, decode_batch)
    if source is None:
        return {"peak_memory_bytes": None, "peak_memory_with_vit_bytes": None,
                "memory_kind": "not measured (no model source to rebuild in a clean subprocess)"}
    payload = {"source": source, "method": method, "batch_size": batch_size, "decode_batch": decode_batch,
               "config": _config_dict(config)}
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-m", "glimpseprune.eval.bench", "--memory-child", json.dumps(payload)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {method} at batch {batch_size}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _config_dict(config: BenchConfig) -> dict:
    cfg = asdict(config)
    cfg["image_size"] = list(config.image_size)
    return cfg


def _memory_child(payload: dict) -> dict:
    config = BenchConfig(**{**payload["config"], "image_size": tuple(payload["config"]["image_size"])})
    torch.manual_seed(config.seed)
    gp = load_source(payload["source"])
    return peak_memory_inline(gp, payload["method"], payload["batch_size"], config, payload.get("decode_batch"))


# ---- the benchmark -------------------------------------------------------------------------------------------


RATIO_KEYS = ("prefill_ms", "ttft_ms", "vit_ms", "decode_ms_per_step", "prefill_cpu_ms", "decode_cpu_ms_per_step", "kv_length", "kv_bytes", "kv_bytes_visual",
              "peak_memory_bytes", "peak_memory_with_vit_bytes", "prefill_flops", "prefill_flops_without_vit",
              "decode_flops")


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
        "cpu_count": os.cpu_count(),
        "loadavg": load_average(),
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
        return {"config": self.config, "environment": self.environment, "rows": self.rows,
                "comparisons": self.comparisons, "files": self.files}


def run_benchmark(gp, config: BenchConfig, progress=None, source: dict | None = None) -> BenchResult:
    """Baseline (``none``) and ``config.method`` at every batch size, interleaved, on this device.

    ``source`` describes how to rebuild the model (:func:`load_source`): needed on CPU for the clean per-configuration
    peak memory (a subprocess each); without it CPU peak memory is reported as not measured.
    """
    if config.method == "none":
        raise ValueError("the benchmark compares a pruning method against 'none'; choose a pruning method")
    if any(b < 1 for b in list(config.batch_sizes) + list(config.replicated_decode_batch_sizes)):
        raise ValueError(f"batch sizes must be >= 1, got {config.batch_sizes} / {config.replicated_decode_batch_sizes}")
    if config.memory not in ("auto", "inline", "subprocess", "off"):
        raise ValueError(f"memory must be auto, inline, subprocess or off, got {config.memory!r}")
    methods = ("none", config.method)
    plan = [(bs, None) for bs in config.batch_sizes] + [(1, b) for b in config.replicated_decode_batch_sizes]
    rows, comparisons = [], []
    for bs, decode_batch in plan:
        label = f"batch {decode_batch or bs}" + (" (decode on a replicated batch-1 prefill)" if decode_batch else "")
        if progress:
            progress(f"{label}: timing none / {config.method} interleaved")
        pair = measure_pair(gp, methods, bs, config, decode_batch)
        for row, method in zip(pair, methods):
            if progress and config.memory != "off":
                progress(f"{label}: peak memory of {method}")
            row.update(peak_memory(source, gp, method, bs, config, decode_batch))
            row["decode_from"] = "replicated batch-1 prefill" if decode_batch else "own prefill"
        rows.extend(pair)
        comparisons.append({"batch_size": decode_batch or bs, "decode_from": pair[0]["decode_from"],
                            "method": config.method, "budget": pair[1]["budget"], "ratio": ratios(pair[0], pair[1])})
    cfg = _config_dict(config)
    if source is not None:
        cfg["model_source"] = source
    return BenchResult(rows, comparisons, environment(gp), cfg)


# ---- output --------------------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    ("bs", "batch_size", "{}"), ("method", "method", "{}"), ("N vis", "n_visual", "{}"), ("kept", "n_kept", "{}"),
    ("kept%", "kept_ratio", "{:.1%}"), ("layer-avg", "layer_averaged_retention", "{:.1%}"),
    ("KV len", "kv_length", "{:.0f}"), ("KV MiB", "kv_bytes", "mib"), ("KV vis MiB", "kv_bytes_visual", "mib"),
    ("ViT ms", "vit_ms", "{:.1f}"), ("prefill ms", "prefill_ms", "{:.1f}"), ("VIP ms", "vip_ms", "{:.1f}"),
    ("TTFT ms", "ttft_ms", "{:.1f}"), ("dec ms/step", "decode_ms_per_step", "{:.2f}"),
    ("tok/s", "decode_tokens_per_s", "{:.1f}"), ("peak MiB", "peak_memory_bytes", "mib"),
    ("peak+ViT MiB", "peak_memory_with_vit_bytes", "mib"), ("prefill GF", "prefill_flops", "gf"),
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
    lines.append("pruned / baseline, same run (medians of interleaved repeats; min-max in bench.json):")
    for comp in result.comparisons:
        r = comp["ratio"]
        parts = [f"{k}={r[k]:.3f}" for k in ("prefill_ms", "ttft_ms", "decode_ms_per_step", "kv_bytes",
                                             "kv_bytes_visual", "peak_memory_bytes", "peak_memory_with_vit_bytes",
                                             "prefill_flops", "prefill_flops_without_vit", "decode_flops")
                 if r.get(k) is not None]
        lines.append(f"  bs={comp['batch_size']} {comp['method']} {comp['budget']}: " + ", ".join(parts))
    pruned = [r for r in result.rows if r["method"] != "none"]
    for r in pruned:
        if r["vip_share_measured"] is not None:
            lines.append(f"  bs={r['batch_size']} VIP share of pruned LLM prefill: measured "
                         f"{r['vip_share_measured']:.1%}, FLOP estimate {r['vip_flops_share']:.1%}")
    env = result.environment
    lines.append(f"device={env['device_name']} dtype={env['dtype']} attn={env['attn_implementation']} "
                 f"threads={env['threads']} loadavg={env.get('loadavg')}; peak memory: "
                 f"{result.rows[0].get('memory_kind', 'not measured')}")
    return "\n".join(lines)


CSV_FIELDS = ["batch_size", "prefill_batch_size", "decode_from", "method", "budget", "n_text", "n_visual", "n_kept",
              "prune_layer", "num_layers", "kept_ratio", "layer_averaged_retention", "kv_length", "kv_bytes",
              "kv_bytes_visual", "kv_bytes_text", "vit_ms", "prefill_ms", "vip_ms", "vip_share_measured",
              "vip_flops_share", "ttft_ms", "decode_ms_per_step", "decode_tokens_per_s", "new_tokens",
              "peak_memory_bytes", "peak_memory_with_vit_bytes", "memory_kind", "prefill_flops",
              "prefill_flops_without_vit", "vit_flops", "vip_flops", "decode_flops", "decode_context", "decode_steps",
              "loadavg_before", "loadavg_after"]


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


def plot_title(result: BenchResult, what: str) -> str:
    """What a figure shows and on what: model, visual tokens, keep ratio, device, and the spread convention."""
    env, cfg = result.environment, result.config
    model = cfg.get("model_id") or cfg.get("model_source", {}).get("name") or "model"
    tokens = sorted({r["n_visual"] for r in result.rows})
    return (f"{what}: {model}, {'/'.join(map(str, tokens))} visual tokens, keep {cfg['keep_ratio']:g} "
            f"({cfg['method']}), {env['device_name']} {env['dtype']}\nmedian of {cfg['repeats']} interleaved repeats, "
            f"bars = min-max; load {env.get('loadavg')}")


def draw_plots(result: BenchResult, out: Path, eval_summaries: list[str | Path] = ()) -> dict[str, str]:
    """Latency and memory vs batch size (median, min-max bars); accuracy vs layer-averaged retention if eval
    summaries are given. matplotlib is imported here only (the ``[eval]`` extra); without it, no plots and a warning.
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

    def rows_of(method):
        return sorted((r for r in result.rows if r["method"] == method), key=lambda r: r["batch_size"])

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    for ax, (key, label) in zip(axes, [("prefill_ms", "LLM prefill (ms)"), ("ttft_ms", "TTFT incl. ViT (ms)"),
                                       ("decode_ms_per_step", "decode (ms / step)")]):
        for m in methods:
            rows = rows_of(m)
            x = [r["batch_size"] for r in rows]
            med = [r["spread"][key]["median"] for r in rows]
            err = [[r["spread"][key]["median"] - r["spread"][key]["min"] for r in rows],
                   [r["spread"][key]["max"] - r["spread"][key]["median"] for r in rows]]
            ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(plot_title(result, "latency vs batch size"), fontsize=9)
    fig.tight_layout()
    files["latency_png"] = str(out / "latency_vs_batch.png")
    fig.savefig(files["latency_png"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    for ax, (key, label) in zip(axes, [("kv_bytes", "KV cache, text included (MiB)"),
                                       ("kv_bytes_visual", "KV cache, visual tokens only (MiB)"),
                                       ("peak_memory_bytes", "peak memory above weights+inputs (MiB)")]):
        for m in methods:
            rows = rows_of(m)
            ax.plot([r["batch_size"] for r in rows], [None if r.get(key) is None else r[key] / 2**20 for r in rows],
                    marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(plot_title(result, "memory vs batch size"), fontsize=9)
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


if __name__ == "__main__":  # the clean-memory subprocess: python -m glimpseprune.eval.bench --memory-child JSON
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(_memory_child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m glimpseprune.eval.bench --memory-child PAYLOAD (internal: use `glimpseprune bench`)")
