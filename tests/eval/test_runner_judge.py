"""The LLM judge wired into the evaluation runner and CLI, against a stub OpenAI-compatible server on 127.0.0.1."""

import json
from pathlib import Path

import pytest

from glimpseprune.eval.cli import main as cli_main
from glimpseprune.eval.runner import Budget, JudgeSpec, run_evaluation, unit_path

from .stub_server import StubServer
from .test_runner import QUESTIONS, config, read_rows, write_dataset

MAX_REQUESTS = 40  # the stub answers 503 beyond this, so nothing can loop against it for long
REPLY = "score: 0.75"
METADATA_KEYS = {"judge_model", "prompt_version", "base_url", "temperature"}


def JudgeStub(reply=lambda n: REPLY):
    """Answers every chat-completions POST with ``reply(n)`` (n = 0-based request number); records the bodies."""
    return StubServer(reply=reply, max_requests=MAX_REQUESTS)


def judge_spec(stub, tmp_path, model="judge-x", **kw) -> JudgeSpec:
    return JudgeSpec(base_url=stub.base_url, model=model, cache_dir=str(tmp_path / "jcache"), timeout=5,
                     max_retries=0, **kw)


def test_judge_scores_summary_metadata_and_resume(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["a red circle"] * 5)
    with JudgeStub() as stub:
        cfg = config(tmp_path, data, judge=judge_spec(stub, tmp_path))
        assert cfg.scorer_names == ["exact_match", "judge"]
        result = run_evaluation(gp, cfg)

        assert result.new_samples == 5
        assert len(stub.bodies) == 5  # one reference per record -> one request each
        assert all(b["model"] == "judge-x" and b["temperature"] == 0 for b in stub.bodies)
        prompts = [b["messages"][0]["content"] for b in stub.bodies]
        for q in QUESTIONS:  # the runner hands the record's question to the judge
            assert sum(q in p for p in prompts) == 1
        assert all("a red circle" in p for p in prompts)

        assert len(result.rows) == 5
        for row in result.rows:
            assert row["scores"]["judge"] == 0.75
            assert "exact_match" in row["scores"]
        path = Path(result.files["none/default/toy"])
        assert [r["scores"]["judge"] for r in read_rows(path)] == [0.75] * 5

        meta = {"judge_model": "judge-x", "prompt_version": "v1", "base_url": stub.base_url, "temperature": 0}
        summary = result.summary
        assert summary["scorers"] == ["exact_match", "judge"]
        group = summary["groups"][0]
        assert group["datasets"]["toy"]["scores"]["judge"] == pytest.approx(0.75)
        assert group["average"]["scores"]["judge"] == pytest.approx(0.75)
        assert summary["config"]["judge"] == meta
        assert summary["judge"] == {**meta, "stats": {"requests": 5, "cache_hits": 0, "malformed": 0, "errors": 0}}
        saved = json.loads(result.summary_json.read_text())
        assert saved["judge"] == summary["judge"] and saved["config"]["judge"] == meta
        md = result.summary_md.read_text()
        assert "| exact_match | judge |" in md and "| none | default | toy | 5 |" in md
        assert "LLM judge judge-x (prompt v1, temperature 0" in md and "5 requests" in md
        unit_config = json.loads(path.with_suffix(".config.json").read_text())
        assert unit_config["judge"] == {"judge_model": "judge-x", "prompt_version": "v1", "temperature": 0}
        assert unit_config["judge_metadata"] == meta
        assert (tmp_path / "jcache" / "judge_cache.jsonl").is_file()

        # Resume: nothing new is generated or judged.
        again = run_evaluation(gp, cfg)
        assert again.new_samples == 0 and again.skipped_samples == 5
        assert len(stub.bodies) == 5
        assert again.summary["judge"]["stats"] == {"requests": 0, "cache_hits": 0, "malformed": 0, "errors": 0}
        assert again.summary["groups"][0]["datasets"]["toy"]["scores"]["judge"] == pytest.approx(0.75)

        # A different judge model is a different run: a fresh file, judged anew.
        other_cfg = config(tmp_path, data, judge=judge_spec(stub, tmp_path, model="judge-y"))
        other_path = unit_path(other_cfg, str(data), "none", Budget())
        assert other_path != path
        other = run_evaluation(gp, other_cfg)
        assert other.new_samples == 5 and Path(other.files["none/default/toy"]) == other_path
        assert len(stub.bodies) == 10 and all(b["model"] == "judge-y" for b in stub.bodies[5:])
        assert other.summary["judge"]["judge_model"] == "judge-y"

    # Without a judge nothing changes: no "judge" in the key, the scorer list or the summary.
    plain = config(tmp_path, data)
    assert "judge" not in plain.unit_key(str(data), "none", Budget())
    assert unit_path(plain, str(data), "none", Budget()) not in (path, other_path)
    plain_result = run_evaluation(gp, plain)
    assert "judge" not in plain_result.summary and "judge" not in plain_result.summary["config"]
    assert all(set(r["scores"]) == {"exact_match"} for r in plain_result.rows)


def test_malformed_judge_reply_is_a_failure_not_a_zero_and_is_retried_on_resume(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    with JudgeStub(reply=lambda n: "I would rate this highly." if n == 0 else REPLY) as stub:
        result = run_evaluation(gp, config(tmp_path, data, judge=judge_spec(stub, tmp_path)))
        assert len(stub.bodies) == 5
    scores = [r["scores"]["judge"] for r in result.rows]
    assert sorted(s for s in scores if s is not None) == [0.75] * 4 and scores.count(None) == 1
    failed = next(r for r in result.rows if r["scores"]["judge"] is None)
    assert "score" in failed["failures"]["judge"] and failed["scores"]["exact_match"] is not None
    assert result.summary["judge"]["stats"] == {"requests": 5, "cache_hits": 0, "malformed": 1, "errors": 0}
    # the mean is over the items that have a verdict: the failure is not averaged in as a 0
    assert result.summary["groups"][0]["datasets"]["toy"]["scores"]["judge"] == pytest.approx(0.75)
    with JudgeStub() as stub:  # resume: only the failed item is evaluated (and judged) again
        again = run_evaluation(gp, config(tmp_path, data, judge=judge_spec(stub, tmp_path)))
        assert len(stub.bodies) == 1
    assert again.new_samples == 1 and again.skipped_samples == 4
    assert [r["scores"]["judge"] for r in again.rows] == [0.75] * 5 and not any("failures" in r for r in again.rows)


def test_judge_scorer_without_judge_fails_before_work(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    with pytest.raises(ValueError, match="needs a judge"):
        run_evaluation(gp, config(tmp_path, data, scorers=["exact_match", "judge"]))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jsonl"))


def test_cli_judge_flags(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    out = tmp_path / "out"
    base = ["eval", "--tiny", "--data", str(data), "--methods", "none", "--max-new-tokens", "1", "--batch-size", "5",
            "--limit", "2", "--no-progress", "--output", str(out)]
    # Inconsistent judge options fail before any model is loaded.
    with pytest.raises(SystemExit, match="both --judge-url and --judge-model"):
        cli_main(base + ["--judge-url", "http://127.0.0.1:9/v1"])
    with pytest.raises(SystemExit, match="--judge-url and --judge-model"):
        cli_main(base + ["--judge-cache", str(tmp_path / "c")])
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(SystemExit, match="NO_SUCH_JUDGE_KEY"):
        cli_main(base + ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
                         "--judge-api-key-env", "NO_SUCH_JUDGE_KEY"])

    with JudgeStub() as stub:
        assert cli_main(base + ["--judge-url", stub.base_url, "--judge-model", "judge-cli"]) == 0
        assert len(stub.bodies) == 2
    (summary_file,) = out.glob("summary-*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["scorers"] == ["exact_match", "judge"]
    assert summary["groups"][0]["average"]["scores"]["judge"] == pytest.approx(0.75)
    assert summary["judge"]["judge_model"] == "judge-cli" and summary["judge"]["stats"]["requests"] == 2
    assert (out / "judge_cache" / "judge_cache.jsonl").is_file()  # the default cache folder
