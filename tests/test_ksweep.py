"""The K trade-off recipe (python -m glimpseprune.mini.ksweep) end to end on a tiny setting."""

import json

import pytest

from glimpseprune import assets
from glimpseprune.mini import ksweep

shipped = pytest.mark.skipif(not (assets.MINI_DIR / "base" / "config.json").is_file(), reason="mini assets not built")


@shipped
def test_ksweep_recipe_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "sweep"
    overrides = [f"output_dir={out}", f"data_dir={tmp_path / 'data'}", "n_train=8", "n_val=2", "ks=[1,2]",
                 "boxfree_ks=[2]", "n_select=3", "n_test=4", "batch_size=4", "threads=1",
                 'train_overrides={"max_steps": 2, "batch_size": 2, "save_every": 100, "log_every": 1}',
                 'boxfree_train_overrides={"max_steps": 3}']
    assert ksweep.main(["--config", "configs/mini/ksweep.json", *overrides]) == 0
    report = json.loads((out / "ksweep.json").read_text())
    assert (out / "ksweep.png").stat().st_size > 0 and "same-K random" in (out / "ksweep.md").read_text()
    runs = report["runs"]
    assert sorted(runs) == ["box-k1", "box-k2", "boxfree-k2"]
    for name, run in runs.items():
        mode, k = name.split("-k")
        config = json.loads((out / name / "final" / "glimpse_config.json").read_text())
        assert config["prune_layer"] == int(k)  # trained at its own K
        test = run["test"]
        assert test["n"] == 4 and run["select"]["n"] == 3
        assert test["random_counts_match"] is True  # the control kept exactly GlimpsePrune's counts
        assert test["prefill_time"]["batches"] == 1 and run["select"]["prefill_time"] is None
        assert 0 < test["prefill_flops_ratio"] < 1.2
        expected_retention = (int(k) + (6 - int(k)) * test["kept_ratio_mean"]) / 6
        assert test["layer_averaged_retention_mean"] == pytest.approx(expected_retention)
    # box-free trains at the box run's mean kept ratio with a top-k policy: every item keeps int(t * 256)
    target = runs["boxfree-k2"]["target_keep"]
    assert target == round(runs["box-k2"]["select"]["kept_ratio_mean"], 4)
    bf = json.loads((out / "boxfree-k2" / "final" / "glimpse_config.json").read_text())
    assert bf["threshold"] == 0.0 and bf["max_keep_ratio"] == target
    rows = json.loads((out / "boxfree-k2" / "eval_test.json").read_text())["rows"]
    assert all(r["kept"] == max(1, int(target * 256)) for r in rows)
    # box-free runs take their own overrides on top (here: one more step than the box runs)
    def last_step(name):
        return max(json.loads(x)["step"] for x in (out / name / "log.jsonl").read_text().splitlines()
                   if '"step"' in x)
    assert (last_step("box-k2"), last_step("boxfree-k2")) == (2, 3)
    # the unpruned selection answers are shared by every run (they do not depend on K)
    select_rows = [json.loads((out / n / "eval_select.json").read_text())["rows"] for n in runs]
    assert len({tuple(r["unpruned"] for r in rows) for rows in select_rows}) == 1
    assert report["choice"]["criteria"]["min_margin"] == 0.15
    # a second call reuses the trained modules and cached measurements
    assert ksweep.main(["--config", "configs/mini/ksweep.json", *overrides]) == 0
    assert json.loads((out / "ksweep.json").read_text())["rows"] == report["rows"]
    assert "[ksweep] train" not in capsys.readouterr().out.split("wrote")[1]
    # --report-only rebuilds the same report from the cached measurements, training and measuring nothing
    (out / "ksweep.json").unlink()
    assert ksweep.main(["--config", "configs/mini/ksweep.json", "--report-only", *overrides]) == 0
    assert json.loads((out / "ksweep.json").read_text())["rows"] == report["rows"]
    printed = capsys.readouterr().out
    assert "[ksweep] train" not in printed and "[ksweep] measure" not in printed
    # ... and names what is missing instead of measuring it
    (out / "box-k2" / "eval_test.json").unlink()
    assert ksweep.main(["--config", "configs/mini/ksweep.json", "--report-only", *overrides]) == 2
    err = capsys.readouterr().err
    assert "box-k2/eval_test.json" in err and "Traceback" not in err


def test_ksweep_config_errors():
    with pytest.raises(ValueError, match="unknown modes"):
        ksweep.SweepConfig(modes=["boxy"])
    with pytest.raises(ValueError, match="subset"):
        ksweep.SweepConfig(ks=[1, 2], boxfree_ks=[3])
    with pytest.raises(ValueError, match="cut layers"):
        ksweep.SweepConfig(ks=[0, 1])
    with pytest.raises(ValueError, match="needs the box mode"):
        ksweep.SweepConfig(modes=["boxfree"])
    with pytest.raises(SystemExit):
        ksweep.main(["--config", "configs/mini/ksweep.json", "nonsense_key=1"])
