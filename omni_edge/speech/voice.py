"""What speech needs before it starts: a model that can speak, a known voice, and the system
prompt the model was trained to speak under."""

import warnings

from ..processing.prompt import SPEECH_SYSTEM_PROMPT


class SpeechError(ValueError):
    """Speech was asked of a model or a reply that can't give it."""


class UnknownVoiceError(SpeechError, KeyError):
    """A voice the model does not have. A KeyError too, so `model.voices` stays a Mapping."""

    def __init__(self, name, known):
        super().__init__(f"unknown voice {name!r}; this model has: {', '.join(known) or 'none'}")

    def __str__(self):  # KeyError would quote the message
        return self.args[0]


def check_speech(model, voice: str) -> dict:
    """The voice's conditioning; a clear error when the model can't speak or lacks the voice."""
    if getattr(model, "talker", None) is None:
        raise SpeechError(
            getattr(model, "speech_error", None) or  # load(speech=False) says how to speak
            "this model has no Talker/Token2Wav (a thinker-only checkpoint, or converted with "
            "enable_audio_output false), so it cannot speak; convert the full Qwen2.5-Omni repo")
    return model.voices[voice]


def with_speech_system_prompt(messages: list) -> list:
    """Speech only works under the system prompt the model was trained with: add it when the
    conversation has none, warn when it has another."""
    first = messages[0]
    if first["role"] != "system":
        return [{"role": "system", "content": [{"type": "text", "text": SPEECH_SYSTEM_PROMPT}]}] + messages
    text = first["content"] if isinstance(first["content"], str) else "".join(
        p.get("text", "") for p in first["content"])
    if text != SPEECH_SYSTEM_PROMPT:
        warnings.warn("speech output expects the Qwen system prompt; yours may give garbled speech")
    return messages
