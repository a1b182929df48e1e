"""The mini model's card, its description and its modules' hub card say only what was measured.

``assets/mini/results.json`` is the one place the shipped mini model's measured figures are written (each section
names its source file or run and its command). Checked here:

- its ``test`` section is the measurement of the shipped modules in ``benchmarks/results/mini_shipped`` (so a
  re-measured model fails here until the card's source follows);
- every number in ``MODEL_CARD.md`` (prose and tables, code blocks aside) is one of: a figure of ``results.json``
  (as written there, rounded, as a percentage, or seconds as minutes), a value of the shipped configs (base model
  ``config.json``, ``glimpse_config.json``, ``configs/mini/*.json``) or of the benchmark's scene layouts, a count
  measured here on the shipped files (parameters, folder sizes), or one of the few listed below with the reason;
- the card's headline sentence and its table put each figure in its place;
- the description ``assets.default_model()`` prints and the modules' ``glimpse/README.md`` are built from
  ``results.json`` (the README byte for byte).
"""

import json
import re
from pathlib import Path

import pytest

from glimpseprune import assets

ROOT = Path(__file__).resolve().parents[1]
CARD = assets.MINI_DIR / "MODEL_CARD.md"
SHIPPED_EVAL = ROOT / "benchmarks/results/mini_shipped/eval_test500.json"  # mini.evaluate on the shipped modules
CONFIGS = [assets.MINI_DIR / "base" / "config.json", assets.MINI_DIR / "glimpse" / "glimpse_config.json",
           ROOT / "configs/mini/pretrain.json", ROOT / "configs/mini/glimpse.json"]
# Numbers on the card that are neither measurements nor config values, with why they are there.
NOT_MEASURED = {
    "4": "the cut layer of the modules shipped before issue #14 (history, named, not measured here)",
    "12": "questions per image in pretraining: extra_turns 11 + the first question",
    "224": "the 224² pretraining resolution (warmup_pixels.max_pixels 50,176 = 224²)",
}


@pytest.fixture(scope="module")
def results():
    return assets.mini_results()


@pytest.fixture(scope="module")
def mini():
    model, description = assets.default_model()
    return model, description


def _card_text() -> str:
    text = re.sub(r"```.*?```", " ", CARD.read_text(), flags=re.S)  # commands, not claims
    text = re.sub(r"`[^`]*`", " ", text)  # file names, keys
    text = re.sub(r"issue #\d+|§\s?\d+", " ", text)  # references
    return text


def _leaves(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and key.isdigit():
                yield int(key)
            yield from _leaves(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _leaves(value)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def _forms(value, seconds=False) -> set[str]:
    out = set()
    if isinstance(value, int):
        out |= {str(value), f"{value:,}"}
    for digits in range(5):
        out |= {f"{value:.{digits}f}", f"{value:,.{digits}f}"}
    if isinstance(value, float) and 0 <= value <= 1:
        out |= {f"{100 * value:.1f}", f"{100 * value:.0f}", f"{value:.0e}".replace("e-0", "e-"), f"{value:.2g}"}
    if seconds:
        out.add(f"{value / 60:.1f}")
    return out


def _accounted(results, model) -> set[str]:
    forms = set()
    for key, section in results.items():
        if isinstance(section, dict):
            for k, v in section.items():
                for leaf in _leaves(v):
                    forms |= _forms(leaf, seconds=k.endswith("seconds"))
    test = results["test"]["measured"]
    forms |= _forms(test["em_pruned"] - test["em_unpruned"])  # GlimpsePrune - unpruned
    for path in CONFIGS:
        for leaf in _leaves(json.loads(path.read_text())):
            forms |= _forms(leaf)
    text = model.model.config.text_config
    vision = model.model.config.vision_config
    patches = 448 // vision.patch_size
    measured_here = [sum(p.numel() for p in model.model.parameters()),
                     sum(p.numel() for p in model.model.model.visual.parameters()),
                     sum(p.numel() for m in (model.glimpse, model.vip) for p in m.parameters()),
                     text.hidden_size // text.num_attention_heads, patches]
    for n in measured_here:
        forms |= _forms(n)
    from dataclasses import asdict

    from glimpseprune.data.scenes import LAYOUTS

    for layout in LAYOUTS.values():  # the benchmark's scene layouts the card describes
        for leaf in _leaves(asdict(layout)):
            forms |= _forms(leaf)
    for folder in ("base", "glimpse"):
        size = sum(p.stat().st_size for p in (assets.MINI_DIR / folder).iterdir())
        forms |= {f"{size / 1e6:.1f}", f"{size / 1e6:.2f}"}
    import torch
    import transformers

    forms |= {".".join(torch.__version__.split(".")[:2]), ".".join(transformers.__version__.split(".")[:2])}
    return forms | set(NOT_MEASURED)


def test_results_test_section_is_the_shipped_modules_measurement(results):
    measured = json.loads(SHIPPED_EVAL.read_text())
    assert results["test"]["command"] == measured.pop("command")
    assert results["test"]["measured"] == measured
    assert results["test"]["measured"]["prune_layer"] == json.loads(
        (assets.MINI_DIR / "glimpse" / "glimpse_config.json").read_text())["prune_layer"]


def test_every_number_on_the_card_is_accounted_for(results, mini):
    model, _ = mini
    accounted = _accounted(results, model)
    numbers = re.findall(r"(?<![\w.,])\d[\d,]*(?:\.\d+)?(?:e-\d+)?(?![\w])", _card_text())
    numbers = [n.rstrip(",") for n in numbers]
    unaccounted = sorted({n for n in numbers if n not in accounted})
    assert not unaccounted, f"numbers on MODEL_CARD.md with no source: {unaccounted}"
    assert len(numbers) > 100  # the extraction sees the card's figures


def test_card_headline_and_table_put_each_figure_in_its_place(results):
    t = results["test"]["measured"]
    text = " ".join(CARD.read_text().split())
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    head = re.search(r"scores \*\*([\d.]+ %) exact match\*\* on test scenes \(n = (\d+)\).*?GlimpsePrune scores "
                     r"\*\*([\d.]+ %)\*\* on those \d+ test items keeping \*\*([\d.]+ %)\*\* of the visual tokens "
                     r"after layer (\d).*?\(unpruned ([\d.]+ %)\).*?score \*\*([\d.]+ %)\*\* \(\+([\d.]+) points, "
                     r"exact paired test p = ([\de-]+)\)", text)
    assert head, "the card's status sentence"
    assert head.groups() == (pct(t["em_unpruned"]), str(t["n"]), pct(t["em_pruned"]), pct(t["kept_ratio_mean"]),
                             str(t["prune_layer"]), pct(t["em_unpruned"]), pct(t["em_random"]),
                             f"{100 * t['margin_over_random']:.1f}",
                             f"{t['paired_vs_random']['p_value']:.0e}".replace("e-0", "e-"))
    row = re.search(r"\| exact match, all \(n = (\d+)\) \| ([\d.]+ %) \| \*\*([\d.]+ %)\*\* \| ([\d.]+ %) \|", text)
    assert row.groups() == (str(t["n"]), pct(t["em_unpruned"]), pct(t["em_pruned"]), pct(t["em_random"]))
    for qtype, q in t["per_qtype"].items():
        row = re.search(rf"\| {qtype} \(n = (\d+)\) \| ([\d.]+ %) \| ([\d.]+ %) \| ([\d.]+ %) \|", text)
        assert row, qtype
        assert row.groups() == (str(q["n"]), pct(q["em_unpruned"]), pct(q["em_pruned"]), pct(q["em_random"]))
    a_only, b_only = t["paired_vs_random"]["a_only"], t["paired_vs_random"]["b_only"]
    assert f"{a_only} / {b_only}" in text


def test_description_reads_the_results(results, mini):
    model, description = mini
    t = results["test"]["measured"]
    assert f"{100 * t['em_unpruned']:.1f} % exact match on its test split unpruned (n = {t['n']})" in description
    assert f"{100 * t['em_pruned']:.1f} % with its GlimpsePrune modules keeping {100 * t['kept_ratio_mean']:.1f} %" \
        in description
    assert f"{sum(p.numel() for p in model.model.parameters()) / 1e6:.2f} M parameters" in description
    # other modules on the mini base: the base model's figure only (the GlimpsePrune one was measured with the
    # shipped modules)
    other = assets.mini_description(model, shipped_modules=False)
    assert "GlimpsePrune" not in other and f"{100 * t['em_unpruned']:.1f} %" in other


def test_modules_hub_card_is_built_from_the_results(results, mini):
    model, _ = mini
    card = (assets.MINI_DIR / "glimpse" / "README.md").read_text()
    assert card == assets.mini_modules_card(model), \
        "rewrite it: python -c 'from glimpseprune import assets; assets.write_mini_modules_card()'"
    t = results["test"]["measured"]
    assert f"| exact match, GlimpsePrune | {t['em_pruned']:.4g} |" in card
    assert f"p = {t['paired_vs_random']['p_value']:.0e})" in card
