"""Performance report (issue 17 §4, §5): unpruned vs GlimpsePrune at two keep ratios, several visual-token counts,
a random-weight architecture, every ratio measured in one run with interleaved repeats.

Presets:

* ``cpu-midsize``: the Qwen2.5-0.5B-LLM CPU setting (``qwen2.5-vl-0.5b-cpu``: 24 layers, K = 16, the published-size
  VIP on a 4-block, 1280-wide ViT), float32, visual tokens 256 / 1,024 / 2,304, keep 0.04 / 0.111. Prefill at
  batch 1; decode at batch 1 / 8 / 32 on the batch-1 cache replicated (8 / 32 only from 1,024 tokens on); peak
  memory per variant read inline around one untimed pass. This process re-executes itself with
  ``MALLOC_MMAP_THRESHOLD_`` set so every allocation above 128 KiB is its own mapping, returned to the system when
  freed: the resident high-water mark around one pass is then that pass's own peak (the per-configuration
  subprocess of ``glimpseprune bench`` would reload a 0.5 B model per configuration, too slow on this CPU).
* ``gpu-7b``: the Qwen2.5-VL-7B architecture, bfloat16, ~2.3k (48×48) and ~5k (71×71) visual tokens, keep 0.04 /
  0.111, real prefill batches 1 / 8 / 32, SDPA and (if installed) flash-attention 2, CUDA allocator peaks. A time
  budget (``--budget-s``, default 420 s) skips what would not fit, and says so.

Writes ``report.json`` (every row, the derived ratios, the environment, the load average with each figure) and
``report.png`` (ratios vs visual tokens, min-max bars) into ``--out``; prints a markdown summary.

    python benchmarks/perf_report.py --preset cpu-midsize --out benchmarks/results/cpu_midsize
    python benchmarks/perf_report.py --preset gpu-7b --out benchmarks/results/gpu_7b     # (benchmarks/gpu.sh)
    python benchmarks/perf_report.py --preset gpu-7b --smoke --out /tmp/smoke            # tiny sizes, any device
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Shrinks any preset to seconds on a CPU (the smoke test of the script's own logic).
SMOKE_OVERRIDES = ["text.hidden_size=64", "text.intermediate_size=128", "text.num_hidden_layers=4",
                   "text.num_attention_heads=4", "text.num_key_value_heads=2", "text.vocab_size=null",
                   'text.rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}',
                   "vision.hidden_size=64", "vision.intermediate_size=128", "vision.num_heads=4", "vision.depth=4",
                   "vision.fullatt_block_indexes=[1,3]"]

PRESETS = {
    # 1,024 tokens first: the targets are set there (the shared CPU may not leave time for the rest).
    "cpu-midsize": dict(arch="qwen2.5-vl-0.5b-cpu", device="cpu", dtype="float32", tokens=[1024, 256, 2304],
                        keeps=[0.04, 0.111], prefill_batches=[1], decode_batches=[1, 8, 32], replicate_from=1024,
                        repeats={256: 2, 1024: 2, 2304: 1}, new_tokens=4, attn=["sdpa"], budget_s=None),
    "gpu-7b": dict(arch="qwen2.5-vl-7b", device="cuda", dtype="bfloat16", tokens=[2304, 5041], keeps=[0.04, 0.111],
                   prefill_batches=[1, 8, 32], decode_batches=None, replicate_from=None, repeats={2304: 3, 5041: 3},
                   new_tokens=16, attn=["sdpa", "flash_attention_2"], budget_s=420),
}
ANSWER_TOKENS = 32  # nominal answer length for the composed end-to-end throughput


def _reexec_with_mmap_threshold() -> None:
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401

        return True
    except ImportError:
        return False


def _ratio_stats(pruned: list[float], base: list[float]) -> dict:
    """Per-repeat paired ratios (repeats are interleaved, so pairs share the machine's state) and their median."""
    pairs = [p / b for p, b in zip(pruned, base) if b > 0]
    return {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs), "n": len(pairs)}


def summarise(rows: list[dict]) -> list[dict]:
    """Ratios vs the unpruned row of the same token count / batch / attention implementation."""
    out = []
    for r in rows:
        if r["method"] == "none":
            continue
        base = next(b for b in rows if b["method"] == "none" and b["n_visual"] == r["n_visual"]
                    and b["batch_size"] == r["batch_size"] and b["prefill_batch_size"] == r["prefill_batch_size"]
                    and b["attn"] == r["attn"])
        K, L = r["prune_layer"], r["num_layers"]
        s = {
            "attn": r["attn"], "n_visual": r["n_visual"], "keep": r["budget"], "n_kept": r["n_kept"],
            "batch_size": r["batch_size"], "prefill_batch_size": r["prefill_batch_size"],
            "decode_from": r["decode_from"], "K_over_L": K / L,
            "prefill_ratio": _ratio_stats(r["spread"]["prefill_ms"]["values"], base["spread"]["prefill_ms"]["values"]),
            "prefill_flops_ratio": r["prefill_flops_without_vit"] / base["prefill_flops_without_vit"],
            "ttft_ratio": _ratio_stats(r["spread"]["ttft_ms"]["values"], base["spread"]["ttft_ms"]["values"]),
            "decode_ratio": _ratio_stats(r["spread"]["decode_ms_per_step"]["values"],
                                         base["spread"]["decode_ms_per_step"]["values"]),
            "decode_ms_per_token": {"none": base["decode_ms_per_step"], "pruned": r["decode_ms_per_step"]},
            "prefill_cpu_ratio": _ratio_stats(r["spread"]["prefill_cpu_ms"]["values"],
                                              base["spread"]["prefill_cpu_ms"]["values"]),
            "decode_cpu_ratio": _ratio_stats(r["spread"]["decode_cpu_ms_per_step"]["values"],
                                             base["spread"]["decode_cpu_ms_per_step"]["values"]),
            "vip_share_measured_cpu": r["vip_share_measured_cpu"],
            "vip_share_measured": r["vip_share_measured"], "vip_share_flops": r["vip_flops_share"],
            "kv_bytes": {"none": base["kv_bytes"], "pruned": r["kv_bytes"]},
            "kv_ratio_with_text": r["kv_bytes"] / base["kv_bytes"],
            "kv_ratio_visual_only": r["kv_bytes_visual"] / base["kv_bytes_visual"],
            "loadavg": [r["loadavg_before"], r["loadavg_after"]],
        }
        if r.get("peak_memory_bytes") is not None and base.get("peak_memory_bytes"):
            s["peak_memory"] = {"none": base["peak_memory_bytes"], "pruned": r["peak_memory_bytes"],
                                "ratio": r["peak_memory_bytes"] / base["peak_memory_bytes"]}
        # End-to-end at this batch: b prompts prefilled (one by one when the decode batch was replicated from a
        # batch-1 prefill, else as the measured batch) then ANSWER_TOKENS decoded together.
        def e2e(row):
            prefills = row["batch_size"] / row["prefill_batch_size"]
            seconds = (prefills * row["ttft_ms"] + (ANSWER_TOKENS - 1) * row["decode_ms_per_step"]) / 1000
            return row["batch_size"] * ANSWER_TOKENS / seconds
        s["e2e_tokens_per_s"] = {"none": e2e(base), "pruned": e2e(r), "ratio": e2e(r) / e2e(base)}
        out.append(s)
    return out


def markdown(summary: list[dict], env: dict) -> str:
    lines = [f"device {env['device_name']} ({env['dtype']}, {env['threads']} threads), torch {env['torch']}", "",
             "| attn | visual tokens | keep | batch | LLM prefill ratio wall [min-max] / CPU time [min-max] (K/L, "
             "FLOPs) | VIP share wall / CPU time / FLOPs | TTFT ratio | decode ms/token none → pruned (wall ratio; "
             "CPU-time ratio) | KV ratio with text / visual only | peak memory ratio | e2e tok/s ratio | "
             "load (1-min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        p, d, pc, dc = s["prefill_ratio"], s["decode_ratio"], s["prefill_cpu_ratio"], s["decode_cpu_ratio"]
        mem = f"{s['peak_memory']['ratio']:.3f}" if "peak_memory" in s else "–"
        lines.append(
            f"| {s['attn']} | {s['n_visual']} | {s['keep']} ({s['n_kept']}) | {s['batch_size']} | "
            f"{p['median']:.3f} [{p['min']:.3f}-{p['max']:.3f}] / {pc['median']:.3f} [{pc['min']:.3f}-{pc['max']:.3f}] "
            f"({s['K_over_L']:.3f}, {s['prefill_flops_ratio']:.3f}) | {s['vip_share_measured']:.1%} / "
            f"{s['vip_share_measured_cpu']:.1%} / {s['vip_share_flops']:.1%} | {s['ttft_ratio']['median']:.3f} | "
            f"{s['decode_ms_per_token']['none']:.1f} → {s['decode_ms_per_token']['pruned']:.1f} "
            f"({d['median']:.3f} [{d['min']:.3f}-{d['max']:.3f}]; {dc['median']:.3f} [{dc['min']:.3f}-{dc['max']:.3f}]) | "
            f"{s['kv_ratio_with_text']:.3f} / "
            f"{s['kv_ratio_visual_only']:.3f} | {mem} | {s['e2e_tokens_per_s']['ratio']:.3f} | "
            f"{s['loadavg'][0][0] if s['loadavg'][0] else '–'}-{s['loadavg'][1][0] if s['loadavg'][1] else '–'} |")
    return "\n".join(lines)


def plot(summary: list[dict], env: dict, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    # On a CPU the load-robust figures are the CPU-time ratios (see the bench module); wall time elsewhere.
    cpu = str(env.get("device", "")).startswith("cpu")
    clock = "process CPU time" if cpu else "wall time"
    panels = [("prefill_cpu_ratio" if cpu else "prefill_ratio", f"LLM prefill ({clock}), pruned / unpruned"),
              ("ttft_ratio", "TTFT incl. ViT (wall time), pruned / unpruned"),
              ("decode_cpu_ratio" if cpu else "decode_ratio", f"decode per token ({clock}), pruned / unpruned")]
    for ax, (key, title) in zip(axes, panels):
        groups = sorted({(s["attn"], s["keep"], s["batch_size"]) for s in summary})
        for attn, keep, bs in groups:
            pts = sorted((s for s in summary if (s["attn"], s["keep"], s["batch_size"]) == (attn, keep, bs)),
                         key=lambda s: s["n_visual"])
            if key.startswith("prefill") and bs != pts[0]["prefill_batch_size"]:
                continue  # replicated decode rows repeat the batch-1 prefill
            x = [s["n_visual"] for s in pts]
            med = [s[key]["median"] for s in pts]
            err = [[m - s[key]["min"] for m, s in zip(med, pts)], [s[key]["max"] - m for m, s in zip(med, pts)]]
            ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=f"{attn} {keep} bs{bs}")
        if key.startswith("prefill") and summary:
            ax.axhline(summary[0]["K_over_L"], color="grey", ls="--", label="K/L floor")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("visual tokens")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{label} random weights, {env['device_name']} {env['dtype']}: median of interleaved repeats, "
                 f"bars = min-max of per-repeat ratios; load {env.get('loadavg')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and token counts: checks the script only")
    parser.add_argument("--device", default=None)
    parser.add_argument("--tokens", default=None, help="comma-separated visual-token counts (square images)")
    parser.add_argument("--repeats", type=int, default=None, help="the same repeats at every token count")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--override", nargs="*", default=[], help="architecture size overrides KEY=VALUE")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    if preset["device"] == "cpu" and not args.smoke:
        _reexec_with_mmap_threshold()

    import torch

    from glimpseprune.eval.bench import BenchConfig, Variant, build_config_only, environment, measure_interleaved

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or (preset["device"] if preset["device"] != "cuda" or torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, preset["dtype"] if device != "cpu" or preset["device"] == "cpu" else "float32")
    overrides = list(args.override)
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else preset["tokens"]
    repeats = {n: args.repeats or preset["repeats"].get(n, 2) for n in tokens}
    prefill_batches, decode_batches = preset["prefill_batches"], preset["decode_batches"]
    new_tokens, budget = preset["new_tokens"], args.budget_s or preset["budget_s"]
    if args.smoke:
        overrides = SMOKE_OVERRIDES + overrides
        tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else [16, 36]
        repeats = {n: args.repeats or 2 for n in tokens}
        prefill_batches = [1, 2] if preset["decode_batches"] is None else [1]
        decode_batches = None if preset["decode_batches"] is None else [1, 3]
        new_tokens = 3
    attns = [a for a in preset["attn"] if a != "flash_attention_2" or (device.startswith("cuda") and _flash_available())]
    skipped = [a for a in preset["attn"] if a not in attns]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, rows, notes = time.perf_counter(), [], []
    if skipped:
        notes.append(f"attention implementations not run: {skipped} (flash-attn not installed, or not on CUDA)")
    env = None
    label = preset["arch"] + (" (smoke sizes)" if args.smoke else "")

    def write(rows, notes, env, overrides, started, partial):
        """report.json / .md / .png with everything so far (rewritten after every configuration)."""
        summary = summarise(rows)
        payload = {"preset": args.preset, "architecture": label, "overrides": overrides, "environment": env,
                   "answer_tokens_for_e2e": ANSWER_TOKENS, "seconds": time.perf_counter() - started,
                   "complete": not partial, "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                   "notes": notes, "summary": summary, "rows": rows}
        (out / "report.json").write_text(json.dumps(payload, indent=2))
        table = markdown(summary, env)
        (out / "report.md").write_text(table + "\n")
        try:
            plot(summary, env, label, out / "report.png")
        except ImportError:
            if "matplotlib missing: no report.png" not in notes:
                notes.append("matplotlib missing: no report.png")
        return payload, table

    for attn in attns:
        gp = build_config_only(preset["arch"], device=device, dtype=dtype, force=True, overrides=overrides,
                               attn_implementation=attn)
        env = environment(gp)
        variants = [Variant("none")] + [Variant("glimpse", k) for k in preset["keeps"]]
        for n in tokens:
            side = math.isqrt(n)
            config = BenchConfig(new_tokens=new_tokens, warmup=0, repeats=repeats[n], vit_repeats=1,
                                 image_size=(side * 28, side * 28))
            for bs in prefill_batches:
                elapsed = time.perf_counter() - started
                if budget and elapsed > budget:
                    notes.append(f"skipped {attn} {n} tokens batch {bs}: time budget {budget:.0f} s spent")
                    continue
                if decode_batches is None:
                    decodes = [bs]
                else:
                    replicate_from = 0 if args.smoke else preset["replicate_from"]
                    decodes = [b for b in decode_batches if b == 1 or n >= replicate_from]
                print(f"[{time.perf_counter() - started:7.1f} s] {attn} {n} tokens, prefill batch {bs}, decode "
                      f"batches {decodes}, {repeats[n]} repeats, load {open('/proc/loadavg').read().split()[:3]}",
                      file=sys.stderr, flush=True)
                got = measure_interleaved(gp, variants, bs, config, decode_batches=decodes, inline_memory=True)
                for r in got:
                    r["attn"] = attn
                    if r["n_visual"] != n:
                        notes.append(f"asked for {n} visual tokens, the processor made {r['n_visual']}")
                rows.extend(got)
                write(rows, notes, env, overrides, started, partial=True)
        del gp
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    payload, table = write(rows, notes, env, overrides, started, partial=False)
    print(table)
    for note in notes:
        print("note:", note)
    print(f"wrote {out}/report.json, report.md, report.png in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
