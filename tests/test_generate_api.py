"""generate like transformers: streamer (put/end protocol, TextIteratorStreamer), generation_config=, .to() /
.device / .dtype on the wrapper, beam search refused with a clear error."""

import threading

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer

from glimpseprune import assets
from glimpseprune.processing import build_inputs


@pytest.fixture(scope="module")
def mini():
    model, _ = assets.default_model(device="cpu")
    return model


@pytest.fixture(scope="module")
def inputs(mini):
    return build_inputs(mini.processor, [assets.EXAMPLE_QUESTION], [[assets.example_image()]])


class Recorder:
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        assert not self.ended, "put after end"
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


def test_streamer_protocol_matches_the_output(mini, inputs):
    rec = Recorder()
    out = mini.generate(**inputs, max_new_tokens=6, min_new_tokens=6, streamer=rec)
    assert rec.ended == 1
    assert rec.puts[0].equal(inputs["input_ids"])  # the prompt first, as transformers' generate does
    steps = rec.puts[1:]
    assert len(steps) == out.new_tokens == 6 and all(s.shape == (1,) for s in steps)
    assert torch.stack(steps, dim=1).equal(out.generated.cpu())


def test_text_iterator_streamer_yields_the_answer(mini, inputs):
    streamer = TextIteratorStreamer(mini.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=mini.generate(**inputs, max_new_tokens=8,
                                                                               streamer=streamer)))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    text = mini.processor.batch_decode(result["out"].generated, skip_special_tokens=True)[0]
    assert streamed.strip() == text.strip() == assets.EXAMPLE_ANSWER


def test_generation_config_like_transformers(mini, inputs):
    plain = mini.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    via_config = mini.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=3, min_new_tokens=3))
    assert via_config.sequences.equal(plain.sequences)
    # keyword options override the given config
    overridden = mini.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=3, min_new_tokens=3),
                               max_new_tokens=5, min_new_tokens=5)
    assert overridden.new_tokens == 5


def test_beam_search_is_refused_clearly(mini, inputs):
    with pytest.raises(ValueError, match="beam search is not supported"):
        mini.generate(**inputs, generation_config=GenerationConfig(num_beams=4))
    with pytest.raises(ValueError, match="num_beams"):
        mini.generate(**inputs, num_beams=2)


def test_device_dtype_and_to():
    model, _ = assets.default_model(device="cpu")  # its own copy: .to() changes it
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    image = assets.example_image()
    text32, out32 = model.answer([image], assets.EXAMPLE_QUESTION, max_new_tokens=4)
    assert model.to(torch.float64) is model
    assert model.dtype == torch.float64
    assert {p.dtype for p in [*model.glimpse.parameters(), *model.vip.parameters()]} == {torch.float64}
    text64, out64 = model.answer([image], assets.EXAMPLE_QUESTION, max_new_tokens=4)
    assert text64 == text32 and out64.pruning.samples[0].kept == out32.pruning.samples[0].kept
