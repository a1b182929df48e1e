"""The CLI's error boundary: every known failure is one line `glimpseprune: error: ...` on stderr and exit code 2;
`--debug` shows the traceback instead. Each case runs through `main` as a user would type it."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from glimpseprune.assets import MINI_DIR
from glimpseprune.cli import main
from glimpseprune.errors import describe

from .test_untrusted_files import plant

BASE = MINI_DIR / "base"
GLIMPSE = MINI_DIR / "glimpse"
pytestmark = pytest.mark.skipif(not (BASE / "config.json").is_file(), reason="needs the embedded mini model")


def run(capsys, *argv):
    code = main(["answer", "--device", "cpu", "--out", "", "--max-new-tokens", "1", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, *needles):
    assert code == 2, err
    # (transformers' weight-loading progress bar may precede it on stderr)
    last = err.replace("\r", "\n").splitlines()[-1]
    assert last.startswith("glimpseprune: error: ") and "Traceback" not in err, err
    assert err.count("glimpseprune: error:") == 1, err
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture
def glimpse_copy(tmp_path):
    out = tmp_path / "glimpse"
    shutil.copytree(GLIMPSE, out)
    return out


def test_gpu_flag_on_a_cpu_machine(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["answer", "--device", "cuda", "--out", ""])
    assert_one_line(code, capsys.readouterr().err.strip(), "CUDA", "--device cpu")
    code = main(["answer", "--device", "bogus:7", "--out", ""])
    assert_one_line(code, capsys.readouterr().err.strip(), "invalid --device")
    # torch's own message for a CUDA call on a CPU-only build, from any subcommand, maps to one line too
    assert "use --device cpu" in describe(AssertionError("Torch not compiled with CUDA enabled"))


def test_existing_directory_as_out(tmp_path, capsys):
    code = main(["answer", "--device", "cpu", "--out", str(tmp_path)])
    assert_one_line(code, capsys.readouterr().err.strip(), "is a directory", str(tmp_path))


def test_truncated_safetensors(glimpse_copy, capsys):
    weights = glimpse_copy / "glimpse.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_one_line(*run(capsys, "--glimpse", str(glimpse_copy)), "truncated", str(weights))


def test_refused_pickle(tmp_path, capsys):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    plant(tmp_path / "lora" / "adapter_model.bin", tmp_path / "PWNED")
    assert_one_line(*run(capsys, "--model", str(BASE), "--lora", str(tmp_path / "lora")), "refused", "adapter_model.bin")
    assert not (tmp_path / "PWNED").exists()


def test_nan_and_integer_weights(glimpse_copy, capsys):
    weights = glimpse_copy / "glimpse.safetensors"
    state = load_file(str(weights))
    key = sorted(k for k in state if k.startswith("vip."))[0]
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(weights))
    assert_one_line(*run(capsys, "--glimpse", str(glimpse_copy)), "NaN", key, str(weights))
    state[key] = torch.zeros_like(state[key], dtype=torch.int64)
    save_file(state, str(weights))
    assert_one_line(*run(capsys, "--glimpse", str(glimpse_copy)), "int64", key)


@pytest.mark.parametrize("config, needle", [
    ({"r": 0, "lora_alpha": 16}, "r must be a positive integer"),
    ({"r": 8}, "no lora_alpha"),
    ({"r": "8", "lora_alpha": 16}, "r must be a positive integer"),
    ({"r": 8, "lora_alpha": 16, "use_dora": True}, "DoRA"),
])
def test_malformed_lora_configs(tmp_path, capsys, config, needle):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    save_file({}, str(tmp_path / "adapter_model.safetensors"))
    assert_one_line(*run(capsys, "--model", str(BASE), "--lora", str(tmp_path)), needle, "adapter_config.json")


def test_lora_keys_for_layers_that_do_not_exist(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    prefix = "base_model.model.model.layers.99.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": torch.zeros(2, 128), f"{prefix}.lora_B.weight": torch.zeros(128, 2)},
              str(tmp_path / "adapter_model.safetensors"))
    assert_one_line(*run(capsys, "--model", str(BASE), "--lora", str(tmp_path)), "layer 99", "6 layers")


def test_malformed_json_names_its_file(glimpse_copy, capsys):
    config = glimpse_copy / "glimpse_config.json"
    config.write_text('{"family": "qwen2_5_vl",')
    assert_one_line(*run(capsys, "--glimpse", str(glimpse_copy)), "not valid JSON", str(config))
    raw = json.loads((GLIMPSE / "glimpse_config.json").read_text())
    config.write_text(json.dumps(dict(raw, prune_layer="4")))
    assert_one_line(*run(capsys, "--glimpse", str(glimpse_copy)), "prune_layer", "integer", str(config))
    config.write_text(json.dumps(dict(raw, vip_visual_layers=[99, 1])))
    assert_one_line(*run(capsys, "--glimpse", str(glimpse_copy)), "vip_visual_layers [99]", "0..3")


@pytest.mark.parametrize("argv, needle", [
    (["--dtype", "bogus", "--model", str(BASE)], "--dtype must be one of"),
    (["--dtype", "bogus"], "--dtype must be one of"),
    (["--lora", "/nonexistent"], "--adapter needs --model"),
    (["--question", ""], "--question is empty"),
    (["--question", "   "], "--question is empty"),
])
def test_no_silently_ignored_options(capsys, argv, needle):
    assert_one_line(*run(capsys, *argv), needle)


def test_debug_shows_the_traceback(glimpse_copy, capsys):
    (glimpse_copy / "glimpse_config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        main(["answer", "--device", "cpu", "--out", "", "--glimpse", str(glimpse_copy), "--debug"])


def test_unexpected_errors_keep_their_traceback():
    assert describe(KeyError("x")) is None and describe(ZeroDivisionError()) is None


def test_other_subcommands_share_the_boundary(tmp_path, capsys):
    bad = tmp_path / "train.json"
    bad.write_text('{"model": "tiny",')
    code = main(["train", "--config", str(bad)])
    assert_one_line(code, capsys.readouterr().err.strip(), "not valid JSON", str(bad))
    bad.write_text("[1, 2]")
    code = main(["train", "--config", str(bad)])
    assert_one_line(code, capsys.readouterr().err.strip(), "must be a mapping", str(bad))
    code = main(["train", "--config", str(tmp_path / "missing.json")])
    assert_one_line(code, capsys.readouterr().err.strip(), "missing.json")
    from glimpseprune.train.cli import main as train_main  # the `python -m` entry used under accelerate launch

    assert train_main(["--config", str(bad)]) == 2
    assert "glimpseprune train: error: " in capsys.readouterr().err


def test_the_eval_module_entry_goes_through_the_boundary(tmp_path):
    """``python -m glimpseprune.eval.cli`` reports bad input as ``glimpseprune eval`` does: one line, exit 2."""
    import os
    import subprocess
    import sys

    missing = tmp_path / "no_such.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "glimpseprune.eval.cli", "eval", "--data", str(missing), "--tiny",
                           "--device", "cpu", "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert_one_line(proc.returncode, proc.stderr.strip(), str(missing))
    debug = subprocess.run([sys.executable, "-m", "glimpseprune.eval.cli", "eval", "--data", str(missing), "--tiny",
                            "--device", "cpu", "--output", str(tmp_path / "out"), "--debug"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
