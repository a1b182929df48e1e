import json

from glimpseprune.cli import main


def test_answer_on_default_model_writes_png(tmp_path, capsys):
    out = tmp_path / "kept.png"
    code = main(["answer", "--max-keep-ratio", "0.1", "--max-new-tokens", "3", "--output", str(out), "--json",
                 "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    from glimpseprune.assets import MINI_DIR

    assert "visual tokens kept:" in printed
    # the default model always says what it is and how accurate it is
    expected = "exact match on its test split" if (MINI_DIR / "base" / "config.json").is_file() else "untrained"
    assert expected in printed
    result = json.loads(printed.strip().splitlines()[-1])
    sample = result["pruning"]["samples"][0]
    assert sample["kept"] <= int(0.1 * sample["total"]) and sample["total"] == 256
    assert out.is_file() and out.stat().st_size > 1000
    from PIL import Image

    assert Image.open(out).height > 448  # the 448 px scene plus its caption strip (what the outlines mean)


def test_answer_with_image_file_and_bad_file(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (120, 90), 128).save(tmp_path / "g.png")
    assert main(["answer", "--image", str(tmp_path / "g.png"), "--question", "is there a red circle?",
                 "--max-new-tokens", "2", "--output", str(tmp_path / "o.png"), "--device", "cpu"]) == 0
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert main(["answer", "--image", str(tmp_path / "bad.jpg"), "--question", "q", "--device", "cpu"]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["answer", "--max-keep-ratio", "2", "--device", "cpu", "--output", ""]) == 2
