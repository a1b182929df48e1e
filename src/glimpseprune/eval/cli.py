"""``glimpseprune eval`` and ``glimpseprune bench``: argument definitions and entry functions.

The main dispatcher (``glimpseprune.cli``) imports ``add_eval_arguments`` / ``run_eval`` and ``add_bench_arguments``
/ ``run_bench``. ``python -m glimpseprune.eval.cli {eval,bench} ...`` works on its own as well and goes through the
same error boundary as ``glimpseprune eval`` (one ``glimpseprune: error: ...`` line, exit code 2, ``--debug``).
"""

from __future__ import annotations

import argparse
import os
import sys

# ---- shared model options ------------------------------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser, config_only: bool) -> None:
    group = parser.add_argument_group("model")
    # eval and bench default to the embedded mini model, like `answer` and `demo`.
    source = group.add_mutually_exclusive_group()
    source.add_argument("--model", help="base VLM: local folder or hub id (GlimpsePrune.from_pretrained); "
                        "default: the embedded mini model (glimpse-shapes only)")
    source.add_argument("--tiny", action="store_true",
                        help="the tiny offline random Qwen2.5-VL with fresh (untrained) modules: mechanics only")
    if config_only:
        from .bench import ARCH_CONFIGS

        source.add_argument("--config-only", metavar="NAME|CONFIG.json",
                            help=f"an architecture with random weights, for timing: a published name "
                                 f"({', '.join(ARCH_CONFIGS)}; hub ids such as Qwen/Qwen2.5-VL-7B-Instruct work) or "
                                 f"a transformers config.json of one of these families")
        group.add_argument("--config-override", nargs="*", default=[], metavar="KEY=VALUE",
                           help="size overrides for --config-only, e.g. text.num_hidden_layers=4 vision.depth=8")
        group.add_argument("--force-cpu", action="store_true",
                           help="allow a full-size --config-only model on CPU (very slow; not a benchmark)")
    group.add_argument("--glimpse", help="GlimpsePrune modules folder / hub id (ours or the reference's)")
    group.add_argument("--init-glimpse", action="store_true",
                       help="fresh untrained modules on --model (to benchmark mechanics without a checkpoint)")
    group.add_argument("--adapter", help="PEFT LoRA folder merged into the LLM first (GlimpsePrune+)")
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    group.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    group.add_argument("--attn-implementation", default=None, help="sdpa, flash_attention_2, eager")
    group.add_argument("--seed", type=int, default=0, help="seed for fresh modules / random weights")
    if not config_only:
        from ..cli_placement import add_placement_arguments

        add_placement_arguments(parser)
    from ..cli import add_quiet_argument

    add_quiet_argument(group)


def _device(args) -> str:
    import torch

    from .shard import current_shard

    # Under a data-parallel launch each process takes its own accelerator (cuda:<local rank>).
    return args.device or current_shard().device or ("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    try:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(name) or getattr(torch, name)
    except AttributeError:
        raise SystemExit(f"unknown dtype {name!r}") from None


def load_model(args):
    """(GlimpsePrune, model id string for run hashes) from the model options."""
    from ..cli import progress_bars

    with progress_bars(not getattr(args, "quiet", False)):
        return _load_model(args)


def _load_model(args):
    import torch

    from ..model import GlimpsePrune

    device = _device(args)
    if getattr(args, "config_only", None):
        from .bench import build_config_only

        dtype = _dtype(args.dtype)
        dtype = torch.bfloat16 if dtype == "auto" else dtype
        try:
            gp = build_config_only(args.config_only, device=device, dtype=dtype, force=args.force_cpu, seed=args.seed,
                                   overrides=args.config_override, attn_implementation=args.attn_implementation)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        overrides = "".join(f":{o}" for o in args.config_override)
        return gp, f"config-only:{args.config_only}{overrides}:seed{args.seed}"
    from ..cli_placement import placement_kwargs

    placement = placement_kwargs(args)  # --device-map: one model split over devices / offloaded (docs/scaling.md)
    if placement:
        if args.tiny:
            raise ValueError("--device-map loads a saved model: use it with --model or the embedded mini model")
        from .shard import current_shard

        if current_shard().world > 1:
            raise ValueError("--device-map with several processes would give every process the same devices: "
                             "use one process per split model, or data parallelism without --device-map")
        device = None
    if args.tiny:
        from .bench import build_tiny

        return build_tiny(device, seed=args.seed), f"tiny:seed{args.seed}"
    if not args.model:
        return _load_mini(args, device, placement)
    gp = GlimpsePrune.from_pretrained(
        args.model, args.glimpse, init_glimpse=args.init_glimpse, dtype=_dtype(args.dtype), device=device,
        attn_implementation=args.attn_implementation, adapter=args.adapter, **placement,
    )
    model_id = f"{args.model}|glimpse={args.glimpse}|adapter={args.adapter}|dtype={args.dtype}"
    if args.init_glimpse and not args.glimpse:
        model_id += f"|init_glimpse:seed{args.seed}"
    return gp, model_id


def _load_mini(args, device, placement=None):
    """The embedded mini model (its own GlimpsePrune modules unless --glimpse), with an id that changes whenever the
    shipped weights do, so a resumed run never mixes answers of two different mini models."""
    import hashlib

    from ..assets import MINI_DIR
    from ..model import GlimpsePrune

    base = MINI_DIR / "base"
    if not (base / "config.json").is_file():
        raise SystemExit("no embedded mini model in this install (glimpseprune/assets/mini): pass --model or --tiny")
    glimpse = args.glimpse or MINI_DIR / "glimpse"
    gp = GlimpsePrune.from_pretrained(base, glimpse, dtype=_dtype(args.dtype), device=device,
                                      attn_implementation=args.attn_implementation, adapter=args.adapter,
                                      **(placement or {}))
    digest = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()[:12]
    return gp, f"mini:{digest}|glimpse={args.glimpse or 'embedded'}|adapter={args.adapter}|dtype={args.dtype}"


def _csv_list(text: str, cast=str) -> list:
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


# ---- eval ----------------------------------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser, config_only=False)
    data = parser.add_argument_group("data")
    data.add_argument("--data", nargs="*", default=[],
                      help="dataset specs: record JSONL or Visual-CoT benchmark JSON, each path[:first:N|:end:N|"
                           ":random:N]")
    data.add_argument("--tasks", default=None,
                      help="comma-separated expected task names, resolved as <task-dir>/<task>.json(l); a missing "
                           "one is an error")
    data.add_argument("--task-dir", default=None, help="folder holding the --tasks files")
    data.add_argument("--task-sampling", default=None, help="sampling suffix for --tasks files, e.g. first:100")
    data.add_argument("--image-root", default=None, help="image root (<root>/cot/<dataset>/<image>, <root>/<image>)")
    data.add_argument("--limit", type=int, default=None, help="at most N records per dataset")
    data.add_argument("--data-seed", type=int, default=42, help="seed of :random:N sampling")
    run = parser.add_argument_group("run")
    run.add_argument("--methods", default="glimpse", help="comma-separated methods: glimpse, none, baselines")
    run.add_argument("--budgets", default="default",
                     help="semicolon-separated budgets: 'default', '0.1' (keep-ratio cap after the cut), 'r=0.1,t=0.3', "
                          "'l=0.111' (layer-averaged retention: the baselines' fair axis; GlimpsePrune gets the cap "
                          "that reaches it after layer K)")
    run.add_argument("--max-keep-ratio", type=float, default=None, help="shorthand for a single budget r=...")
    run.add_argument("--threshold", type=float, default=None, help="shorthand for a single budget t=...")
    run.add_argument("--prune-layer", type=int, default=None, help="override K")
    run.add_argument("--no-same-k-control", action="store_true",
                     help="skip the random@glimpse unit that follows every glimpse unit (random selection at "
                          "GlimpsePrune's K with its per-sample kept counts, the control its accuracy is stated "
                          "against)")
    run.add_argument("--scorers", default="exact_match", help="comma-separated: exact_match, relaxed_match, anls, "
                                                              "token_f1 (the --judge-* options add 'judge')")
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--max-new-tokens", type=int, default=128)
    run.add_argument("--short-answer", action="store_true", help="append the single-word/phrase instruction")
    run.add_argument("--output", default="eval_results", help="output folder")
    run.add_argument("--no-progress", action="store_true")
    judge = parser.add_argument_group("LLM judge (optional; adds the scorer 'judge')")
    judge.add_argument("--judge-url", default=None,
                       help="OpenAI-compatible API root of the judge, e.g. http://localhost:8000/v1")
    judge.add_argument("--judge-model", default=None, help="judge model name sent to the server")
    judge.add_argument("--judge-cache", default=None, help="judge verdict cache folder (default: <output>/judge_cache)")
    judge.add_argument("--judge-api-key-env", default=None,
                       help="name of the environment variable holding the judge API key (default: no key)")


def eval_config_from_args(args, model_id: str):
    from ..budget import Budget, parse_budget
    from .runner import EvalConfig, resolve_tasks

    specs = list(args.data)
    if args.tasks:
        if not args.task_dir:
            raise SystemExit("--tasks needs --task-dir")
        specs += resolve_tasks(_csv_list(args.tasks), args.task_dir, args.task_sampling)
    if not specs:
        raise SystemExit("nothing to evaluate: give --data and/or --tasks/--task-dir")
    if args.max_keep_ratio is not None or args.threshold is not None:
        budgets = [Budget(args.max_keep_ratio, args.threshold)]
    else:
        budgets = [parse_budget(b) for b in args.budgets.split(";")]
    return EvalConfig(
        datasets=specs, methods=_csv_list(args.methods), budgets=budgets, scorers=_csv_list(args.scorers),
        output_dir=args.output, model_id=model_id, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        short_answer=args.short_answer, root=args.image_root, seed=args.data_seed, limit=args.limit,
        prune_layer=args.prune_layer, progress=not (args.no_progress or args.quiet), judge=judge_spec_from_args(args),
        same_k_control=not getattr(args, "no_same_k_control", False),
    )


def judge_spec_from_args(args):
    """The JudgeSpec of the --judge-* options, or None without them; inconsistent options exit early."""
    from .runner import JUDGE_SCORER, JudgeSpec

    url, model = getattr(args, "judge_url", None), getattr(args, "judge_model", None)
    if url is None and model is None:
        if getattr(args, "judge_cache", None) or getattr(args, "judge_api_key_env", None):
            raise SystemExit("--judge-cache / --judge-api-key-env need --judge-url and --judge-model")
        if JUDGE_SCORER in _csv_list(args.scorers):
            raise SystemExit("--scorers judge needs --judge-url and --judge-model")
        return None
    if not url or not model:
        raise SystemExit("the LLM judge needs both --judge-url and --judge-model")
    if args.judge_api_key_env and not os.environ.get(args.judge_api_key_env):
        raise SystemExit(f"--judge-api-key-env: environment variable {args.judge_api_key_env!r} is not set")
    cache = args.judge_cache if args.judge_cache is not None else os.path.join(args.output, "judge_cache")
    return JudgeSpec(base_url=url, model=model, cache_dir=cache, api_key_env=args.judge_api_key_env)


def run_eval(args) -> int:
    from .runner import run_evaluation

    # Validate data options before loading a model (a missing task file must fail in seconds, not after loading).
    eval_config_from_args(args, "")
    gp, model_id = load_model(args)
    if gp.config is not None:
        extra = {"glimpse_config": gp.config.to_dict()}
    else:
        extra = {}
    config = eval_config_from_args(args, model_id)
    config.extra = extra
    result = run_evaluation(gp, config)
    from .shard import current_shard

    if current_shard().is_main:  # the other processes of a data-parallel run return the same merged result
        print(result.summary_md.read_text())
        print(f"{result.new_samples} new, {result.skipped_samples} resumed; summary: {result.summary_json}, "
              f"{result.summary_md}")
    return 0


# ---- bench ---------------------------------------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser, config_only=True)
    b = parser.add_argument_group("benchmark")
    b.add_argument("--method", default="glimpse", help="the pruning method compared against 'none'")
    b.add_argument("--max-keep-ratio", dest="keep_ratio", metavar="RATIO", type=float, default=0.1,
                   help="kept fraction of visual tokens after K (a cap; with threshold 0 it fixes the kept count)")
    from ..cli import add_deprecated_alias

    add_deprecated_alias(b, "--keep-ratio", "--max-keep-ratio", dest="keep_ratio", type=float)
    b.add_argument("--threshold", type=float, default=0.0,
                   help="keep threshold (default 0: the cap alone fixes the kept count)")
    b.add_argument("--batch-sizes", default="1,8,32")
    b.add_argument("--new-tokens", type=int, default=32, help="decode steps (EOS suppressed)")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--repeats", type=int, default=5,
                   help="timed passes, the two methods interleaved; medians with min/max are reported")
    b.add_argument("--vit-repeats", type=int, default=3,
                   help="ViT timings (its features are then reused by every prefill/decode repeat)")
    b.add_argument("--replicated-decode-batch-sizes", default="",
                   help="extra decode-only batch sizes run on a replicated batch-1 prefill (cheap on CPU)")
    b.add_argument("--memory", default="auto", choices=["auto", "inline", "subprocess", "off"],
                   help="peak memory: auto = CUDA allocator peak, or on CPU one subprocess per configuration")
    b.add_argument("--image-size", default="896x896", help="WxH of the synthetic test image")
    b.add_argument("--question", default="what colour is the shape in the image?")
    b.add_argument("--eval-summary", nargs="*", default=[],
                   help="runner summary JSON files for the accuracy-vs-retention plot")
    b.add_argument("--no-plots", action="store_true")
    b.add_argument("--output", default="bench_results", help="output folder for bench.csv / bench.json / PNGs")


def bench_config_from_args(args):
    from .bench import BenchConfig

    try:
        w, h = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--image-size must look like 896x896, got {args.image_size!r}") from None
    return BenchConfig(batch_sizes=_csv_list(args.batch_sizes, int), method=args.method, keep_ratio=args.keep_ratio,
                       threshold=args.threshold, new_tokens=args.new_tokens, warmup=args.warmup,
                       repeats=args.repeats, image_size=(w, h), question=args.question, seed=args.seed,
                       vit_repeats=args.vit_repeats, memory=args.memory,
                       replicated_decode_batch_sizes=_csv_list(args.replicated_decode_batch_sizes, int))


def _bench_source(args) -> dict:
    """How a clean-memory subprocess rebuilds this model: the model options, as given."""
    import json

    options = {}
    for key, value in vars(args).items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        options[key] = value
    options["device"] = _device(args)
    return {"kind": "cli", "args": options}


def run_bench(args) -> int:
    from .bench import format_table, run_benchmark, write_outputs

    config = bench_config_from_args(args)
    if args.init_glimpse is False and args.model and not args.glimpse and args.method == "glimpse":
        raise SystemExit("--model without --glimpse has no GlimpsePrune modules: add --glimpse or --init-glimpse")
    gp, model_id = load_model(args)
    result = run_benchmark(gp, config, progress=lambda s: print(f"[bench] {s}", file=sys.stderr),
                           source=_bench_source(args))
    result.config["model_id"] = model_id
    files = write_outputs(result, args.output, args.eval_summary, plots=not args.no_plots)
    print(format_table(result))
    print("wrote " + ", ".join(files.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``eval`` / ``bench`` in process, WITHOUT the error boundary: failures raise (tests catch them). Run from the
    shell, this module goes through the boundary instead (below)."""
    parser = argparse.ArgumentParser(prog="glimpseprune-eval")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_arguments(sub.add_parser("eval", help="accuracy / mask-quality evaluation"))
    add_bench_arguments(sub.add_parser("bench", help="efficiency benchmark"))
    args = parser.parse_args(argv)
    return run_eval(args) if args.command == "eval" else run_bench(args)


if __name__ == "__main__":
    from glimpseprune.cli import main as guarded_main  # the command line's error boundary (errors.run_guarded)

    raise SystemExit(guarded_main())
