"""No file we read can run code: a malicious pickle planted in every loading path is refused and never executed.

The payload creates a marker file when unpickled; each test first proves the payload is live (a plain
``pickle.load`` of the same bytes creates the marker), then plants it and checks that loading is refused with a clear
error and the marker never appears.
"""

import json
import pickle
import random

import pytest
import torch

from glimpseprune.errors import UnsafeFileError
from glimpseprune.state_io import load_state, save_state


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def plant(path, marker):
    """A torch.save file (zip + pickle) whose unpickling would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 3, "optimizer": _Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    # the payload is live: an unrestricted unpickle of the same object runs it
    pickle.loads(pickle.dumps(_Payload(m)))
    assert m.exists()
    m.unlink()
    return m


@pytest.fixture(scope="module")
def tiny_trainer():
    from glimpseprune.data.scenes import all_texts
    from glimpseprune.testing.tiny import tiny_qwen2_5_vl
    from glimpseprune.train.trainer import Stage1Trainer

    from .train.conftest import make_records, train_config

    model, processor = tiny_qwen2_5_vl(corpus=all_texts())
    model.requires_grad_(False)
    records = make_records(2)

    def build(out):
        return Stage1Trainer(train_config(out, max_steps=1, grad_accum=1), model=model, processor=processor,
                             records=records)

    return build


def test_glimpse_reference_weights_refused(tmp_path, marker, gp):
    from glimpseprune.checkpoint import export_reference, load_modules

    export_reference(tmp_path / "ref", gp.config, gp.glimpse, gp.vip)
    plant(tmp_path / "ref" / "new_modules_gp.pt", marker)
    with pytest.raises(UnsafeFileError, match="new_modules_gp.pt"):
        load_modules(tmp_path / "ref", gp.adapter.default_glimpse_config())
    assert not marker.exists()


def test_lora_bin_refused(tmp_path, marker, qwen):
    from glimpseprune.lora import merge_reference_lora

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    plant(tmp_path / "adapter_model.bin", marker)
    with pytest.raises(UnsafeFileError, match="adapter_model.bin"):
        merge_reference_lora(qwen[0], tmp_path)
    assert not marker.exists()


def test_trainer_resume_refuses_pickled_state(tmp_path, marker):
    from glimpseprune.train.trainer import find_checkpoint

    plant(tmp_path / "checkpoint-4" / "trainer_state.pt", marker)
    with pytest.raises(UnsafeFileError, match="trainer_state.pt"):
        find_checkpoint(tmp_path)  # resume="auto" would otherwise silently restart from step 0
    assert not marker.exists()


def test_trainer_load_refuses_pickled_state_and_rng(tmp_path, marker, tiny_trainer):
    from glimpseprune.train.trainer import STATE_NAME, find_checkpoint

    trainer = tiny_trainer(tmp_path / "run")
    ckpt = trainer.save()
    # a pickled RNG state next to a good trainer state: refused, not run, not silently skipped
    plant(ckpt / "rng_state_0.pt", marker)
    for suffix in (".json", ".safetensors"):
        (ckpt / f"rng_state_0{suffix}").unlink()
    with pytest.raises(UnsafeFileError, match="rng_state_0.pt"):
        tiny_trainer(tmp_path / "run").load(ckpt)
    assert not marker.exists()
    # an old checkpoint with only the pickled trainer state, named explicitly
    for suffix in (".json", ".safetensors"):
        (ckpt / STATE_NAME).with_suffix(suffix).unlink()
    plant(ckpt / "trainer_state.pt", marker)
    with pytest.raises(UnsafeFileError, match="trainer_state.pt"):
        tiny_trainer(tmp_path / "run").load(ckpt)
    with pytest.raises(UnsafeFileError):
        find_checkpoint(tmp_path / "run")
    assert not marker.exists()


def test_pretrain_resume_and_diagnose_refuse_pickled_state(tmp_path, marker):
    from glimpseprune.mini.diagnose import probe_accuracy
    from glimpseprune.mini.pretrain import PretrainConfig, pretrain

    ckpt = tmp_path / "run" / "checkpoint"
    plant(ckpt / "state.pt", marker)
    cfg = PretrainConfig.from_dict({}, [f"output_dir={tmp_path / 'run'}", "steps=1", "batch_size=1", "n_val=0",
                                        "synthetic.n_train=2", "progress=false", "max_pixels=12544"])
    with pytest.raises(UnsafeFileError, match="state.pt"):
        pretrain(cfg, log=lambda _: None)
    with pytest.raises(UnsafeFileError, match="state.pt"):
        probe_accuracy(ckpt, None, None, [])
    assert not marker.exists()


def test_state_round_trip_is_exact(tmp_path):
    """Everything a resume needs survives safetensors + JSON with its type: int keys, tuples, 0-d tensors, inf."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.98))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "python": random.getstate(),
             "torch": torch.get_rng_state(), "step": 7, "history": [{"loss": float("inf"), "ok": True, "x": None}]}
    save_state(state, tmp_path / "s")
    back = load_state(tmp_path / "s")
    assert back["python"] == state["python"] and isinstance(back["python"], tuple)
    random.setstate(back["python"])  # the exact type random needs
    assert torch.equal(back["torch"], state["torch"]) and back["step"] == 7
    assert back["history"] == state["history"]
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert set(back["optimizer"]["state"]) == {0, 1}  # integer keys stay integers
    for k, v in state["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(back["optimizer"]["state"][k][name], t) and back["optimizer"]["state"][k][name].dtype == t.dtype
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])


def test_state_files_malformed(tmp_path):
    from glimpseprune.errors import ConfigError

    save_state({"a": torch.ones(2)}, tmp_path / "s")
    raw = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "s.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConfigError, match=r"truncated.*s\.safetensors"):
        load_state(tmp_path / "s")
    (tmp_path / "s.json").write_text('{"format": ')
    with pytest.raises(ConfigError, match=r"not valid JSON.*s\.json"):
        load_state(tmp_path / "s")
