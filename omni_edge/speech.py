"""Speech out: the Thinker → Talker hand-off, the Talker's codec decode loop and its sampling."""

import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional

import mlx.core as mx

from .processing.prompt import SPEECH_SYSTEM_PROMPT

SAMPLE_RATE = 24000
SAMPLES_PER_CODE = 480
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


def talker_inputs(thinker, talker_cfg, trace: ThinkerTrace, bos_token: int):
    """The reference hand-off (omni_spec §7.2): prefill embeddings [P+2, E], the Talker's text
    ids (used for positions only), the codec prompt ids, and the reply stream [R, E]."""
    P = len(trace.prompt_ids)
    n_fed = len(trace.reply_ids) - 1
    if n_fed < 1:
        raise SpeechError("the text reply is empty, so there is nothing to speak")
    ids = mx.array(trace.prompt_ids)
    keep = mx.ones((P,), dtype=mx.bool_)
    for token in trace.multimodal_ids:
        keep = keep & (ids != token)
    prefix = trace.hidden[:P] + trace.embeds[:P] * keep[:, None]
    reply = trace.hidden[P : P + n_fed] + trace.embeds[P : P + n_fed]  # (N-1, E)
    specials = thinker.embed(mx.array([bos_token, talker_cfg.tts_text_end_token_id,
                                       talker_cfg.tts_text_pad_token_id]))
    embeds = mx.concatenate([prefix, specials[:1], reply[:1]], axis=0)
    stream = mx.concatenate([reply[1:], specials[1:]], axis=0)
    codec_prompt = [talker_cfg.tts_codec_mask_token_id] * P + [
        talker_cfg.tts_codec_pad_token_id, talker_cfg.tts_codec_start_token_id]
    text_ids = trace.prompt_ids + [bos_token, trace.reply_ids[0]]
    return embeds, text_ids, codec_prompt, stream


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


def talker_codes(model, trace: ThinkerTrace, voice: dict, opts: TalkerOptions) -> Iterator[int]:
    """Yield codec ids until the Talker ends the utterance (its end/pad code, not yielded)
    or `opts.max_codec_tokens` are out."""
    from .generate import GENERATION_STREAM, make_repetition_penalty

    talker, cfg = model.talker, model.talker.cfg
    embeds, _, codec_prompt, reply_stream = talker_inputs(model.thinker, cfg, trace, voice["bos_token"])
    codec = talker.embed_codes(mx.array([cfg.tts_codec_pad_token_id, cfg.tts_codec_start_token_id]))
    embeds = mx.concatenate([embeds[:-2], embeds[-2:] + codec], axis=0)
    cache = talker.make_cache()
    stops = (cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id)
    samplers = (make_talker_sampler(opts, [cfg.tts_codec_start_token_id, *stops]),
                make_talker_sampler(opts, cfg.tts_codec_start_token_id))
    penalty = make_repetition_penalty(opts.repetition_penalty) if opts.repetition_penalty != 1 else None
    history = mx.array(codec_prompt)
    table = model.config.token2wav_config.dit_config.num_embeds + 1

    def step(x: mx.array, j: int) -> mx.array:
        nonlocal history
        with mx.stream(GENERATION_STREAM):
            logits = talker(x[None], cache)[:, -1, :]
            if penalty is not None:
                logits = penalty(history, logits)
            code = samplers[j >= opts.min_codec_tokens](logits)
            history = mx.concatenate([history, code])
            return code

    code = step(embeds, 0)
    mx.async_eval(code)
    for j in range(opts.max_codec_tokens):
        part = reply_stream[min(j, reply_stream.shape[0] - 1)]
        nxt = step(talker.embed_codes(code) + part[None], j + 1) if j + 1 < opts.max_codec_tokens else None
        if nxt is not None:
            mx.async_eval(nxt)
        value = code.item()
        if value in stops:
            return
        # Codes past the DiT's codebook (the talker vocabulary is larger) read as code 0,
        # as vllm-omni does; the reference leaves them to index out of range.
        yield value if value < table else 0
        code = nxt
