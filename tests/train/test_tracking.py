"""Training metrics through accelerate's trackers: report_to=tensorboard writes event files (offline) whose scalars
are the numbers of log.jsonl, step for step, readable with TensorBoard's own reader."""

import json

import pytest


def test_tensorboard_event_files_hold_the_logged_metrics(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    from glimpseprune.cli import main

    out = tmp_path / "run"
    assert main(["train", "--no-validate", "--config", "train/tiny_offline.json", f"output_dir={out}", "max_steps=2", "grad_accum=1",
                 "log_every=1", "val_every=1", "progress=false", "report_to=tensorboard",
                 'synthetic={"n_train": 4, "n_val": 2, "seed": 0}', "max_pixels=12544"]) == 0
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    acc = event_accumulator.EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2]
    assert any("val/" in k for r in records for k in r)  # the held-out pass is logged too
    for record in records:
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            assert key in tags, key
            by_step = {e.step: e.value for e in acc.Scalars(key)}
            assert by_step[record["step"]] == pytest.approx(value, rel=1e-5, abs=1e-6), key
