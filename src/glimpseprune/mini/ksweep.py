"""The K trade-off recipe: GlimpsePrune modules trained at every cut layer K of the mini model, each measured
against unpruned and against the same-K random control.

``python -m glimpseprune.mini.ksweep --config configs/mini/ksweep.json [key=value ...]``

For every mode in ``modes`` ("box", "boxfree") and every K in ``ks`` (``boxfree_ks`` for box-free, default the
same), on the mini base model (``base``; default the embedded one):

1. **train** stage 1 with ``train_config`` (``configs/mini/glimpse.json``) plus ``glimpse.prune_layer=K``, the
   data in ``data_dir`` (written by :func:`glimpseprune.mini.glimpse_data.make` when missing) and
   ``train_overrides``, into ``<output_dir>/<mode>-k<K>/`` (a finished run, ``final/`` present, is reused; an
   unfinished one resumes from its last checkpoint). Box-free runs use the exact budget with ``target_keep`` =
   the box run's mean kept ratio at the same K on the selection items (``boxfree.target_keep: "box"``), so the two
   modes are compared at equal mean kept, and ``boxfree_train_overrides`` on top (e.g. more steps: the KL signal
   needs more than the box masks do);
2. **measure** with :func:`glimpseprune.mini.evaluate.evaluate` on two disjoint item sets: ``n_select`` items of
   the benchmark's *val* split (where K is chosen) and ``n_test`` items of its *test* split (what is reported;
   nothing is chosen on them). Per set: exact match unpruned / GlimpsePrune / same-K random (random at the same cut
   layer with GlimpsePrune's per-sample kept counts) with the exact paired test, mean / median kept, layer-averaged
   retention, the analytic LLM-prefill FLOPs ratio and the measured LLM-prefill time ratio (same run);
3. **choose** the smallest box-mode K whose *selection* numbers meet ``criteria``: GlimpsePrune within
   ``max_drop`` of unpruned, same-K random at least ``min_margin`` below GlimpsePrune with paired p <
   ``max_p``, mean kept ≤ ``max_kept``; then report whether the *test* numbers meet them too.

Writes ``<output_dir>/ksweep.json`` (every run's summaries without per-item rows; the per-item reports are in each
run's ``eval_<set>.json``), ``ksweep.md`` (the tables) and ``ksweep.png`` (accuracy and costs vs K).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MODES = ("box", "boxfree")


@dataclass
class SweepConfig:
    base: str | None = None  # mini base model folder; None: the embedded one
    train_config: str = "configs/mini/glimpse.json"
    train_overrides: dict = field(default_factory=dict)  # applied to every run, e.g. {"max_steps": 2}
    data_dir: str = "runs/mini_glimpse_data"
    n_train: int = 2400
    n_val: int = 64
    output_dir: str = "runs/ksweep"
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    modes: list[str] = field(default_factory=lambda: ["box", "boxfree"])
    boxfree_ks: list[int] | None = None  # None: every K in ks
    boxfree: dict = field(default_factory=lambda: {"budget": "exact", "target_keep": "box"})
    boxfree_train_overrides: dict = field(default_factory=dict)  # box-free runs only, after train_overrides
    n_select: int = 100
    n_test: int = 500
    seed: int = 0  # benchmark seed (the test and val splits of this seed)
    layout: str = "default"
    batch_size: int = 32
    max_new_tokens: int = 4
    random_seed: int = 0
    threads: int = 2
    workers: int = 1  # processes measuring one item set in parallel (contiguous chunks; each 1 torch thread)
    criteria: dict = field(default_factory=lambda: {"max_drop": 0.01, "min_margin": 0.15, "max_p": 0.01,
                                                    "max_kept": 0.10})
    plot: bool = True

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown modes {bad}; known: {list(MODES)}")
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ks must be cut layers >= 1, got {self.ks!r}")
        if self.boxfree_ks is not None and not set(self.boxfree_ks) <= set(self.ks):
            raise ValueError(f"boxfree_ks {self.boxfree_ks} must be a subset of ks {self.ks}")
        target = self.boxfree.get("target_keep", "box")
        if "boxfree" in self.modes and target == "box" and "box" not in self.modes:
            raise ValueError("boxfree.target_keep 'box' needs the box mode in modes (or give a number)")
        for key in ("n_select", "n_test", "batch_size", "threads", "workers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")

    @classmethod
    def from_file(cls, path: str | None, overrides: list[str] | None = None) -> "SweepConfig":
        from ..train.trainer import apply_overrides

        data = json.loads(Path(path).read_text()) if path else {}
        return cls(**apply_overrides(data, overrides, {f.name for f in fields(cls)}, "ksweep"))


def base_dir(cfg: SweepConfig) -> Path:
    if cfg.base is not None:
        return Path(cfg.base)
    from ..assets import MINI_DIR

    return MINI_DIR / "base"


def ensure_data(cfg: SweepConfig) -> Path:
    data = Path(cfg.data_dir)
    if not (data / "train_short.jsonl").is_file() or not (data / "val_short.jsonl").is_file():
        from .glimpse_data import make

        make(data, cfg.n_train, cfg.n_val, seed=0)
    return data


def run_name(mode: str, k: int) -> str:
    return f"{mode}-k{k}"


def train_overrides(cfg: SweepConfig, mode: str, k: int, target_keep: float | None) -> list[str]:
    """The ``key=value`` overrides of one run on top of ``train_config`` (the same as on the CLI)."""
    data = Path(cfg.data_dir)
    out = [f"model={base_dir(cfg)}", f"data={data / 'train_short.jsonl'}", f"val_data={data / 'val_short.jsonl'}",
           f"glimpse.prune_layer={k}", f"output_dir={Path(cfg.output_dir) / run_name(mode, k)}", "progress=false"]
    out += [f"{key}={json.dumps(value)}" for key, value in cfg.train_overrides.items()]
    if mode == "boxfree":
        out += ["mode=boxfree"]
        out += [f"{key}={json.dumps(value)}" for key, value in cfg.boxfree_train_overrides.items()]
        out += [f"boxfree.{key}={json.dumps(value)}" for key, value in cfg.boxfree.items() if key != "target_keep"]
        out += [f"boxfree.target_keep={json.dumps(target_keep)}"]
    return out


def train_run(cfg: SweepConfig, mode: str, k: int, target_keep: float | None) -> Path:
    final = Path(cfg.output_dir) / run_name(mode, k) / "final"
    if (final / "glimpse_config.json").is_file():
        return final
    from ..train.trainer import Stage1Trainer, TrainConfig

    overrides = train_overrides(cfg, mode, k, target_keep)
    print(f"[ksweep] train {run_name(mode, k)}: glimpseprune train --config {cfg.train_config} "
          + " ".join(overrides), flush=True)
    trainer = Stage1Trainer(TrainConfig.from_file(cfg.train_config, overrides))
    t0 = time.perf_counter()
    trainer.train()
    (final.parent / "train_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    del trainer
    gc.collect()
    return final


def item_sets(cfg: SweepConfig) -> dict[str, list]:
    from .pretrain_data import synthetic_examples

    return {"select": synthetic_examples(cfg.n_select, cfg.seed, 448, "val", cfg.layout),
            "test": synthetic_examples(cfg.n_test, cfg.seed, 448, "test", cfg.layout)}


def unpruned_answers(cfg: SweepConfig, examples: list) -> dict[str, str]:
    """The base model's unpruned answers on the selection items (they do not depend on K), cached."""
    path = Path(cfg.output_dir) / "unpruned_select.json"
    ids = [ex.id for ex in examples]
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("base") == str(base_dir(cfg)) and all(i in cached["answers"] for i in ids):
            return cached["answers"]
    from ..model import GlimpsePrune
    from ..processing import build_inputs
    from .pretrain_data import example_image

    model = GlimpsePrune.from_pretrained(base_dir(cfg), device="cpu")
    answers = {}
    for i in range(0, len(examples), cfg.batch_size):
        chunk = examples[i:i + cfg.batch_size]
        inputs = build_inputs(model.processor, [ex.question for ex in chunk], [[example_image(ex)] for ex in chunk])
        out = model.generate(**inputs, method="none", max_new_tokens=cfg.max_new_tokens)
        texts = model.processor.batch_decode(out.generated, skip_special_tokens=True)
        answers.update({ex.id: t.strip() for ex, t in zip(chunk, texts)})
    path.write_text(json.dumps({"base": str(base_dir(cfg)), "answers": answers}))
    return answers


def measure_run(cfg: SweepConfig, mode: str, k: int, modules: Path, sets: dict[str, list],
                cached_only: bool = False) -> dict:
    """{set name: evaluate() summary without rows}; each full report cached in the run folder. On the selection
    items the unpruned answers come from :func:`unpruned_answers` (no timing there); on the test items the three
    methods run back to back on every batch, which is what the time ratios need. ``cached_only``: never measure,
    raise :class:`FileNotFoundError` naming the missing (or stale) report instead."""
    from ..model import GlimpsePrune
    from .evaluate import evaluate

    out, model = {}, None
    for name, examples in sets.items():
        path = Path(cfg.output_dir) / run_name(mode, k) / f"eval_{name}.json"
        key = {"n": len(examples), "seed": cfg.seed, "layout": cfg.layout, "random_seed": cfg.random_seed,
               "batch_size": cfg.batch_size, "modules_mtime": (modules / "glimpse.safetensors").stat().st_mtime}
        if path.is_file():
            report = json.loads(path.read_text())
            if report.get("cache_key") == key:
                out[name] = {k_: v for k_, v in report.items() if k_ not in ("rows", "batch_timings")}
                continue
        if cached_only:
            raise FileNotFoundError(f"{path}: no measurement of {run_name(mode, k)} on these {len(examples)} {name} "
                                    "items (missing, or made with another n/seed/layout/batch size or older modules)"
                                    "; run the sweep without --report-only")
        unpruned = unpruned_answers(cfg, examples) if name == "select" else None
        print(f"[ksweep] measure {run_name(mode, k)} on {len(examples)} {name} items", flush=True)
        if cfg.workers > 1:
            report = measure_in_workers(cfg, modules, examples, unpruned)
        else:
            if model is None:
                model = GlimpsePrune.from_pretrained(base_dir(cfg), modules, device="cpu")
            report = evaluate(model, examples, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                              progress=False, random_seed=cfg.random_seed, unpruned=unpruned)
        if report["prune_layer"] != k:
            raise RuntimeError(f"{modules} has prune_layer {report['prune_layer']}, expected {k}")
        report["cache_key"] = key
        path.write_text(json.dumps(report, indent=1))
        out[name] = {k_: v for k_, v in report.items() if k_ not in ("rows", "batch_timings")}
    return out


def _measure_chunk(base: str, modules: str, examples: list, unpruned, batch_size: int, max_new_tokens: int,
                   random_seed: int) -> dict:
    import torch

    from ..model import GlimpsePrune
    from .evaluate import evaluate

    torch.set_num_threads(1)
    model = GlimpsePrune.from_pretrained(base, modules, device="cpu")
    return evaluate(model, examples, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False,
                    random_seed=random_seed, unpruned=unpruned)


def measure_in_workers(cfg: SweepConfig, modules: Path, examples: list, unpruned) -> dict:
    """:func:`~glimpseprune.mini.evaluate.evaluate` over contiguous chunks in ``cfg.workers`` processes, merged:
    the same rows in the same order as one process (batches never straddle chunks: chunks are whole batches)."""
    import multiprocessing
    import time as time_
    from concurrent.futures import ProcessPoolExecutor

    from .evaluate import summarize

    per = -(-len(examples) // cfg.workers)
    per = -(-per // cfg.batch_size) * cfg.batch_size  # whole batches per chunk
    chunks = [examples[i:i + per] for i in range(0, len(examples), per)]
    t0 = time_.perf_counter()
    with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_measure_chunk, [str(base_dir(cfg))] * len(chunks), [str(modules)] * len(chunks),
                              chunks, [unpruned] * len(chunks), [cfg.batch_size] * len(chunks),
                              [cfg.max_new_tokens] * len(chunks), [cfg.random_seed] * len(chunks)))
    rows = [r for part in parts for r in part["rows"]]
    timings = [t for part in parts for t in part["batch_timings"]]
    report = summarize(rows, time_.perf_counter() - t0, timings)
    report["batch_timings"] = timings
    report["prune_layer"] = parts[0]["prune_layer"]
    report["random_seed"] = cfg.random_seed
    return report


def meets(summary: dict, criteria: dict) -> dict:
    """Which of the choice criteria one set's summary meets."""
    checks = {
        "within_max_drop": summary["em_unpruned"] - summary["em_pruned"] <= criteria["max_drop"] + 1e-12,
        "random_margin": summary["margin_over_random"] >= criteria["min_margin"] - 1e-12,
        "paired_p": summary["paired_vs_random"]["p_value"] < criteria["max_p"],
        "max_kept": summary["kept_ratio_mean"] <= criteria["max_kept"] + 1e-12,
    }
    checks["all"] = all(checks.values())
    return checks


def choose_k(results: dict, cfg: SweepConfig) -> dict:
    box = {k: r for (mode, k), r in results.items() if mode == "box"}
    chosen = None
    for k in sorted(box):
        if meets(box[k]["select"], cfg.criteria)["all"]:
            chosen = k
            break
    out = {"criteria": cfg.criteria, "chosen_k": chosen, "chosen_on": "select (val split)",
           "select_meets": {k: meets(box[k]["select"], cfg.criteria) for k in sorted(box)}}
    if chosen is not None and "test" in box[chosen]:
        out["test_meets"] = meets(box[chosen]["test"], cfg.criteria)
    return out


KEYS = ("em_unpruned", "em_pruned", "em_random", "margin_over_random", "kept_ratio_mean", "kept_ratio_median",
        "kept_tokens_mean", "kept_tokens_median", "layer_averaged_retention_mean", "prefill_flops_ratio",
        "mask_iou_mean", "n")


def row(mode: str, k: int, summary: dict) -> dict:
    r = {"mode": mode, "k": k, **{key: summary.get(key) for key in KEYS}}
    r["p_vs_random"] = summary["paired_vs_random"]["p_value"]
    r["discordant_vs_random"] = [summary["paired_vs_random"]["a_only"], summary["paired_vs_random"]["b_only"]]
    r["p_vs_unpruned"] = summary["paired_vs_unpruned"]["p_value"]
    time_ = summary.get("prefill_time") or {}
    r["prefill_time_ratio"] = (time_.get("glimpse") or {}).get("median_batch_ratio")
    r["prefill_time_ratio_q25_q75"] = (time_.get("glimpse") or {}).get("batch_ratio_q25_q75")
    r["random_prefill_time_ratio"] = (time_.get("random") or {}).get("median_batch_ratio")
    r["random_counts_match"] = summary.get("random_counts_match")
    return r


def markdown(report: dict) -> str:
    lines = []
    for name in ("test", "select"):
        lines += [f"### {name} items" + (" (reported)" if name == "test" else " (K is chosen here)"), "",
                  "| mode | K | unpruned | GlimpsePrune | same-K random | margin | paired p (disc.) | mean kept | "
                  "median kept (tokens) | layer-avg ret. | prefill FLOPs ratio | prefill time ratio | mask IoU |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["rows"][name]:
            q = r["prefill_time_ratio_q25_q75"] or [None, None]
            time_cell = f"{r['prefill_time_ratio']:.3f} [{q[0]:.3f}, {q[1]:.3f}]" if r["prefill_time_ratio"] else "–"
            iou_cell = f"{r['mask_iou_mean']:.3f}" if r["mask_iou_mean"] is not None else "–"
            lines.append(
                f"| {r['mode']} | {r['k']} | {100 * r['em_unpruned']:.1f} | {100 * r['em_pruned']:.1f} | "
                f"{100 * r['em_random']:.1f} | {100 * r['margin_over_random']:+.1f} | {r['p_vs_random']:.2g} "
                f"({r['discordant_vs_random'][0]}/{r['discordant_vs_random'][1]}) | "
                f"{100 * r['kept_ratio_mean']:.1f} % | {r['kept_tokens_median']:g} | "
                f"{r['layer_averaged_retention_mean']:.3f} | {r['prefill_flops_ratio']:.3f} | {time_cell} | "
                f"{iou_cell} |")
        lines.append("")
    c = report["choice"]
    lines.append(f"Chosen K (smallest box-mode K meeting {c['criteria']} on the selection items): "
                 f"{c['chosen_k']}" + (f"; on the test items: {c['test_meets']}" if c.get("test_meets") else ""))
    lines.append("")
    lines.append("Criteria met on the selection items, per K: " + "; ".join(
        f"K={k}: " + ", ".join(name for name, ok in m.items() if ok and name != "all") for k, m in
        c.get("select_meets", {}).items()))
    lines.append("")
    lines.append("margin = GlimpsePrune − same-K random (random at the same cut layer with GlimpsePrune's per-sample "
                 "kept counts), exact paired test (items only GlimpsePrune / only random got right). FLOPs: "
                 "analytic LLM prefill (glimpse row and VIP included, ViT excluded) over unpruned; time: measured "
                 "LLM-prefill seconds over unpruned in the same run, median of per-batch ratios [q25, q75].")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path, item_set: str = "test") -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["rows"][item_set]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("box", "-o"), ("boxfree", "--s")):
        rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["k"])
        if not rs:
            continue
        ks = [r["k"] for r in rs]
        ax.plot(ks, [100 * r["em_pruned"] for r in rs], style, label=f"GlimpsePrune ({mode})")
        ax.plot(ks, [100 * r["em_random"] for r in rs], style, alpha=0.5, label=f"same-K random ({mode} counts)")
        if mode == "box":
            ax.plot(ks, [100 * r["em_unpruned"] for r in rs], ":k", label="unpruned")
            bx.plot(ks, [r["prefill_flops_ratio"] for r in rs], "-o", label="LLM-prefill FLOPs ratio")
            if all(r["prefill_time_ratio"] is not None for r in rs):
                bx.plot(ks, [r["prefill_time_ratio"] for r in rs], "-^", label="measured LLM-prefill time ratio")
            bx.plot(ks, [r["layer_averaged_retention_mean"] for r in rs], "-s", label="layer-averaged retention")
            bx.plot(ks, [r["kept_ratio_mean"] for r in rs], "-d", label="mean kept after K")
    ax.set_xlabel("cut layer K")
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"mini model, {rows[0]['n'] if rows else 0} {item_set} items")
    ax.legend(fontsize=7)
    bx.set_xlabel("cut layer K")
    bx.set_ylabel("ratio vs unpruned")
    bx.set_title("cost (box mode)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_sweep(cfg: SweepConfig, report_only: bool = False) -> dict:
    """Train, measure, choose and write the report. ``report_only``: train and measure nothing; the report is
    rebuilt from the runs' cached measurements (``<output_dir>/<run>/eval_<set>.json``), and a missing one is an
    error naming it."""
    import torch

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        ensure_data(cfg)
    sets = item_sets(cfg)
    results: dict[tuple[str, int], dict] = {}
    for mode in cfg.modes:
        ks = cfg.ks if mode == "box" or cfg.boxfree_ks is None else cfg.boxfree_ks
        for k in ks:
            target = None
            if mode == "boxfree":
                target = cfg.boxfree.get("target_keep", "box")
                if target == "box":
                    # Equal mean kept: the box run's mean kept ratio at this K on the selection items.
                    target = round(results[("box", k)]["select"]["kept_ratio_mean"], 4)
            if report_only:
                modules = out / run_name(mode, k) / "final"
                if not (modules / "glimpse.safetensors").is_file():
                    raise FileNotFoundError(f"{modules}: {run_name(mode, k)} was never trained; run the sweep "
                                            "without --report-only")
            else:
                modules = train_run(cfg, mode, k, target)
            results[(mode, k)] = measure_run(cfg, mode, k, modules, sets, cached_only=report_only)
            if target is not None:
                results[(mode, k)]["target_keep"] = target
    report = {
        "config": asdict(cfg),
        "runs": {run_name(m, k): r for (m, k), r in results.items()},
        "rows": {name: [row(m, k, r[name]) for (m, k), r in results.items()] for name in sets},
        "choice": choose_k(results, cfg),
    }
    (out / "ksweep.json").write_text(json.dumps(report, indent=1))
    (out / "ksweep.md").write_text(markdown(report))
    if cfg.plot:
        plot(report, out / "ksweep.png")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m glimpseprune.mini.ksweep", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="sweep config (JSON), e.g. configs/mini/ksweep.json")
    p.add_argument("--report-only", action="store_true",
                   help="train and measure nothing: rebuild ksweep.json/.md/.png from the runs' cached measurements")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (JSON values)")
    args = p.parse_args(argv)
    try:
        cfg = SweepConfig.from_file(args.config, args.overrides)
    except (ValueError, OSError) as err:
        p.error(str(err))
    try:
        report = run_sweep(cfg, report_only=args.report_only)
    except FileNotFoundError as err:
        if not args.report_only:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(cfg.output_dir) / "ksweep.md").read_text())
    print(f"wrote {cfg.output_dir}/ksweep.json, ksweep.md" + (", ksweep.png" if cfg.plot else ""))
    return 0 if report["rows"]["test"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
