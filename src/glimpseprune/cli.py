"""``glimpseprune`` command line.

``glimpseprune --help`` lists the subcommands from the table below without importing any of them (so without torch);
only the subcommand that runs (or whose ``--help`` is asked for) is imported and gets its arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import sys
from pathlib import Path

from .cli_placement import add_placement_arguments  # the split-model options (docs/scaling.md)

# name -> (module, add-arguments function, run function, one-line summary shown by `glimpseprune --help`)
SUBCOMMANDS = {
    "answer": ("glimpseprune.cli", "add_answer_arguments", "cmd_answer",
               "answer a question about images with pruning; print kept tokens and timings, draw the kept tokens"),
    "demo": ("glimpseprune.demo", "add_arguments", "run",
             "unpruned vs GlimpsePrune on benchmark scenes, written as a self-contained HTML report"),
    "ui": ("glimpseprune.ui", "add_arguments", "run",
           "browser demo (Gradio, extra [ui]): your image or a benchmark scene, both answers, kept tokens"),
    "eval": ("glimpseprune.eval.cli", "add_eval_arguments", "run_eval",
             "accuracy of methods x budgets on record / benchmark files, with paired tests and resume"),
    "bench": ("glimpseprune.eval.cli", "add_bench_arguments", "run_bench",
              "efficiency benchmark: prefill, decode, KV length and peak memory vs unpruned, per batch size"),
    "train": ("glimpseprune.train.cli", "add_arguments", "run",
              "stage-1 training of the glimpse token and VIP on a frozen VLM (accelerate)"),
    "train-plus": ("glimpseprune.train.plus", "add_arguments", "run",
                   "GlimpsePrune+ stage 2: GRPO with a LoRA on pruned rollouts, then the modules retrained"),
    "pretrain-mini": ("glimpseprune.mini.pretrain", "add_arguments", "run",
                      "pretrain the embedded mini Qwen2.5-VL from scratch on CPU (glimpse-shapes records)"),
    "configs": ("glimpseprune.shipped_configs", "add_arguments", "run",
                "list the training / accelerate configs shipped with the package, or print one"),
}

EPILOG = """\
With no --model, answer / demo / ui / eval / bench use the embedded mini model (a 2 M-parameter Qwen2.5-VL that only
knows glimpse-shapes scenes); in Python: glimpseprune.assets.default_model().
Examples:
  glimpseprune demo                                   # HTML report in ./glimpseprune_demo
  glimpseprune answer --image photo.png --question "what colour is the triangle?"
  glimpseprune answer --model Qwen/Qwen2.5-VL-7B-Instruct --glimpse DIR_OR_ID --image photo.jpg --question "..."
  glimpseprune <command> --help                       # that command's options and defaults
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (like ArgumentDefaultsHelpFormatter) unless it says nothing: None, False, or a
    default the help text already states."""

    @staticmethod
    def _shows_default(action) -> bool:
        default = action.default
        return not (default is None or default is False or default is argparse.SUPPRESS or default == []
                    or not action.option_strings or "default" in (action.help or ""))

    def _format_action(self, action):
        if not action.help and self._shows_default(action):  # argparse prints nothing for a help-less option
            action = copy.copy(action)
            action.help = "default: %(default)s"
            return super()._format_action(action)
        return super()._format_action(action)

    def _get_help_string(self, action):
        if self._shows_default(action):
            return f"{action.help} (default: %(default)s)"
        return action.help


class DeprecatedAlias(argparse.Action):
    """An old option name kept working: it sets the new option's value and warns once on stderr."""

    def __init__(self, option_strings, dest, new_name: str = "", **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated, use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_deprecated_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new_name=new, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def add_quiet_argument(parser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (weight loading, evaluation) and fewer status lines")


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """Silence transformers' / huggingface_hub's progress bars (e.g. 'Loading weights') inside the block when not
    ``enabled``; restores the previous setting afterwards (no global state left behind)."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base VLM: local folder or hub id (default: the embedded mini model)")
    p.add_argument("--glimpse", help="GlimpsePrune modules: folder or hub id (our format or the reference format)")
    p.add_argument("--adapter", help="GlimpsePrune+ PEFT LoRA adapter folder, merged before the modules are attached")
    add_deprecated_alias(p, "--lora", "--adapter", dest="adapter")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="glimpse", help="glimpse, none, or a registered baseline")
    p.add_argument("--threshold", type=float, default=None,
                   help="keep tokens with probability above this (default: the modules' config, 0.5)")
    p.add_argument("--max-keep-ratio", type=float, default=None, help="cap on the kept fraction of visual tokens")
    p.add_argument("--min-keep", type=int, default=None,
                   help="always keep at least this many visual tokens (default: the modules' config, 1)")
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
        if args.adapter:
            raise UserError("--adapter needs --model (the embedded mini model has no GlimpsePrune+ adapter)")
        if args.dtype != "auto":
            raise UserError("--dtype needs --model (the embedded mini model always runs in float32)")
    if args.model:
        model = GlimpsePrune.from_pretrained(args.model, args.glimpse, dtype=dtype, device=device, adapter=args.adapter,
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


def add_answer_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_placement_arguments(p)
    add_policy_arguments(p)
    p.add_argument("--image", action="append", help="image file (repeat for several images; default: a built-in "
                                                     "benchmark scene when --model is not given)")
    p.add_argument("--video", action="append", nargs="+", metavar="FRAME",
                   help="one video as its frame image files in time order (repeat for several videos; families "
                        "that take video: Qwen2-VL, Qwen2.5-VL, Qwen3-VL)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second of the --video frames")
    p.add_argument("--question", help="the question (default with the built-in scene: 'what colour is the triangle?')")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--output", default="kept_tokens.png", help="PNG with the kept tokens drawn ('' to skip)")
    add_deprecated_alias(p, "--out", "--output", dest="output")
    p.add_argument("--json", action="store_true", help="also print a JSON line with the full result (no progress "
                                                       "bars)")
    add_quiet_argument(p)


def cmd_answer(args) -> int:
    from .errors import UserError
    from .processing import load_image
    from .viz import KEPT_TOKENS_CAPTION, draw_kept_tokens, grids_per_image

    if args.output and Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is a directory; give a .png file path ('' to skip the drawing)")
    if args.question is not None and not args.question.strip():
        raise UserError("--question is empty; ask something (or leave --question out for the built-in example)")

    with progress_bars(not (args.quiet or args.json)):
        model, description = load_model(args)
    images = [load_image(p) for p in args.image] if args.image else []
    videos = [[load_image(p) for p in frames] for frames in args.video] if args.video else None
    if not images and not videos and not args.model:
        from . import assets

        images = [assets.example_image()]
        if not args.quiet:
            print("no --image given: using a built-in example scene")
    question = args.question or ("what colour is the triangle?" if not (args.image or args.video) else None)
    if not question:
        raise UserError("--question is required with --image / --video")
    text, out = model.answer(
        images, question, videos=videos, fps=args.fps, method=args.method, max_new_tokens=args.max_new_tokens,
        **policy_kwargs(args)
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
            name = f"image {i}" if im.view is None else f"image {im.image} {im.view} view"
            if im.kind == "video":
                name = f"video {i} ({im.frames} frames)"
            print(f"  {name}: grid {im.grid[0]}x{im.grid[1]}, kept {im.kept} / {im.total}")
    kv_where = ""
    if state.kv_layers and len(state.kv_layers) < state.num_layers:  # hybrid: the other layers hold fixed-size states
        kv_where = (f" in each of the {len(state.kv_layers)} full-attention layers (the other "
                    f"{state.num_layers - len(state.kv_layers)} keep fixed-size states)")
    print(f"prefill {1000 * out.prefill_seconds:.1f} ms, decode {out.decode_ms_per_token:.1f} ms/token "
          f"({out.new_tokens} tokens), KV length after prefill {state.kv_lengths[0]}{kv_where} (single run, first "
          "call included: `glimpseprune bench` measures medians)")
    if images and args.output:
        letterbox = model.adapter.letterboxes_images
        paths = []
        drawn = [im for im in sample.images if im.kind == "image"]  # videos are listed, not drawn
        if any(im.view is not None for im in drawn):
            # Several views per image (AnyRes): the base view is a plain resize of the whole image and is drawn; the
            # other views (the stitched crops) are counted in the caption, not drawn.
            per_image = [[(im, (0.0, 0.0, 1.0, 1.0) if im.view == "base" else None)
                          for im in drawn if im.image == i] for i in range(len(images))]
        else:
            per_image = grids_per_image([im.size for im in images], drawn,
                                        lambda w, h: model.adapter.grid_regions(w, h, model.processor))
        for i, (image, parts) in enumerate(zip(images, per_image)):
            path = Path(args.output)
            if len(images) > 1:
                path = path.with_name(f"{path.stem}_{i}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            kept, total = sum(p.kept for p, _ in parts), sum(p.total for p, _ in parts)
            caption = (f"{KEPT_TOKENS_CAPTION}; kept {kept}/{total} after layer {state.prune_layer}, "
                       f"method {state.method}")
            views = [p for p, region in parts if region is None]
            if views:  # InternVL's thumbnail, AnyRes's crops view: counted above, not drawn
                caption += (f" (second view of the whole image, not drawn: kept {sum(p.kept for p in views)}/"
                            f"{sum(p.total for p in views)})")
            draw_kept_tokens(image, parts, letterbox, caption=caption).save(path)
            paths.append(str(path))
        print(f"kept tokens drawn: {', '.join(paths)}")
    if args.json:
        print(json.dumps({"answer": text, "pruning": state.to_dict(), "prefill_seconds": out.prefill_seconds,
                          "decode_seconds": out.decode_seconds, "new_tokens": out.new_tokens}))
    return 0


def _version() -> str:
    from . import __version__

    return f"glimpseprune {__version__}"


def _selected_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every subcommand is listed, only the one named in ``argv`` is imported and gets its
    arguments (``argv=None``: sys.argv)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="glimpseprune", formatter_class=HelpFormatter, epilog=EPILOG,
        description="GlimpsePrune: question-aware visual-token pruning for vision-language models (transformers).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    selected = _selected_command(argv)
    for name, (module, add_fn, run_fn, summary) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        if name != selected:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            p.set_defaults(func=lambda _args, err=err, name=name: _unavailable(name, err))
            continue
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
    args = build_parser(argv).parse_args(argv)
    return run_guarded(lambda: int(args.func(args) or 0), debug)


if __name__ == "__main__":
    sys.exit(main())
