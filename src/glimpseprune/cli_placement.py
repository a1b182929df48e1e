"""The command line's split-model options (``--device-map``, ``--max-memory``, ``--offload-folder``), shared by
``glimpseprune answer`` and ``glimpseprune eval``; they pass through ``GlimpsePrune.from_pretrained`` to
transformers / accelerate (docs/scaling.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("split model (accelerate big-model inference; instead of --device)")
    group.add_argument("--device-map", default=None,
                       help=f"{', '.join(STRATEGIES)}, or a JSON file mapping module names to a device, 'cpu' or "
                            "'disk'")
    group.add_argument("--max-memory", default=None,
                       help="per-device budget for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    group.add_argument("--offload-folder", default=None, help="folder for weights --device-map puts on 'disk'")


def parse_max_memory(text: str) -> dict:
    """``"0=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", "cpu": "200GiB"}`` (GPU indices as ints, as accelerate expects)."""
    budget = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"bad --max-memory {text!r}: expected DEVICE=SIZE[,DEVICE=SIZE...], e.g. 0=70GiB,cpu=200GiB")
        budget[int(key) if key.isdigit() else key] = int(value) if value.isdigit() else value
    return budget


def parse_device_map(text: str) -> str | dict:
    if text in STRATEGIES:
        return text
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--device-map {text!r} is neither one of {', '.join(STRATEGIES)} nor a JSON file")
    try:
        device_map = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--device-map {text}: not valid JSON ({err})") from None
    if not isinstance(device_map, dict) or not device_map:
        raise ValueError(f"--device-map {text}: expected a JSON object of module name -> device")
    return device_map


def placement_kwargs(args) -> dict:
    """``from_pretrained`` keyword arguments from the parsed options (empty without ``--device-map``)."""
    device_map = getattr(args, "device_map", None)
    max_memory, offload = getattr(args, "max_memory", None), getattr(args, "offload_folder", None)
    if device_map is None:
        if max_memory is not None or offload is not None:
            raise ValueError("--max-memory and --offload-folder need --device-map")
        return {}
    if getattr(args, "device", None):
        raise ValueError("give --device or --device-map, not both")
    return {"device_map": parse_device_map(device_map),
            "max_memory": parse_max_memory(max_memory) if max_memory is not None else None,
            "offload_folder": offload}
