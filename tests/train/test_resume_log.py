"""A resumed run's log.jsonl has each step once: the records of steps redone after the checkpoint are dropped."""

import json

from glimpseprune.train.trainer import Stage1Trainer

from .conftest import train_config


def test_resume_drops_redone_steps_from_the_log(tmp_path, tiny_train_model, shapes_records):
    model, processor = tiny_train_model
    kw = dict(grad_accum=1, max_steps=4, save_every=2, log_every=1)

    def trainer(**extra):
        return Stage1Trainer(train_config(tmp_path, **kw, **extra), model=model, processor=processor,
                             records=shapes_records[:4])

    trainer().train(stop_at=3)  # logs steps 1-3, checkpoint-2, then "dies" during step 4's work
    log = tmp_path / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 4, "lo')  # and a line torn by the kill
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()[:3]] == [1, 2, 3]
    resumed = trainer(resume="auto")
    resumed.train()
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3 redone once, not twice
    assert [h["step"] for h in resumed.history] == [3, 4]
