"""Import layering of the package: library components never import recipes or test fixtures.

Recipes are the drivers that put components together for one job (the CLI, the train / eval / bench / compare
drivers, the mini-model recipe, the demo); they are listed by name below, so a new driver is classified on purpose.
Everything else under ``src/glimpseprune`` is a component. Rules, checked on every import statement (including the
ones inside functions):

1. a component never imports a recipe (recipes may import anything);
2. nothing in ``src/`` imports a test fixture (the offline tiny builders, ``tests``);
3. the core (modules directly in the package and in ``adapters``, ``methods``, ``modules``, ``data``) never imports
   the application packages ``train``, ``eval`` and ``mini``.

Violations that exist today and are being removed are listed in ``KNOWN``: the test fails on any violation not in
that list, and on any listed one that is gone (then delete it from the list), so the list can only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "glimpseprune"

RECIPES = {
    "glimpseprune.cli": "the command line",
    "glimpseprune.demo": "the offline HTML demo",
    "glimpseprune.train.cli": "stage-1 training, command line",
    "glimpseprune.train.trainer": "stage-1 training driver (accelerate loop, checkpoints, resume)",
    "glimpseprune.eval.cli": "evaluation, command line",
    "glimpseprune.eval.runner": "evaluation driver (datasets x methods x budgets)",
    "glimpseprune.eval.bench": "efficiency benchmark driver",
    "glimpseprune.mini.pretrain": "the mini base model's pretraining recipe",
    "glimpseprune.mini.evaluate": "mini model: evaluation driver",
    "glimpseprune.mini.diagnose": "mini model: diagnostics driver",
    "glimpseprune.mini.glimpse_data": "mini model: writes its stage-1 data",
    "glimpseprune.mini.ksweep": "mini model: the K trade-off sweep (stage-1 training + evaluation per K)",
    "glimpseprune.mini.evaluate_plus": "mini model: GlimpsePrune+ evaluation driver",
    "glimpseprune.mini.evaluate_video": "mini model: evaluation on glimpse-shapes video clips",
    "glimpseprune.train.plus": "GlimpsePrune+ training (Run A, merge, Run B), command line",
    "glimpseprune.train.rl_trainer": "GlimpsePrune+ Run A driver (GRPO on accelerate)",
    "glimpseprune.ui": "the browser demo (glimpseprune ui)",
}
# benchmarks/ and tests/ are outside the package: nothing in it may import them.
FIXTURE_PREFIXES = ("glimpseprune.tiny", "glimpseprune.testing", "tests")
OUTSIDE_PACKAGE = ("benchmarks",)
APPLICATION_PACKAGES = ("glimpseprune.train", "glimpseprune.eval", "glimpseprune.mini")

# (importer, imported, rule) that exist on main and are known debt (the list may only shrink):
KNOWN: set[tuple[str, str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imports(name: str, path: Path, known_modules) -> set[str]:
    """Every module of ours, of tests/ or of benchmarks/ that ``path`` imports, anywhere in the file."""
    out = set()
    own_package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own_package[: len(own_package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from .eval import flops`` imports the module eval.flops
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known_modules else target)
    ours = ("glimpseprune",) + FIXTURE_PREFIXES + OUTSIDE_PACKAGE
    return {m for m in out if m.split(".")[0] in {p.split(".")[0] for p in ours} and m != name}


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def is_core(module: str) -> bool:
    return not _under(module, APPLICATION_PACKAGES) and module not in RECIPES


def violations() -> set[tuple[str, str, str]]:
    modules = package_modules()
    found = set()
    for name, path in modules.items():
        for target in imports(name, path, modules):
            if _under(target, FIXTURE_PREFIXES) or _under(target, OUTSIDE_PACKAGE):
                found.add((name, target, "fixture"))
            elif name not in RECIPES and target in RECIPES:
                found.add((name, target, "recipe"))
            elif is_core(name) and _under(target, APPLICATION_PACKAGES):
                found.add((name, target, "upward"))
    return found


def test_recipe_list_names_real_modules():
    modules = package_modules()
    assert not set(RECIPES) - set(modules), "RECIPES lists modules that do not exist"
    assert not {importer for importer, _, _ in KNOWN} - set(modules), "KNOWN lists importers that do not exist"


def test_components_never_import_recipes_or_fixtures():
    found = violations()
    new = sorted(found - KNOWN)
    rules = {
        "recipe": "a component imports a recipe (if the importer is itself a recipe, list it in RECIPES)",
        "fixture": "imports a test fixture / something outside the package",
        "upward": "the core imports an application package (train / eval / mini)",
    }
    assert not new, "new layering violations:\n" + "\n".join(f"{a} -> {b}: {rules[r]}" for a, b, r in new)
    gone = sorted(KNOWN - found)
    assert not gone, "fixed, remove from KNOWN:\n" + "\n".join(f"{a} -> {b} ({r})" for a, b, r in gone)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    modules = package_modules()
    # trainer imports the tiny builder inside a function: the checker must see it
    assert "glimpseprune.offline_models" in imports("glimpseprune.train.trainer", modules["glimpseprune.train.trainer"],
                                                    modules)
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from .eval import runner\n    from . import demo\n    import tests.reference\n")
    seen = imports("glimpseprune.fake", fake, modules)
    assert {"glimpseprune.eval.runner", "glimpseprune.demo", "tests.reference"} <= seen
