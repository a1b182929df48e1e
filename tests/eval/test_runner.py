"""The evaluation runner on a hand-made 5-record dataset with the tiny model: records, summary, resume, tasks."""

import json
from pathlib import Path

import pytest

from glimpseprune.eval.cli import main as cli_main
from glimpseprune.budget import Budget, layer_averaged_retention, parse_budget
from glimpseprune.eval.runner import (
    EvalConfig,
    read_done,
    resolve_tasks,
    run_evaluation,
    summarize,
    unit_path,
)
from glimpseprune.eval.scorers import exact_match

from ..conftest import scene

QUESTIONS = ["what colour is the shape?", "is there a red circle?", "how many squares are there?",
             "what shape is the green object?", "describe the picture in one word."]
# Box over the left 50 of 112 px: columns floor(0)..floor(50/112*4)=1 of the 4x4 merged grid, i.e. 8 of 16 tokens.
LEFT_BOX = [0, 0, 50, 112]


def write_dataset(folder: Path, answers: list[str], name: str = "toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (q, a) in enumerate(zip(QUESTIONS, answers)):
        image = folder / f"img{i}.png"
        if not image.exists():
            scene(112, 112, seed=i).save(image)
        rec = {"id": f"s{i}", "question": q, "answer": a, "image": image.name, "width": 112, "height": 112,
               "dataset": name}
        if i < 3:
            rec["bboxs"] = [LEFT_BOX]
        lines.append(json.dumps(rec))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(tmp_path, data: Path, **kw) -> EvalConfig:
    base = dict(datasets=[str(data)], methods=["none"], scorers=["exact_match"], output_dir=str(tmp_path / "out"),
                model_id="tiny-test", batch_size=2, max_new_tokens=2, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_records_summary_and_exact_scores(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["nomatch"] * 5)
    first = run_evaluation(gp, config(tmp_path, data))
    predictions = {r["id"]: r["answer"] for r in first.rows}
    assert first.new_samples == 5 and first.skipped_samples == 0
    assert all(r["scores"]["exact_match"] == exact_match(r["answer"], "nomatch") for r in first.rows)

    # Hand-made references: records s0 and s1 are answered exactly what the model says, the others never match.
    answers = [predictions["s0"], predictions["s1"], "zz nomatch", "zz nomatch", "zz nomatch"]
    assert all(a.strip() for a in answers[:2]), "the tiny model should produce non-blank text"
    assert exact_match(answers[0], answers[0]) == 1.0
    data = write_dataset(tmp_path / "data", answers)  # same path, new content: must not reuse old results
    cfg = config(tmp_path, data)
    result = run_evaluation(gp, cfg)
    assert result.new_samples == 5, "an edited dataset file must not resume from stale predictions"
    rows = {r["id"]: r for r in result.rows}
    assert [rows[f"s{i}"]["answer"] for i in range(5)] == [predictions[f"s{i}"] for i in range(5)]
    expected_em = sum(exact_match(predictions[f"s{i}"], answers[i]) for i in range(5)) / 5
    assert expected_em >= 0.4

    row = rows["s0"]
    for key in ("id", "dataset", "question", "answer", "reference", "scores", "visual_tokens_total",
                "visual_tokens_kept", "kept_ratio", "layer_averaged_retention", "mask", "prefill_seconds",
                "decode_seconds"):
        assert key in row
    assert row["reference"] == answers[0] and row["dataset"] == "toy"
    assert row["visual_tokens_total"] == 16 and row["visual_tokens_kept"] == 16 and row["kept_ratio"] == 1.0
    assert row["layer_averaged_retention"] == 1.0
    # method none keeps every token: IoU = |box mask| / N = 8 / 16
    assert row["mask"]["iou"] == pytest.approx(0.5) and row["mask"]["recall"] == 1.0
    assert rows["s4"]["mask"] is None

    summary = result.summary
    (group,) = summary["groups"]
    t = group["datasets"]["toy"]
    assert t["n"] == 5 and t["n_with_boxes"] == 3
    assert t["scores"]["exact_match"] == pytest.approx(expected_em)
    assert t["kept_ratio"] == 1.0 and t["mask_iou"] == pytest.approx(0.5)
    assert group["average"]["scores"]["exact_match"] == pytest.approx(expected_em)
    saved = json.loads(result.summary_json.read_text())
    assert saved["groups"][0]["datasets"]["toy"]["scores"]["exact_match"] == pytest.approx(expected_em)
    md = result.summary_md.read_text()
    assert "| none | default | toy | 5 |" in md and f"{expected_em:.3f}" in md


def test_glimpse_budget_records(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["a"] * 5)
    cfg = config(tmp_path, data, methods=["glimpse"], budgets=[Budget(max_keep_ratio=0.25, threshold=0.0)],
                 batch_size=3)
    result = run_evaluation(gp, cfg)
    K, L = gp.config.prune_layer, gp.config.num_layers
    for row in result.rows:
        assert row["visual_tokens_kept"] == 4 and row["kept_ratio"] == 0.25  # floor(0.25 * 16)
        assert row["layer_averaged_retention"] == pytest.approx(layer_averaged_retention(0.25, K, L))
        assert row["budget"] == "r0.25_t0"
        if row["mask"] is not None:
            m = row["mask"]
            assert m["tp"] + m["fp"] == 4 and m["tp"] + m["fn"] == 8
    avg = result.summary["groups"][0]["average"]
    assert avg["layer_averaged_retention"] == pytest.approx((K + (L - K) * 0.25) / L)


def test_resume_skips_done_and_config_change_starts_fresh(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    cfg = config(tmp_path, data)
    first = run_evaluation(gp, cfg)
    path = unit_path(cfg, str(data), "none", Budget())
    assert Path(first.files["none/default/toy"]) == path
    assert len(read_rows(path)) == 5

    again = run_evaluation(gp, cfg)
    assert again.new_samples == 0 and again.skipped_samples == 5
    assert len(read_rows(path)) == 5
    assert again.summary["groups"][0]["datasets"]["toy"] == first.summary["groups"][0]["datasets"]["toy"]

    # A killed run: two complete lines and a torn third one. Resume redoes exactly the missing three.
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    partial = run_evaluation(gp, cfg)
    assert partial.new_samples == 3 and partial.skipped_samples == 2
    assert sorted(r["id"] for r in partial.rows) == [f"s{i}" for i in range(5)]
    assert sorted(read_done(path)) == [f"s{i}" for i in range(5)]  # the appended rows survive the torn line
    assert run_evaluation(gp, cfg).new_samples == 0

    changed = config(tmp_path, data, max_new_tokens=3)
    other = unit_path(changed, str(data), "none", Budget())
    assert other != path
    fresh = run_evaluation(gp, changed)
    assert fresh.new_samples == 5 and Path(fresh.files["none/default/toy"]) == other


def test_expected_tasks_fail_loudly(tmp_path):
    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "gqa.json").write_text("[]")
    assert resolve_tasks(["gqa"], bench, "first:3") == [str(bench / "gqa.json") + ":first:3"]
    with pytest.raises(FileNotFoundError, match="docvqa.*textvqa|textvqa.*docvqa"):
        resolve_tasks(["gqa", "docvqa", "textvqa"], bench)
    # Through the CLI: fails before any model is loaded.
    with pytest.raises(FileNotFoundError, match="docvqa"):
        cli_main(["eval", "--tiny", "--tasks", "gqa,docvqa", "--task-dir", str(bench), "--output",
                  str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError):
        run_evaluation(None, EvalConfig(datasets=[str(tmp_path / "nope.jsonl")]))


def test_unknown_method_and_scorer_fail_before_work(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        run_evaluation(gp, config(tmp_path, data, methods=["nonexistent"]))
    with pytest.raises(ValueError, match="unknown scorer"):
        run_evaluation(gp, config(tmp_path, data, scorers=["bleu"]))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jsonl"))


def test_summarize_by_hand():
    def row(task, em, kept, ret, iou):
        return {"method": "m", "budget": "b", "task": task, "scores": {"exact_match": em}, "kept_ratio": kept,
                "layer_averaged_retention": ret, "visual_tokens_total": 10, "visual_tokens_kept": 10 * kept,
                "kv_length": 5, "mask": None if iou is None else {"iou": iou, "precision": 1, "recall": 1, "f1": 1},
                "prefill_seconds": 1.0, "decode_seconds": 2.0}

    rows = [row("a", 1.0, 0.1, 0.7, 0.5), row("a", 0.0, 0.3, 0.8, None), row("a", 1.0, 0.2, 0.75, 0.1),
            row("b", 0.0, 0.5, 0.9, None)]
    s = summarize(rows, ["exact_match"])
    g = s["groups"][0]
    assert g["datasets"]["a"]["scores"]["exact_match"] == pytest.approx(2 / 3)
    assert g["datasets"]["a"]["kept_ratio"] == pytest.approx(0.2)
    assert g["datasets"]["a"]["mask_iou"] == pytest.approx(0.3) and g["datasets"]["a"]["n_with_boxes"] == 2
    assert g["datasets"]["b"]["mask_iou"] is None
    # The Average is unweighted over datasets (the reference's convention), not over samples.
    assert g["average"]["scores"]["exact_match"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert g["average"]["kept_ratio"] == pytest.approx((0.2 + 0.5) / 2)


def test_parse_budget():
    assert parse_budget("default") == Budget()
    assert parse_budget("0.1") == Budget(0.1, None)
    assert parse_budget("r=0.2,t=0.3") == Budget(0.2, 0.3)
    assert parse_budget("t=0.4").tag == "t0.4"
    assert parse_budget("l=0.111") == Budget(retention=0.111) and parse_budget("l=0.111").tag == "l0.111"
    with pytest.raises(ValueError):
        parse_budget("q=1")
    with pytest.raises(ValueError, match="not both"):
        parse_budget("r=0.1,l=0.2")


def test_layer_averaged_budgets_hit_their_retention(gp, tmp_path):
    """l=...: baselines and GlimpsePrune both land on the asked layer-averaged retention (both axes, issue 7)."""
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    L, K = gp.adapter.num_layers, gp.config.prune_layer
    target = (K + (L - K) * 0.5) / L  # GlimpsePrune keeping half after K
    # For GlimpsePrune the budget is a cap after K (its threshold may keep fewer); threshold 0 keeps the whole cap.
    rows = run_evaluation(gp, config(tmp_path, data, methods=["random", "glimpse"], budgets=[Budget(retention=target)],
                                     max_new_tokens=1)).rows
    rows += run_evaluation(gp, config(tmp_path, data, methods=["glimpse"], max_new_tokens=1,
                                      budgets=[Budget(retention=target, threshold=0.0)])).rows
    units = {}
    for r in rows:
        units.setdefault((r["method"], r["budget"]), []).append(r)
    assert sorted(units) == [("glimpse", f"l{target:g}"), ("glimpse", f"l{target:g}_t0"), ("random", f"l{target:g}"),
                             ("random@glimpse", f"l{target:g}"), ("random@glimpse", f"l{target:g}_t0")]
    exact = (units[("random", f"l{target:g}")] + units[("glimpse", f"l{target:g}_t0")]
             + units[("random@glimpse", f"l{target:g}_t0")])  # the same-K control keeps GlimpsePrune's counts
    for r in exact:  # 16 visual tokens per image: whole tokens are within 1/16 of the asked retention
        assert abs(r["layer_averaged_retention"] - target) <= 1 / 16 + 1e-9, r
    for r in units[("glimpse", f"l{target:g}")]:
        assert K / L <= r["layer_averaged_retention"] <= target + 1e-9 and r["kept_ratio"] <= 0.5 + 1e-9
    # Below K/L GlimpsePrune cannot go: refused before any work, naming the floor.
    with pytest.raises(ValueError, match="unreachable|at least|floor"):
        run_evaluation(gp, config(tmp_path, data, methods=["glimpse"], budgets=[Budget(retention=0.5 * K / L)],
                                  output_dir=str(tmp_path / "out2")))
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").rglob("*.jsonl"))
    with pytest.raises(ValueError, match="threshold"):  # a baseline has no threshold to set
        run_evaluation(gp, config(tmp_path, data, methods=["random"], budgets=[Budget(retention=0.5, threshold=0.1)]))


def test_none_runs_once_whatever_the_budgets(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    cfg = config(tmp_path, data, methods=["none", "glimpse"], budgets=[Budget(0.5, 0.0), Budget(0.25, 0.0)],
                 max_new_tokens=1)
    result = run_evaluation(gp, cfg)
    assert sorted(result.files) == ["glimpse/r0.25_t0/toy", "glimpse/r0.5_t0/toy", "none/default/toy",
                                    "random@glimpse/r0.25_t0/toy", "random@glimpse/r0.5_t0/toy"]
    assert result.new_samples == 25  # none once; glimpse and its same-K control per budget
    kept = {(g["method"], g["budget"]): g["average"]["kept_ratio"] for g in result.summary["groups"]}
    assert kept == {("none", "default"): 1.0, ("glimpse", "r0.5_t0"): 0.5, ("glimpse", "r0.25_t0"): 0.25,
                    ("random@glimpse", "r0.5_t0"): 0.5, ("random@glimpse", "r0.25_t0"): 0.25}


def test_cli_eval_defaults_to_the_embedded_mini_model(tmp_path, capsys):
    """No --model: the shipped mini model and its modules, like `answer` and `demo`; its answers are the engine's."""
    from glimpseprune import assets
    from glimpseprune.data.scenes import generate_benchmark
    from glimpseprune.model import GlimpsePrune
    from glimpseprune.processing import load_image

    if not (assets.MINI_DIR / "base" / "config.json").is_file():
        pytest.skip("mini assets not built")
    records = generate_benchmark(tmp_path / "shapes", 0, 0, 4, seed=0, layout="dense")["test"]
    out = tmp_path / "out"
    args = ["eval", "--data", str(tmp_path / "shapes" / "test.jsonl"), "--methods", "none,glimpse", "--device",
            "cpu", "--max-new-tokens", "4", "--no-progress", "--output", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "12 new, 0 resumed" in printed  # none, glimpse and its same-K random control on 4 items
    assert "Same-K control" in printed
    (summary_file,) = out.glob("summary-*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["config"]["model_id"].startswith("mini:")
    (glimpse_file,) = [Path(f) for key, f in summary["files"].items() if key.startswith("glimpse/")]
    rows = [json.loads(line) for line in glimpse_file.read_text().splitlines()]
    mini = GlimpsePrune.from_pretrained(assets.MINI_DIR / "base", assets.MINI_DIR / "glimpse", device="cpu")
    assert len(rows) == 4
    for row, rec in zip(sorted(rows, key=lambda r: r["id"]), records):
        image = load_image(tmp_path / "shapes" / rec["image"])
        assert row["answer"] == mini.answer([image], rec["question"], max_new_tokens=4)[0]
    assert cli_main(args) == 0  # same weights, same id: everything resumes
    assert "0 new, 12 resumed" in capsys.readouterr().out
    assert cli_main(args + ["--no-same-k-control", "--output", str(tmp_path / "off")]) == 0
    assert "8 new, 0 resumed" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["pyramiddrop", "vscan"])
def test_multi_stage_rows_count_every_cut(gp, tmp_path, method):
    """A multi-stage baseline's per-sample retention counts all its stages (it used to be taken as one cut)."""
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    result = run_evaluation(gp, config(tmp_path, data, methods=[method], budgets=[Budget(retention=0.6)],
                                       max_new_tokens=1))
    for r in result.rows:  # 16 visual tokens: whole tokens put each stage within 1/16 of its share
        assert abs(r["layer_averaged_retention"] - 0.6) <= 1 / 16 + 1e-9, r
        assert r["kept_ratio"] < r["layer_averaged_retention"]  # the last stage keeps less than the average


def test_same_k_control_follows_glimpse_with_its_exact_counts(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["a"] * 5)
    # threshold 0.45 on fresh modules: kept counts differ from record to record
    cfg = config(tmp_path, data, methods=["none", "glimpse"], budgets=[Budget(threshold=0.45)], batch_size=2)
    result = run_evaluation(gp, cfg)
    glimpse = {r["id"]: r for r in result.rows if r["method"] == "glimpse"}
    control = {r["id"]: r for r in result.rows if r["method"] == "random@glimpse"}
    assert sorted(control) == sorted(glimpse) == [f"s{i}" for i in range(5)]
    for i, row in control.items():
        assert row["visual_tokens_kept"] == glimpse[i]["visual_tokens_kept"]
        assert row["prune_layer"] == glimpse[i]["prune_layer"] == gp.config.prune_layer
        assert row["layer_averaged_retention"] == pytest.approx(glimpse[i]["layer_averaged_retention"])
    (entry,) = result.summary["controls"]
    assert entry["kept_counts_match"] and entry["n"] == 5 and entry["budget"] == "t0.45"
    em = entry["scores"]["exact_match"]
    g = [glimpse[f"s{i}"]["scores"]["exact_match"] for i in range(5)]
    c = [control[f"s{i}"]["scores"]["exact_match"] for i in range(5)]
    assert em["glimpse"] == pytest.approx(sum(g) / 5) and em["margin"] == pytest.approx((sum(g) - sum(c)) / 5)
    assert em["paired"]["a_only"] == sum(1 for a, b in zip(g, c) if a and not b)
    md = result.summary_md.read_text()
    assert "Same-K control" in md and "| random@glimpse | t0.45 | toy | 5 |" in md
    # resumes like any unit; a changed GlimpsePrune unit (other budget) gets its own control file
    assert run_evaluation(gp, cfg).new_samples == 0
    other = run_evaluation(gp, config(tmp_path, data, methods=["glimpse"], budgets=[Budget(threshold=0.4)]))
    assert other.files["random@glimpse/t0.4/toy"] != result.files["random@glimpse/t0.45/toy"]
    # and it can be switched off
    off = run_evaluation(gp, config(tmp_path / "off", data, methods=["glimpse"], same_k_control=False))
    assert {r["method"] for r in off.rows} == {"glimpse"} and off.summary["controls"] == []
