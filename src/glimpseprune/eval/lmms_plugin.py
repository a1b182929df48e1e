"""GlimpsePrune as an lmms-eval model, and a local lmms-eval task made of glimpse-shapes files.

lmms-eval finds external models through the Python entry-point group ``lmms_eval.models`` (its
``models/registry_v2.py``); ``pyproject.toml`` registers :func:`manifest` there, so once this package and lmms-eval
are installed::

    python -m glimpseprune.eval.lmms_plugin shapes_task --n 100          # writes a local task (images + YAML)
    lmms-eval --model glimpseprune --include_path shapes_task --tasks glimpse_shapes \\
        --model_args method=glimpse,max_keep_ratio=0.111 --batch_size 8 --output_path runs/lmms

``model_args`` (all optional): ``pretrained`` (base VLM folder or hub id; default the embedded mini model),
``glimpse`` (modules folder or hub id), ``adapter`` (GlimpsePrune+ LoRA), ``method`` (``glimpse``, ``none`` or a
baseline name), ``max_keep_ratio`` (cap on the kept share; ``none`` for no cap), ``threshold``, ``min_keep``,
``per_image``, ``prune_layer`` (K), ``device``, ``dtype``. A key the plug-in does not know is refused, never ignored.

lmms-eval 0.7 declares ``torchvision`` as a requirement, which would replace the CPU build of torch; nothing it
imports on this path needs torchvision, so ``scripts/install.sh`` installs it with ``--no-deps`` plus the packages
it imports (the ``lmms`` extra). See ``docs/lmms_eval.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger

MODEL_ID = "glimpseprune"
MODULE = "glimpseprune.eval.lmms_plugin"  # not __name__, which is "__main__" under python -m
TASK_NAME = "glimpse_shapes"

# The generation options of lmms-eval's ``gen_kwargs`` that mean the same thing in GlimpsePrune.generate.
_GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
# ``gen_kwargs`` keys that only matter to other models' batching and that change nothing here.
_IGNORED_GENERATION_KEYS = ("until", "num_beams")


def manifest():
    """What the ``lmms_eval.models`` entry point returns: the model id and the class that implements it."""
    # imported here: importing lmms_eval.models loads this entry point, so a top-level import would be circular
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{MODULE}.GlimpsePruneLMMS")


def _none_or(value):
    return None if isinstance(value, str) and value.lower() == "none" else value


class GlimpsePruneLMMS(lmms):
    """``generate_until`` through :meth:`glimpseprune.GlimpsePrune.generate` with the pruning knobs fixed per run.

    After each ``generate_until`` call, :attr:`pruning_log` holds one ``(kept, total)`` visual-token count per
    request, in request order (``total`` is the number of visual tokens before the cut)."""

    def __init__(self, pretrained: str | None = None, glimpse: str | None = None, adapter: str | None = None,
                 method: str = "glimpse", max_keep_ratio=None, threshold: float | None = None,
                 min_keep: int | None = None, per_image: bool | None = None, prune_layer: int | None = None,
                 device: str | None = None, dtype: str = "auto", batch_size=1, **unknown) -> None:
        super().__init__()
        # lmms-eval passes max_batch_size to every model; anything else unknown is a typo in --model_args
        unknown.pop("max_batch_size", None)
        if unknown:
            raise ValueError(f"unknown model_args for {MODEL_ID}: {sorted(unknown)} (known: pretrained, glimpse, "
                             "adapter, method, max_keep_ratio, threshold, min_keep, per_image, prune_layer, device, "
                             "dtype)")
        import torch

        from ..model import GlimpsePrune

        device = _none_or(device) or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
        if _none_or(pretrained):
            self.model = GlimpsePrune.from_pretrained(pretrained, _none_or(glimpse),
                                                      dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                                                      device=device, adapter=_none_or(adapter))
        else:
            if _none_or(adapter) or dtype != "auto":
                raise ValueError("adapter= and dtype= need pretrained= (the embedded mini model runs in float32 "
                                 "and has no GlimpsePrune+ adapter)")
            from .. import assets

            self.model, _ = assets.default_model(device=device, glimpse=_none_or(glimpse))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # the per-call pruning options of GlimpsePrune.generate; None leaves the modules' own default
        self.prune_options = {"method": _none_or(method), "threshold": threshold, "min_keep": min_keep,
                              "per_image": per_image, "prune_layer": prune_layer}
        if max_keep_ratio is not None:  # not given: the modules' default cap; "none": no cap
            self.prune_options["max_keep_ratio"] = _none_or(max_keep_ratio)
        # check the knobs now (a bad method name or ratio fails before any data is read)
        self.model.method(self.prune_options["method"], prune_layer=prune_layer,
                          **{k: v for k, v in self.prune_options.items()
                             if k in ("threshold", "min_keep", "per_image", "max_keep_ratio")})
        self.pruning_log: list[tuple[int, int]] = []

    # lmms-eval's model interface -------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from ..processing import build_inputs

        answers: list[str] = []
        self.pruning_log = []
        for start in range(0, len(requests), self.batch_size):
            chunk = [r.args for r in requests[start:start + self.batch_size]]
            # a chunk shares one set of generation options: split it where they change
            groups: list[list] = []
            for args in chunk:
                if groups and groups[-1][0][1] == args[1]:
                    groups[-1].append(args)
                else:
                    groups.append([args])
            for group in groups:
                contexts = [a[0] for a in group]
                visuals = [list(a[2](self.task_dict[a[4]][a[5]][a[3]]) or []) for a in group]
                options = self._generation_options(group[0][1])
                inputs = build_inputs(self.model.processor, contexts, visuals)
                out = self.model.generate(**inputs, **options, **self.prune_options)
                texts = self.model.processor.batch_decode(out.generated, skip_special_tokens=True)
                for (context, gen_kwargs, *_), text, sample in zip(group, texts, out.pruning.samples):
                    text = self._cut_at_stop(text, gen_kwargs.get("until"))
                    answers.append(text)
                    self.pruning_log.append((sample.kept, sample.total))
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        if self.pruning_log:
            kept = [k for k, _ in self.pruning_log]
            total = sum(t for _, t in self.pruning_log)
            # lmms-eval's results hold task metrics only: say here what the pruning kept
            logger.info(f"{MODEL_ID}: method {self.prune_options['method']}, kept {sum(kept)} of {total} visual "
                        f"tokens ({100 * sum(kept) / max(total, 1):.1f} %) over {len(kept)} requests, "
                        f"{min(kept)}-{max(kept)} per request")
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{MODEL_ID}: GlimpsePrune prunes during generation; log-likelihood (multiple-"
                                  "choice by scoring) tasks are not supported, use generate_until tasks")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{MODEL_ID}: multi-round generation is not supported")

    # helpers -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _generation_options(gen_kwargs: dict) -> dict:
        unknown = set(gen_kwargs) - set(_GENERATION_KEYS) - set(_IGNORED_GENERATION_KEYS)
        if unknown:
            raise ValueError(f"{MODEL_ID}: unsupported generation_kwargs {sorted(unknown)}")
        if int(gen_kwargs.get("num_beams", 1) or 1) != 1:
            raise ValueError(f"{MODEL_ID}: beam search (num_beams > 1) is not supported; GlimpsePrune decodes "
                             "greedily or by sampling")
        options = {k: gen_kwargs[k] for k in _GENERATION_KEYS if gen_kwargs.get(k) is not None}
        # lmms-eval tasks ask for greedy decoding with temperature 0
        if not options.get("do_sample") or options.get("temperature", 1.0) == 0:
            options = {k: v for k, v in options.items() if k not in ("temperature", "top_p", "top_k")}
            options["do_sample"] = False
        return options

    @staticmethod
    def _cut_at_stop(text: str, until) -> str:
        for stop in [until] if isinstance(until, str) else (until or []):
            if stop:
                text = text.split(stop)[0]
        return text.strip()


# The local task ------------------------------------------------------------------------------------------------

def doc_to_text(doc: dict) -> str:
    return doc["question"]


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def process_results(doc: dict, results: list[str]) -> dict:
    """lmms-eval's per-document scoring: the project's exact match (``glimpseprune.eval.scorers``)."""
    from .scorers import exact_match

    return {"exact_match": exact_match(results[0], doc["answer"])}


def write_task(out_dir: str | Path, n: int = 100, seed: int = 0, split: str = "test", layout: str = "default",
               task: str = TASK_NAME) -> Path:
    """Write a local lmms-eval task: ``n`` glimpse-shapes scenes of ``split`` as PNG files with a ``metadata.jsonl``
    (the ``imagefolder`` layout of ``datasets``, read offline) and ``<task>.yaml`` pointing at them. Returns the
    YAML's path. ``lmms-eval --include_path OUT_DIR --tasks <task>`` runs it."""
    from ..data.scenes import generate_items, render_scene

    out = Path(out_dir).resolve()
    data_dir = out / "data" / split
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "metadata.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for scene, record in generate_items(n, seed=seed, split=split, layout=layout):
            name = f"{record['id']}.png"
            render_scene(scene).save(data_dir / name, format="PNG")
            f.write(json.dumps({"file_name": name, "id": record["id"], "question": record["question"],
                                "answer": record["short_answer"], "qtype": record["qtype"]}) + "\n")
    # JSON is YAML: the file is written with json.dumps for exact quoting, the !function tags added by hand
    functions = {"doc_to_visual": "doc_to_visual", "doc_to_text": "doc_to_text", "process_results": "process_results"}
    lines = [f"task: {json.dumps(task)}", "dataset_path: imagefolder",
             f"dataset_kwargs: {json.dumps({'data_dir': str(out / 'data')})}",
             f"test_split: {split}", "output_type: generate_until"]
    lines += [f"{key}: !function {MODULE}.{fn}" for key, fn in functions.items()]
    lines += ["doc_to_target: answer",
              "generation_kwargs: " + json.dumps({"max_new_tokens": 8, "temperature": 0, "do_sample": False}),
              "metric_list:", "  - metric: exact_match", "    aggregation: mean", "    higher_is_better: true",
              "metadata: " + json.dumps({"version": 0.0, "source": f"glimpse-shapes seed {seed} {split} (layout "
                                                                    f"{layout}), {n} items"})]
    path = out / f"{task}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpseprune.eval.lmms_plugin",
                                     description="write a local lmms-eval task of glimpse-shapes scenes")
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=100, help="number of items (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="(default test)")
    parser.add_argument("--layout", default="default", help="glimpse-shapes layout: default or dense")
    args = parser.parse_args(argv)
    print(write_task(args.out_dir, args.n, args.seed, args.split, args.layout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
