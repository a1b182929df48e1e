"""Pretrain the mini base model: a small Qwen2.5-VL trained from scratch, on CPU, on grounded records.

``glimpseprune pretrain-mini [--config FILE] [key=value ...]`` (defaults: ``configs/mini/pretrain.json``, i.e.
:data:`DEFAULTS`). Overrides are JSON values where they parse (``steps=50``, ``model.text_layers=4``,
``data=null``) and plain strings otherwise (``output_dir=runs/x``).

What it does, in order:

1. **Data.** ``data``: any record file(s) :func:`~glimpseprune.data.records.load_records` reads (Visual-CoT format:
   question, answer or short_answer, image, bboxs). ``data: null`` (the default) uses the glimpse-shapes train
   split, generated in memory from ``synthetic`` (``n_train``, ``seed``, ``size``) and rendered on the fly: the
   same items and pixels as ``python -m glimpseprune.data.scenes`` writes, without the disk. Validation: the
   benchmark's val split (``n_val`` items), or ``val_data``.
2. **Tokenizer.** A byte-level BPE trained on the records' questions and answers, wrapped as a real
   ``Qwen2Tokenizer`` with Qwen's special tokens and chat layout (:func:`glimpseprune.offline_processors.build_qwen_tokenizer`).
3. **Model.** A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` from ``model`` (sizes below).
4. **Training.** Sequence = chat prompt with the image + the answer + ``<|im_end|>``; the language-model loss is on
   the answer tokens only. For glimpse-shapes records (they carry their ``scene``) three things are added, all
   computed from the scene and its exact boxes:

   - ``extra_turns`` more questions about the same image follow as further chat turns (the record's own question
     stays first, i.e. exactly the single-turn prompt of inference). The vision tower, most of the cost, runs once
     for all of them, so each step supervises ``1 + extra_turns`` answers per image.
   - an auxiliary dense loss (``aux_weight``): a linear probe on the vision tower's merged tokens predicts, for
     every token cell, the colour and the shape of the object covering it and the shape of the object centred in
     it. The probe is training scaffolding (kept in the checkpoint state, never in the saved model): the shipped
     model is a stock Qwen2.5-VL.
   - a grounding loss (``attn_weight``, ``attn_layers``): at those decoder layers the attention of the position
     that predicts each answer (``attn_from="question"``: also of every position from the question's last colour
     or shape word on), averaged over heads and renormalised over the visual tokens, should fall on that answer's
     box tokens (loss ``-log`` of that share; eager attention in the decoder while training).
   - ``turn_sampling="benchmark"``: the extra turns' exists and count questions follow the benchmark's answer
     distributions (yes/no 50/50 with partial matches, counts drawn by answer), not mostly "no" and "zero".
   - a distractor curriculum (``objects_curriculum``): early steps see each scene reduced to 1, then 2, 3 …
     of its objects, magnified (``zoomed_scene``), with every question derived from the reduced scene; then the
     full scenes. Together with a resolution curriculum (``warmup_pixels``: the curriculum at 224², the rest at
     448²) and two initialisation scales (``model.resid_init_std``, ``model.merger_init_std``) this is what
     makes the model look at the image at all (``docs/mini_model.md``, attempt Z).

   Optional, off in the shipped recipe (see ``docs/mini_model.md``, attempts H and C): ``prompt_order``
   (question before the image), a relevance probe on the decoder's visual states (``relevance_*``) and a dense
   probe tied to the word embeddings (``aux_aligned``).

   AdamW, linear warm-up then cosine decay, gradient clipping, fp32, ``threads`` torch threads (1 is fastest on
   a shared 2-core machine) and ``num_workers`` data processes (rendering + preprocessing overlap the step).
5. **Checkpoints.** Every ``save_every`` steps ``<output_dir>/checkpoint/`` (model + processor + optimiser,
   scheduler and step); a re-run with the same output folder continues from it (``resume=false`` starts over).
   The data order is a pure function of (seed, step), so a resumed run sees the same batches as an uninterrupted
   one. ``max_minutes`` stops (after saving) once that much training time has been spent; re-run to continue.
6. **Result.** ``<output_dir>/final/`` (``save_pretrained`` of model and processor, loadable by
   ``GlimpsePrune.from_pretrained``) and ``<output_dir>/metrics.json`` (steps, wall time, validation accuracy).

This module is the recipe (config, driver loop, checkpoints, CLI). Its components: the model, tokenizer and
greedy validation in :mod:`~glimpseprune.mini.base_model`, the data and batches in
:mod:`~glimpseprune.mini.pretrain_data`, the probes and the step's losses in :mod:`~glimpseprune.mini.probes`, the
learning-rate and curriculum schedules in :mod:`~glimpseprune.mini.schedules`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .base_model import (
    MiniModelSpec,
    accuracy,
    build_model,
    build_tokenizer_processor,
    chat_template,
    greedy_answers,
    save_model,
)
from .pretrain_data import (
    ATTN_FROM,
    TURN_SAMPLINGS,
    Collator,
    StepBatches,
    check_choice,
    record_examples,
    split_batch,
    synthetic_examples,
    worker_init,
)
from .probes import TrainingProbes, pretrain_losses, word_class_ids
from .schedules import check_objects_curriculum, lr_lambda, pixels_for_step

DEFAULTS: dict = {  # = configs/mini/pretrain.json, the recipe of the shipped mini model (a test checks)
    "data": None,
    "synthetic": {"n_train": 40000, "seed": 0, "size": 448},
    "val_data": None,
    "n_val": 64,
    "output_dir": "runs/mini_base",
    "seed": 0,
    "steps": 1720,
    "batch_size": 16,
    "lr": 2e-3,
    "min_lr_ratio": 0.05,
    "warmup_steps": 25,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "aux_weight": 1.0,
    "lowercase_prob": 0.25,
    "extra_turns": 11,
    "attn_weight": 1.0,
    "attn_layers": [2, 3],
    "attn_from": "question",
    "turn_sampling": "benchmark",
    "prompt_order": "image_first",
    "relevance_weight": 0.0,
    "relevance_layer": 2,
    "relevance_pos_weight": 20.0,
    "relevance_loss": "bce",
    "aux_aligned": False,
    "warmup_pixels": {"max_pixels": 224 * 224, "steps": 1500},
    "objects_curriculum": [[600, 1, 3.0], [700, 2, 3.0], [800, 3, 2.5]],
    "role_tokens": True,
    "aux_object_weight": 10.0,
    "vision_warmup_steps": 500,
    "decoder_lr_restart": True,
    "threads": 2,
    "num_workers": 1,
    "save_every": 50,
    "eval_every": 500,
    "max_minutes": None,
    "resume": True,
    "progress": True,
    "log_every": 50,
    "tokenizer_vocab_size": 400,
    "min_pixels": 56 * 56,
    "max_pixels": 448 * 448,
    "max_new_tokens": 4,
    "model": {
        "text_hidden": 128, "text_layers": 6, "text_heads": 4, "text_kv_heads": 2, "text_intermediate": 384,
        "vision_hidden": 96, "vision_depth": 4, "vision_heads": 4, "vision_intermediate": 192,
        "fullatt_blocks": [1, 3], "window_size": 112, "patch_size": 14, "initializer_range": 0.02,
        "embed_init_std": 1.0, "tie_word_embeddings": False, "resid_init_std": 0.004, "merger_init_std": 0.25
    },
}


@dataclass
class PretrainConfig:
    data: str | list[str] | None = None
    synthetic: dict = field(default_factory=lambda: dict(DEFAULTS["synthetic"]))
    val_data: str | list[str] | None = None
    n_val: int = 128
    output_dir: str = "runs/mini_base"
    seed: int = 0
    steps: int = 360
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 25
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    aux_weight: float = 1.0
    lowercase_prob: float = 0.25  # questions also seen with a lower-case first letter ("what colour is ...")
    # Grounding loss: at these decoder layers, the attention (mean over heads) of the position that predicts the
    # answer should fall, among the visual tokens, on the tokens of the record's boxes: -log(mass on the boxes).
    attn_weight: float = 0.0
    # glimpse-shapes records: this many more questions about the same image, derived from its scene, follow the
    # record's own question as further chat turns (the ViT, most of the cost, runs once for all of them)
    extra_turns: int = 5
    # How the extra turns draw exists / count questions: "uniform" or "benchmark" (see derive_turns).
    turn_sampling: str = "uniform"
    attn_layers: list[int] = field(default_factory=lambda: [2, 3])
    # Which positions the grounding loss supervises. "answer": the position that predicts the answer. "question":
    # also every position from the question's last colour/shape word on (glimpse-shapes questions; others fall back
    # to "answer"). In the image-first layout the word token itself ("triangle") can attend straight to the
    # matching visual tokens, a one-hop match, instead of first moving the word to the answer position.
    attn_from: str = "answer"
    # "text_first": the question precedes the image in the user turn (the saved chat template says so, so answer,
    # demo, eval and stage-1 training format prompts the same way). Image tokens can then read the question.
    prompt_order: str = "image_first"
    # Relevance probe (training scaffolding, like the dense probe): a linear layer on the decoder's hidden state of
    # each visual token after ``relevance_layer`` layers predicts whether that token holds the centre of an object
    # the question is about (the centre cell of each box; none for "evidence" boxes of a "no" answer). One marked
    # token per referenced object, so the mark also supports counting. BCE with ``relevance_pos_weight``.
    relevance_weight: float = 0.0
    relevance_layer: int = 2
    relevance_pos_weight: float = 20.0
    # "bce": per-token BCE (pos_weight above). "softmax": per image, every marked token must beat all unmarked ones
    # and a learned "nothing here" logit; an image with no mark must put the null logit first. One well-scaled term
    # per image instead of 256 mostly easy ones.
    relevance_loss: str = "bce"
    # Dense probe classes tied to the decoder's own word embeddings: the covering colour / shape of a cell is
    # scored by cosine similarity between the merged visual token and the embedding(s) of that word ("red",
    # " red"; "triangle", " triangle", " triangles"). Visual tokens then carry the very vectors the question's words
    # are made of, so "does this token hold what the question names" is a similarity the attention can read.
    aux_aligned: bool = False
    # Resolution curriculum: {"max_pixels": P, "steps": N}: the first N steps see images down-scaled to at most P
    # pixels (e.g. 224² -> 64 visual tokens instead of 256): 4x cheaper steps and 4x fewer distractor tokens while
    # the decoder learns to find what the question names; the remaining steps train at ``max_pixels``.
    warmup_pixels: dict | None = None
    # Distractor curriculum: [[until_step, max_objects(, max_zoom_out)], ...]. Before ``until_step`` every training
    # image keeps 1..max_objects of its scene's objects (a random subset, re-rendered; with ``max_zoom_out``, also
    # magnified, see ``zoomed_scene``) and all its questions are derived from that reduced scene. With one object
    # the decoder only has to read what it sees; with two it must pick the one the question names out of two, a
    # strong gradient for the match that 3-6 objects hide in noise.
    objects_curriculum: list | None = None
    # Train the tokenizer on the chat template's role names too ("user", "assistant"): spelled out letter by letter
    # they are ~12 of the ~25 tokens of a turn, almost half of the decoder's text compute. Off in the shipped recipe
    # (its tokenizer predates the option and must stay reproducible).
    role_tokens: bool = False
    # Weight of object cells (vs background cells, weight 1) in the dense probe's cross-entropies. Background is
    # ~90 % of the cells, so at 1 a probe that names every object's shape wrongly still has a low loss.
    aux_object_weight: float = 1.0
    # The first N steps train only the vision tower and its dense probe (no decoder pass, full scenes): shapes
    # are learnt from object outlines, which full scenes (small objects) show and magnified ones (big flat
    # interiors) hide. The objects curriculum's steps count from 0 as usual; it starts after these steps.
    vision_warmup_steps: int = 0
    decoder_lr_restart: bool = False  # see lr_lambda
    threads: int = 1
    num_workers: int = 1
    save_every: int = 20
    eval_every: int = 100
    max_minutes: float | None = None
    resume: bool = True
    progress: bool = True
    # Every N steps, one plain text line with the running losses (for logs of runs without a terminal; 0: never).
    log_every: int = 0
    tokenizer_vocab_size: int = 400
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448
    max_new_tokens: int = 4
    model: MiniModelSpec = field(default_factory=MiniModelSpec)

    @classmethod
    def from_dict(cls, data: dict, overrides: list[str] | None = None) -> "PretrainConfig":
        from ..train.trainer import apply_overrides  # the same key=value syntax as `glimpseprune train`

        data = apply_overrides(json.loads(json.dumps(data)), overrides, {f.name for f in fields(cls)}, "pretrain")
        model = data.pop("model", {}) or {}
        unknown = set(model) - {f.name for f in fields(MiniModelSpec)}
        if unknown:
            raise ValueError(f"unknown model keys: {sorted(unknown)}")
        return cls(**data, model=MiniModelSpec(**model))

    @classmethod
    def from_file(cls, path, overrides: list[str] | None = None) -> "PretrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()), overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the recipe --------------------------------------------------------------------------------------------------

def load_examples(cfg: PretrainConfig):
    """(train, val, synthetic): the training and validation examples the config names."""
    synthetic = cfg.data is None
    if synthetic:
        s = cfg.synthetic
        train = synthetic_examples(s["n_train"], s.get("seed", 0), s.get("size", 448), "train")
    else:
        train = record_examples(cfg.data)
    if cfg.val_data:
        val = record_examples(cfg.val_data)[:cfg.n_val]
    elif synthetic:
        val = synthetic_examples(cfg.n_val, cfg.synthetic.get("seed", 0), cfg.synthetic.get("size", 448), "val")
    else:
        val = []
    return train, val, synthetic


def check_config(cfg: PretrainConfig) -> None:
    """Every choice and layer index the config names, before any work."""
    chat_template(cfg.prompt_order)
    check_choice("attn_from", cfg.attn_from, ATTN_FROM)
    check_choice("turn_sampling", cfg.turn_sampling, TURN_SAMPLINGS)
    if cfg.attn_weight and not all(0 <= int(k) < cfg.model.text_layers for k in cfg.attn_layers):
        raise ValueError(f"attn_layers must be decoder layer indices in 0..{cfg.model.text_layers - 1}, "
                         f"got {cfg.attn_layers}")
    check_objects_curriculum(cfg.objects_curriculum)
    if cfg.relevance_weight and not 1 <= cfg.relevance_layer <= cfg.model.text_layers:
        raise ValueError(f"relevance_layer must be in 1..{cfg.model.text_layers}, got {cfg.relevance_layer}")


def build_optimizer(params: list, cfg: PretrainConfig):
    """AdamW (weight decay on matrices only) and the warm-up + cosine schedule of :func:`lr_lambda`."""
    import torch

    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    return optimizer, scheduler


def training_loader(train, processor, collator, cfg: PretrainConfig, start: int):
    """Batches of steps ``start..steps-1`` (a pure function of seed and step), prepared by ``num_workers``."""
    import torch

    pixels = pixels_for_step(cfg)
    # The curriculum changes the batches' image size: give them their own processor, the saved one must not change.
    batches = StepBatches(train, Collator(copy.deepcopy(processor), cfg.attn_from) if pixels else collator,
                          cfg.batch_size, cfg.seed, start, cfg.steps, cfg.lowercase_prob, cfg.extra_turns,
                          pixels, cfg.objects_curriculum, cfg.vision_warmup_steps, cfg.turn_sampling)
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                       worker_init_fn=worker_init if cfg.num_workers else None,
                                       prefetch_factor=2 if cfg.num_workers else None,
                                       persistent_workers=False)


@dataclass
class RunningLosses:
    """Exponential moving averages of the logged losses (0.9 old + 0.1 new)."""

    lm: float | None = None
    attn: float | None = None

    def update(self, losses) -> None:
        if losses.lm is not None:
            lm_value = float(losses.lm.loss.detach())
            self.lm = lm_value if self.lm is None else 0.9 * self.lm + 0.1 * lm_value
        if losses.attn_loss is not None:
            a_value = float(losses.attn_loss.detach())
            self.attn = a_value if self.attn is None else 0.9 * self.attn + 0.1 * a_value

    def line(self, step: int, losses, lr: float, elapsed: float) -> str:
        return (f"[pretrain-mini] step {step}: lm {'-' if self.lm is None else f'{self.lm:.3f}'} "
                f"aux {float(losses.aux_loss.detach()):.3f}" + ("" if self.attn is None else f" attn {self.attn:.3f}")
                + f" lr {lr:.1e} ({elapsed / 60:.1f} min)")

    def postfix(self, losses) -> dict:
        post = dict(lm="-" if self.lm is None else f"{self.lm:.3f}", aux=f"{float(losses.aux_loss.detach()):.3f}")
        if losses.rel_loss is not None:
            post["rel"] = f"{float(losses.rel_loss.detach()):.3f}"
        if losses.attn_loss is not None:
            post["attn"] = f"{float(losses.attn_loss.detach()):.3f}"
        return post


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    from ..processing import load_processor
    from ..state_io import load_state, refuse_pickle, save_state, state_exists

    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    train, val, synthetic = load_examples(cfg)
    check_config(cfg)
    probes = TrainingProbes.create(cfg.model.text_hidden)
    aux_head, rel_head, rel_null, aux_scale = probes.aux_head, probes.rel_head, probes.rel_null, probes.aux_scale
    state = None
    if cfg.resume and (ckpt / "state.pt").is_file() and not state_exists(ckpt / "state"):
        raise refuse_pickle(ckpt / "state.pt", "pretrain state")  # older versions pickled it: never unpickled
    if cfg.resume and state_exists(ckpt / "state"):
        model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32)
        processor = load_processor(ckpt, model.config.model_type)
        state = load_state(ckpt / "state")  # safetensors + JSON: a planted checkpoint cannot run code
        aux_head.load_state_dict(state["aux_head"])
        if "rel_head" in state:
            rel_head.load_state_dict(state["rel_head"])
            with torch.no_grad():
                rel_null.copy_(state["rel_null"])
                aux_scale.copy_(state.get("aux_scale", aux_scale))
        log(f"[pretrain-mini] resuming from {ckpt} at step {state['step']}")
    else:
        processor = build_tokenizer_processor(train, cfg, synthetic)
        model = build_model(processor.tokenizer, cfg.model, cfg.seed)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + 1)
            aux_head.reset_parameters()
            rel_head.reset_parameters()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[pretrain-mini] {len(train)} training examples, {len(val)} validation; model {n_params / 1e6:.2f} M "
        f"parameters; {cfg.steps} steps of {cfg.batch_size}; {cfg.threads} thread(s)")

    params = list(model.parameters()) + probes.parameters()
    optimizer, scheduler = build_optimizer(params, cfg)
    start, elapsed, history = 0, 0.0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, elapsed, history = state["step"], state["elapsed"], state["history"]

    if cfg.attn_weight:
        # The grounding loss needs attention weights: eager attention in the decoder (the ViT keeps SDPA).
        model.config.text_config._attn_implementation = "eager"
    captured = {}
    hook = model.model.visual.register_forward_hook(
        lambda _m, _a, output: captured.__setitem__("merged", output.pooler_output)
    )
    word_ids = word_class_ids(processor.tokenizer) if cfg.aux_aligned else None
    loader = training_loader(train, processor, Collator(processor, cfg.attn_from), cfg, start)

    def save_checkpoint(step: int) -> None:
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, processor, tmp)
        save_state({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "aux_head": aux_head.state_dict(), "rel_head": rel_head.state_dict(), "rel_null": rel_null.detach(),
                    "aux_scale": aux_scale.detach(), "elapsed": elapsed, "history": history,
                    "config": cfg.to_dict()}, tmp / "state")
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)

    def evaluate(step: int) -> float | None:
        if not val:
            return None
        acc = accuracy(greedy_answers(model, processor, val, max_new_tokens=cfg.max_new_tokens), val)
        history.append({"step": step, "val_em": acc, "elapsed_s": round(elapsed, 1)})
        model.train()
        return acc

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="pretrain-mini", dynamic_ncols=True)
    model.train()
    step, stopped, t_last = start, False, time.perf_counter()
    running = RunningLosses()
    try:
        for batch in loader:
            batch, extras = split_batch(batch)
            losses = pretrain_losses(model, probes, batch, extras, cfg, captured, word_ids,
                                     vision_only=step < cfg.vision_warmup_steps)
            if not losses.loss.requires_grad:
                raise ValueError(f"step {step}: nothing to train (vision_warmup_steps needs records with a scene)")
            losses.loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            running.update(losses)
            if cfg.log_every and step % cfg.log_every == 0:
                log(running.line(step, losses, scheduler.get_last_lr()[0], elapsed))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**running.postfix(losses), lr=f"{scheduler.get_last_lr()[0]:.1e}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                acc = evaluate(step)
                if acc is not None:
                    log(f"[pretrain-mini] step {step}: val exact match {100 * acc:.1f} % ({elapsed / 60:.1f} min)")
                t_last = time.perf_counter()
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(step)
                t_last = time.perf_counter()
            if cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes and step < cfg.steps:
                save_checkpoint(step)
                log(f"[pretrain-mini] time budget of {cfg.max_minutes} min used at step {step}: checkpoint saved, "
                    "run again to continue")
                stopped = True
                break
    finally:
        hook.remove()
        if bar is not None:
            bar.close()
    metrics = {"step": step, "train_seconds": round(elapsed, 1), "history": history, "done": not stopped}
    if not stopped and step >= cfg.steps:
        acc = evaluate(step)
        metrics["val_em"] = acc
        if acc is not None:
            log(f"[pretrain-mini] final val exact match {100 * acc:.1f} % on {len(val)} items")
        model.eval()
        save_model(model, processor, out / "final")
        metrics["final"] = str(out / "final")
        log(f"[pretrain-mini] saved {out / 'final'} after {elapsed / 60:.1f} min of training")
    metrics["config"] = cfg.to_dict()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pretraining config (JSON); default: the built-in recipe "
                        "(= configs/mini/pretrain.json)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=100")


def run(args: argparse.Namespace) -> int:
    if args.config:
        cfg = PretrainConfig.from_file(args.config, args.overrides)
    else:
        cfg = PretrainConfig.from_dict(DEFAULTS, args.overrides)
    metrics = pretrain(cfg)
    return 0 if metrics.get("done") else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glimpseprune pretrain-mini", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
