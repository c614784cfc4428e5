"""Streaming speech: the Talker in lockstep with the Thinker gives the same codes as a Talker
run after the whole reply, and stream() yields text and audio in order with sane stats."""

import mlx.core as mx
import numpy as np
import pytest

pytest.importorskip("torch")

from omni_edge import generate, load, stream  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402
from omni_edge.decode import generate_step
from omni_edge.processing.thinker_input import prepare_prompt  # noqa: E402
from omni_edge.speech.talker import Lockstep  # noqa: E402
from omni_edge.processing.prompt import normalize_messages  # noqa: E402
from omni_edge.options import SpeechOptions  # noqa: E402
from omni_edge.speech.talker import ThinkerTrace, talker_codes  # noqa: E402
from omni_edge.speech.voice import with_speech_system_prompt  # noqa: E402

GREEDY = SpeechOptions(talker_temperature=0.0, max_codec_tokens=120)


@pytest.fixture(scope="module")
def model(fixture_3b, tmp_path_factory):
    return load(str(convert(str(fixture_3b), str(tmp_path_factory.mktemp("c") / "fp32"), dtype="float32")))


def thinker_steps(model, prompt, n_tokens, capture):
    return generate_step(model, prompt.ids, max_tokens=n_tokens, input_embeddings=prompt.embeds,
                         capture=capture, position_ids=prompt.positions, rope_delta=prompt.rope_delta)


def offline_codes(model, messages, n_tokens, eos=()):
    prompt = prepare_prompt(model, messages, n_tokens, 32768, False)
    capture = []
    reply = []
    for t in thinker_steps(model, prompt, n_tokens, capture):
        reply.append(t)
        if t in eos:
            break
    trace = ThinkerTrace(prompt.ids, mx.concatenate([e for e, _ in capture]),
                         mx.concatenate([h for _, h in capture]), reply, prompt.placeholders,
                         prompt.media)
    return list(talker_codes(model, trace, model.voices["Chelsie"], GREEDY))


def lockstep_codes(model, messages, n_tokens, eos=()):
    prompt = prepare_prompt(model, messages, n_tokens, 32768, False)
    capture = []
    steps = thinker_steps(model, prompt, n_tokens, capture)
    run = Lockstep(model, prompt.ids, prompt.placeholders, model.voices["Chelsie"], GREEDY, n_tokens,
                   prompt.media)
    return [v for kind, v in run.run(steps, capture, set(eos)) if kind == "code"], run


@pytest.mark.parametrize("n_tokens", [2, 5, 30])
def test_lockstep_codes_equal_offline_codes(model, n_tokens):
    messages = with_speech_system_prompt(normalize_messages("Tell me about rivers."))
    codes, run = lockstep_codes(model, messages, n_tokens)
    assert codes == offline_codes(model, messages, n_tokens)
    assert len(codes) > 0 and run.finish_reason == "length"


def test_lockstep_with_an_image_equals_offline_codes(model):
    image = np.kron(np.arange(48, dtype=np.uint8).reshape(6, 8, 1) * 5, np.ones((10, 10, 3), np.uint8))
    messages = with_speech_system_prompt(normalize_messages(
        [{"role": "user", "content": [{"type": "image", "image": image},
                                      {"type": "text", "text": "What is it?"}]}]))
    codes, _ = lockstep_codes(model, messages, 6)
    assert len(codes) > 0 and codes == offline_codes(model, messages, 6)


def test_lockstep_with_an_end_of_turn_token(model):
    messages = with_speech_system_prompt(normalize_messages("Tell me about rivers."))
    ids = prepare_prompt(model, messages, 12, 32768, False).ids
    reply = list(generate_step(model, ids, max_tokens=12))
    eos = {reply[7]}  # pretend the 8th token ends the turn
    codes, run = lockstep_codes(model, messages, 12, eos)
    assert run.finish_reason == "stop"
    assert codes == offline_codes(model, messages, 12, eos)


def test_stream_speaks_while_it_writes(model):
    events = list(stream(model, "Tell me about rivers.", speak=True, max_tokens=60, talker_temperature=0.0,
                         max_codec_tokens=150, seed=0))
    kinds = [e.type for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    done = events[-1]
    audio = [e for e in events if e.type == "audio"]
    assert [a.start_sample for a in audio] == list(np.cumsum([0] + [len(a.audio) for a in audio])[:-1])
    assert sum(len(a.audio) for a in audio) == 480 * len(done.codec_ids)
    # audio arrives before the text is finished
    assert kinds.index("audio") < max(i for i, k in enumerate(kinds) if k == "text")
    plain = generate(model, "Tell me about rivers.", speak=True, max_tokens=60, talker_temperature=0.0,
                     max_codec_tokens=150, seed=0)
    assert "".join(e.text for e in events if e.type == "text") == done.text == plain.text
    assert done.codec_ids == plain.codec_ids
    s = done.stats
    assert 0 < s.time_to_first_token <= s.time_to_first_audio
    assert s.audio_seconds == pytest.approx(len(done.codec_ids) * 0.02)
    assert s.real_time_factor > 0 and s.talker_tps > 0 and s.generation_tps > 0 and s.peak_memory_gb > 0
