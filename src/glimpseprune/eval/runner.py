"""The evaluation runner (docs/method.md §14): datasets x methods x budgets -> per-sample JSONL + summaries.

One *run unit* is (dataset file, method, budget). Its predictions go to
``<output>/<dataset>/<method>[-<budget>]-<hash>.jsonl`` where ``hash`` covers everything that can change a
prediction or a score (model id, method, budget, generation options, batch size, scorers, short-answer mode, the
dataset spec and seed, the glimpse config, and the LLM judge's model and prompt version when one is used). A changed
config therefore writes a new file and never reuses stale results; an unchanged one resumes: ids already in the file
are skipped.

Per-sample records hold the prediction, the reference, one score per scorer, visual tokens total/kept, the kept
ratio, the layer-averaged retention, the KV length, the token-level mask metrics against the record's boxes (when it
has boxes; the boxes are rasterised onto the image's actual merged-token grid with :mod:`glimpseprune.data.masks`)
and the prefill/decode time of the sample's batch (divided by the batch size as a per-sample share).

The summary is per (method, budget, dataset): n, mean score per scorer, mean kept ratio, mean layer-averaged
retention, mean mask IoU over samples with boxes, and mean per-sample prefill/decode seconds; plus an "Average" row
per (method, budget) that is the *unweighted* mean over datasets, as in the reference's tables.

Same-K control (``EvalConfig.same_k_control``, on by default): every ``glimpse`` unit is followed by a
``random@glimpse`` unit on the same records: random selection at GlimpsePrune's cut layer with the per-record kept
counts GlimpsePrune's rows recorded (:func:`glimpseprune.methods.random.same_count_control`, seeded by
``EvalConfig.seed``). Its run hash covers the GlimpsePrune unit's, so it is redone whenever those counts can
change. The summary's ``controls`` list states GlimpsePrune's score as a margin over that control per (budget,
dataset) with the exact paired test (:func:`glimpseprune.eval.stats.paired_exact_test`) on every 0/1 scorer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..budget import Budget
from ..data.masks import boxes_to_grid_mask, mask_metrics, normalize_boxes
from ..data.records import Record, load_records
from .scorers import get_scorer

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
RUNNER_VERSION = 1  # bump when the per-sample record format changes: old files then stop being reused


def resolve_method(model, method: str, budget: Budget, prune_layer: int | None = None, **options):
    """The :class:`~glimpseprune.methods.PruneMethod` (or None for ``none``) that one (method, budget) unit runs;
    ``options`` are the method's own keyword parameters."""
    if budget.retention is None:
        return model.method(method, prune_layer=prune_layer, **budget.kwargs(), **options)
    if method in ("none", None):
        return None
    if method == "glimpse":
        from ..budget import kept_ratio_for_retention

        if model.config is None:
            raise ValueError("no GlimpsePrune modules loaded: method 'glimpse' needs them")
        layer = prune_layer if prune_layer is not None else model.config.prune_layer
        cap = kept_ratio_for_retention(budget.retention, layer, model.adapter.num_layers)
        return model.method("glimpse", prune_layer=prune_layer, max_keep_ratio=cap, **budget.kwargs(), **options)
    return model.method(method, prune_layer=prune_layer, retention=budget.retention, **budget.kwargs(), **options)


JUDGE_SCORER = "judge"
SAME_K_CONTROL = "random@glimpse"  # random at GlimpsePrune's K with GlimpsePrune's per-record kept counts


@dataclass(frozen=True)
class JudgeSpec:
    """An LLM judge (:class:`~glimpseprune.eval.judge.LLMJudge`) to add as the scorer ``"judge"``.

    Only what identifies the verdicts enters the run hash: the judge model, the prompt version and the temperature
    (always 0), i.e. the same fields as the judge's own cache key. The base URL, API key, cache folder, timeout and
    retries say where and how the verdicts are fetched, not what they are, so moving the server to another port
    resumes the same predictions file (the base URL is still written to the unit config and the summary).
    """

    base_url: str
    model: str
    cache_dir: str | None = None  # None: <output_dir>/judge_cache
    api_key_env: str | None = None
    prompt_version: str = "v1"
    timeout: float = 30
    deadline: float = 120  # overall seconds per request attempt (the timeout bounds each socket read only)
    max_retries: int = 2

    def hash_key(self) -> dict:
        return {"judge_model": self.model, "prompt_version": self.prompt_version, "temperature": 0}

    def build(self, output_dir: str):
        from .judge import LLMJudge

        cache_dir = self.cache_dir if self.cache_dir is not None else str(Path(output_dir) / "judge_cache")
        return LLMJudge(self.base_url, self.model, cache_dir=cache_dir, api_key_env=self.api_key_env,
                        timeout=self.timeout, deadline=self.deadline, max_retries=self.max_retries,
                        prompt_version=self.prompt_version)


@dataclass
class EvalConfig:
    datasets: list[str]  # load_records specs: path[:all|:first:N|:end:N|:random:N]
    methods: list[str] = field(default_factory=lambda: ["glimpse"])
    budgets: list[Budget] = field(default_factory=lambda: [Budget()])
    scorers: list[str] = field(default_factory=lambda: ["exact_match"])
    output_dir: str = "eval_results"
    model_id: str = "unknown"  # identifies the weights in the run hash (path / hub id / "tiny")
    batch_size: int = 1
    max_new_tokens: int = 128
    short_answer: bool = False
    root: str | None = None  # image root for load_records
    seed: int = 42
    limit: int | None = None  # evaluate at most this many records per dataset (after sampling)
    prune_layer: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)  # anything else that should enter the hash (e.g. glimpse config)
    judge: JudgeSpec | None = None  # adds the scorer "judge"; None: string scorers only
    same_k_control: bool = True  # a random@glimpse unit after every glimpse unit (see the module docstring)

    @property
    def scorer_names(self) -> list[str]:
        """``scorers`` plus ``"judge"`` when a judge is configured and it is not listed already."""
        names = list(self.scorers)
        if self.judge is not None and JUDGE_SCORER not in names:
            names.append(JUDGE_SCORER)
        return names

    def unit_key(self, dataset_spec: str, method: str, budget: Budget) -> dict:
        """Everything that can change a prediction or its scores for one run unit."""
        key = {
            "version": RUNNER_VERSION,
            "model_id": self.model_id,
            "dataset": dataset_spec,
            "dataset_sha256": file_digest(dataset_spec),  # an edited file never reuses old predictions
            "root": self.root,
            "seed": self.seed,
            "limit": self.limit,
            "method": method,
            "budget": asdict(budget),
            "prune_layer": self.prune_layer,
            "scorers": sorted(self.scorer_names),
            "batch_size": self.batch_size,  # padding changes numerics slightly
            "max_new_tokens": self.max_new_tokens,
            "short_answer": self.short_answer,
            "extra": self.extra,
        }
        if self.judge is not None:  # absent without a judge, so judge-less hashes stay what they were
            key["judge"] = self.judge.hash_key()
        return key


def file_digest(spec: str) -> str | None:
    from ..data.records import parse_spec

    path = parse_spec(spec).path
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


def dataset_name(spec: str) -> str:
    from ..data.records import parse_spec

    return _safe(parse_spec(spec).path.stem)


def unit_path(config: EvalConfig, dataset_spec: str, method: str, budget: Budget,
              control_of: str | None = None) -> Path:
    key = config.unit_key(dataset_spec, method, budget)
    if control_of is not None:  # a same-K control: its counts come from that GlimpsePrune unit
        key = {**key, "control_of": control_of}
    digest = config_hash(key)
    return Path(config.output_dir) / dataset_name(dataset_spec) / f"{_safe(method)}-{budget.tag}-{digest}.jsonl"


# ---- expected tasks ------------------------------------------------------------------------------------------


def resolve_tasks(tasks: list[str], task_dir: str | os.PathLike, sampling: str | None = None) -> list[str]:
    """Dataset specs for named tasks in ``task_dir`` (``<task>.json`` or ``<task>.jsonl``).

    Every listed task must exist: unlike the reference, which skipped missing benchmark files silently (and so
    averaged over fewer sets without saying so), a missing one raises ``FileNotFoundError`` naming all of them.
    """
    task_dir = Path(task_dir)
    specs, missing = [], []
    for task in tasks:
        found = next((task_dir / f"{task}{ext}" for ext in (".json", ".jsonl") if (task_dir / f"{task}{ext}").is_file()),
                     None)
        if found is None:
            missing.append(task)
        else:
            specs.append(str(found) + (f":{sampling}" if sampling else ""))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(tasks)} expected task file(s) missing in {task_dir}: {', '.join(missing)} "
            f"(looked for <task>.json / <task>.jsonl)"
        )
    return specs


def check_datasets_exist(specs: list[str]) -> None:
    from ..data.records import parse_spec

    missing = [s for s in specs if not parse_spec(s).path.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset file(s) not found: {', '.join(missing)}")


# ---- per-sample work -----------------------------------------------------------------------------------------


# What summarize() and the resume need from a stored row, with the types they rely on.
_ROW_FIELDS = {"id": (str, int), "method": str, "budget": str, "task": str, "answer": str, "scores": dict,
               "kept_ratio": (int, float), "visual_tokens_total": int, "visual_tokens_kept": int}


def check_row(row, path: Path, line_no: int) -> None:
    """A stored prediction row has the fields and types the summary reads; anything else names file and line."""
    from ..errors import ConfigError

    where = f"{path}:{line_no}"
    if not isinstance(row, dict):
        raise ConfigError(f"predictions file line {line_no} is a JSON {type(row).__name__}, not a row object", where)
    missing = [k for k in _ROW_FIELDS if k not in row]
    if missing:
        raise ConfigError(f"predictions file line {line_no} lacks {missing}; not a row this runner wrote "
                          "(delete the line or the file to evaluate those items again)", where)
    for key, kind in _ROW_FIELDS.items():
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"predictions file line {line_no}: {key} is {value!r}", where)
    for name, value in row["scores"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"predictions file line {line_no}: score {name!r} is {value!r}", where)


def read_done(path: Path) -> dict[str, dict]:
    """Rows already in a predictions file, by id, each checked (``check_row``). A torn row (killed run) is ignored;
    any other undecodable line is an error naming the file and line. Rows with a scorer failure (the LLM
    judge gave no verdict) are not done: their items are evaluated again, and the newer row wins."""
    from ..errors import ConfigError

    done = {}
    if not path.is_file():
        return done
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"predictions file is not UTF-8 text ({err})", path) from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if line.startswith('{"id": ') and not line.rstrip().endswith("}"):
                continue  # a row cut short by a kill mid-write (rows start with their id); appends go on below it
            raise ConfigError(f"predictions file line {i + 1} is not valid JSON ({err.msg})", f"{path}:{i + 1}") from None
        check_row(row, path, i + 1)
        if row.get("failures"):
            done.pop(str(row["id"]), None)
            continue
        done[str(row["id"])] = row
    return done


def references_for(record: Record) -> list[str]:
    refs = [record.answer]
    if record.short_answer and record.short_answer not in refs:
        refs.append(record.short_answer)
    return refs


def mask_quality(record: Record, sample) -> dict | None:
    """Token-level metrics of the kept mask vs the record's boxes on the image's own merged-token grid."""
    if not record.boxes or not sample.images:
        return None
    image = sample.images[0]
    rows, cols = image.grid
    target = boxes_to_grid_mask(normalize_boxes(record.boxes, record.width, record.height), rows, cols)
    return mask_metrics(image.keep.numpy(), target)


def _answer_lengths(generated, eos_ids: list[int]) -> list[int]:
    lengths = []
    for row in generated.tolist():
        n = len(row)
        for i, tok in enumerate(row):
            if tok in eos_ids:
                n = i + 1
                break
        lengths.append(n)
    return lengths


def _score(fn, prediction: str, refs: list[str], question: str) -> float:
    """One scorer on one answer; scorers marked ``needs_question`` (the LLM judge) also get the question."""
    if getattr(fn, "needs_question", False):
        return float(fn(prediction, refs, question=question))
    return float(fn(prediction, refs))


def _scores(scorers: dict, prediction: str, refs: list[str], question: str) -> tuple[dict, dict]:
    """(name -> score, name -> error): a judge that gave no verdict stores None and its error, never a 0."""
    from .judge import JudgeFailure

    scores, failures = {}, {}
    for name, fn in scorers.items():
        try:
            scores[name] = _score(fn, prediction, refs, question)
        except JudgeFailure as err:
            scores[name], failures[name] = None, str(err)
    return scores, failures


def build_scorers(config: EvalConfig):
    """(name -> scorer, the LLMJudge or None). Unknown names and a "judge" without a JudgeSpec raise ValueError."""
    scorers, judge = {}, None
    for name in config.scorer_names:
        if name == JUDGE_SCORER:
            if config.judge is None:
                raise ValueError("scorer 'judge' needs a judge: set EvalConfig.judge (CLI: --judge-url and "
                                 "--judge-model)")
            judge = config.judge.build(config.output_dir)
            scorers[name] = judge.as_scorer()
        else:
            scorers[name] = get_scorer(name)
    return scorers, judge


def control_method(model, records: list[Record], reference_rows: dict[str, dict], seed: int):
    """Random at the reference rows' cut layer with their per-record kept counts (the same-K control)."""
    from ..methods import get_method

    rows = [reference_rows[r.id] for r in records]
    layers = {row["prune_layer"] for row in rows}
    if len(layers) != 1 or None in layers:
        raise ValueError(f"same-K control: the GlimpsePrune rows have cut layers {sorted(map(str, layers))}, "
                         "expected one")
    return get_method("random", model, prune_layer=layers.pop(), seed=seed,
                      kept_counts=[row["visual_tokens_kept"] for row in rows])


def evaluate_batch(model, records: list[Record], method: str, budget: Budget, config: EvalConfig, scorers: dict,
                   dataset: str, reference_rows: dict[str, dict] | None = None) -> list[dict]:
    from ..processing import build_inputs

    questions = [r.question + ("\n" + SHORT_ANSWER_PROMPT if config.short_answer else "") for r in records]
    inputs = build_inputs(model.processor, questions, [[r.image] for r in records])
    if method == SAME_K_CONTROL:
        prune_method = control_method(model, records, reference_rows, config.seed)
    else:
        prune_method = resolve_method(model, method, budget, config.prune_layer)
    out = model.generate(**inputs, method=prune_method if prune_method is not None else "none",
                         max_new_tokens=config.max_new_tokens)
    texts = model.processor.batch_decode(out.generated, skip_special_tokens=True)
    eos = model.model.generation_config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    lengths = _answer_lengths(out.generated, eos_ids)
    state, bs = out.pruning, len(records)
    rows = []
    for b, (record, text) in enumerate(zip(records, texts)):
        sample = state.samples[b]
        prediction = text.strip()
        refs = references_for(record)
        retention = state.sample_retention(b)  # every cut stage, so multi-stage baselines are counted right
        scores, failures = _scores(scorers, prediction, refs, record.question)
        rows.append({
            "id": record.id,
            "dataset": record.dataset or dataset,
            "task": dataset,
            "method": method,
            "budget": budget.tag,
            "question": record.question,
            "answer": prediction,
            "reference": record.answer,
            "references": refs,
            "scores": scores,
            "visual_tokens_total": sample.total,
            "visual_tokens_kept": sample.kept,
            "kept_ratio": sample.ratio,
            "layer_averaged_retention": retention,
            "prune_layer": state.prune_layer,
            "num_layers": state.num_layers,
            "kv_length": int(state.kv_lengths[b]) if state.kv_lengths else None,
            "grid": [list(im.grid) for im in sample.images],
            "mask": mask_quality(record, sample),
            "new_tokens": lengths[b],
            "batch_size": bs,
            "prefill_seconds": out.prefill_seconds / bs,
            "decode_seconds": out.decode_seconds / bs,
            "batch_prefill_seconds": out.prefill_seconds,
            "batch_decode_seconds": out.decode_seconds,
        })
        if failures:  # only then: rows without failures stay exactly as before
            rows[-1]["failures"] = failures
    return rows


# ---- summary -------------------------------------------------------------------------------------------------


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict], scorer_names: list[str]) -> dict:
    """Per (method, budget, task) means, plus an unweighted-over-datasets "Average" per (method, budget)."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[(row["method"], row["budget"])][row["task"]].append(row)
    out = []
    for (method, budget), by_task in groups.items():
        per_task = {}
        for task, items in sorted(by_task.items()):
            masks = [r["mask"] for r in items if r.get("mask")]
            per_task[task] = {
                "n": len(items),
                "scores": {s: _mean(r["scores"].get(s) for r in items) for s in scorer_names},
                "kept_ratio": _mean(r["kept_ratio"] for r in items),
                "layer_averaged_retention": _mean(r["layer_averaged_retention"] for r in items),
                "visual_tokens_total": _mean(r["visual_tokens_total"] for r in items),
                "visual_tokens_kept": _mean(r["visual_tokens_kept"] for r in items),
                "kv_length": _mean(r.get("kv_length") for r in items),
                "n_with_boxes": len(masks),
                "mask_iou": _mean(m["iou"] for m in masks),
                "mask_precision": _mean(m["precision"] for m in masks),
                "mask_recall": _mean(m["recall"] for m in masks),
                "mask_f1": _mean(m["f1"] for m in masks),
                "prefill_seconds": _mean(r["prefill_seconds"] for r in items),
                "decode_seconds": _mean(r["decode_seconds"] for r in items),
            }
        tasks = list(per_task.values())
        average = {
            "n": sum(t["n"] for t in tasks),
            "datasets": len(tasks),
            "scores": {s: _mean(t["scores"][s] for t in tasks) for s in scorer_names},
        }
        for key in ("kept_ratio", "layer_averaged_retention", "visual_tokens_total", "visual_tokens_kept",
                    "kv_length", "mask_iou", "mask_precision", "mask_recall", "mask_f1", "prefill_seconds",
                    "decode_seconds"):
            average[key] = _mean(t[key] for t in tasks)
        average["n_with_boxes"] = sum(t["n_with_boxes"] for t in tasks)
        out.append({"method": method, "budget": budget, "datasets": per_task, "average": average})
    return {"scorers": scorer_names, "groups": out}


def same_k_controls(rows: list[dict], scorer_names: list[str]) -> list[dict]:
    """GlimpsePrune vs its same-K random control per (budget, dataset): means, margin and the paired exact test."""
    from .stats import paired_exact_test

    by_unit: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["method"] in ("glimpse", SAME_K_CONTROL):
            by_unit[(row["method"], row["budget"], row["task"])][str(row["id"])] = row
    out = []
    for (method, budget, task), glimpse in sorted(by_unit.items()):
        control = by_unit.get((SAME_K_CONTROL, budget, task))
        if method != "glimpse" or not control:
            continue
        ids = [i for i in glimpse if i in control]
        entry = {"budget": budget, "dataset": task, "n": len(ids),
                 "kept_counts_match": all(glimpse[i]["visual_tokens_kept"] == control[i]["visual_tokens_kept"]
                                          for i in ids),
                 "scores": {}}
        for s in scorer_names:
            a = [glimpse[i]["scores"].get(s) for i in ids]
            b = [control[i]["scores"].get(s) for i in ids]
            if not ids or any(v is None for v in a + b):
                continue
            stat = {"glimpse": sum(a) / len(a), "control": sum(b) / len(b)}
            stat["margin"] = stat["glimpse"] - stat["control"]
            if all(v in (0, 1) for v in a + b):
                stat["paired"] = paired_exact_test(a, b)
            entry["scores"][s] = stat
        out.append(entry)
    return out


def _fmt(value, digits=3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_markdown(summary: dict) -> str:
    scorers = summary["scorers"]
    header = ["method", "budget", "dataset", "n", *scorers, "kept", "layer-avg ret.", "mask IoU", "prefill s",
              "decode s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in summary["groups"]:
        entries = list(group["datasets"].items()) + [("**Average**", group["average"])]
        for task, t in entries:
            lines.append("| " + " | ".join([
                group["method"], group["budget"], task, str(t["n"]),
                *[_fmt(t["scores"][s]) for s in scorers],
                _fmt(t["kept_ratio"]), _fmt(t["layer_averaged_retention"]), _fmt(t["mask_iou"]),
                _fmt(t["prefill_seconds"], 4), _fmt(t["decode_seconds"], 4),
            ]) + " |")
    lines.append("")
    lines.append("Average = unweighted mean over datasets. kept = visual tokens kept after the last cut / visual "
                 "tokens; layer-avg ret. = mean over all layers of the visual tokens present, every cut stage "
                 "counted (docs/method.md §15.1). "
                 "Times are per-sample shares of the batch's prefill/decode.")
    controls = summary.get("controls")
    if controls:
        lines.append("")
        lines.append(f"Same-K control: GlimpsePrune vs {SAME_K_CONTROL} (random selection at GlimpsePrune's cut layer "
                     "with its per-sample kept counts; paired exact test, items only GlimpsePrune / only the "
                     "control got right):")
        lines.append("")
        lines.append("| budget | dataset | n | scorer | GlimpsePrune | same-K random | margin | only GP / only random "
                     "| p |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for c in controls:
            for name, stat in c["scores"].items():
                paired = stat.get("paired")
                lines.append("| " + " | ".join([
                    c["budget"], c["dataset"], str(c["n"]), name, _fmt(stat["glimpse"]), _fmt(stat["control"]),
                    f"{stat['margin']:+.3f}",
                    f"{paired['a_only']} / {paired['b_only']}" if paired else "–",
                    f"{paired['p_value']:.3g}" if paired else "–",
                ]) + " |")
    judge = summary.get("judge")
    if judge:
        stats = judge["stats"]
        lines.append("")
        lines.append(f"judge = LLM judge {judge['judge_model']} (prompt {judge['prompt_version']}, temperature "
                     f"{judge['temperature']}, {judge['base_url']}); this run: {stats['requests']} requests, "
                     f"{stats['cache_hits']} cache hits, {stats['malformed']} malformed replies (scored 0), "
                     f"{stats['errors']} failed requests (scored 0).")
    return "\n".join(lines) + "\n"


def budgets_for(method: str, budgets: list[Budget]) -> list[Budget]:
    """The unpruned baseline ignores budgets: it runs once, whatever budgets the other methods sweep."""
    return [Budget()] if method in ("none", None) else list(dict.fromkeys(budgets))


# ---- driver --------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    rows: list[dict]
    summary: dict
    files: dict[str, str]  # unit label -> predictions path
    summary_json: Path
    summary_md: Path
    new_samples: int
    skipped_samples: int
    data_reports: dict = field(default_factory=dict)


def run_evaluation(model, config: EvalConfig, shard=None) -> EvalResult:
    """Evaluate ``model`` (a :class:`GlimpsePrune`) on every dataset x method x budget of ``config``.

    ``shard``: this process's :class:`~glimpseprune.eval.shard.Shard` (default: from the launcher's environment);
    under ``accelerate launch`` each process evaluates its share and all of them return the merged result.
    """
    from .shard import current_shard

    shard = shard if shard is not None else current_shard()
    check_datasets_exist(config.datasets)
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if model.processor is None:
        raise ValueError("the model has no processor; evaluation needs one to build inputs")
    scorers, judge = build_scorers(config)
    for method in config.methods:  # fail on unknown names, missing modules, unreachable budgets before any work
        for budget in config.budgets:
            resolve_method(model, method, budget, config.prune_layer)

    loaded = {}
    for spec in config.datasets:
        records, report = load_records(spec, root=config.root, seed=config.seed)
        if config.limit is not None:
            records = records[: config.limit]
        if not records:
            raise ValueError(f"dataset {spec} yielded no usable records: {report.summary()}")
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset {spec} has duplicate ids; resuming needs unique ids")
        loaded[spec] = (records, report)

    units = []
    for m in config.methods:
        for b in budgets_for(m, config.budgets):
            units.append((m, b))
            if m == "glimpse" and config.same_k_control:
                units.append((SAME_K_CONTROL, b))  # right after: it needs the GlimpsePrune rows' kept counts
    total = sum(len(r) for r, _ in loaded.values()) * len(units)
    bar = None
    if config.progress and shard.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="eval", unit="sample")
    all_rows, files, new, skipped, finished = [], {}, 0, 0, []
    glimpse_units: dict[tuple[str, Budget], tuple[Path, dict]] = {}  # (spec, budget) -> (path, rows by id)
    try:
        for method, budget in units:
            for spec, (records, _) in loaded.items():
                name = dataset_name(spec)
                reference_rows = None
                if method == SAME_K_CONTROL:
                    _, reference_rows = glimpse_units[(spec, budget)]
                    control_of = config_hash(config.unit_key(spec, "glimpse", budget))
                    path = unit_path(config, spec, method, budget, control_of)
                    key = {**config.unit_key(spec, method, budget), "control_of": control_of}
                else:
                    path = unit_path(config, spec, method, budget)
                    key = config.unit_key(spec, method, budget)
                path.parent.mkdir(parents=True, exist_ok=True)
                if judge is not None:
                    key = {**key, "judge_metadata": judge.metadata}  # + base URL, which is not hashed
                if shard.is_main:
                    path.with_suffix(".config.json").write_text(json.dumps(key, indent=2, default=str))
                done = shard.read_done(path, read_done)
                mine = shard.select(records)
                todo = [r for r in mine if r.id not in done]
                skipped += len(mine) - len(todo)
                if bar is not None:
                    bar.update(len(mine) - len(todo))
                    bar.set_postfix_str(f"{method}/{budget.tag}/{name}")
                out_path = shard.output_path(path)
                with out_path.open("a", encoding="utf-8") as fh:
                    if out_path.stat().st_size and not out_path.read_bytes().endswith(b"\n"):
                        fh.write("\n")  # a torn last line from a killed run stays on its own (ignored) line
                    for start in range(0, len(todo), config.batch_size):
                        chunk = todo[start : start + config.batch_size]
                        for row in evaluate_batch(model, chunk, method, budget, config, scorers, name,
                                                  reference_rows):
                            fh.write(json.dumps(row) + "\n")
                            done[row["id"]] = row
                        fh.flush()
                        new += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finished.append((path, records, done))
                files[f"{method}/{budget.tag}/{name}"] = str(path)
                if method == "glimpse":
                    # this process's share (a data-parallel run gives the control unit the same share)
                    glimpse_units[(spec, budget)] = (path, {r.id: done[r.id] for r in records if r.id in done})
    finally:
        if bar is not None:
            bar.close()
    if shard.world > 1 or any(shard.rank_files(path) for path, _, _ in finished):
        shard.wait()  # every process has written its share of every unit
        finished = [(path, records, shard.merge(path, [r.id for r in records], read_done))
                    for path, records, _ in finished]
        if shard.world > 1:
            print(f"[eval rank {shard.rank}/{shard.world}] {new} new, {skipped} resumed", file=sys.stderr)
        new, skipped = (sum(counts) for counts in zip(*shard.gather((new, skipped))))
    for _, records, done in finished:
        all_rows.extend(done[r.id] for r in records)

    summary = summarize(all_rows, config.scorer_names)
    summary["controls"] = same_k_controls(all_rows, config.scorer_names)
    summary["config"] = {"model_id": config.model_id, "methods": config.methods,
                         "budgets": [b.tag for b in config.budgets], "datasets": config.datasets,
                         "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size}
    if judge is not None:
        summary["config"]["judge"] = judge.metadata
        # Stats count this invocation's judge calls only: resumed samples are not judged again.
        stats = asdict(judge.stats)
        if shard.world > 1:  # every process judged its own share
            stats = {k: sum(part[k] for part in shard.gather(stats)) for k in stats}
        summary["judge"] = {**judge.metadata, "stats": stats}
    summary["files"] = files
    run_digest = config_hash({"units": sorted(files.values())})
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_json = out_dir / f"summary-{run_digest}.json"
    summary_md = out_dir / f"summary-{run_digest}.md"
    if shard.is_main:
        summary_json.write_text(json.dumps(summary, indent=2))
        summary_md.write_text(summary_markdown(summary))
    reports = {}
    for spec, (_, report) in loaded.items():
        reports[spec] = report.as_dict()
    return EvalResult(all_rows, summary, files, summary_json, summary_md, new, skipped, reports)
