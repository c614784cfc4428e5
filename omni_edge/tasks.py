"""Model-level tasks on top of the Thinker and Talker: speak a given text, transcribe a clip.

`speak_text` forces the Thinker's reply to be exactly the text (its tokens are fed as the reply
instead of being sampled), so the Talker reads the hidden states of those tokens and says them;
the audio streams window by window as `stream(..., speak=True)` does. `transcribe` is the
model's own speech recognition: the audio under an ASR instruction, decoded greedily."""

from typing import Iterator, Optional

from .events import Event
from .generate import generate
from .options import SpeechOptions, split_options
from .processing.thinker_input import prepare_prompt
from .turn import Turn

# The Thinker is asked to read the text aloud; its reply is then forced to the text itself, so
# the instruction only shapes the hidden states the Talker reads (the prompt's speaking style).
SPEAK_INSTRUCTION = "Read the following text aloud, word for word:\n"
# The recognition prompt Qwen's own audio examples use for ASR.
ASR_SYSTEM_PROMPT = "You are a speech recognition model."
ASR_INSTRUCTION = "Transcribe the {language}audio into text."
DEFAULT_TRANSCRIPT_TOKENS = 448


def speak_text(model, text: str, voice: str = "Chelsie", *,
               speech: Optional[SpeechOptions] = None, seed: Optional[int] = None,
               noise=None, max_context: Optional[int] = None, **speech_options) -> Iterator[Event]:
    """Speak exactly `text` in `voice`: yields TextDelta events (the text, token by token),
    AudioChunk events (24 kHz float32) as each Token2Wav window renders, then Done (whose
    `token_ids` are the text's tokens). `speech_options` are `SpeechOptions`' fields
    (talker_temperature, max_codec_tokens, first_chunk_frames, ...), overriding `speech`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text to speak is empty; pass the words to say")
    unknown = set(speech_options) - set(SpeechOptions.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown speech option(s) {', '.join(sorted(unknown))}; see SpeechOptions")
    reply = model.processor.tokenizer.encode(text, add_special_tokens=False)
    eos = model.config.thinker_config.eos_token_id
    generation, spoken = split_options(
        dict(max_tokens=len(reply) + 1, seed=seed, noise=noise, max_context=max_context,
             speak=True, voice=voice, **speech_options), speech)
    turn = Turn(model, generation, spoken)
    messages = turn.messages(
        [{"role": "user", "content": [{"type": "text", "text": SPEAK_INSTRUCTION + text}]}])
    prompt = prepare_prompt(model, messages, generation.max_tokens, turn.context, False)
    if len(prompt.ids) + generation.max_tokens > turn.context:
        raise ValueError(f"the text ({len(reply)} tokens) is too long for the context of "
                         f"{turn.context}; split it into shorter pieces")
    yield from turn.run(prompt, forced_ids=reply + [eos])


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
