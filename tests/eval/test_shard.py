"""Data-parallel evaluation: shards of every run unit, per-rank files that resume on their own, and a merge that gives
exactly the rows and summary of one process. Two "processes" are threads with a real barrier in the fast tests; one
test launches two real CPU processes with ``accelerate launch`` on the embedded mini model."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from glimpseprune.eval.runner import EvalConfig, Budget, run_evaluation, unit_path
from glimpseprune.eval.shard import CPU_LAUNCH_WARNING, Shard, single_process_launch_warning

from .test_runner import write_dataset

TIMING = {"prefill_seconds", "decode_seconds", "batch_prefill_seconds", "batch_decode_seconds"}
ROOT = Path(__file__).resolve().parents[2]


def without_timings(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def summary_without_timings(summary):
    out = json.loads(json.dumps(summary))
    out.pop("files")
    for group in out["groups"]:
        for entry in [*group["datasets"].values(), group["average"]]:
            entry.pop("prefill_seconds")
            entry.pop("decode_seconds")
    return out


def thread_group(world: int) -> list[Shard]:
    """``world`` shards joined by a real barrier and an all-gather, as accelerate provides between processes."""
    barrier = threading.Barrier(world, timeout=120)
    slots: list = [None] * world

    def make(rank):
        def all_gather(value):
            slots[rank] = value
            barrier.wait()
            values = list(slots)
            barrier.wait()  # nobody overwrites a slot before everyone has read it
            return values

        return Shard(rank, world, barrier=barrier.wait, all_gather=all_gather)

    return [make(r) for r in range(world)]


def run_group(gp, config: EvalConfig, shards: list[Shard]):
    results, errors = [None] * len(shards), []

    def work(i):
        try:
            results[i] = run_evaluation(gp, config, shard=shards[i])
        except BaseException as err:  # surfaced below; a dead thread would otherwise hang its peers at the barrier
            errors.append(err)
            raise

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def config(out: Path, data: Path, **kw) -> EvalConfig:
    base = dict(datasets=[str(data)], methods=["none", "random"], budgets=[Budget(0.5)], scorers=["exact_match"],
                output_dir=str(out), model_id="tiny-test", batch_size=1, max_new_tokens=3, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def test_shards_partition_records_and_name_rank_files(tmp_path):
    records = list(range(7))
    shards = [Shard(r, 3, barrier=lambda: None, all_gather=lambda v: [v]) for r in range(3)]
    parts = [s.select(records) for s in shards]
    assert sorted(sum(parts, [])) == records and parts[0] == [0, 3, 6]
    unit = tmp_path / "none-default-abc.jsonl"
    assert shards[1].output_path(unit).name == "none-default-abc.rank1-of-3.jsonl"
    assert Shard().output_path(unit) == unit and Shard().select(records) == records
    with pytest.raises(ValueError, match="bad shard"):
        Shard(2, 2)
    with pytest.raises(ValueError, match="barrier"):
        Shard(0, 2)


def test_two_ranks_equal_one_process_and_resume_independently(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["nomatch"] * 5)
    single = run_evaluation(gp, config(tmp_path / "single", data), shard=Shard())

    # 1. Two ranks: identical per-item rows (in record order) and summary; the rank files are folded away.
    cfg = config(tmp_path / "dp", data)
    results = run_group(gp, cfg, thread_group(2))
    for result in results:
        assert without_timings(result.rows) == without_timings(single.rows)
        assert summary_without_timings(result.summary) == summary_without_timings(single.summary)
        assert result.new_samples == 10 and result.skipped_samples == 0
    assert json.loads(results[0].summary_json.read_text())["groups"] == results[0].summary["groups"]
    for method, budget in (("none", Budget()), ("random", Budget(0.5))):
        path = unit_path(cfg, str(data), method, budget)
        assert not Shard.rank_files(path)
        merged = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["id"] for r in merged] == [f"s{i}" for i in range(5)]

    # 2. A run killed after rank 1 finished its share (and while rank 0 was writing a torn line): rank 1 resumes with
    # nothing to do, rank 0 evaluates only its own records; the merge is again the single-process result.
    cfg = config(tmp_path / "killed", data, methods=["none"])
    path = unit_path(cfg, str(data), "none", Budget())
    path.parent.mkdir(parents=True)
    by_id = {r["id"]: r for r in single.rows if r["method"] == "none"}
    path.with_name(path.stem + ".rank1-of-2.jsonl").write_text(
        "".join(json.dumps(by_id[i]) + "\n" for i in ("s1", "s3")))
    path.with_name(path.stem + ".rank0-of-2.jsonl").write_text(json.dumps(by_id["s0"]) + "\n" + '{"id": "s2", "ans')
    results = run_group(gp, cfg, thread_group(2))
    assert results[0].new_samples == 2 and results[0].skipped_samples == 3  # s2, s4 evaluated; s0, s1, s3 resumed
    expected = [r for r in single.rows if r["method"] == "none"]
    assert without_timings(results[1].rows) == without_timings(expected)

    # 3. A different world size resumes the same unit: one process picks up what two ranks left.
    cfg = config(tmp_path / "resized", data, methods=["none"])
    path = unit_path(cfg, str(data), "none", Budget())
    path.parent.mkdir(parents=True)
    path.with_name(path.stem + ".rank0-of-2.jsonl").write_text(
        "".join(json.dumps(by_id[i]) + "\n" for i in ("s0", "s2", "s4")))
    result = run_evaluation(gp, cfg, shard=Shard())
    assert (result.new_samples, result.skipped_samples) == (2, 3)
    assert without_timings(result.rows) == without_timings(expected)
    assert not Shard.rank_files(path)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [f"s{i}" for i in range(5)]


def test_cpu_launcher_single_process_is_reported():
    # What `accelerate launch --cpu --num_processes 2` hands its one process (accelerate/utils/launch.py,
    # prepare_simple_launcher_cmd_env): MASTER_ADDR but no RANK / WORLD_SIZE.
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}) == \
        CPU_LAUNCH_WARNING
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "True"}) is None  # --num_processes 1
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1",
                                          "RANK": "0", "WORLD_SIZE": "2"}) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes_match_one(tmp_path):
    """The documented command, two real processes (gloo) on the embedded mini model and generated glimpse-shapes
    items: the same per-item results and summary as the plain single-process CLI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "glimpseprune.data.scenes", str(tmp_path / "shapes"), "--train", "0",
                    "--val", "0", "--test", "4"], check=True, env=env, capture_output=True)
    data = str(tmp_path / "shapes" / "test.jsonl")
    common = ["eval", "--data", data, "--methods", "none,glimpse", "--device", "cpu", "--no-progress",
              "--max-new-tokens", "8"]
    one = subprocess.run([sys.executable, "-m", "glimpseprune.cli", *common, "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    accelerate = Path(sys.executable).with_name("accelerate")
    two = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                          str(_free_port()), "-m", "glimpseprune.cli", *common, "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-2000:]

    def outputs(folder):
        summary = json.loads(next(folder.glob("summary-*.json")).read_text())
        units = {Path(p).name: [json.loads(line) for line in Path(p).read_text().splitlines()]
                 for p in summary["files"].values()}
        return summary, units

    s1, u1 = outputs(tmp_path / "one")
    s2, u2 = outputs(tmp_path / "two")
    assert sorted(u1) == sorted(u2)  # same run hashes: the world size does not enter them
    # Both processes really worked: each evaluated its half (2 of the 4 records) of every unit (none, glimpse and
    # the same-K random control the runner adds after glimpse); only the main process prints the summary.
    units = len(u1)
    assert units >= 2
    for rank in (0, 1):
        assert f"[eval rank {rank}/2] {2 * units} new, 0 resumed" in two.stderr
    assert two.stdout.count(f"{4 * units} new, 0 resumed") == 1
    for name in u1:
        assert without_timings(u1[name]) == without_timings(u2[name])
    assert summary_without_timings(s1) == summary_without_timings(s2)
    assert not list((tmp_path / "two").rglob("*.rank*-of-*"))
