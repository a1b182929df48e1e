"""`accelerate launch` with two CPU processes: both ranks train in one gloo group and a checkpoint is written.

The launches take their port from configs/accelerate/cpu_2proc.yaml (port 0: a free one from the OS; a port held by
another run sent accelerate into a standalone mode that took 59 s instead of 12 s here). They run in their own
process session with output to a file and a watchdog (:func:`run_watched`): a launch whose processes all stop using
CPU is hung and fails after ``STALL_S`` with one line and the output's tail, not at the deadline; a slow one (a
loaded machine, where a niced launcher was measured to take minutes just to exit) is left to finish. Either way
the whole process session is killed, so no orphaned worker keeps a port.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from glimpseprune.state_io import load_state, state_exists

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/accelerate/cpu_2proc.yaml"
STALL_S = 90  # no process of the launch used CPU or waited for one this long: hung (rendezvous waits are < 60 s)


def session_cpu_ticks(session: int) -> tuple[int, int, bool]:
    """(processes, user + system clock ticks used, whether any is runnable) over the live processes of ``session``."""
    count = ticks = 0
    runnable = False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[3]) == session and fields[0] != "Z":  # fields[3]: session id; Z: exited, not reaped
            count += 1
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            runnable |= fields[0] == "R"
    return count, ticks, runnable


def run_watched(cmd: list[str], log: Path, deadline_s: float, stall_s: float = STALL_S) -> str:
    """Run ``cmd`` in its own session with output to ``log``; return the output, or fail with one clear line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    start = last_progress = time.monotonic()
    last_ticks = -1
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                now = time.monotonic()
                processes, ticks, runnable = session_cpu_ticks(proc.pid)
                # A runnable process waiting for a CPU (a niced run on a loaded machine) is slow, not hung.
                if ticks != last_ticks or runnable:
                    last_ticks, last_progress = ticks, now
                if now - last_progress > stall_s:
                    why = (f"hung: its {processes} processes used no CPU for {stall_s:.0f} s (waiting on each other, "
                           "not slow)")
                elif now - start > deadline_s:
                    why = (f"did not finish within {deadline_s:.0f} s although still using CPU (slow, not hung; load "
                           f"average {os.getloadavg()[0]:.1f})")
                else:
                    continue
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every worker: nothing left holding a port
                proc.wait()
                pytest.fail(f"{Path(cmd[0]).name} {why}; killed with its processes. Output tail:\n"
                            f"{log.read_text()[-3000:]}", pytrace=False)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def launch(args: list[str], log: Path, deadline_s: float) -> str:
    """``accelerate launch --config_file cpu_2proc.yaml <args>`` under :func:`run_watched`."""
    exe = Path(sys.executable).with_name("accelerate")
    out = run_watched([str(exe) if exe.exists() else "accelerate", "launch", "--config_file", str(CONFIG), *args],
                      log, deadline_s)
    assert "is already in use" not in out, "accelerate found its port taken and fell back to standalone mode"
    return out


def test_a_hung_launch_fails_fast_and_leaves_no_process(tmp_path):
    """The watchdog itself: a process tree that only sleeps is reported as hung after the stall window, long before
    the deadline, and every process of it is gone afterwards."""
    marker = f"hung-{os.getpid()}-{time.monotonic_ns()}"
    child = f"import time; time.sleep(300)  # {marker}"
    sleeper = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
               f"print('started', flush=True); time.sleep(300)  # {marker}")
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="hung: its 2 processes used no CPU for 3 s") as err:
        run_watched([sys.executable, "-c", sleeper], tmp_path / "log", deadline_s=250, stall_s=3)
    assert time.monotonic() - start < 60 and "started" in str(err.value)
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_text(errors="replace"):
                left.append(cmdline.parent.name)
        except OSError:
            continue
    assert not left, f"processes of the killed launch still alive: {left}"


def test_the_two_process_config_asks_the_os_for_a_free_port():
    """A fixed port (29511 once) collides with any other run holding it; 0 makes accelerate pick a free one."""
    assert yaml.safe_load(CONFIG.read_text())["main_process_port"] == 0


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_two_cpu_processes(tmp_path):
    out = launch(["-m", "glimpseprune.train.cli", "--config", str(ROOT / "configs/train/tiny_offline.json"),
                  f"output_dir={tmp_path / 'run'}", "max_steps=2", "save_every=1", "grad_accum=1", "progress=false",
                  'synthetic={"n_train": 4, "n_val": 2, "seed": 0}', "max_pixels=12544"],
                 tmp_path / "launch.log", deadline_s=900)
    assert "process 0/2" in out and "process 1/2" in out, out[-3000:]
    tmp_path = tmp_path / "run"
    state = load_state(tmp_path / "checkpoint-1" / "trainer_state")
    assert state["world_size"] == 2 and state["step"] == 1
    assert state_exists(tmp_path / "checkpoint-1" / "rng_state_1")
    assert (tmp_path / "final" / "glimpse.safetensors").is_file()
    assert "keep_ratio_median" in (tmp_path / "validation.json").read_text()


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_train_plus_two_cpu_processes(tmp_path):
    """GP+ Run A (DDP over the LoRA) and Run B on two gloo processes, artefacts in both layouts."""
    launch(["-m", "glimpseprune.train.plus", "--config", str(ROOT / "configs/plus/tiny_offline.json"),
            f"output_dir={tmp_path / 'run'}", "run_a.reward=tests.train.test_rl:_odd_length_reward"],
           tmp_path / "launch.log", deadline_s=1200)
    tmp_path = tmp_path / "run"
    state = load_state(tmp_path / "run_a" / "checkpoint-1" / "trainer_state")
    assert state["world_size"] == 2 and state["step"] == 1
    assert len((tmp_path / "run_a" / "log.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "final" / "glimpse" / "glimpse.safetensors").is_file()
    assert (tmp_path / "final_reference" / "new_modules_gp.pt").is_file()
