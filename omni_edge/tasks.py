"""Model-level tasks on top of the Thinker and Talker: speak a given text, transcribe a clip.

`speak_text` forces the Thinker's reply to be exactly the text (its tokens are fed as the reply
instead of being sampled), so the Talker reads the hidden states of those tokens and says them;
the audio streams window by window as `stream(..., speak=True)` does. `transcribe` is the
model's own speech recognition: the audio under an ASR instruction, decoded greedily."""

from typing import Iterator, List, Optional

import mlx.core as mx

from .generate import (CHUNK_FRAMES, FIRST_CHUNK_FRAMES, Event, Turn, _speak, _Text,
                       end_of_turn_ids, generate, generate_step, prepare_prompt)
from .models.token2wav import NUM_STEPS
from .speech import TalkerOptions

# The Thinker is asked to read the text aloud; its reply is then forced to the text itself, so
# the instruction only shapes the hidden states the Talker reads (the prompt's speaking style).
SPEAK_INSTRUCTION = "Read the following text aloud, word for word:\n"
# The recognition prompt Qwen's own audio examples use for ASR.
ASR_SYSTEM_PROMPT = "You are a speech recognition model."
ASR_INSTRUCTION = "Transcribe the {language}audio into text."
DEFAULT_TRANSCRIPT_TOKENS = 448


def forced_sampler(token_ids: List[int]):
    """A sampler that ignores the logits and returns `token_ids` one by one."""
    queue = iter(token_ids)

    def sample(logprobs: mx.array) -> mx.array:
        return mx.array([next(queue)], dtype=mx.uint32)

    return sample


def speak_text(
    model,
    text: str,
    voice: str = "Chelsie",
    *,
    talker_temperature: float = TalkerOptions.temperature,
    talker_top_k: int = TalkerOptions.top_k,
    talker_top_p: float = TalkerOptions.top_p,
    talker_repetition_penalty: float = TalkerOptions.repetition_penalty,
    max_codec_tokens: int = TalkerOptions.max_codec_tokens,
    seed: Optional[int] = None,
    noise: Optional[mx.array] = None,
    first_chunk_frames: Optional[int] = FIRST_CHUNK_FRAMES,
    chunk_frames: Optional[int] = CHUNK_FRAMES,
    token2wav_steps: int = NUM_STEPS,
    max_context: Optional[int] = None,
) -> Iterator[Event]:
    """Speak exactly `text` in `voice`: yields TextDelta events (the text, token by token),
    AudioChunk events (24 kHz float32) as each Token2Wav window renders, then Done (whose
    `token_ids` are the text's tokens). Options are `stream`'s speech options."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text to speak is empty; pass the words to say")
    reply = model.processor.tokenizer.encode(text, add_special_tokens=False)
    eos = model.config.thinker_config.eos_token_id
    turn = Turn(model, max_tokens=len(reply) + 1, seed=seed, max_context=max_context, speak=True,
                voice=voice,
                talker=TalkerOptions(talker_temperature, talker_top_k, talker_top_p,
                                     talker_repetition_penalty, max_codec_tokens),
                noise=noise, first_chunk_frames=first_chunk_frames,
                token2wav_steps=token2wav_steps, chunk_frames=chunk_frames)
    messages = turn.messages(
        [{"role": "user", "content": [{"type": "text", "text": SPEAK_INSTRUCTION + text}]}])
    prompt = prepare_prompt(model, messages, turn.max_tokens, turn.context, False)
    if len(prompt.ids) + turn.max_tokens > turn.context:
        raise ValueError(f"the text ({len(reply)} tokens) is too long for the context of "
                         f"{turn.context}; split it into shorter pieces")
    capture: list = []
    steps = generate_step(model, prompt.new_ids, max_tokens=turn.max_tokens,
                          sampler=forced_sampler(reply + [eos]), capture=capture,
                          input_embeddings=prompt.embeds,
                          prefill_step_size=turn.prefill_step_size)
    yield from _speak(turn, steps, capture, end_of_turn_ids(model),
                      _Text(model.processor.tokenizer), prompt, turn.max_tokens)


def transcription_messages(audio, language: Optional[str] = None,
                           prompt: Optional[str] = None) -> list:
    """The ASR conversation for `audio` (a path, encoded bytes or an array at 16 kHz):
    `language` names the spoken language ("English"), `prompt` is extra context appended to
    the instruction (names, spellings)."""
    instruction = ASR_INSTRUCTION.format(language=f"{language} " if language else "")
    if prompt:
        instruction += f" Context: {prompt}"
    return [{"role": "system", "content": [{"type": "text", "text": ASR_SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "audio", "audio": audio},
                                         {"type": "text", "text": instruction}]}]


def transcribe(model, audio, *, language: Optional[str] = None, prompt: Optional[str] = None,
               max_tokens: int = DEFAULT_TRANSCRIPT_TOKENS, temperature: float = 0.0,
               sampling_rate: Optional[int] = None) -> str:
    """The model's transcript of `audio` (a path, encoded file bytes, or a numpy array at
    `sampling_rate`), decoded greedily unless `temperature` > 0."""
    messages = transcription_messages(audio, language, prompt)
    if sampling_rate is not None:
        messages[1]["content"][0]["sampling_rate"] = sampling_rate
    return generate(model, messages, max_tokens=max_tokens, temperature=temperature).text.strip()
