"""Where a split model's modules compute (glimpseprune.placement) and the CLI's split-model options."""

import json

import pytest
import torch
from torch import nn

from glimpseprune.cli import main as cli_main
from glimpseprune.cli_placement import parse_device_map, parse_max_memory, placement_kwargs
from glimpseprune.placement import execution_device, main_device


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4, 2)
        self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
        self.head = nn.Linear(2, 4)


def test_execution_device_follows_accelerates_offload_rule():
    net = Net()
    assert execution_device(net, net.blocks[1]) == torch.device("cpu")  # no map: where the weights are
    # With an accelerator in the map, "cpu" and "disk" entries are offloaded: they compute on the main device.
    net.hf_device_map = {"embed": 1, "blocks.0": 0, "blocks.1": "cpu", "blocks.2": "disk", "head": 0}
    assert main_device(net.hf_device_map) == torch.device("cuda:1")
    assert execution_device(net, net.embed) == torch.device("cuda:1")
    assert execution_device(net, net.blocks[0]) == torch.device("cuda:0")
    assert execution_device(net, net.blocks[1]) == execution_device(net, net.blocks[2]) == torch.device("cuda:1")
    net.hf_device_map = {"embed": "cpu", "blocks": "disk", "head": "cpu"}  # CPU only: "cpu" computes on the CPU
    assert execution_device(net, net.blocks[2]) == torch.device("cpu")  # mapped through its parent "blocks"
    net.hf_device_map = {"": 0}
    assert execution_device(net, net.head) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="not part of this model"):
        execution_device(net, nn.Linear(1, 1))


def test_cli_option_parsing(tmp_path):
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert parse_max_memory("cpu=3000000") == {"cpu": 3000000}
    with pytest.raises(ValueError, match="DEVICE=SIZE"):
        parse_max_memory("70GiB")
    assert parse_device_map("auto") == "auto"
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model": "cpu", "lm_head": "disk"}))
    assert parse_device_map(str(path)) == {"model": "cpu", "lm_head": "disk"}
    with pytest.raises(ValueError, match="neither one of"):
        parse_device_map("cuda-everything")
    path.write_text("[1, 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_device_map(str(path))

    class Args:
        device, device_map, max_memory, offload_folder = None, None, "cpu=1GiB", None

    with pytest.raises(ValueError, match="need --device-map"):
        placement_kwargs(Args)
    Args.device_map, Args.device = "auto", "cpu"
    with pytest.raises(ValueError, match="--device or --device-map"):
        placement_kwargs(Args)
    Args.device = None
    assert placement_kwargs(Args) == {"device_map": "auto", "max_memory": {"cpu": "1GiB"},
                                      "offload_folder": None}


def test_answer_with_device_map_matches_one_device(tmp_path, capsys):
    """The embedded mini model split by accelerate's planner (3 MB of CPU budget for an 8 MB model: the rest on
    disk) answers the built-in example exactly like the model on one device."""

    def answer(*extra):
        assert cli_main(["answer", "--out", "", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    one = answer("--device", "cpu")
    split = answer("--device-map", "auto", "--max-memory", "cpu=3000000", "--offload-folder", str(tmp_path / "off"))
    assert split["answer"] == one["answer"]
    assert split["pruning"] == one["pruning"]
    # What those options load: really split, with some modules on disk (transformers offloads them by reference to
    # the checkpoint's own safetensors, so the offload folder may stay empty).
    from glimpseprune import GlimpsePrune
    from glimpseprune.assets import MINI_DIR

    placed = GlimpsePrune.from_pretrained(MINI_DIR / "base", MINI_DIR / "glimpse", device_map="auto",
                                          max_memory={"cpu": 3000000}, offload_folder=tmp_path / "off")
    assert {"cpu", "disk"} <= set(placed.model.hf_device_map.values())
    assert cli_main(["answer", "--out", "", "--device", "cpu", "--device-map", "auto"]) == 2
    assert "--device or --device-map" in capsys.readouterr().err


def test_eval_with_device_map_matches_one_device(tmp_path, capsys):
    """``glimpseprune eval --device-map``: the mini model split over CPU and disk writes the same per-item rows."""
    from glimpseprune.data.scenes import main as scenes_main

    assert scenes_main([str(tmp_path / "shapes"), "--train", "0", "--val", "0", "--test", "2"]) in (0, None)
    data = str(tmp_path / "shapes" / "test.jsonl")
    common = ["eval", "--data", data, "--methods", "glimpse", "--no-progress", "--max-new-tokens", "6"]

    def rows(*extra, out):
        assert cli_main([*common, "--output", str(tmp_path / out), *extra]) == 0
        files = sorted((tmp_path / out).rglob("glimpse-*.jsonl"))
        assert files
        timing = ("prefill_seconds", "decode_seconds", "batch_prefill_seconds", "batch_decode_seconds")
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in files[0].read_text().splitlines()]

    one = rows("--device", "cpu", out="one")
    split = rows("--device-map", "auto", "--max-memory", "cpu=3000000", "--offload-folder", str(tmp_path / "off"),
                 out="split")
    assert split == one and len(one) == 2
    capsys.readouterr()
    assert cli_main([*common, "--output", str(tmp_path / "x"), "--tiny", "--device-map", "auto"]) == 2
    assert "--device-map loads a saved model" in capsys.readouterr().err
