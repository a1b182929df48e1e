"""`accelerate launch` with two CPU processes: both ranks train in one gloo group and a checkpoint is written."""

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glimpseprune.state_io import load_state, state_exists

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_two_cpu_processes(tmp_path):
    exe = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(exe) if exe.exists() else "accelerate", "launch",
        "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port", str(random.randint(29600, 29999)),
        "-m", "glimpseprune.train.cli", "--config", str(ROOT / "configs/train/tiny_offline.json"),
        f"output_dir={tmp_path}", "max_steps=2", "save_every=1", "grad_accum=1", "progress=false",
        'synthetic={"n_train": 4, "n_val": 2, "seed": 0}', "max_pixels=12544",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "process 0/2" in out and "process 1/2" in out, out[-3000:]
    state = load_state(tmp_path / "checkpoint-1" / "trainer_state")
    assert state["world_size"] == 2 and state["step"] == 1
    assert state_exists(tmp_path / "checkpoint-1" / "rng_state_1")
    assert (tmp_path / "final" / "glimpse.safetensors").is_file()
    assert "keep_ratio_median" in (tmp_path / "validation.json").read_text()


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_train_plus_two_cpu_processes(tmp_path):
    """GP+ Run A (DDP over the LoRA) and Run B on two gloo processes, artefacts in both layouts."""

    exe = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(exe) if exe.exists() else "accelerate", "launch",
        "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port", str(random.randint(29600, 29999)),
        "-m", "glimpseprune.train.plus", "--config", str(ROOT / "configs/plus/tiny_offline.json"),
        f"output_dir={tmp_path}", "run_a.reward=tests.train.test_rl:_odd_length_reward",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    state = load_state(tmp_path / "run_a" / "checkpoint-1" / "trainer_state")
    assert state["world_size"] == 2 and state["step"] == 1
    assert len((tmp_path / "run_a" / "log.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "final" / "glimpse" / "glimpse.safetensors").is_file()
    assert (tmp_path / "final_reference" / "new_modules_gp.pt").is_file()
