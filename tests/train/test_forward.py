"""Training-forward glimpse placement (docs/method.md §3.4) and consistency with the inference engine."""

import torch

from glimpseprune.adapters import adapter_for
from glimpseprune.checkpoint import build_modules
from glimpseprune.engine import prefill
from glimpseprune.methods import GlimpsePruneMethod
from glimpseprune.policy import KeepPolicy
from glimpseprune.train.collate import Collator, model_inputs
from glimpseprune.train.forward import IGNORE_INDEX, reference_answer_logits, training_forward

from .conftest import MAX_PIXELS, SMALL_VIP


def _setup(tiny_train_model, records, with_answer=True):
    model, processor = tiny_train_model
    adapter = adapter_for(model)
    config = adapter.default_glimpse_config(**SMALL_VIP)
    torch.manual_seed(0)
    glimpse, vip = build_modules(config)
    collate = Collator(processor, adapter.family, max_pixels=MAX_PIXELS, with_answer=with_answer)
    batch = collate(records)
    with torch.no_grad():
        prepared = adapter.prepare(model_inputs(batch), config.vip_visual_layers)
    return adapter, config, glimpse, vip, batch, prepared


def test_labels_mask_prompt_and_header(tiny_train_model, shapes_records):
    _, processor = tiny_train_model
    rec = shapes_records[0]
    batch = Collator(processor, "qwen2_5_vl", max_pixels=MAX_PIXELS)([rec])
    supervised = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX]
    text = processor.tokenizer.decode(supervised)
    assert text == rec["answer"].strip() + processor.tokenizer.eos_token
    # the assistant header is the last unsupervised text
    first = int((batch["labels"][0] != IGNORE_INDEX).int().argmax())
    header = processor.tokenizer.decode(batch["input_ids"][0][:first])
    assert header.endswith("<|im_start|>assistant\n")
    assert int(batch["box_masks"][0].sum()) > 0


def test_glimpse_placement_positions_and_labels(tiny_train_model, shapes_records):
    # two rows of different lengths: left padding, different answer starts
    recs = [shapes_records[0], shapes_records[2]]
    adapter, config, glimpse, vip, batch, prepared = _setup(tiny_train_model, recs)
    out = training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer)
    lay = out.layout
    labels, pos = batch["labels"], prepared.position_ids  # prepare did not reorder (already left padded)
    assert prepared.source_index is None
    for b in range(2):
        a = int((labels[b] != IGNORE_INDEX).int().argmax())
        assert int(lay.start[b]) == a
        assert lay.is_glimpse[b].nonzero().squeeze(1).tolist() == [a]
        assert int(lay.labels[b, a]) == IGNORE_INDEX
        # prompt untouched, glimpse takes the first answer token's position, answer shifted by +1 (all 4 rows)
        assert torch.equal(lay.position_ids[:, b, :a], pos[:, b, :a])
        assert torch.equal(lay.position_ids[:, b, a], pos[:, b, a])
        assert torch.equal(lay.position_ids[:, b, a + 1:], pos[:, b, a:] + 1)
        assert torch.equal(lay.labels[b, a + 1:], labels[b, a:])
        assert torch.equal(lay.labels[b, :a], labels[b, :a])
        assert int(lay.attention_mask[b, a]) == 1
    assert out.vip_logits.shape[0] == sum(int(m.numel()) for m in batch["box_masks"])
    assert torch.isfinite(out.lm_loss)


def test_vip_logits_match_inference_engine(tiny_train_model, shapes_records):
    """The glimpse before the answer sees exactly the prompt it sees at inference, at the same position."""
    recs = shapes_records[:2]
    adapter, config, glimpse, vip, batch, prepared = _setup(tiny_train_model, recs)
    glimpse.eval(), vip.eval()
    with torch.no_grad():
        train_probs = torch.sigmoid(
            training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer,
                             compute_lm=False).vip_logits
        )
    _, _, _, _, pbatch, pprepared = _setup(tiny_train_model, recs, with_answer=False)
    method = GlimpsePruneMethod(glimpse, vip, config, KeepPolicy())
    with torch.no_grad():
        state = prefill(adapter, pprepared, method).pruning
    engine_probs = torch.cat([im.scores for s in state.samples for im in s.images])
    torch.testing.assert_close(train_probs, engine_probs, rtol=1e-4, atol=1e-5)


def test_isolated_glimpse_without_bias_equals_unpruned_model(tiny_train_model, shapes_records):
    adapter, config, glimpse, vip, batch, prepared = _setup(tiny_train_model, shapes_records[:2])
    with torch.no_grad():
        ref = reference_answer_logits(adapter, prepared, batch["labels"])
        out = training_forward(adapter, prepared, batch["labels"], glimpse, vip, config.prune_layer,
                               compute_lm=False, return_answer_logits=True, isolate_glimpse=True,
                               shift_answer=False)
    torch.testing.assert_close(out.answer_logits, ref, rtol=1e-4, atol=1e-4)
