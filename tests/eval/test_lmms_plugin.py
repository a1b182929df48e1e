"""The lmms-eval plug-in: ``glimpseprune`` registered as an lmms-eval model through the ``lmms_eval.models`` entry
point, run end to end by lmms-eval's own command line on a local glimpse-shapes task with the embedded mini model,
offline; its answers must be the library's own answers to the same questions, and the pruning knobs given as
``model_args`` must reach the model.

lmms-eval is part of the default install (scripts/install.sh: the ``lmms`` extra plus ``lmms-eval`` with
``--no-deps``); under CI a missing piece fails the test, on a developer machine without it the test is skipped with
the command that installs it.
"""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run scripts/install.sh (installs the [lmms] extra and lmms-eval --no-deps)"


def _require_lmms_eval():
    try:
        return importlib.import_module("lmms_eval.api.model")
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"lmms-eval not installed: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def plugin():
    _require_lmms_eval()
    return importlib.import_module("glimpseprune.eval.lmms_plugin")


@pytest.fixture(scope="module")
def task_dir(plugin, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmms_task")
    plugin.write_task(out, n=8, seed=0)
    return out


@pytest.fixture(scope="module")
def docs(task_dir):
    from PIL import Image

    rows = [json.loads(line) for line in (task_dir / "data" / "test" / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        row["image"] = Image.open(task_dir / "data" / "test" / row["file_name"]).convert("RGB")
    return rows


@pytest.fixture(scope="module")
def lmms_model(plugin):
    return plugin.GlimpsePruneLMMS(method="glimpse", max_keep_ratio=0.05, batch_size=3)


@pytest.fixture(scope="module")
def alone(lmms_model, docs):
    """The library's answer and kept count for each doc asked alone, with the plug-in's knobs."""
    return [lmms_model.model.answer([doc["image"]], doc["question"], method="glimpse", max_keep_ratio=0.05,
                                    max_new_tokens=8) for doc in docs]


def _requests(plugin, model, docs, gen_kwargs=None):
    """lmms-eval Instances as its evaluator builds them for a generate_until task, over ``docs``."""
    from lmms_eval.api.instance import Instance

    model.task_dict = {"glimpse_shapes": {"test": docs}}
    gen_kwargs = gen_kwargs or {"max_new_tokens": 8, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    return [Instance(request_type="generate_until", idx=0, metadata={"task": "glimpse_shapes", "doc_id": i, "repeats": 1},
                     arguments=(doc["question"], dict(gen_kwargs), plugin.doc_to_visual, i, "glimpse_shapes", "test"))
            for i, doc in enumerate(docs)]


def test_write_task_is_an_imagefolder_task_of_glimpse_shapes_items(plugin, task_dir, docs):
    from glimpseprune.data.scenes import generate_items

    items = generate_items(8, seed=0, split="test")
    assert [d["question"] for d in docs] == [r["question"] for _, r in items]
    assert [d["answer"] for d in docs] == [r["short_answer"] for _, r in items]
    yaml_text = (task_dir / "glimpse_shapes.yaml").read_text()
    assert "dataset_path: imagefolder" in yaml_text
    assert "doc_to_visual: !function glimpseprune.eval.lmms_plugin.doc_to_visual" in yaml_text
    assert json.dumps(str(task_dir.resolve() / "data")) in yaml_text


def test_entry_point_registers_the_model(plugin):
    from lmms_eval.models import get_model

    assert get_model("glimpseprune") is plugin.GlimpsePruneLMMS


def test_generate_until_equals_the_library_alone_and_honours_the_cap(plugin, lmms_model, docs, alone):
    answers = lmms_model.generate_until(_requests(plugin, lmms_model, docs))
    cap = int(0.05 * 256)
    assert len(lmms_model.pruning_log) == len(docs)
    assert all(1 <= kept <= cap and total == 256 for kept, total in lmms_model.pruning_log)
    for answer, kept, (text, out) in zip(answers, lmms_model.pruning_log, alone):
        assert answer == text
        assert out.pruning.kept == [kept[0]]


def test_method_none_keeps_every_token(plugin, docs):
    model = plugin.GlimpsePruneLMMS(method="none")
    model.generate_until(_requests(plugin, model, docs[:2]))
    assert model.pruning_log == [(256, 256), (256, 256)]


def test_stop_strings_cut_the_answer(plugin):
    assert plugin.GlimpsePruneLMMS._cut_at_stop("purple.\nMore", ["\n", "."]) == "purple"
    assert plugin.GlimpsePruneLMMS._cut_at_stop(" two ", None) == "two"


def test_bad_model_args_and_unsupported_requests_are_refused(plugin, lmms_model, docs):
    with pytest.raises(ValueError, match=r"unknown model_args for glimpseprune: \['max_keep'\]"):
        plugin.GlimpsePruneLMMS(max_keep=0.1)
    with pytest.raises(Exception, match="max_keep_ratio"):
        plugin.GlimpsePruneLMMS(max_keep_ratio=1.5)
    with pytest.raises(Exception, match="no_such_method"):
        plugin.GlimpsePruneLMMS(method="no_such_method")
    with pytest.raises(ValueError, match="beam search"):
        lmms_model.generate_until(_requests(plugin, lmms_model, docs[:1], {"max_new_tokens": 4, "num_beams": 3}))
    with pytest.raises(ValueError, match=r"unsupported generation_kwargs \['length_penalty'\]"):
        lmms_model.generate_until(_requests(plugin, lmms_model, docs[:1], {"length_penalty": 2.0}))
    with pytest.raises(NotImplementedError, match="log-likelihood"):
        lmms_model.loglikelihood([])


def test_lmms_eval_command_line_end_to_end(plugin, task_dir, docs, alone, tmp_path):
    """`lmms-eval --model glimpseprune` on the local task, in a fresh process: the logged answers are the library's
    answers, the reported exact match is their mean, and the cap given in --model_args reached the model."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "glimpseprune", "--model_args",
           "method=glimpse,max_keep_ratio=0.05", "--include_path", str(task_dir), "--tasks", "glimpse_shapes",
           "--batch_size", "4", "--log_samples", "--output_path", str(tmp_path / "out")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("*_samples_glimpse_shapes.jsonl"))
               .read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == list(range(len(docs)))
    from glimpseprune.eval.scorers import exact_match

    scores = []
    for sample in samples:
        text, _ = alone[sample["doc_id"]]
        response = sample["filtered_resps"]
        assert (response[0] if isinstance(response, list) else response) == text
        scores.append(exact_match(text, docs[sample["doc_id"]]["answer"]))
    assert results["results"]["glimpse_shapes"]["exact_match,none"] == pytest.approx(sum(scores) / len(scores))
    m = re.search(r"glimpseprune: method glimpse, kept (\d+) of (\d+) visual tokens .* over (\d+) requests, "
                  r"(\d+)-(\d+) per request", log)
    assert m, log[-3000:]
    assert int(m.group(2)) == 256 * len(docs) and int(m.group(3)) == len(docs)
    assert 1 <= int(m.group(4)) and int(m.group(5)) <= int(0.05 * 256)
