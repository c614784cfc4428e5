"""One reply, text or spoken: the Thinker's decode loop, the Talker in lockstep with it, and
Token2Wav rendering the codes window by window into audio events."""

import time
from dataclasses import replace
from typing import Iterator, List, Optional

import mlx.core as mx
import numpy as np

from .decode import GENERATION_STREAM, generate_step
from .events import SPEECH_SAMPLE_RATE, AudioChunk, Done, Event, GenerationStats, TextDelta
from .memory import wired_limit
from .options import GenerationOptions, SpeechOptions
from .processing.prompt import normalize_messages
from .processing.thinker_input import Prompt, end_of_turn_ids
from .sampling import make_min_tokens, make_repetition_penalty, make_thinker_sampler
from .speech.render import Renderer
from .speech.talker import Lockstep, TalkerState
from .speech.timeline import listening
from .speech.voice import check_speech, with_speech_system_prompt
from .streaming import StreamingToken2Wav


class Turn:
    """One reply's options, and the loop that runs it: `run(prompt, cache, capture)` continues
    a cache (and its captured Talker rows) when given one, for multi-turn chat."""

    def __init__(self, model, options: GenerationOptions = GenerationOptions(),
                 speech: SpeechOptions = SpeechOptions()):
        self.model, self.options, self.speech = model, options, speech
        self.speaker = check_speech(model, speech.voice) if options.speak else None
        if options.speak and speech.dit_dtype is not None:
            dit = model.token2wav.code2wav_dit_model
            dtype = getattr(mx, speech.dit_dtype)
            if dit.text_embed.codec_embed.weight.dtype != dtype:
                dit.set_dtype(dtype)
        self.start = time.perf_counter()
        if options.seed is not None:
            mx.random.seed(options.seed)
        mx.reset_peak_memory()

    @property
    def context(self) -> int:
        return (self.options.max_context
                or self.model.config.thinker_config.text_config.max_position_embeddings)

    def messages(self, messages):
        if self.options.speak:
            return with_speech_system_prompt(normalize_messages(messages))
        return messages

    def run(self, prompt: Prompt, cache=None, capture: Optional[list] = None,
            fed: Optional[list] = None, talker: Optional[TalkerState] = None,
            forced_ids: Optional[List[int]] = None) -> Iterator[Event]:
        """The reply to `prompt`. Every token the Thinker yields is appended to `fed` (the
        caller reads the cache offset to know how many of them the cache holds). `talker`
        carries a conversation's Talker cache; `forced_ids` make the Thinker say exactly those
        tokens (`generate_step`). On Apple silicon the weights are wired for the turn, and
        MLX's buffer cache is freed after it (`memory.wired_limit`)."""
        with wired_limit(self.model, [GENERATION_STREAM]):
            yield from self._run(prompt, cache, capture, fed, talker, forced_ids)

    def _run(self, prompt, cache, capture, fed, talker, forced_ids) -> Iterator[Event]:
        model, opts = self.model, self.options
        eos = end_of_turn_ids(model)
        processors = ([make_repetition_penalty(opts.repetition_penalty)]
                      if opts.repetition_penalty != 1.0 else [])
        if opts.min_tokens:
            processors.append(make_min_tokens(eos, opts.min_tokens))
        n_tokens = min(opts.max_tokens, self.context - len(prompt.ids))
        if n_tokens < 1:
            raise ValueError(f"the conversation fills the context ({len(prompt.ids)} of "
                             f"{self.context} tokens); start a new one or raise max_context")
        capture = capture if capture is not None else ([] if opts.speak else None)
        if opts.max_kv_size and len(prompt.new_ids) > opts.max_kv_size:
            raise ValueError(f"this turn's prompt has {len(prompt.new_ids)} new tokens but "
                             f"max_kv_size={opts.max_kv_size} positions; raise max_kv_size or "
                             "send less")
        if cache is None:
            cache = model.thinker.make_cache(opts.max_kv_size)
        steps = generate_step(
            model, prompt.new_ids, max_tokens=n_tokens, cache=cache,
            logits_processors=processors, input_embeddings=prompt.embeds,
            prefill_step_size=opts.prefill_step_size, capture=capture,
            sampler=make_thinker_sampler(opts.temperature, opts.top_p, opts.top_k, opts.min_p),
            position_ids=prompt.positions, rope_delta=prompt.rope_delta,
            seen_ids=prompt.ids[:prompt.cached], forced_ids=forced_ids, kv_bits=opts.kv_bits,
            compile_decode=opts.compile_decode,
        )
        if fed is not None:
            steps = _recorded(steps, fed)
        text = ReplyText(model.processor.tokenizer)
        if not opts.speak:
            for token in steps:
                if token in eos:
                    text.finish_reason = "stop"
                    break
                yield from text.add(token)
            yield from text.flush()
            stats = text_stats(len(prompt.new_ids), len(text.ids), self.start,
                               text.first or text.end, text.end)
            yield Done(text.decoded(), text.ids, text.finish_reason, stats)
            return
        yield from _speak(self, steps, capture, eos, text, prompt, n_tokens, talker)


def _recorded(steps: Iterator[int], sink: list) -> Iterator[int]:
    for token in steps:
        sink.append(token)
        yield token


class ReplyText:
    """The reply's token ids and their streamed text."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.finish_reason = tokenizer, [], "length"
        self.detokenizer = tokenizer.detokenizer  # a fresh one per reply
        self.detokenizer.reset()
        self.first = self.end = None

    def add(self, token: int) -> Iterator[TextDelta]:
        self.first = self.first or time.perf_counter()
        self.ids.append(token)
        self.detokenizer.add_token(token)
        segment = self.detokenizer.last_segment  # reading it consumes it
        if segment:
            yield TextDelta(segment, token)

    def flush(self) -> Iterator[TextDelta]:
        self.detokenizer.finalize()
        self.end = time.perf_counter()
        segment = self.detokenizer.last_segment
        if segment:
            yield TextDelta(segment, self.ids[-1] if self.ids else -1)

    def decoded(self) -> str:
        return self.tokenizer.decode(self.ids)


def text_stats(n_prompt: int, n_generated: int, start: float, first: float,
               end: float) -> GenerationStats:
    decode_time = end - first
    return GenerationStats(
        prompt_tokens=n_prompt,
        prompt_tps=n_prompt / max(first - start, 1e-9),
        generation_tokens=n_generated,
        generation_tps=(n_generated - 1) / decode_time if n_generated > 1 and decode_time > 0 else 0.0,
        time_to_first_token=first - start,
        peak_memory_gb=mx.get_peak_memory() / 1e9,
    )


class _Audio:
    """The audio events of one utterance, when each arrived and what the renderer expected."""

    def __init__(self, start: float, renderer: Renderer):
        self.start, self.renderer, self.arrivals, self.samples = start, renderer, [], 0

    def chunks(self, pieces) -> Iterator[AudioChunk]:
        for audio, at in pieces:
            eta = self.renderer.eta()
            self.arrivals.append((time.perf_counter() - self.start, at, len(audio), eta))
            self.samples += len(audio)
            yield AudioChunk(np.asarray(audio, dtype=np.float32), at, next_in_s=eta)


def _speak(turn: Turn, steps, capture, eos, text: ReplyText, prompt: Prompt, n_tokens: int,
           talker: Optional[TalkerState]) -> Iterator[Event]:
    """Thinker and Talker in lockstep; codes become audio window by window as they come."""
    model, speech = turn.model, turn.speech
    lockstep = Lockstep(model, prompt.ids, prompt.placeholders, turn.speaker, speech, n_tokens,
                        prompt.media, talker)
    vocoder = StreamingToken2Wav(model.token2wav, speech.voice, noise=turn.options.noise,
                                 steps=speech.token2wav_steps, solver=speech.solver,
                                 first_chunk_frames=speech.first_chunk_frames,
                                 chunk_frames=speech.chunk_frames)
    renderer = Renderer(vocoder, speech.overlap)
    codes: List[int] = []
    first_code = None
    audio = _Audio(turn.start, renderer)
    try:
        for kind, value in lockstep.run(steps, capture, eos):
            if kind == "text":
                yield from text.add(value)
            else:
                first_code = first_code or time.perf_counter()
                codes.append(value)
                renderer.push([value])
            yield from audio.chunks(renderer.ready())
        text.finish_reason = lockstep.finish_reason
        yield from text.flush()
        text.end = lockstep.text_done  # Thinker tok/s counts the reply, not the speech after it
        renderer.finish()
        yield from audio.chunks(renderer.rest())
    finally:
        renderer.close()
    end = time.perf_counter()
    yield Done(text.decoded(), text.ids, text.finish_reason,
               speech_stats(turn, prompt, text, codes, audio, first_code, end), codes)


def speech_stats(turn: Turn, prompt: Prompt, text: ReplyText, codes: list, audio: _Audio,
                 first_code: Optional[float], end: float) -> GenerationStats:
    start = turn.start
    stats = text_stats(len(prompt.new_ids), len(text.ids), start, text.first or text.end, text.end)
    seconds = audio.samples / SPEECH_SAMPLE_RATE
    heard = listening(audio.arrivals, SPEECH_SAMPLE_RATE)
    first = audio.arrivals[0] if audio.arrivals else (end - start, 0, 0, 0.0)
    return replace(
        stats, codec_tokens=len(codes),
        talker_tps=(len(codes) - 1) / (end - first_code) if first_code and len(codes) > 1 else 0.0,
        audio_seconds=seconds, speech_seconds=end - (first_code or end),
        time_to_first_audio=first[0], first_audio_seconds=first[2] / SPEECH_SAMPLE_RATE,
        real_time_factor=(end - start) / seconds if seconds else 0.0,
        glitch_free_start_s=heard.glitch_free_start_s, stalls=heard.stalls,
        stall_s=heard.stall_s, player_start_s=heard.player_start_s,
        player_stalls=heard.player_stalls, player_stall_s=heard.player_stall_s,
        peak_memory_gb=mx.get_peak_memory() / 1e9)
