"""The command line explains itself: summaries, every subcommand, --version, fast torch-free --help, shown defaults,
one name per concept (old names warn), shipped configs."""

import subprocess
import sys
import time
import zipfile

import pytest

from glimpseprune.cli import SUBCOMMANDS, build_parser, main


def _help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with whitespace collapsed


def test_top_level_help_lists_every_subcommand_with_its_full_summary(capsys):
    text = _help_text(capsys, ["--help"])
    for name, (_module, _add, _run, summary) in SUBCOMMANDS.items():
        assert f" {name} " in text
        assert " ".join(summary.split()) in text  # the whole sentence, not a docstring cut mid-line
    assert {"answer", "demo", "ui", "eval", "bench", "train", "pretrain-mini", "configs"} <= set(SUBCOMMANDS)
    assert "glimpseprune.assets.default_model()" in text


def test_version(capsys):
    from glimpseprune import __version__

    text = _help_text(capsys, ["--version"])
    assert text == f"glimpseprune {__version__}"


def test_help_is_fast_and_does_not_import_torch():
    # CPU seconds (process_time), not wall time: a loaded shared machine must not fail the test
    code = ("import sys, time; t = time.process_time()\n"
            "from glimpseprune.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('SECONDS', time.process_time() - t, 'TORCH', 'torch' in sys.modules, 'TRANSFORMERS', "
            "'transformers' in sys.modules)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    words = out.split()
    assert words[words.index("TORCH") + 1] == "False" and words[words.index("TRANSFORMERS") + 1] == "False"
    # in-process CPU cost of importing the CLI and printing the help (measured 0.03 s); importing torch alone
    # costs over 1 s of CPU, so this bound also catches a heavy import sneaking in
    assert float(words[words.index("SECONDS") + 1]) < 0.5
    assert wall < 20.0  # whole interpreter start included, generous for a loaded machine


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_help_works_and_shows_defaults(capsys, name):
    text = _help_text(capsys, [name, "--help"])
    assert text.startswith(f"usage: glimpseprune {name}")
    assert " ".join(SUBCOMMANDS[name][3].split()) in text
    expected_default = {"answer": "--max-new-tokens MAX_NEW_TOKENS default: 64",
                        "demo": "number of test scenes (default: 6)",
                        "eval": "(default: exact_match)", "bench": "--batch-sizes BATCH_SIZES default: 1,8,32",
                        "pretrain-mini": None, "train": None, "train-plus": None, "configs": None,
                        "ui": "--port PORT default: 7860"}[name]
    if expected_default:
        assert expected_default in text


def test_adapter_is_the_one_name_and_lora_is_a_deprecated_alias(capsys):
    for command in ("answer", "eval", "bench"):
        argv = [command, "--adapter", "lora_dir"]
        assert build_parser(argv).parse_args(argv).adapter == "lora_dir"
    argv = ["answer", "--lora", "old_dir"]
    assert build_parser(argv).parse_args(argv).adapter == "old_dir"
    assert "--lora is deprecated, use --adapter" in capsys.readouterr().err
    argv = ["answer"]
    assert build_parser(argv).parse_args(argv).adapter is None  # the alias does not clobber the default
    argv = ["demo", "--out", "d"]
    assert build_parser(argv).parse_args(argv).output == "d"
    argv = ["bench", "--keep-ratio", "0.3"]
    assert build_parser(argv).parse_args(argv).keep_ratio == 0.3
    assert "--keep-ratio is deprecated, use --max-keep-ratio" in capsys.readouterr().err
    help_text = _help_text(capsys, ["answer", "--help"])
    assert "--adapter" in help_text and "--lora" not in help_text


def test_bench_defaults_to_the_mini_model_and_quiet_silences_weight_loading(tmp_path, capfd):
    from glimpseprune.assets import MINI_DIR

    if not (MINI_DIR / "base" / "config.json").is_file():
        pytest.fail("the embedded mini model is missing from this install")
    out = tmp_path / "bench"
    assert main(["bench", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--new-tokens", "2",
                 "--image-size", "224x224", "--no-plots", "--memory", "off", "--output", str(out), "--device", "cpu"]) == 0
    captured = capfd.readouterr()
    assert "mini:" in (out / "bench.json").read_text()  # the run hash names the embedded mini model
    assert "Loading weights" in captured.err  # transformers' bar is on by default...
    assert main(["answer", "--quiet", "--max-new-tokens", "2", "--output", "", "--device", "cpu"]) == 0
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "answer:" in captured.out  # ...and off with --quiet
    assert main(["answer", "--json", "--max-new-tokens", "2", "--output", "", "--device", "cpu"]) == 0
    assert "Loading weights" not in capfd.readouterr().err
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # restored for the rest of the process


def test_configs_are_shipped_listed_printed_and_usable_by_name(tmp_path, capsys):
    from glimpseprune.shipped_configs import CONFIG_DIR, resolve, shipped_configs

    names = shipped_configs()
    assert "train/tiny_offline.json" in names and "accelerate/cpu_2proc.yaml" in names
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in names)
    assert main(["configs", "train/tiny_offline.json"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "train/tiny_offline.json").read_text()
    assert resolve("configs/train/tiny_offline.json").is_file()
    assert main(["configs", "--copy", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "mini" / "glimpse.json").is_file()
    assert main(["configs", "train/nope.json"]) == 2
    assert "shipped:" in capsys.readouterr().err


def test_wheel_ships_the_configs(tmp_path):
    """Build the wheel as a user's pip would and look inside: configs/ must be package data."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("glimpseprune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "glimpseprune/configs/train/tiny_offline.json" in names
    assert "glimpseprune/configs/mini/glimpse.json" in names
    assert "glimpseprune/assets/mini/base/model.safetensors" in names
