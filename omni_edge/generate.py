"""Thinker text generation: the decode loop, sampling, and the stream()/generate() API."""

import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Union

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

DEFAULT_MAX_TOKENS = 512
PREFILL_STEP = 2048
CLEAR_CACHE_EVERY = 256
GENERATION_STREAM = mx.new_stream(mx.default_device())


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    peak_memory_gb: float


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int
    type: str = "text"


@dataclass(frozen=True)
class Done:
    text: str
    token_ids: List[int]
    finish_reason: str  # "stop" (end-of-turn token) or "length"
    stats: GenerationStats
    type: str = "done"


Event = Union[TextDelta, Done]


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: List[int]
    finish_reason: str
    stats: GenerationStats
    prompt_ids: List[int] = field(default_factory=list)


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
) -> Iterator[int]:
    """Yield Thinker tokens after `prompt_ids` (whose embeddings may be given, [L, H], when
    the prompt holds audio). The next step is queued (`mx.async_eval`) before the current
    token is handed to Python, so the GPU never waits on the caller."""
    thinker = model.thinker
    cache = cache if cache is not None else thinker.make_cache()
    sampler = sampler or (lambda logprobs: mx.argmax(logprobs, axis=-1))
    prompt = mx.array(prompt_ids, dtype=mx.uint32)
    embeds = input_embeddings
    tokens = prompt

    def forward(ids: mx.array, emb: Optional[mx.array]) -> mx.array:
        return thinker.model(emb[None] if emb is not None else thinker.embed(ids[None]), cache)

    def step(ids: mx.array, emb: Optional[mx.array] = None) -> mx.array:
        nonlocal tokens
        with mx.stream(GENERATION_STREAM):
            logits = thinker.logits(forward(ids, emb)[:, -1, :])
            for processor in logits_processors:
                logits = processor(tokens, logits)
            y = sampler(logits - mx.logsumexp(logits, keepdims=True))
            if logits_processors:
                tokens = mx.concatenate([tokens, y])
            return y

    with mx.stream(GENERATION_STREAM):
        while prompt.size > prefill_step_size:
            n = prefill_step_size
            forward(prompt[:n], embeds[:n] if embeds is not None else None)
            mx.eval([c.state for c in cache])  # logits of prefill chunks are never computed
            prompt = prompt[n:]
            embeds = embeds[n:] if embeds is not None else None
            mx.clear_cache()
    y = step(prompt, embeds)
    mx.async_eval(y)
    for n in range(max_tokens):
        if n + 1 < max_tokens:
            next_y = step(y)
            mx.async_eval(next_y)
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


def prepare_prompt(model, messages, max_tokens: int, context: int, truncate: bool):
    """Prompt ids (and their embeddings when the prompt holds audio) fitted to the context."""
    inputs = model.processor.prepare(messages)
    prompt_ids = fit_context(inputs.input_ids, max_tokens, context, truncate)
    if not inputs.audio_features:
        return prompt_ids, None
    features = [mx.array(f) for f in inputs.audio_features]
    embeds = model.thinker.embed_multimodal(mx.array([inputs.input_ids]), features)[0]
    return prompt_ids, embeds[len(inputs.input_ids) - len(prompt_ids):]


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
) -> Iterator[Event]:
    """Generate a reply to chat `messages`, yielding TextDelta events and a final Done.
    Time to first token counts everything from the call: audio decoding and encoding too."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if seed is not None:
        mx.random.seed(seed)
    mx.reset_peak_memory()
    start = time.perf_counter()
    context = max_context or model.config.thinker_config.text_config.max_position_embeddings
    prompt_ids, embeds = prepare_prompt(model, messages, max_tokens, context, truncate)
    tokenizer = model.processor.tokenizer
    eos = set(tokenizer.eos_token_ids) | {model.config.thinker_config.eos_token_id}
    processors = [make_repetition_penalty(repetition_penalty)] if repetition_penalty != 1.0 else []
    steps = generate_step(
        model, prompt_ids, max_tokens=min(max_tokens, context - len(prompt_ids)),
        logits_processors=processors, input_embeddings=embeds, prefill_step_size=prefill_step_size,
        sampler=make_sampler(temperature, top_p=top_p, min_p=min_p, top_k=top_k),
    )
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    first, token_ids, finish = None, [], "length"
    for token in steps:
        first = first or time.perf_counter()
        if token in eos:
            finish = "stop"
            break
        token_ids.append(token)
        detokenizer.add_token(token)
        segment = detokenizer.last_segment  # reading it consumes it
        if segment:
            yield TextDelta(segment, token)
    detokenizer.finalize()
    segment = detokenizer.last_segment
    if segment:
        yield TextDelta(segment, token_ids[-1] if token_ids else -1)
    end = time.perf_counter()
    stats = _stats(len(prompt_ids), len(token_ids), start, first or end, end)
    yield Done(detokenizer.text, token_ids, finish, stats)


def generate(model, messages, **kwargs) -> GenerationResult:
    """Generate a whole reply; see `stream` for the options."""
    for event in stream(model, messages, **kwargs):
        if isinstance(event, Done):
            return GenerationResult(event.text, event.token_ids, event.finish_reason, event.stats)
    raise AssertionError("stream() ended without a Done event")
