"""Model-level tasks: `speak_text` says exactly its text (the Talker reads the hidden states of
the forced reply, as a Talker run over one full Thinker pass of prompt + text does), and
`transcribe` is `generate` under Qwen's ASR prompt."""

import io

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from omni_edge import generate
from omni_edge.options import SpeechOptions
from omni_edge.processing.audio import AudioError
from omni_edge.processing.thinker_input import prepare_prompt
from omni_edge.speech.talker import ThinkerTrace, talker_codes
from omni_edge.speech.voice import SpeechError
from omni_edge.tasks import SPEAK_INSTRUCTION, speak_text, transcribe

from test_chat import model, model_dir  # noqa: F401  (the demo checkpoint, built once per module)

SAMPLES_PER_CODE = 480
TEXT = "Hello there, how are you today?"
CODES = 30


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    sf.write(out, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return out.getvalue()


def test_speak_text_says_exactly_the_text_and_tiles_its_audio(model):  # noqa: F811
    events = list(speak_text(model, TEXT, "Ethan", talker_temperature=0, max_codec_tokens=CODES))
    done = events[-1]
    assert done.type == "done" and done.finish_reason == "stop"
    assert done.token_ids == model.processor.tokenizer.encode(TEXT, add_special_tokens=False)
    assert done.text == TEXT
    assert "".join(e.text for e in events if e.type == "text") == TEXT
    chunks = [e for e in events if e.type == "audio"]
    starts = np.cumsum([0] + [len(c.audio) for c in chunks])
    assert [c.start_sample for c in chunks] == list(starts[:-1])
    assert starts[-1] == SAMPLES_PER_CODE * len(done.codec_ids) > 0


def test_speak_text_codes_equal_a_talker_run_over_one_full_thinker_pass(model):  # noqa: F811
    opts = SpeechOptions(voice="Chelsie", talker_temperature=0.0, max_codec_tokens=CODES)
    done = list(speak_text(model, TEXT, "Chelsie", talker_temperature=0,
                           max_codec_tokens=CODES))[-1]

    messages = [{"role": "system", "content": [{"type": "text", "text": (
                    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
                    "capable of perceiving auditory and visual inputs, as well as generating "
                    "text and speech.")}]},
                {"role": "user", "content": [{"type": "text", "text": SPEAK_INSTRUCTION + TEXT}]}]
    prompt = prepare_prompt(model, messages, 64, 32768, False)
    reply = model.processor.tokenizer.encode(TEXT, add_special_tokens=False)
    ids = mx.array([prompt.ids + reply])
    embeds = model.thinker.embed(ids)
    hidden = model.thinker.model(embeds, model.thinker.make_cache(), None, 0)
    eos = model.config.thinker_config.eos_token_id
    trace = ThinkerTrace(prompt.ids, embeds[0], hidden[0], reply + [eos], prompt.placeholders)
    assert done.codec_ids == list(talker_codes(model, trace, model.voices["Chelsie"], opts))


def test_speak_text_refuses_empty_text_and_unknown_voices(model):  # noqa: F811
    with pytest.raises(ValueError, match="empty"):
        list(speak_text(model, "   "))
    with pytest.raises(SpeechError, match="unknown voice 'Bob'.*Chelsie"):
        list(speak_text(model, "Hi", "Bob"))


def test_transcribe_is_generate_under_the_asr_prompt(model):  # noqa: F811
    clip = wav_bytes()
    messages = [{"role": "system", "content": [{"type": "text",
                                                "text": "You are a speech recognition model."}]},
                {"role": "user", "content": [{"type": "audio", "audio": clip},
                                             {"type": "text",
                                              "text": "Transcribe the English audio into text."}]}]
    expected = generate(model, messages, max_tokens=6).text.strip()
    assert transcribe(model, clip, language="English", max_tokens=6) == expected
    plain = transcribe(model, clip, max_tokens=6)
    assert isinstance(plain, str) and plain


def test_transcribe_refuses_undecodable_audio(model):  # noqa: F811
    with pytest.raises(AudioError, match="could not be decoded"):
        transcribe(model, b"not audio at all", max_tokens=4)
