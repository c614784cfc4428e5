"""Speech out: the Thinker → Talker hand-off, the Talker's codec decode loop and its sampling."""

import warnings
from dataclasses import dataclass, field
from typing import Iterator, List

import mlx.core as mx

from .processing.prompt import SPEECH_SYSTEM_PROMPT

SAMPLE_RATE = 24000
MAX_CODEC_TOKENS = 4096
# The reference's talker generation defaults (Qwen2_5OmniForConditionalGeneration.generate).
TALKER_TEMPERATURE = 0.9
TALKER_TOP_K = 40
TALKER_TOP_P = 0.8
TALKER_REPETITION_PENALTY = 1.05


class SpeechError(ValueError):
    """Speech was asked of a model or a reply that can't give it."""


@dataclass
class TalkerOptions:
    temperature: float = TALKER_TEMPERATURE
    top_k: int = TALKER_TOP_K
    top_p: float = TALKER_TOP_P
    repetition_penalty: float = TALKER_REPETITION_PENALTY
    max_codec_tokens: int = MAX_CODEC_TOKENS
    min_codec_tokens: int = 0  # the end codes are never sampled before this many codes


@dataclass
class ThinkerTrace:
    """What the Talker reads from one Thinker turn, captured while the Thinker generated:
    for the prompt and each fed reply token, its input embedding and final normed hidden."""

    prompt_ids: List[int]
    embeds: mx.array  # (P + steps, E): prompt rows, then one row per fed reply token
    hidden: mx.array  # (P + steps, E)
    reply_ids: List[int]  # r_1 .. r_N as generated (r_N is never fed, so it has no row)
    multimodal_ids: tuple = ()  # placeholder ids whose embeddings the Talker must not see
    media: dict = field(default_factory=dict)  # rope_index's media lists when there is vision


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


def hand_off(thinker, cfg, prompt_ids: List[int], embeds: mx.array, hidden: mx.array,
             multimodal_ids: tuple, bos_token: int, first_token: int):
    """The Talker's prefill from the Thinker rows of the prompt and of the first reply token
    (P + 1 rows of input embedding and final hidden): embeddings [P+2, E] = [hidden + embedding
    with multimodal embeddings zeroed, the voice's bos embedding, r1's state], the Talker's
    text ids (prompt, bos, r1: positions only) and the codec prompt ids (mask codes, then
    codec pad and bos; omni_spec §7.2)."""
    P = len(prompt_ids)
    ids = mx.array(prompt_ids)
    keep = mx.ones((P,), dtype=mx.bool_)
    for token in multimodal_ids:
        keep = keep & (ids != token)
    prefix = hidden[:P] + embeds[:P] * keep[:, None]
    bos = thinker.embed(mx.array([bos_token]))
    first = hidden[P : P + 1] + embeds[P : P + 1]
    codec_prompt = [cfg.tts_codec_mask_token_id] * P + [cfg.tts_codec_pad_token_id,
                                                         cfg.tts_codec_start_token_id]
    text_ids = prompt_ids + [bos_token, first_token]
    return mx.concatenate([prefix, bos, first], axis=0), text_ids, codec_prompt


def reply_tail(thinker, cfg) -> mx.array:
    """What the Talker reads once the reply is out [2, E]: `text_eos`, then `text_pad` (kept)."""
    return thinker.embed(mx.array([cfg.tts_text_end_token_id, cfg.tts_text_pad_token_id]))


def start_talker(model, prefill: mx.array, text_ids: List[int], codec_prompt: List[int],
                 media: dict, opts: TalkerOptions):
    """A TalkerSession fed the hand-off, with its TMRoPE positions, and its first (lazy) code."""
    positions, delta = talker_positions(model.talker.cfg, text_ids, media)
    session = TalkerSession(model, codec_prompt, opts, positions, delta)
    return session, session.prefill(prefill)


def talker_inputs(thinker, talker_cfg, trace: ThinkerTrace, bos_token: int):
    """The whole hand-off of a finished Thinker turn: prefill embeddings [P+2, E], the
    Talker's text ids (positions only), the codec prompt ids, and the reply stream [R, E]
    (the later reply tokens' states, then `text_eos`, then `text_pad`)."""
    P = len(trace.prompt_ids)
    n_fed = len(trace.reply_ids) - 1
    if n_fed < 1:
        raise SpeechError("the text reply is empty, so there is nothing to speak")
    embeds, text_ids, codec_prompt = hand_off(thinker, talker_cfg, trace.prompt_ids, trace.embeds,
                                              trace.hidden, trace.multimodal_ids, bos_token,
                                              trace.reply_ids[0])
    reply = trace.hidden[P + 1 : P + n_fed] + trace.embeds[P + 1 : P + n_fed]
    return embeds, text_ids, codec_prompt, mx.concatenate([reply, reply_tail(thinker, talker_cfg)])


def talker_positions(talker_cfg, text_ids: List[int], media: dict):
    """The Talker's TMRoPE positions over its text ids (the prompt, the voice's bos and the
    first reply token) and its rope delta; (None, 0) when they are sequential (no vision)."""
    if not media:
        return None, 0
    from .processing.rope_index import rope_index

    return rope_index(text_ids, talker_cfg, **media)


def make_talker_sampler(opts: TalkerOptions, suppress):
    """Temperature, top-k, top-p in the reference's order; the ids in `suppress` are never sampled."""
    suppress = mx.array(suppress if isinstance(suppress, (list, tuple)) else [suppress])

    def sample(logits: mx.array) -> mx.array:
        banned = (mx.arange(logits.shape[-1])[:, None] == suppress[None]).any(axis=-1)
        logits = mx.where(banned, -mx.inf, logits)
        if opts.temperature == 0:
            return mx.argmax(logits, axis=-1)
        logits = logits / opts.temperature
        if 0 < opts.top_k < logits.shape[-1]:
            kth = mx.sort(logits, axis=-1)[..., -opts.top_k][..., None]
            logits = mx.where(logits < kth, -mx.inf, logits)
        if 0 < opts.top_p < 1:
            order = mx.argsort(logits, axis=-1)  # ascending
            probs = mx.softmax(mx.take_along_axis(logits, order, axis=-1), axis=-1)
            drop_sorted = mx.cumsum(probs, axis=-1) <= 1 - opts.top_p
            drop_sorted[..., -1] = False  # always keep the most likely code
            drop = mx.put_along_axis(mx.zeros_like(drop_sorted), order, drop_sorted, axis=-1)
            logits = mx.where(drop, -mx.inf, logits)
        return mx.random.categorical(logits)

    return sample


class TalkerSession:
    """One utterance of the Talker: its KV cache, the code history the repetition penalty
    reads, and sampling. Steps return lazy codes, so a caller can queue the next step before
    reading the previous code (the GPU never waits on Python)."""

    def __init__(self, model, codec_prompt: List[int], opts: TalkerOptions,
                 position_ids=None, rope_delta: int = 0):
        """`position_ids` [3, P+2] are the prefill's TMRoPE positions when the prompt holds
        images or video (`talker_positions`); decoding then continues at offset + `rope_delta`."""
        from .generate import make_repetition_penalty

        self.position_ids, self.rope_delta = position_ids, rope_delta

        self.talker, self.cfg, self.opts = model.talker, model.talker.cfg, opts
        self.cache = self.talker.make_cache()
        self.stops = (self.cfg.tts_codec_pad_token_id, self.cfg.tts_codec_end_token_id)
        self.samplers = (make_talker_sampler(opts, [self.cfg.tts_codec_start_token_id, *self.stops]),
                         make_talker_sampler(opts, self.cfg.tts_codec_start_token_id))
        self.penalty = (make_repetition_penalty(opts.repetition_penalty)
                        if opts.repetition_penalty != 1 else None)
        self.history = mx.array(codec_prompt)
        self.table = model.config.token2wav_config.dit_config.num_embeds + 1
        self.steps = 0

    def _next(self, x: mx.array) -> mx.array:
        from .generate import GENERATION_STREAM

        with mx.stream(GENERATION_STREAM):
            positions = None
            if self.position_ids is not None and self.steps == 0:
                positions = mx.array(self.position_ids)[:, None]  # (3, 1, P+2)
            logits = self.talker(x[None], self.cache, positions, self.rope_delta)[:, -1, :]
            if self.penalty is not None:
                logits = self.penalty(self.history, logits)
            code = self.samplers[self.steps >= self.opts.min_codec_tokens](logits)
            self.history = mx.concatenate([self.history, code])
        self.steps += 1
        mx.async_eval(code)
        return code

    def prefill(self, embeds: mx.array) -> mx.array:
        """The first code from the hand-off embeddings [P+2, E] (codec pad/bos added here)."""
        codec = self.talker.embed_codes(mx.array([self.cfg.tts_codec_pad_token_id,
                                                  self.cfg.tts_codec_start_token_id]))
        return self._next(mx.concatenate([embeds[:-2], embeds[-2:] + codec], axis=0))

    def step(self, code: mx.array, part: mx.array) -> mx.array:
        """The next code after `code`, reading one row [E] of the Thinker's reply stream."""
        return self._next(self.talker.embed_codes(code) + part[None])

    def is_stop(self, value: int) -> bool:
        return value in self.stops

    def spoken(self, value: int) -> int:
        # Codes past the DiT's codebook (the Talker's vocabulary is larger) read as code 0,
        # as vllm-omni does; the reference leaves them to index out of range.
        return value if value < self.table else 0


def talker_codes(model, trace: ThinkerTrace, voice: dict, opts: TalkerOptions) -> Iterator[int]:
    """Yield codec ids for a finished Thinker turn until the Talker ends the utterance (its
    end/pad code, not yielded) or `opts.max_codec_tokens` are out."""
    embeds, text_ids, codec_prompt, reply_stream = talker_inputs(
        model.thinker, model.talker.cfg, trace, voice["bos_token"])
    session, code = start_talker(model, embeds, text_ids, codec_prompt, trace.media, opts)
    for j in range(opts.max_codec_tokens):
        part = reply_stream[min(j, reply_stream.shape[0] - 1)]
        nxt = session.step(code, part) if j + 1 < opts.max_codec_tokens else None
        value = code.item()
        if session.is_stop(value):
            return
        yield session.spoken(value)
        code = nxt
