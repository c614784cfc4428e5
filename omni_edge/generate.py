"""The generation API: `stream()` yields a reply's events as they come, `generate()` joins them.
The decode loop is `decode.generate_step`; one reply's orchestration is `turn.Turn`."""

from typing import Iterator, Optional

import numpy as np

from .decode import GENERATION_STREAM, generate_step
from .events import (AudioChunk, Done, Event, GenerationResult, GenerationStats, TextDelta)
from .options import SpeechOptions, split_options
from .processing.thinker_input import prepare_prompt
from .turn import Turn

__all__ = ["stream", "generate", "generate_step", "GENERATION_STREAM", "Event", "TextDelta",
           "AudioChunk", "Done", "GenerationStats", "GenerationResult"]


def stream(model, messages, *, speech: Optional[SpeechOptions] = None, **options) -> Iterator[Event]:
    """Generate a reply to chat `messages`, yielding events in order: TextDelta as the text
    comes and, with `speak=True`, AudioChunk (24 kHz float32 with its start sample) as the
    speech comes: the Talker runs alongside the Thinker and Token2Wav renders window by window,
    so audio starts while the text is still being written. A final Done carries the stats
    (time to first token and audio, what a listener hears, real-time factor, tok/s, memory).

    `options` are `options.GenerationOptions`' fields (max_tokens, min_tokens, temperature,
    top_p, top_k, min_p, repetition_penalty, seed, max_context, truncate, prefill_step_size,
    use_audio_in_video, speak, noise) and `options.SpeechOptions`' (voice, talker_temperature,
    talker_top_k, talker_top_p, talker_repetition_penalty, max_codec_tokens, min_codec_tokens,
    first_chunk_frames, chunk_frames, token2wav_steps, dit_dtype, overlap), which override
    `speech`.
    An unknown option is a ValueError naming the valid ones. Times count from the call."""
    generation, speech = split_options(options, speech)
    turn = Turn(model, generation, speech)
    messages = turn.messages(messages)
    prompt = prepare_prompt(model, messages, generation.max_tokens, turn.context,
                            generation.truncate, generation.use_audio_in_video)
    yield from turn.run(prompt)


def generate(model, messages, **kwargs) -> GenerationResult:
    """Generate a whole reply (and its speech with `speak=True`); see `stream` for the options."""
    audio = []
    for event in stream(model, messages, **kwargs):
        if isinstance(event, AudioChunk):
            audio.append(event.audio)
        elif isinstance(event, Done):
            wav = np.concatenate(audio) if audio else None
            return GenerationResult(event.text, event.token_ids, event.finish_reason, event.stats,
                                    event.codec_ids, wav)
    raise AssertionError("stream() ended without a Done event")
