"""Browser demo: ``glimpseprune ui`` (Gradio, ``pip install 'glimpseprune[ui]'``).

Upload an image or pick a glimpse-shapes benchmark scene, ask a question, and see the unpruned answer next to the
pruned one, the kept visual tokens drawn over the image, the kept count and ratio, and both runs' prefill / decode
times; the pruning method and its budget (cap on the kept share) can be switched per question. The server listens on
127.0.0.1 unless ``--host`` says otherwise. Every request is an independent ``GlimpsePrune.answer`` call (the model
holds no per-request state), so concurrent requests need no lock.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

# Element ids of what a user reads and fills in: the browser test (tests/test_ui.py) finds them by these.
IMAGE_ID, QUESTION_ID, ASK_ID, BUDGET_ID = "image", "question", "ask", "budget"
UNPRUNED_ID, PRUNED_ID, KEPT_ID, TIMINGS_ID, KEPT_IMAGE_ID = "answer-unpruned", "answer-pruned", "kept", "timings", \
    "kept-image"
SCENE_LAYOUTS = ("default", "dense")
SCENES_PER_LAYOUT = 12


@dataclass
class Answers:
    """Both runs for one question: what the page shows."""

    unpruned: str
    pruned: str
    kept: str  # "13 / 256 visual tokens kept (5.1 %) after layer 4"
    timings: str  # markdown table
    kept_image: object  # PIL image with the kept tokens drawn and captioned


def benchmark_scenes() -> dict[str, tuple]:
    """Label -> (image, question, reference answer) for the first test items of each layout (seed 0)."""
    from .data.scenes import generate_items, render_scene

    scenes = {}
    for layout in SCENE_LAYOUTS:
        for i, (scene, record) in enumerate(generate_items(SCENES_PER_LAYOUT, seed=0, split="test", layout=layout)):
            label = f"{layout} test item {i}: {record['question']}"
            scenes[label] = (render_scene(scene), record["question"], record["short_answer"])
    return scenes


def method_choices(model) -> list[str]:
    from .methods import method_names

    return (["glimpse"] if model.glimpse is not None else []) + method_names()


def ask(model, image, question: str, method: str, max_keep_ratio: float, max_new_tokens: int = 16) -> Answers:
    """Answer ``question`` about ``image`` unpruned and with ``method`` at the budget ``max_keep_ratio`` (the cap on
    the kept share of visual tokens after the cut; 1 = no cap, the method's own rule alone)."""
    from .viz import KEPT_TOKENS_CAPTION, draw_kept_tokens, grids_per_image

    if image is None:
        raise ValueError("upload an image or pick a benchmark scene first")
    question = (question or "").strip()
    if not question:
        raise ValueError("type a question first")
    if not 0.0 < max_keep_ratio <= 1.0:
        raise ValueError(f"the budget must be in (0, 1], got {max_keep_ratio}")
    image = image.convert("RGB")
    cap = None if max_keep_ratio >= 1.0 else max_keep_ratio
    full_text, full = model.answer([image], question, method="none", max_new_tokens=max_new_tokens)
    text, out = model.answer([image], question, method=method, max_new_tokens=max_new_tokens, max_keep_ratio=cap)
    state = out.pruning
    sample = state.samples[0]
    kept = (f"{sample.kept} / {sample.total} visual tokens kept ({100 * sample.ratio:.1f} %) after layer "
            f"{state.prune_layer}, method {state.method}")
    timings = "\n".join([
        "| run | prefill | decode | KV length after prefill |",
        "|---|---|---|---|",
        f"| unpruned | {1000 * full.prefill_seconds:.1f} ms | {full.decode_ms_per_token:.1f} ms/token "
        f"({full.new_tokens} tokens) | {full.pruning.kv_lengths[0]} |",
        f"| {state.method} | {1000 * out.prefill_seconds:.1f} ms | {out.decode_ms_per_token:.1f} ms/token "
        f"({out.new_tokens} tokens) | {state.kv_lengths[0]} |",
        "",
        "One request at batch size 1 on this server's device, single runs (the model was warmed up at start); "
        "`glimpseprune bench` measures medians over repeats.",
    ])
    caption = f"{KEPT_TOKENS_CAPTION}; {sample.kept}/{sample.total} kept, method {state.method}"
    letterbox = model.adapter.letterboxes_images
    if any(im.view is not None for im in sample.images):
        # Several views of the image (AnyRes): the base view is a plain resize of the whole image and is drawn, as
        # in the CLI; the other views are not.
        parts = [(im, (0.0, 0.0, 1.0, 1.0) if im.view == "base" else None) for im in sample.images]
    else:
        parts = grids_per_image([image.size], sample.images,
                                lambda w, h: model.adapter.grid_regions(w, h, model.processor))[0]
    return Answers(full_text, text, kept, timings, draw_kept_tokens(image, parts, letterbox, caption))


def offline_theme():
    """Gradio's default theme with system fonts: the page loads nothing from font CDNs (works offline)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(model, description: str, max_new_tokens: int = 16):
    """The Gradio Blocks app around ``model`` (a GlimpsePrune with modules)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports leave the machine by default
    import gradio as gr

    scenes = benchmark_scenes()
    methods = method_choices(model)

    def on_scene(label):
        if not label:
            return gr.update(), gr.update(), ""
        image, question, reference = scenes[label]
        return image, question, reference

    def on_ask(image, question, method, budget):
        try:
            a = ask(model, image, question, method, float(budget), max_new_tokens)
        except ValueError as err:  # bad input: one clear line on the page, never a traceback
            raise gr.Error(str(err)) from None
        return a.unpruned, a.pruned, a.kept, a.timings, a.kept_image

    with gr.Blocks(title="GlimpsePrune", analytics_enabled=False) as app:
        gr.Markdown(f"## GlimpsePrune: unpruned vs pruned answers\nModel: {description}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image (upload, or pick a benchmark scene)", elem_id=IMAGE_ID,
                                 sources=["upload", "clipboard"])
                scene = gr.Dropdown(choices=list(scenes), value=None, label="benchmark scene (glimpse-shapes test)")
                question = gr.Textbox(label="question", elem_id=QUESTION_ID, placeholder="What colour is the triangle?")
                reference = gr.Textbox(label="reference answer (benchmark scenes only)", interactive=False)
                with gr.Row():
                    method = gr.Dropdown(choices=methods, value=methods[0], label="pruning method")
                    budget = gr.Slider(0.01, 1.0, value=1.0, step=0.01, elem_id=BUDGET_ID,
                                       label="budget: max kept share of visual tokens (1 = no cap)")
                button = gr.Button("Ask", variant="primary", elem_id=ASK_ID)
            with gr.Column():
                unpruned = gr.Textbox(label="unpruned answer", elem_id=UNPRUNED_ID, interactive=False)
                pruned = gr.Textbox(label="pruned answer", elem_id=PRUNED_ID, interactive=False)
                kept = gr.Textbox(label="kept visual tokens", elem_id=KEPT_ID, interactive=False)
                kept_image = gr.Image(label="kept tokens over the image", elem_id=KEPT_IMAGE_ID, interactive=False)
                timings = gr.Markdown(elem_id=TIMINGS_ID)
        scene.change(on_scene, scene, [image, question, reference])
        image.upload(lambda: "", None, reference)
        outputs = [unpruned, pruned, kept, timings, kept_image]
        button.click(on_ask, [image, question, method, budget], outputs, api_name="ask")
        question.submit(on_ask, [image, question, method, budget], outputs)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_model_arguments, add_quiet_argument

    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to your "
                                                            "network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests computed at the same time; above 1, two requests share torch's thread pool and a token whose VIP score sits at the threshold can flip (seen in the concurrency test: 22 vs 20 kept), so answers are reproducible only at 1")
    add_quiet_argument(parser)


def load(args):
    """(model, description) from the model options, warmed up once so the first answer's timings are not the
    interpreter's first-call costs."""
    from .cli import load_model, progress_bars

    with progress_bars(not args.quiet):
        model, description = load_model(args)
    if model.glimpse is None:
        raise ValueError("the model has no GlimpsePrune modules: pass --glimpse")
    from . import assets

    model.answer([assets.example_image()], assets.EXAMPLE_QUESTION, max_new_tokens=2)
    return model, description


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("glimpseprune ui needs Gradio: pip install 'glimpseprune[ui]' (or scripts/install.sh)") from None
    model, description = load(args)
    app = build_app(model, description, args.max_new_tokens)
    app.queue(default_concurrency_limit=args.concurrency).launch(server_name=args.host, server_port=args.port,
                                                                 share=False, theme=offline_theme())
    return 0
