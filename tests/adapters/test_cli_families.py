"""`glimpseprune answer` on saved checkpoints of every family: the family comes from the checkpoint's config."""

import json

import pytest

from glimpseprune.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def test_answer_detects_family_from_checkpoint(fam, saved, capsys):
    from glimpseprune.assets import example_image

    base, glimpse = saved / fam.name / "base", saved / fam.name / "glimpse"
    fam.model.save_pretrained(base)
    fam.processor.save_pretrained(base)
    fam.gp.save_pretrained(glimpse)
    example_image(224).save(saved / "scene.png")
    code = main(["answer", "--model", str(base), "--glimpse", str(glimpse), "--image", str(saved / "scene.png"),
                 "--question", "is there a red circle?", "--max-keep-ratio", "0.25", "--max-new-tokens", "3",
                 "--out", str(saved / f"{fam.name}.png"), "--json", "--device", "cpu", "--dtype", "float32"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sample = result["pruning"]["samples"][0]
    assert sample["total"] > 0 and sample["kept"] <= int(0.25 * sample["total"])
    assert (saved / f"{fam.name}.png").is_file()


def test_ui_ask_draws_every_family(fam):
    """The web UI's ``ask`` draws the kept tokens for every family: one grid per image, tiles on their regions
    (InternVL), or the base view of several (AnyRes)."""
    from glimpseprune.assets import example_image
    from glimpseprune.ui import ask

    answers = ask(fam.gp, example_image(224), "is there a red circle?", "glimpse", 0.25, max_new_tokens=2)
    assert answers.kept_image.size[0] == 224
