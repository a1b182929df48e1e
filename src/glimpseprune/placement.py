"""Where a module of a (possibly split) model computes.

A model loaded with ``device_map`` (accelerate's big-model inference, docs/scaling.md) carries ``hf_device_map``:
module name -> a device, ``"cpu"`` or ``"disk"``. accelerate's ``dispatch_model`` runs every module on its mapped
device, except that ``"disk"`` entries (and ``"cpu"`` entries whenever some accelerator is mapped) are *offloaded*:
their weights stay on the CPU / disk and are brought to the *main device* (the first mapped accelerator, else the
CPU) for each forward. Offloaded parameters read as ``meta`` tensors between calls, so a parameter's ``.device``
does not say where a module computes; this module answers from the map instead.

The engine keeps its control tensors (attention mask, positions, rotary tables, gather indices) on the input device
and moves them to a layer's device where it uses them directly; the accelerate hook of each mapped module moves a
module call's arguments to its execution device itself.
"""

from __future__ import annotations

import torch


def _device(value) -> torch.device:
    return torch.device(value if not isinstance(value, int) else f"cuda:{value}")


def main_device(device_map: dict) -> torch.device:
    """accelerate's main execution device of a device map: the first non-offload device, else the CPU."""
    for value in device_map.values():
        if value not in ("cpu", "disk"):
            return _device(value)
    return torch.device("cpu")


def execution_device(model: torch.nn.Module, module: torch.nn.Module | None = None) -> torch.device:
    """The device ``module`` (default: the whole model's input side) computes on.

    Without a device map: the device of the module's first parameter or buffer. With one: the entry of the module
    or of its closest mapped ancestor, offload entries resolved to the main device.
    """
    device_map = getattr(model, "hf_device_map", None)
    module = model if module is None else module
    if not device_map:
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
        return torch.device("cpu")
    name = _qualified_name(model, module)
    if name is None:
        raise ValueError("the module is not part of this model")
    while True:
        if name in device_map:
            value = device_map[name]
            return main_device(device_map) if value in ("cpu", "disk") and _offloaded(device_map, value) \
                else _device(value)
        if not name:
            # the root of a split model: where its inputs go (accelerate's main device)
            return main_device(device_map)
        name = name.rpartition(".")[0]


def _offloaded(device_map: dict, value: str) -> bool:
    if value == "disk":
        return True
    return main_device(device_map).type != "cpu"  # "cpu" next to an accelerator is CPU offload


def _qualified_name(model: torch.nn.Module, module: torch.nn.Module) -> str | None:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return None


