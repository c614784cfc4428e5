"""Thinker text generation: the decode loop, sampling, and the stream()/generate() API."""

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, List, Optional, Union

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import make_sampler

from .processing.prompt import normalize_messages
from .processing.rope_index import rope_index
from .models.token2wav import NUM_STEPS
from .speech import SAMPLE_RATE, SpeechError, TalkerOptions, with_speech_system_prompt

DEFAULT_MAX_TOKENS = 512
# Streaming Token2Wav windows (mel frames): a one-block first chunk for early audio, then long
# chunks for fewer windows; on an H100 this halved a 3B spoken turn against the reference's 72
# everywhere, with the same drift from offline (benchmarks/results/turn_3b_h100.json).
FIRST_CHUNK_FRAMES = 24
CHUNK_FRAMES = 216
PREFILL_STEP = 2048
CLEAR_CACHE_EVERY = 256
GENERATION_STREAM = mx.new_thread_local_stream(mx.default_device())  # per thread: generate from any thread


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    peak_memory_gb: float
    codec_tokens: int = 0
    talker_tps: float = 0.0
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0  # wall time from the first codec token to the last audio
    time_to_first_audio: float = 0.0  # from the call to the first audio chunk
    real_time_factor: float = 0.0  # the turn's wall time / seconds of speech


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int
    type: str = "text"


@dataclass(frozen=True)
class AudioChunk:
    audio: np.ndarray  # float32 waveform at `sample_rate`
    start_sample: int  # where this chunk starts in the utterance
    sample_rate: int = SAMPLE_RATE
    type: str = "audio"


@dataclass(frozen=True)
class Done:
    text: str
    token_ids: List[int]
    finish_reason: str  # "stop" (end-of-turn token) or "length"
    stats: GenerationStats
    codec_ids: List[int] = field(default_factory=list)
    type: str = "done"


Event = Union[TextDelta, AudioChunk, Done]


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: List[int]
    finish_reason: str
    stats: GenerationStats
    codec_ids: List[int] = field(default_factory=list)
    audio: Optional[np.ndarray] = None  # 24 kHz float32 when speech was asked
    sample_rate: int = SAMPLE_RATE


def make_repetition_penalty(penalty: float):
    """The reference's penalty: every id seen so far, prompt included, has its logit divided
    by `penalty` when positive and multiplied when negative."""
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        seen = logits[:, tokens]
        logits[:, tokens] = mx.where(seen < 0, seen * penalty, seen / penalty)
        return logits

    return apply


def generate_step(
    model,
    prompt_ids: List[int],
    *,
    max_tokens: int,
    sampler=None,
    logits_processors=(),
    cache=None,
    prefill_step_size: int = PREFILL_STEP,
    input_embeddings: Optional[mx.array] = None,
    capture: Optional[list] = None,
    position_ids: Optional[np.ndarray] = None,
    rope_delta: int = 0,
    seen_ids: Optional[List[int]] = None,
) -> Iterator[int]:
    """Yield Thinker tokens after `prompt_ids` (whose embeddings may be given, [L, H], when
    the prompt holds media), fed after whatever `cache` already holds. The next step is
    queued (`mx.async_eval`) before the current token is handed to Python, so the GPU never
    waits on the caller.

    `position_ids` [3, L] are the prompt's TMRoPE positions when they are not sequential
    (images, video); decoding then continues at cache offset + `rope_delta`. `seen_ids` are
    the ids the repetition penalty reads besides the prompt (earlier turns).
    With a `capture` list, each forward pass appends its (input embeddings, final normed
    hidden states), [L, H] each: what the Talker reads, taken from the pass that made them."""
    thinker = model.thinker
    cache = cache if cache is not None else thinker.make_cache()
    sampler = sampler or (lambda logprobs: mx.argmax(logprobs, axis=-1))
    prompt = mx.array(prompt_ids, dtype=mx.uint32)
    embeds = input_embeddings
    positions = mx.array(position_ids)[:, None] if position_ids is not None else None  # (3, 1, L)
    tokens = mx.array(list(seen_ids or []) + list(prompt_ids), dtype=mx.uint32)

    def forward(ids: mx.array, emb: Optional[mx.array], pos=None) -> mx.array:
        h = emb[None] if emb is not None else thinker.embed(ids[None])
        hidden = thinker.model(h, cache, pos, rope_delta)
        if capture is not None:
            capture.append((h[0], hidden[0]))
        return hidden

    def captured() -> list:
        return list(capture[-1]) if capture is not None else []

    def step(ids: mx.array, emb: Optional[mx.array] = None, pos=None) -> mx.array:
        nonlocal tokens
        with mx.stream(GENERATION_STREAM):
            logits = thinker.logits(forward(ids, emb, pos)[:, -1, :])
            for processor in logits_processors:
                logits = processor(tokens, logits)
            y = sampler(logits - mx.logsumexp(logits, keepdims=True))
            if logits_processors:
                tokens = mx.concatenate([tokens, y])
            return y

    with mx.stream(GENERATION_STREAM):
        while prompt.size > prefill_step_size:
            n = prefill_step_size
            forward(prompt[:n], embeds[:n] if embeds is not None else None,
                    positions[..., :n] if positions is not None else None)
            mx.eval([c.state for c in cache] + captured())  # prefill chunks' logits: never computed
            prompt = prompt[n:]
            embeds = embeds[n:] if embeds is not None else None
            positions = positions[..., n:] if positions is not None else None
            mx.clear_cache()
    y = step(prompt, embeds, positions)
    mx.async_eval(y, *captured())
    for n in range(max_tokens):
        if n + 1 < max_tokens:
            next_y = step(y)
            mx.async_eval(next_y, *captured())
        yield y.item()
        if n % CLEAR_CACHE_EVERY == CLEAR_CACHE_EVERY - 1:
            mx.clear_cache()
        if n + 1 < max_tokens:
            y = next_y


def fit_context(prompt_ids: List[int], max_tokens: int, context: int, truncate: bool) -> List[int]:
    if len(prompt_ids) < context:
        return prompt_ids
    if not truncate:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens but the context holds {context}; "
            "shorten it, or pass truncate=True (--truncate) to drop its oldest tokens"
        )
    keep = max(1, context - max_tokens)
    warnings.warn(f"prompt truncated from {len(prompt_ids)} to its last {keep} tokens")
    return prompt_ids[-keep:]


@dataclass
class Prompt:
    """A turn's Thinker input: `ids` is the whole context, of which the first `cached` are
    already in the KV cache (earlier turns); `embeds` [L, H] are the input embeddings of the
    rest when it holds media; `positions` [3, L] their TMRoPE positions when not sequential,
    and `rope_delta` where decoding continues (next position minus cache offset)."""

    ids: List[int]
    embeds: Optional[mx.array] = None
    placeholders: tuple = ()  # media placeholder ids, whose embeddings the Talker must not see
    positions: Optional[np.ndarray] = None
    rope_delta: int = 0
    cached: int = 0
    media: dict = field(default_factory=dict, repr=False)  # rope_index's media, with vision

    @property
    def new_ids(self) -> List[int]:
        return self.ids[self.cached:]


def media_placeholders(model) -> tuple:
    cfg = model.config.thinker_config
    return (cfg.audio_token_index, cfg.image_token_index, cfg.video_token_index)


def media_before(ids: List[int], cfg, start: int) -> Dict[str, int]:
    """How many audio streams, images and videos begin before position `start` (each has one
    <|audio_bos|> or one <|vision_bos|> followed by its placeholder or, for a video that uses
    its audio, by <|audio_bos|>)."""
    counts = {"audio": 0, "image": 0, "video": 0}
    for i in range(min(start, len(ids))):
        nxt = ids[i + 1] if i + 1 < len(ids) else None
        if ids[i] == cfg.audio_start_token_id:
            counts["audio"] += 1
        elif ids[i] == cfg.vision_start_token_id and nxt is not None:
            counts["image" if nxt == cfg.image_token_index else "video"] += 1
    return counts


def embed_prompt(model, inputs, start: int = 0) -> Optional[mx.array]:
    """Input embeddings [L - start, H] of `inputs.input_ids[start:]` with the media that begin
    there (`start` never falls inside a medium); None when that part is plain text."""
    ids = inputs.input_ids[start:]
    before = media_before(inputs.input_ids, model.config.thinker_config, start)
    audio = inputs.audio_features[before["audio"]:]
    images = [(v.pixel_values, v.grid_thw) for v in inputs.images[before["image"]:]]
    videos = [(v.pixel_values, v.grid_thw) for v in inputs.videos[before["video"]:]]
    if not (audio or images or videos):
        return None
    features = [mx.array(f) for f in audio]
    return model.thinker.embed_multimodal(mx.array([ids]), features, images, videos)[0]


def prompt_positions(model, inputs, start: int = 0):
    """TMRoPE positions [3, L - start] of the prompt from `start` and the rope delta, or
    (None, 0) when they are sequential (no image or video)."""
    if not inputs.has_vision:
        return None, 0
    positions, delta = rope_index(inputs.input_ids, model.config.thinker_config, **inputs.media())
    return positions[:, start:], delta


def build_prompt(model, inputs, cached: int = 0) -> Prompt:
    """The Prompt of processed `inputs` whose first `cached` ids the KV cache already holds:
    the rest embedded with its media, and its positions laid out."""
    positions, delta = prompt_positions(model, inputs, cached)
    return Prompt(inputs.input_ids, embed_prompt(model, inputs, cached), media_placeholders(model),
                  positions, delta, cached, inputs.media() if inputs.has_vision else {})


def prepare_prompt(model, messages, max_tokens: int, context: int, truncate: bool,
                   use_audio_in_video: bool = False) -> Prompt:
    """The prompt of `messages` fitted to the context, with its media embedded and its
    positions laid out."""
    inputs = model.processor.prepare(messages, use_audio_in_video=use_audio_in_video)
    prompt_ids = fit_context(inputs.input_ids, max_tokens, context, truncate)
    drop = len(inputs.input_ids) - len(prompt_ids)
    if drop and inputs.has_vision:
        raise ValueError(f"the prompt ({len(inputs.input_ids)} tokens) does not fit the context of "
                         f"{context}; with images or video it can't be truncated: use fewer or "
                         "smaller ones (max_pixels) or a larger max_context")
    prompt = build_prompt(model, inputs)
    if not drop:
        return prompt
    return replace(prompt, ids=prompt_ids,
                   embeds=prompt.embeds[drop:] if prompt.embeds is not None else None)


def end_of_turn_ids(model) -> set:
    """The ids that end the Thinker's reply: the tokenizer's and the config's."""
    return set(model.processor.tokenizer.eos_token_ids) | {model.config.thinker_config.eos_token_id}


def check_speech(model, voice: str) -> dict:
    if getattr(model, "talker", None) is None:
        raise SpeechError(
            getattr(model, "speech_error", None) or  # memory hook: load(speech=False)
            "this model has no Talker/Token2Wav (a thinker-only checkpoint, or converted with "
            "enable_audio_output false), so it cannot speak; convert the full Qwen2.5-Omni repo")
    if voice not in model.voices:
        raise SpeechError(f"unknown voice {voice!r}; this model has: {', '.join(model.voices) or 'none'}")
    return model.voices[voice]


def _stats(n_prompt: int, n_generated: int, start: float, first: float, end: float) -> GenerationStats:
    decode_time = end - first
    return GenerationStats(
        prompt_tokens=n_prompt,
        prompt_tps=n_prompt / max(first - start, 1e-9),
        generation_tokens=n_generated,
        generation_tps=(n_generated - 1) / decode_time if n_generated > 1 and decode_time > 0 else 0.0,
        time_to_first_token=first - start,
        peak_memory_gb=mx.get_peak_memory() / 1e9,
    )


def stream(
    model,
    messages,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: Optional[int] = None,
    max_context: Optional[int] = None,
    truncate: bool = False,
    prefill_step_size: int = PREFILL_STEP,
    speak: bool = False,
    voice: str = "Chelsie",
    talker_temperature: float = TalkerOptions.temperature,
    talker_top_k: int = TalkerOptions.top_k,
    talker_top_p: float = TalkerOptions.top_p,
    talker_repetition_penalty: float = TalkerOptions.repetition_penalty,
    max_codec_tokens: int = TalkerOptions.max_codec_tokens,
    min_codec_tokens: int = 0,
    noise: Optional[mx.array] = None,
    first_chunk_frames: Optional[int] = FIRST_CHUNK_FRAMES,
    token2wav_steps: int = NUM_STEPS,
    use_audio_in_video: bool = False,
    chunk_frames: Optional[int] = CHUNK_FRAMES,
) -> Iterator[Event]:
    """Generate a reply to chat `messages`, yielding events in order: TextDelta as the text
    comes and, with `speak`, AudioChunk (24 kHz float32 with its start sample) as the speech
    comes: the Talker runs alongside the Thinker and Token2Wav renders window by window, so
    audio starts while the text is still being written. A final Done carries the stats (time
    to first token and audio, real-time factor, Thinker and Talker tok/s, peak memory).
    `talker_*` options follow the reference's names and defaults; `min_codec_tokens` keeps the
    Talker from ending the speech sooner (benchmarks force lengths so); `noise` ([2·codes, 80]) fixes
    Token2Wav's starting noise; `first_chunk_frames` and `chunk_frames` (multiples of 24 mel
    frames; None for the reference's 72) size the first and the later audio windows: a small
    first one for early audio, long later ones for fewer windows (streaming.StreamingToken2Wav);
    `token2wav_steps` is the number of ODE time points (the reference's 10; fewer is faster
    and drifts from it, see benchmarks/turn_speed.py); `use_audio_in_video` also reads each
    video's sound track (a video part's own "use_audio_in_video" key overrides it). Times
    count from the call."""
    turn = Turn(model, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, seed,
                max_context, truncate, prefill_step_size, speak, voice,
                TalkerOptions(talker_temperature, talker_top_k, talker_top_p,
                              talker_repetition_penalty, max_codec_tokens, min_codec_tokens),
                noise, first_chunk_frames, token2wav_steps, chunk_frames)
    messages = turn.messages(messages)
    prompt = prepare_prompt(model, messages, max_tokens, turn.context, truncate, use_audio_in_video)
    yield from turn.run(prompt)


@dataclass
class Turn:
    """One reply's options, and the loop that runs it: `run(prompt, cache, capture)` continues
    a cache (and its captured Talker rows) when given one, for multi-turn chat."""

    model: object
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    max_context: Optional[int] = None
    truncate: bool = False
    prefill_step_size: int = PREFILL_STEP
    speak: bool = False
    voice: str = "Chelsie"
    talker: TalkerOptions = field(default_factory=TalkerOptions)
    noise: Optional[mx.array] = None
    first_chunk_frames: Optional[int] = FIRST_CHUNK_FRAMES
    token2wav_steps: int = NUM_STEPS
    chunk_frames: Optional[int] = CHUNK_FRAMES

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        self.speaker = check_speech(self.model, self.voice) if self.speak else None
        self.start = time.perf_counter()
        if self.seed is not None:
            mx.random.seed(self.seed)
        mx.reset_peak_memory()

    @property
    def context(self) -> int:
        return self.max_context or self.model.config.thinker_config.text_config.max_position_embeddings

    def messages(self, messages):
        return with_speech_system_prompt(normalize_messages(messages)) if self.speak else messages

    def run(self, prompt: Prompt, cache=None, capture: Optional[list] = None,
            fed: Optional[list] = None) -> Iterator[Event]:
        """The reply to `prompt`. Every token the Thinker yields is appended to `fed` (the
        caller reads the cache offset to know how many of them the cache holds)."""
        model = self.model
        eos = end_of_turn_ids(model)
        processors = ([make_repetition_penalty(self.repetition_penalty)]
                      if self.repetition_penalty != 1.0 else [])
        n_tokens = min(self.max_tokens, self.context - len(prompt.ids))
        if n_tokens < 1:
            raise ValueError(f"the conversation fills the context ({len(prompt.ids)} of "
                             f"{self.context} tokens); start a new one or raise max_context")
        capture = capture if capture is not None else ([] if self.speak else None)
        steps = generate_step(
            model, prompt.new_ids, max_tokens=n_tokens, cache=cache,
            logits_processors=processors, input_embeddings=prompt.embeds,
            prefill_step_size=self.prefill_step_size, capture=capture,
            sampler=make_sampler(self.temperature, top_p=self.top_p, min_p=self.min_p,
                                 top_k=self.top_k),
            position_ids=prompt.positions, rope_delta=prompt.rope_delta,
            seen_ids=prompt.ids[:prompt.cached],
        )
        if fed is not None:
            steps = _recorded(steps, fed)
        text = _Text(model.processor.tokenizer)
        if not self.speak:
            for token in steps:
                if token in eos:
                    text.finish_reason = "stop"
                    break
                yield from text.add(token)
            yield from text.flush()
            stats = _stats(len(prompt.new_ids), len(text.ids), self.start, text.first or text.end,
                           text.end)
            yield Done(text.decoded(), text.ids, text.finish_reason, stats)
            return
        yield from _speak(self, steps, capture, eos, text, prompt, n_tokens)


def _recorded(steps: Iterator[int], sink: list) -> Iterator[int]:
    for token in steps:
        sink.append(token)
        yield token


class _Text:
    """The reply's token ids and their streamed text."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.finish_reason = tokenizer, [], "length"
        self.detokenizer = tokenizer.detokenizer
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


def _speak(turn: Turn, steps, capture, eos, text, prompt: Prompt, n_tokens) -> Iterator[Event]:
    """Thinker and Talker in lockstep; codes become audio window by window as they come."""
    from .pipeline import Lockstep
    from .streaming import StreamingToken2Wav

    model = turn.model
    lockstep = Lockstep(model, prompt.ids, prompt.placeholders, turn.speaker, turn.talker, n_tokens,
                        prompt.media)
    vocoder = StreamingToken2Wav(model.token2wav, turn.speaker, noise=turn.noise,
                                 steps=turn.token2wav_steps,
                                 first_chunk_frames=turn.first_chunk_frames,
                                 chunk_frames=turn.chunk_frames)
    codes: List[int] = []
    first_audio = first_code = None
    samples = 0

    def chunks(pieces):
        nonlocal first_audio, samples
        for audio, at in pieces:
            first_audio = first_audio or time.perf_counter()
            samples += len(audio)
            yield AudioChunk(np.asarray(audio, dtype=np.float32), at)

    for kind, value in lockstep.run(steps, capture, eos):
        if kind == "text":
            yield from text.add(value)
        else:
            first_code = first_code or time.perf_counter()
            codes.append(value)
            yield from chunks(vocoder.push([value]))
    text.finish_reason = lockstep.finish_reason
    yield from text.flush()
    text.end = lockstep.text_done  # Thinker tok/s counts the reply, not the speech after it
    yield from chunks(vocoder.finish())
    end = time.perf_counter()
    start = turn.start
    stats = _stats(len(prompt.new_ids), len(text.ids), start, text.first or text.end, text.end)
    audio_seconds = samples / SAMPLE_RATE
    stats = replace(
        stats, codec_tokens=len(codes),
        talker_tps=(len(codes) - 1) / (end - first_code) if first_code and len(codes) > 1 else 0.0,
        audio_seconds=audio_seconds, speech_seconds=end - (first_code or end),
        time_to_first_audio=(first_audio or end) - start,
        real_time_factor=(end - start) / audio_seconds if audio_seconds else 0.0,
        peak_memory_gb=mx.get_peak_memory() / 1e9)
    yield Done(text.decoded(), text.ids, text.finish_reason, stats, codes)


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
