"""``glimpseprune`` command line: answer, demo, train, eval, bench.

Each subcommand's heavy imports happen only when it runs; ``train``/``eval``/``bench``/``demo`` live in their own
modules and are attached here by name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .cli_placement import add_placement_arguments  # the split-model options (docs/scaling.md)

# name -> (module, add-arguments function, run function)
_SUBCOMMANDS = {
    "train": ("glimpseprune.train.cli", "add_arguments", "run"),
    "train-plus": ("glimpseprune.train.plus", "add_arguments", "run"),
    "eval": ("glimpseprune.eval.cli", "add_eval_arguments", "run_eval"),
    "bench": ("glimpseprune.eval.cli", "add_bench_arguments", "run_bench"),
    "demo": ("glimpseprune.demo", "add_arguments", "run"),
    "pretrain-mini": ("glimpseprune.mini.pretrain", "add_arguments", "run"),
}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base VLM: local folder or hub id (default: the embedded mini model)")
    p.add_argument("--glimpse", help="GlimpsePrune modules: folder or hub id (our format or the reference format)")
    p.add_argument("--lora", help="GlimpsePrune+ LoRA adapter folder, merged before the modules are attached")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="glimpse", help="glimpse (default), none, or a registered baseline")
    p.add_argument("--threshold", type=float, default=None, help="keep tokens with probability above this (0.5)")
    p.add_argument("--max-keep-ratio", type=float, default=None, help="cap on the kept fraction of visual tokens")
    p.add_argument("--min-keep", type=int, default=None, help="always keep at least this many visual tokens (1)")
    p.add_argument("--per-image", action="store_true", help="apply cap and floor to every image separately")


def policy_kwargs(args) -> dict:
    kwargs = dict(threshold=args.threshold, min_keep=args.min_keep, per_image=args.per_image or None)
    if args.max_keep_ratio is not None:
        kwargs["max_keep_ratio"] = args.max_keep_ratio
    return kwargs


def load_model(args):
    """The model named on the command line, or the embedded default. Returns (GlimpsePrune, description)."""
    import torch

    from .errors import UserError
    from .model import GlimpsePrune

    from .cli_placement import placement_kwargs

    placement = placement_kwargs(args)  # --device-map: a split model instead of one device
    device = None if placement else args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device is not None:
        check_device(device)
    dtype = parse_dtype(args.dtype)
    if not args.model:
        # the embedded model runs in float32; refuse options that would otherwise be silently ignored
        if args.lora:
            raise UserError("--lora needs --model (the embedded mini model has no GlimpsePrune+ adapter)")
        if args.dtype != "auto":
            raise UserError("--dtype needs --model (the embedded mini model always runs in float32)")
    if args.model:
        model = GlimpsePrune.from_pretrained(args.model, args.glimpse, dtype=dtype, device=device, adapter=args.lora,
                                             **placement)
        return model, args.model
    from . import assets

    return assets.default_model(device=device, glimpse=args.glimpse, **placement)


def parse_dtype(name: str):
    """'auto' or a floating torch dtype name; anything else is a clear error (never silently ignored)."""
    import torch

    from .errors import UserError

    allowed = ("auto", "float32", "float16", "bfloat16")
    if name not in allowed:
        raise UserError(f"--dtype must be one of {', '.join(allowed)}, got {name!r}")
    return name if name == "auto" else getattr(torch, name)


def check_device(device: str) -> None:
    """A device that exists here, before any weights are read."""
    import torch

    from .errors import UserError

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"invalid --device {device!r}: {err}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is usable on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def cmd_answer(args) -> int:
    from .errors import UserError
    from .processing import load_image
    from .viz import draw_kept_tokens

    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory; give a .png file path ('' to skip the drawing)")
    if args.question is not None and not args.question.strip():
        raise UserError("--question is empty; ask something (or leave --question out for the built-in example)")

    model, description = load_model(args)
    images = [load_image(p) for p in args.image] if args.image else []
    if not images and not args.model:
        from . import assets

        images = [assets.example_image()]
        print("no --image given: using a built-in example scene")
    question = args.question or ("what colour is the triangle?" if not args.image else None)
    if not question:
        raise UserError("--question is required with --image")
    text, out = model.answer(
        images, question, method=args.method, max_new_tokens=args.max_new_tokens, **policy_kwargs(args)
    )
    state = out.pruning
    sample = state.samples[0]
    print(f"model:    {description}")
    print(f"question: {question}")
    print(f"answer:   {text}")
    if sample.total:
        print(f"visual tokens kept: {sample.kept} / {sample.total} ({100 * sample.ratio:.1f} %), "
              f"layer-averaged retention {100 * state.layer_averaged_retention:.1f} %, "
              f"method {state.method}, K = {state.prune_layer}")
        for i, im in enumerate(sample.images):
            print(f"  image {i}: grid {im.grid[0]}x{im.grid[1]}, kept {im.kept} / {im.total}")
    print(f"prefill {1000 * out.prefill_seconds:.1f} ms, decode {out.decode_ms_per_token:.1f} ms/token "
          f"({out.new_tokens} tokens), KV length after prefill {state.kv_lengths[0]}")
    if images and args.out:
        letterbox = model.adapter.letterboxes_images
        paths = []
        for i, (image, pruned) in enumerate(zip(images, sample.images)):
            path = Path(args.out)
            if len(images) > 1:
                path = path.with_name(f"{path.stem}_{i}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_kept_tokens(image, pruned, letterbox).save(path)
            paths.append(str(path))
        print(f"kept tokens drawn: {', '.join(paths)}")
    if args.json:
        print(json.dumps({"answer": text, "pruning": state.to_dict(), "prefill_seconds": out.prefill_seconds,
                          "decode_seconds": out.decode_seconds, "new_tokens": out.new_tokens}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glimpseprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("answer", help="answer a question about images, with pruning")
    add_model_arguments(p)
    add_placement_arguments(p)
    add_policy_arguments(p)
    p.add_argument("--image", action="append", help="image file (repeat for several images)")
    p.add_argument("--question", help="the question")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default="kept_tokens.png", help="PNG with the kept tokens drawn ('' to skip)")
    p.add_argument("--json", action="store_true", help="also print a JSON line with the full result")
    p.set_defaults(func=cmd_answer)
    for name, (module, add_fn, run_fn) in _SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            missing = sub.add_parser(name, help=f"(unavailable: {err})")
            missing.set_defaults(func=lambda _args, err=err, name=name: _unavailable(name, err))
            continue
        p = sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        getattr(mod, add_fn)(p)
        p.set_defaults(func=getattr(mod, run_fn))
    return parser


def _unavailable(name: str, err: Exception) -> int:
    print(f"glimpseprune {name} is unavailable: {err}. Reinstall the package (scripts/install.sh) or "
          "pip install 'glimpseprune[eval]' for plotting", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """The error boundary (``errors.run_guarded``): a known failure prints ``glimpseprune: error: <problem>`` and
    exits 2; ``--debug`` (anywhere on the line) or GLIMPSEPRUNE_DEBUG=1 shows the traceback instead."""
    from .errors import debug_requested, run_guarded

    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), debug)


if __name__ == "__main__":
    sys.exit(main())
