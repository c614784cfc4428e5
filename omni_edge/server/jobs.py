"""What the worker thread runs for each endpoint: generators of the core's events, ended by a
`Finished` record with the reply's usage. Stop sequences are cut here, on the worker, so a stop
ends the generation at once."""

from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from ..events import TextDelta
from ..generate import stream
from ..options import GenerationOptions, SpeechOptions
from ..processing.thinker_input import end_of_turn_ids
from ..tasks import speak_text, transcription_messages
from ..turn import Turn
from .cache import PromptCache
from .schemas import ChatRequest, SpeechRequest


@dataclass
class Finished:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    codec_ids: List[int] = field(default_factory=list)
    type: str = "finished"


class StopText:
    """Cuts streamed text at the first stop sequence, holding back a tail that may be the
    start of one."""

    def __init__(self, stops: List[str]):
        self.stops, self.pending, self.hit = stops, "", False

    def feed(self, text: str) -> str:
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.hit = self.pending[:min(found)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, len(s))
                    if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def chat_turn(model, request: ChatRequest, max_tokens: int) -> Turn:
    generation = GenerationOptions(
        max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p,
        top_k=request.top_k, min_p=request.min_p, repetition_penalty=request.repetition_penalty,
        seed=request.seed, use_audio_in_video=request.use_audio_in_video, speak=request.speak)
    return Turn(model, generation, speech_options(request, request.audio.voice
                                                  if request.speak else "Chelsie"))


def speech_options(request, voice: str) -> SpeechOptions:
    windows = {k: v for k, v in (("first_chunk_frames", request.first_chunk_frames),
                                 ("overlap", request.overlap)) if v is not None}
    return SpeechOptions(voice=voice, talker_temperature=request.talker_temperature,
                         talker_top_k=request.talker_top_k, talker_top_p=request.talker_top_p,
                         talker_repetition_penalty=request.talker_repetition_penalty,
                         max_codec_tokens=request.max_codec_tokens, solver=request.solver,
                         **windows)


def chat_events(model, cache: PromptCache, request: ChatRequest, messages: list,
                max_tokens: int) -> Iterator:
    """The reply's TextDelta and AudioChunk events, then a Finished."""
    turn = chat_turn(model, request, max_tokens)
    events = cache.run(turn, turn.messages(messages))
    cut, text, done = StopText(request.stops), [], None
    try:
        for event in events:
            if event.type == "text":
                piece = cut.feed(event.text)
                if piece:
                    text.append(piece)
                    yield TextDelta(piece, event.token_id)
                if cut.hit:
                    break
            elif event.type == "audio":
                yield event
            else:
                done = event
    finally:
        events.close()
    tail = "" if cut.hit else cut.flush()
    if tail:
        text.append(tail)
        yield TextDelta(tail, -1)
    eos = end_of_turn_ids(model)
    yield Finished("".join(text), "stop" if cut.hit else done.finish_reason, cache.prompt_tokens,
                   cache.reused, len([t for t in cache.fed if t not in eos]),
                   done.codec_ids if done else [])


def speech_events(model, request: SpeechRequest) -> Iterator:
    return speak_text(model, request.input, request.voice, seed=request.seed,
                      speech=speech_options(request, request.voice))


def transcription_events(model, audio: bytes, language: Optional[str], prompt: Optional[str],
                         temperature: float, max_tokens: int) -> Iterator:
    return stream(model, transcription_messages(audio, language, prompt), max_tokens=max_tokens,
                  temperature=temperature)
