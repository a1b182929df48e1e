"""Family facts live behind the adapters: a new family is one adapter file (plus its tiny test builder).

Outside ``adapters/`` (the family files and their registry) and ``testing/`` (the tiny builders), no library code
may name a family: no string literal equal to a supported ``model_type`` (the dispatch-by-name smell,
``if model_type == "llava"``) and no import of a family's transformers internals (``transformers.models.<type>``,
e.g. a Qwen2.5-VL rotary inside a pruning method). Importing one of OUR adapter modules by name is fine: that is the
family file itself being used.
"""

import ast
import re
from pathlib import Path

import pytest

from glimpseprune.adapters import FamilyAdapter, adapter_class, supported_model_types

SRC = Path(__file__).resolve().parents[1] / "src" / "glimpseprune"
EXEMPT = ("adapters", "testing")
# Known debt, named so it cannot grow silently (empty: the benchmark's random-weight builds go through
# FamilyAdapter.config_only, and the published architectures are config files in configs/architectures/).
KNOWN_DEBT: set[str] = set()


def _docstring_nodes(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def family_mentions(source: str, model_types: list[str]) -> list[str]:
    """Every family-naming string literal or transformers family import in ``source`` (docstrings aside)."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, model_types)) + r")(?![A-Za-z0-9_])")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if any(part in model_types for part in re.split(r"[^A-Za-z0-9_]", node.value)):
                found.append(f"line {node.lineno}: string {node.value!r}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.startswith("transformers.models.") and pattern.search(module):
                    found.append(f"line {node.lineno}: import {module}")
    return found


def test_no_family_names_outside_the_adapters():
    model_types = supported_model_types()
    assert {"qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava"} <= set(model_types)
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in EXEMPT or str(rel) in KNOWN_DEBT:
            continue
        hits = family_mentions(path.read_text(), model_types)
        if hits:
            offenders[str(rel)] = hits
    assert not offenders, f"family names outside src/glimpseprune/adapters: {offenders}"


def test_the_check_catches_what_it_forbids():
    bad = (
        'from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision\n'
        'def f(adapter):\n    """qwen2_5_vl in a docstring is prose."""\n    return adapter.family == "llava"\n'
        'KINDS = ("qwen2_vl",)\nREF = "qwen2_vl_gp"\n'
    )
    hits = family_mentions(bad, ["qwen2_5_vl", "qwen2_vl", "llava"])
    assert len(hits) == 3, hits  # the import, "llava", "qwen2_vl" (not the docstring, not "qwen2_vl_gp")


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava", "llava_next", "llava_onevision"])
def test_every_family_declares_its_facts(model_type):
    cls = adapter_class(model_type)
    assert cls.family == model_type and model_type in cls.model_types
    for fact in ("box_token_mask", "flops_vision_dims", "image_size_kwargs", "offline_processor", "vit_scoring"):
        assert callable(getattr(cls, fact))
    for fact in ("box_token_mask", "flops_vision_dims"):  # each family gives its own rule, not the base's refusal
        assert getattr(cls, fact).__func__ is not getattr(FamilyAdapter, fact).__func__
    assert cls.vit_scoring is not FamilyAdapter.vit_scoring  # VisionZip/VScan can score every family we ship


def test_a_baseline_is_one_file():
    """Every methods/ file that registers a baseline is found without an import list to edit."""
    from glimpseprune.methods import _REGISTRY

    registering = set()
    for path in (SRC / "methods").glob("*.py"):
        for match in re.finditer(r'@register_method\("([a-z_]+)"[,)]', path.read_text()):
            registering.add(match.group(1))
    assert registering and registering == set(_REGISTRY)
    init = (SRC / "methods" / "__init__.py").read_text()
    assert not any(f"import {name}" in init or f" {name}," in init for name in registering)
