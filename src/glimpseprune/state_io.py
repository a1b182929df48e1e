"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

A state (optimiser and scheduler ``state_dict``s, RNG states, step counters, logs) is a tree of dicts, lists,
tuples, scalars, strings and tensors. ``save_state(state, path)`` writes ``<path>.safetensors`` (the tensors) and
``<path>.json`` (the tree, tensors replaced by their key; dicts stored as key/value pairs so integer keys stay
integers, tuples tagged so ``random.setstate`` gets a tuple back). Neither format can run code when read, unlike
``torch.load(weights_only=False)``. ``refuse_pickle`` explains why an old ``.pt`` state is not read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .errors import ConfigError, UnsafeFileError, read_json

TENSORS_SUFFIX = ".safetensors"
TREE_SUFFIX = ".json"
FORMAT = "glimpseprune-state-1"


def state_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(tree JSON, tensors safetensors) for a state stem such as ``checkpoint-4/trainer_state``."""
    path = Path(path)
    if path.suffix in (TREE_SUFFIX, TENSORS_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + TREE_SUFFIX), path.with_name(path.name + TENSORS_SUFFIX)


def state_exists(path: str | os.PathLike) -> bool:
    tree, tensors = state_paths(path)
    return tree.is_file() and tensors.is_file()


def _encode(obj, tensors: dict[str, torch.Tensor]):
    if torch.is_tensor(obj):
        key = f"t{len(tensors)}"
        # clone: safetensors refuses tensors sharing storage (views of one buffer)
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # a numpy scalar
        return _encode(obj.item(), tensors)
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state (tensors, scalars, containers only)")


def _decode(node, tensors: dict[str, torch.Tensor], where: Path):
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(x, tensors, where) for x in node]
    if isinstance(node, dict) and len(node) == 1:
        (tag, value), = node.items()
        if tag == "__tensor__" and isinstance(value, str):
            if value not in tensors:
                raise ConfigError(f"training state refers to tensor {value!r}, missing from its safetensors file", where)
            return tensors[value]
        if tag == "__float__" and value in ("inf", "-inf", "nan"):
            return float(value)
        if tag == "__tuple__" and isinstance(value, list):
            return tuple(_decode(x, tensors, where) for x in value)
        if tag == "__dict__" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            out = {}
            for k, v in value:
                key = _decode(k, tensors, where)
                if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                    raise ConfigError(f"training state has an unhashable dict key {k!r}", where)
                out[key] = _decode(v, tensors, where)
            return out
    raise ConfigError(f"training state is malformed near {json.dumps(node)[:80]}", where)


def save_state(state: dict, path: str | os.PathLike) -> Path:
    """Write ``<path>.safetensors`` then ``<path>.json`` (each via a temporary file and a rename); returns the JSON
    path. The JSON is written last, so its presence means the state is complete."""
    from safetensors.torch import save_file

    tree_path, tensors_path = state_paths(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = {"format": FORMAT, "state": _encode(state, tensors)}
    tmp = tensors_path.with_name(tensors_path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, tensors_path)
    tmp = tree_path.with_name(tree_path.name + ".tmp")
    tmp.write_text(json.dumps(tree) + "\n")
    os.replace(tmp, tree_path)
    return tree_path


def load_state(path: str | os.PathLike) -> dict:
    """Read a state written by ``save_state``. Malformed files raise ``ConfigError`` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tree_path, tensors_path = state_paths(path)
    for p in (tree_path, tensors_path):
        if not p.is_file():
            raise FileNotFoundError(2, "training state file missing", str(p))
    tree = read_json(tree_path, "training state")
    if not isinstance(tree, dict) or tree.get("format") != FORMAT or "state" not in tree:
        raise ConfigError(f"not a glimpseprune training state (expected format {FORMAT!r})", tree_path)
    try:
        tensors = load_file(str(tensors_path))
    except SafetensorError as err:
        raise ConfigError(f"unreadable safetensors file (truncated or corrupt?): {err}", tensors_path) from None
    state = _decode(tree["state"], tensors, tree_path)
    if not isinstance(state, dict):
        raise ConfigError("training state must be a mapping", tree_path)
    return state


def refuse_pickle(path: str | os.PathLike, what: str = "training state") -> UnsafeFileError:
    """The error for an old pickled state file: it is never unpickled (unpickling can run arbitrary code)."""
    return UnsafeFileError(
        f"refusing to read the pickled {what} {Path(path).name}: pickle files can run code when loaded. This "
        "version stores training state as safetensors + JSON; restart the run, or move the old checkpoint away",
        path,
    )


# ---- checkpoint folders (``<output_dir>/checkpoint-<step>/``), shared by the stage-1 and the GP+ trainers ----------
def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a ``checkpoint-<step>`` folder; -1 for a name that is not one."""
    try:
        return int(Path(path).name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def complete_checkpoints(output_dir: str | os.PathLike, state_name: str) -> list[Path]:
    """The checkpoint folders whose state ``state_name`` is complete (its JSON is written last), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) >= 0]
    return sorted((p for p in found if state_exists(p / state_name)), key=checkpoint_step)


def prune_checkpoints(output_dir: str | os.PathLike, state_name: str, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``keep`` 0 or None: keep every one)."""
    import shutil

    if not keep:
        return
    for old in complete_checkpoints(output_dir, state_name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
