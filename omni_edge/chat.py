"""Multi-turn chat: the conversation, its processed media and the Thinker's and Talker's KV
caches carry over between turns, so a turn feeds only its own new tokens and never reopens an
earlier turn's files."""

import warnings
from typing import Iterator, List, Optional

import mlx.core as mx

from .events import Event
from .options import SpeechOptions, split_options
from .processing.prompt import MediaCache
from .processing.thinker_input import build_prompt, end_of_turn_ids
from .speech.talker import TalkerState
from .turn import Turn

SAMPLES_PER_CODE = 480  # 24 kHz audio, 50 codes per second
# Speech codes per reply token when a reply was stopped before its speech was all made: 50
# codes a second over ~4 tokens a second of English speech.
CODES_PER_TOKEN = 12
# A conversation that outgrows the context drops its oldest turns until it fills at most this
# share of it, so the next turns fit again without re-feeding the history every turn.
REFILL_SHARE = 0.5


class ChatSession:
    """A conversation with `model`. `send(content)` streams the reply's events (as `stream`)
    and remembers the turn; `reset()` starts over. Options are `stream`'s (`speak`, `voice`,
    `max_tokens`, `temperature`, `talker_temperature`, ..., or `speech=SpeechOptions(...)`) and
    hold for every turn.

    The cache holds the ids of every earlier turn as they were fed (the reply as generated,
    not re-tokenized). Each turn renders the whole conversation with the chat template and
    feeds what follows the longest prefix the cache already holds; the rest of the cache is
    trimmed. Media are processed once (`MediaCache`). With speech, the Thinker rows the Talker
    reads (input embedding and final hidden of every fed token) are kept, and so is the
    Talker's cache: its prompt rows for the earlier turns are fed once.

    When the conversation no longer fits `max_context` (or `max_kv_size`) with room for a
    reply, the oldest turns are dropped (the system prompt stays) and `dropped_turns` counts
    them; so a rotating cache never wraps in a chat."""

    def __init__(self, model, system: Optional[str] = None, *,
                 speech: Optional[SpeechOptions] = None, **options):
        self.model, self.system = model, system
        self.options, self.speech = split_options(options, speech)
        Turn(model, self.options, self.speech)  # check the voice before the first turn
        self.reset()

    def reset(self):
        self.messages: List[dict] = []
        if self.system:
            self.messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        self.cache = self.model.thinker.make_cache(self.options.max_kv_size)
        self.ids: List[int] = []  # what the cache holds
        self.rows = None  # (embeds, hidden) [len(ids), H] each, when speaking
        self.talker = TalkerState(self.model.talker.make_cache()) if self.speak else None
        self.media = MediaCache()
        self.dropped_turns = 0
        self._reply_start = None  # where the last reply begins in `ids`
        self._reply_codes = None  # how many codes its whole speech had, once it finished
        self._reply: List[int] = []

    @property
    def speak(self) -> bool:
        return self.options.speak

    def send(self, content) -> Iterator[Event]:
        """Stream the reply to a user message (a string or a list of parts). Closing the
        generator early keeps what was said so far; the session serves the next turn."""
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        content = [dict(part) for part in content]  # ours: the media cache keys on these dicts
        turn = Turn(self.model, self.options, self.speech)
        messages, inputs = self._fit(turn, self.messages + [{"role": "user", "content": content}])
        self._trim(self._reusable(inputs.input_ids))
        prompt = build_prompt(self.model, inputs, len(self.ids))
        capture = ([self.rows] if self.rows else []) if self.speak else None
        fed: List[int] = []
        self._reply_codes = None
        try:
            for event in turn.run(prompt, self.cache, capture, fed, self.talker):
                if event.type == "done":
                    self._reply_codes = len(event.codec_ids)
                yield event
        finally:
            self._remember(messages, prompt.ids, fed, capture)

    def keep_heard(self, samples: int):
        """After a spoken reply was cut off (barge-in), keep of it only what the first
        `samples` samples (24 kHz) of its speech said. The speech covers the reply evenly, so
        the codes played, as a share of the reply's codes, give the share of its tokens
        spoken; a reply stopped before its speech was all made uses CODES_PER_TOKEN. The
        caches are trimmed to match."""
        if self._reply_start is None or not self.messages or self.messages[-1]["role"] != "assistant":
            raise ValueError("keep_heard() needs a finished or stopped reply to cut")
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        reply = self._reply  # as generated (the cache holds all but the last)
        played = samples // SAMPLES_PER_CODE
        if self._reply_codes:
            n = len(reply) * min(played, self._reply_codes) // self._reply_codes
        else:
            n = played // CODES_PER_TOKEN
        spoken = reply[:n]
        self._trim(min(self._reply_start + len(spoken), len(self.ids)))
        text = self.model.processor.tokenizer.decode(spoken)
        self.messages[-1] = {"role": "assistant", "content": [{"type": "text", "text": text}]}

    def _fit(self, turn: Turn, messages: List[dict]):
        """The conversation's processed inputs, its oldest turns dropped while it does not
        leave room for a reply in the context."""
        messages = turn.messages(messages)
        inputs = self.model.processor.prepare(messages, media=self.media)
        context = min(turn.context, self.options.max_kv_size or turn.context)  # never wraps
        budget = context - min(self.options.max_tokens, context // 4)
        if len(inputs.input_ids) < budget:
            return messages, inputs
        head = 1 if messages[0]["role"] == "system" else 0
        first_drop = self.dropped_turns == 0
        while len(inputs.input_ids) > REFILL_SHARE * budget:
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if len(users) < 2:
                raise ValueError(
                    f"this message alone ({len(inputs.input_ids)} tokens with the system prompt) "
                    f"does not fit the context of {context} with room for max_tokens="
                    f"{self.options.max_tokens}; send less (shorter audio, fewer or smaller "
                    "images) or raise max_context")
            messages = messages[:head] + messages[users[1]:]
            self.dropped_turns += 1
            inputs = self.model.processor.prepare(messages, media=self.media)
        self.media.retain(messages)
        if first_drop:  # said once per session
            warnings.warn(f"the conversation outgrew the context ({context} tokens): its "
                          "oldest turns are dropped from now on (the system prompt stays)")
        return messages, inputs

    def _reusable(self, ids: List[int]) -> int:
        """How many leading `ids` the cache already holds, backed off so a medium (whose
        embeddings come from an encoder) is never split, and so at least one id is new."""
        n = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            n += 1
        n = min(n, len(ids) - 1)
        cfg = self.model.config.thinker_config
        closing = {cfg.audio_start_token_id: cfg.audio_end_token_id,
                   cfg.vision_start_token_id: cfg.vision_end_token_id}
        opened = None  # where the outermost medium still open at position n began
        for i in range(n):
            if opened is None and ids[i] in closing:
                opened = i
            elif opened is not None and ids[i] == closing[ids[opened]]:
                opened = None
        return opened if opened is not None else n

    def _trim(self, keep: int):
        drop = len(self.ids) - keep
        if drop > 0 and not all(c.is_trimmable() for c in self.cache):
            # a rotating cache that has wrapped can't go back: start it over (the whole
            # conversation is fed again this turn)
            self.cache = self.model.thinker.make_cache(self.options.max_kv_size)
            self.ids, self.rows = [], None
            if self.talker is not None:
                self.talker = TalkerState(self.model.talker.make_cache())
            return
        if drop > 0:
            for c in self.cache:
                c.trim(drop)
            self.ids = self.ids[:keep]
            if self.rows is not None:
                self.rows = (self.rows[0][:keep], self.rows[1][:keep])
                mx.eval(self.rows)  # no lazy slice is left for another thread's stream
        if self.talker is not None:
            self.talker.trim(min(self.talker.reusable(self.ids), self.talker.cache[0].offset))

    def _remember(self, messages: List[dict], prompt_ids: List[int], fed: List[int], capture):
        offset = self.cache[0].offset
        self.ids = (prompt_ids + fed)[:offset]
        self._reply_start = len(prompt_ids)
        if offset != len(self.ids):  # never expected: start over rather than drift
            self.reset()
            return
        if capture:
            rows = (mx.concatenate([e for e, _ in capture])[:offset],
                    mx.concatenate([h for _, h in capture])[:offset])
            mx.eval(rows)
            self.rows = rows
        eos = end_of_turn_ids(self.model)
        reply = [t for t in fed if t not in eos]
        self._reply = reply
        if fed and fed[-1] in eos or reply:
            text = self.model.processor.tokenizer.decode(reply)
            self.messages = messages + [
                {"role": "assistant", "content": [{"type": "text", "text": text}]}]
        else:  # nothing was generated (interrupted at once): drop the user message too
            self.messages = messages[:-1]
            self._reply_start = None
        mx.clear_cache()
