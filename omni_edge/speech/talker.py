"""The Talker: the Thinker → Talker hand-off, its codec decode loop, and the lockstep that runs
it beside a generating Thinker.

The Talker's prefill needs the Thinker's state at the first reply token and its step j the
state at reply token j+2; each exists once the Thinker has fed that token, so every Thinker
step is followed by one Talker step (`Lockstep`). When the reply ends, the Talker reads
`text_eos`, then `text_pad` until it ends the utterance (omni_spec §7.3). The codes equal a
Talker run after the whole reply (`talker_codes`)."""

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator, List, Optional, Tuple

import mlx.core as mx

from ..compiled_step import decoder_pass, prepare
from ..decode import GENERATION_STREAM
from ..options import SpeechOptions
from ..processing.rope_index import rope_index
from ..sampling import make_repetition_penalty, make_talker_sampler
from .voice import SpeechError


@dataclass
class ThinkerTrace:
    """What the Talker reads from one finished Thinker turn: for the prompt and each fed reply
    token, its input embedding and final normed hidden state."""

    prompt_ids: List[int]
    embeds: mx.array  # (P + steps, E): prompt rows, then one row per fed reply token
    hidden: mx.array  # (P + steps, E)
    reply_ids: List[int]  # r_1 .. r_N as generated (r_N is never fed, so it has no row)
    multimodal_ids: tuple = ()  # placeholder ids whose embeddings the Talker must not see
    media: dict = field(default_factory=dict)  # rope_index's media lists when there is vision


@dataclass
class TalkerState:
    """A Talker KV cache kept between the turns of a conversation: it holds the prompt rows of
    `prompt_ids` (the rows after them, the voice's bos, r1 and the codes, are redone each turn)."""

    cache: list
    prompt_ids: List[int] = field(default_factory=list)

    def reusable(self, prompt_ids: List[int]) -> int:
        n = 0
        for a, b in zip(self.prompt_ids, prompt_ids):
            if a != b:
                break
            n += 1
        return n

    def trim(self, keep: int):
        drop = self.cache[0].offset - keep
        if drop > 0:
            for c in self.cache:
                c.trim(drop)
        self.prompt_ids = self.prompt_ids[:keep]


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


def talker_positions(talker_cfg, text_ids: List[int], media: dict):
    """The Talker's TMRoPE positions over its text ids (the prompt, the voice's bos and the
    first reply token) and its rope delta; (None, 0) when they are sequential (no vision)."""
    if not media:
        return None, 0
    return rope_index(text_ids, talker_cfg, **media)


class TalkerSession:
    """One utterance of the Talker: its KV cache, the code history the repetition penalty
    reads, and sampling. Steps return lazy codes, so a caller can queue the next step before
    reading the previous code (the GPU never waits on Python)."""

    def __init__(self, model, codec_prompt: List[int], speech: SpeechOptions,
                 position_ids=None, rope_delta: int = 0, cache: Optional[list] = None):
        """`position_ids` [3, P+2] are the prefill's TMRoPE positions when the prompt holds
        images or video (`talker_positions`); decoding then continues at offset + `rope_delta`.
        A `cache` already holding the first rows of the prompt (a conversation's earlier
        turns) is continued: only the rows after them are fed."""
        self.position_ids, self.rope_delta = position_ids, rope_delta
        self.talker, self.cfg, self.speech = model.talker, model.talker.cfg, speech
        self.cache = cache if cache is not None else self.talker.make_cache()
        self.stops = (self.cfg.tts_codec_pad_token_id, self.cfg.tts_codec_end_token_id)
        start = self.cfg.tts_codec_start_token_id
        options = (speech.talker_temperature, speech.talker_top_k, speech.talker_top_p)
        self.samplers = (make_talker_sampler(*options, suppress=[start, *self.stops]),
                         make_talker_sampler(*options, suppress=[start]))
        self.penalty = (make_repetition_penalty(speech.talker_repetition_penalty)
                        if speech.talker_repetition_penalty != 1 else None)
        self.history = mx.array(codec_prompt)
        self.table = model.config.token2wav_config.dit_config.num_embeds + 1
        self.steps = 0

    def _logits(self, x: mx.array, positions) -> mx.array:
        """The codec logits [1, V] after rows x [L, E]; one row runs the compiled step."""
        run = partial(decoder_pass, compiled=self.speech.compile_decode,
                      ahead=self.speech.max_codec_tokens - self.steps)
        return self.talker(x[None], self.cache, positions, self.rope_delta, last_only=True,
                           run=run)[:, -1, :]

    def _next(self, x: mx.array, positions=None) -> mx.array:
        with mx.stream(GENERATION_STREAM):
            logits = self._logits(x, positions)
            if self.penalty is not None:
                logits = self.penalty(self.history, logits)
            code = self.samplers[self.steps >= self.speech.min_codec_tokens](logits)
            self.history = mx.concatenate([self.history, code.astype(self.history.dtype)])
        self.steps += 1
        mx.async_eval(code)
        return code

    def prefill(self, embeds: mx.array) -> mx.array:
        """The first code from the hand-off embeddings [P+2, E] (codec pad/bos added here),
        feeding only the rows after those the cache already holds."""
        held = self.cache[0].offset
        codec = self.talker.embed_codes(mx.array([self.cfg.tts_codec_pad_token_id,
                                                  self.cfg.tts_codec_start_token_id]))
        rows = mx.concatenate([embeds[:-2], embeds[-2:] + codec], axis=0)[held:]
        positions = None
        if self.position_ids is not None:
            positions = mx.array(self.position_ids)[:, None, held:]  # (3, 1, P+2 - held)
        code = self._next(rows, positions)
        if self.speech.compile_decode:  # buffers for the utterance (up to AHEAD): one trace
            with mx.stream(GENERATION_STREAM):
                prepare(self.talker.model, self.cache, self.speech.max_codec_tokens)
        return code

    def step(self, code: mx.array, part: mx.array) -> mx.array:
        """The next code after `code`, reading one row [E] of the Thinker's reply stream."""
        return self._next(self.talker.embed_codes(code) + part[None])

    def is_stop(self, value: int) -> bool:
        return value in self.stops

    def spoken(self, value: int) -> int:
        # Codes past the DiT's codebook (the Talker's vocabulary is larger) read as code 0,
        # as vllm-omni does; the reference leaves them to index out of range.
        return value if value < self.table else 0


def start_talker(model, prefill: mx.array, text_ids: List[int], codec_prompt: List[int],
                 media: dict, speech: SpeechOptions, state: Optional[TalkerState] = None):
    """A TalkerSession fed the hand-off, with its TMRoPE positions, and its first (lazy) code.
    With a conversation's `state`, the rows it holds are reused and it is updated to hold
    this turn's prompt rows."""
    positions, delta = talker_positions(model.talker.cfg, text_ids, media)
    cache = None
    if state is not None:
        prompt_ids = text_ids[:-2]
        state.trim(min(state.reusable(prompt_ids), len(prompt_ids)))
        cache = state.cache
    session = TalkerSession(model, codec_prompt, speech, positions, delta, cache)
    code = session.prefill(prefill)
    if state is not None:
        state.prompt_ids = list(text_ids[:-2])
    return session, code


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


def talker_codes(model, trace: ThinkerTrace, voice: dict, speech: SpeechOptions) -> Iterator[int]:
    """Yield codec ids for a finished Thinker turn until the Talker ends the utterance (its
    end/pad code, not yielded) or `speech.max_codec_tokens` are out."""
    embeds, text_ids, codec_prompt, reply_stream = talker_inputs(
        model.thinker, model.talker.cfg, trace, voice["bos_token"])
    session, code = start_talker(model, embeds, text_ids, codec_prompt, trace.media, speech)
    limit = speech.max_codec_tokens
    for j in range(limit):
        part = reply_stream[min(j, reply_stream.shape[0] - 1)]
        nxt = session.step(code, part) if j + 1 < limit else None
        value = code.item()
        if session.is_stop(value):
            return
        yield session.spoken(value)
        code = nxt


class Lockstep:
    """Runs the Talker in step with a running Thinker (`generate_step(..., capture=...)`),
    yielding ("text", token) and ("code", code) items in order. A conversation passes its
    `TalkerState`, so the Talker feeds only the rows earlier turns did not."""

    def __init__(self, model, prompt_ids: List[int], placeholders: tuple, voice: dict,
                 speech: SpeechOptions, max_tokens: int, media: Optional[dict] = None,
                 state: Optional[TalkerState] = None):
        self.model, self.prompt_ids, self.placeholders = model, prompt_ids, placeholders
        self.media = media or {}  # rope_index's media lists when the prompt holds vision
        self.voice, self.speech, self.max_tokens, self.state = voice, speech, max_tokens, state
        self.tail = reply_tail(model.thinker, model.talker.cfg)
        self.session: Optional[TalkerSession] = None
        self.pending: Optional[mx.array] = None
        self.codes, self.done, self.finish_reason = 0, False, "length"
        self.text_done = None

    def _start(self, capture: list, first_token: int):
        rows = capture[:]  # earlier turns' rows, the prefill passes, then the pass that fed r1
        embeds = mx.concatenate([e for e, _ in rows])
        hidden = mx.concatenate([h for _, h in rows])
        prefill, text_ids, codec_prompt = hand_off(
            self.model.thinker, self.model.talker.cfg, self.prompt_ids, embeds, hidden,
            self.placeholders, self.voice["bos_token"], first_token)
        self.session, self.pending = start_talker(self.model, prefill, text_ids, codec_prompt,
                                                  self.media, self.speech, self.state)
        self.first_fed = len(rows)  # capture index of the pass that fed r2

    def _advance(self, part: mx.array) -> Optional[int]:
        """Queue the Talker's next step, then read the code before it; None once it stopped."""
        if self.done:
            return None
        last = self.codes + 1 >= self.speech.max_codec_tokens
        nxt = None if last else self.session.step(self.pending, part)
        value = self.pending.item()
        if self.session.is_stop(value):
            self.done = True
            return None
        self.codes, self.done, self.pending = self.codes + 1, last, nxt
        return self.session.spoken(value)

    def run(self, steps: Iterator[int], capture: list, eos: set) -> Iterator[Tuple[str, int]]:
        k = 0
        for token in steps:
            if token in eos:
                self.finish_reason = "stop"
                break
            k += 1
            yield "text", token
            if k >= self.max_tokens:  # a length-limited reply's last token is never fed
                continue
            if k == 1:
                self._start(capture, token)
                continue
            e, h = capture[self.first_fed + k - 2]
            code = self._advance((e + h)[-1])
            if code is not None:
                yield "code", code
        self.text_done = time.perf_counter()  # the Thinker's part ends; the Talker goes on
        if self.session is None:
            raise SpeechError("the text reply is empty, so there is nothing to speak")
        for j in range(self.speech.max_codec_tokens):
            code = self._advance(self.tail[min(j, 1)])
            if code is None:
                return
            yield "code", code
