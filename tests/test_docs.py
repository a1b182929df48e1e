"""Docs that stay true: the README's Python example runs as written on the mini model (and prints what its comments
say), and the README's figures are the ones in the result files the project wrote (read from those files, so a
re-trained or re-measured model that changes them fails here until the README follows)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MINI_KSWEEP = ROOT / "benchmarks/results/ksweep_mini/ksweep.json"  # python -m glimpseprune.mini.ksweep (docs/results.md §5)
# python -m glimpseprune.mini.evaluate --n 500 on the shipped modules (an earlier run of the sweep's K = 3 box recipe)
MINI_SHIPPED = ROOT / "benchmarks/results/mini_shipped/eval_test500.json"
SHIPPED_K = 3  # the cut layer of the shipped mini modules
DEMO_RESULTS = ROOT / "benchmarks/results/demo/results.json"  # glimpseprune demo --output benchmarks/results/demo


def _readme() -> str:
    return " ".join(README.read_text().split())


def test_readme_python_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
        printed = capsys.readouterr().out
        for claimed in re.findall(r"^print\(.*#\s*(.+)$", block, flags=re.M):  # `print(...)  # what it prints`
            assert claimed.strip() in printed


def test_readme_mini_model_figures_match_the_shipped_modules_results():
    from glimpseprune.mini.ksweep import row

    summary = json.loads(MINI_SHIPPED.read_text())
    assert summary["prune_layer"] == SHIPPED_K
    shipped = row("box", SHIPPED_K, summary)
    text = _readme()
    m = re.search(r"cut after layer (\d+) of 6\).*?On the first (\d+) test items it scores \*\*([\d.]+) % exact match "
                  r"unpruned and ([\d.]+) % with GlimpsePrune keeping ([\d.]+) % of the (\d+) visual tokens\*\* "
                  r"\(median (\d+) tokens, .*?score \*\*([\d.]+) %\*\* \(\+([\d.]+) points, exact paired test p = "
                  r"([\de.-]+);", text)
    assert m, "the README's sentence with the mini model's figures"
    assert int(m.group(1)) == SHIPPED_K
    assert int(m.group(2)) == shipped["n"]
    assert float(m.group(3)) == round(100 * shipped["em_unpruned"], 1)
    assert float(m.group(4)) == round(100 * shipped["em_pruned"], 1)
    assert float(m.group(5)) == round(100 * shipped["kept_ratio_mean"], 1)
    assert int(m.group(6)) == 256
    assert float(m.group(7)) == shipped["kept_tokens_median"]
    assert float(m.group(8)) == round(100 * shipped["em_random"], 1)
    assert float(m.group(9)) == round(100 * shipped["margin_over_random"], 1)
    assert f"{shipped['p_vs_random']:.0e}".replace("e-0", "e-") == m.group(10)


def test_ksweep_results_were_made_with_the_shipped_sweep_config():
    report = json.loads(MINI_KSWEEP.read_text())
    config = json.loads((ROOT / "configs/mini/ksweep.json").read_text())
    for key in ("ks", "modes", "boxfree", "boxfree_train_overrides", "n_select", "n_test", "criteria"):
        assert report["config"][key] == config[key], key
    assert {(r["mode"], r["k"]) for r in report["rows"]["test"]} == {(m, k) for m in config["modes"] for k in config["ks"]}


def test_readme_cut_layer_is_the_shipped_modules():
    from glimpseprune import assets

    config = json.loads((assets.MINI_DIR / "glimpse" / "glimpse_config.json").read_text())
    assert config["prune_layer"] == SHIPPED_K


def test_readme_parameter_count_is_the_shipped_models():
    from glimpseprune import assets

    model, _ = assets.default_model()
    n = sum(p.numel() for p in model.model.parameters())
    assert f"a {n / 1e6:.2f} M-parameter Qwen2.5-VL" in _readme()


def test_readme_demo_time_is_the_measured_one():
    results = json.loads(DEMO_RESULTS.read_text())
    text = _readme()
    m = re.search(r"The demo \(`glimpseprune demo`, (\d+) scenes\) took ([\d.]+) s on 2 (?:shared )?CPU cores \(load "
                  r"average ([\d.]+)\)", text)
    assert m, "the README's sentence with the demo's measured time"
    assert int(m.group(1)) == len(results["rows"])
    assert float(m.group(2)) == round(results["seconds"])
    assert float(m.group(3)) == results["load_average"][0]
    assert "few seconds" not in text


def test_readme_lists_the_extras_install_sh_installs():
    script = (ROOT / "scripts" / "install.sh").read_text()
    extras = re.search(r'extras="\$\{1:-([\w,]+)\}"', script).group(1).split(",")
    m = re.search(r"then this package with its ((?:`\w+`, )*`\w+` and `\w+`) extras", _readme())
    assert m, "the README's sentence naming the extras scripts/install.sh installs"
    assert sorted(re.findall(r"`(\w+)`", m.group(1))) == sorted(extras)
