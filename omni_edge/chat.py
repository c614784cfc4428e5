"""Multi-turn chat: the conversation and the Thinker's KV cache carry over between turns, so a
turn feeds only its own new tokens instead of re-encoding the history."""

from typing import Iterator, List, Optional

import mlx.core as mx

from .generate import Event, Turn, build_prompt, end_of_turn_ids


class ChatSession:
    """A conversation with `model`. `send(content)` streams the reply's events (as `stream`)
    and remembers the turn; `reset()` starts over. Options are `stream`'s (`speak`, `voice`,
    `max_tokens`, `temperature`, `talker`, ...) and hold for every turn.

    The cache holds the ids of every earlier turn as they were fed (the reply as generated,
    not re-tokenized). Each turn renders the whole conversation with the chat template and
    feeds what follows the longest prefix the cache already holds; the rest of the cache is
    trimmed. With speech, the Thinker rows the Talker reads (input embedding and final hidden
    of every fed token) are kept alongside, because the Talker's prompt is the whole
    conversation too."""

    def __init__(self, model, system: Optional[str] = None, **options):
        self.model, self.system, self.options = model, system, options
        Turn(model, **options)  # check the options (voice, max_tokens) before the first turn
        self.reset()

    def reset(self):
        self.messages: List[dict] = []
        if self.system:
            self.messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        self.cache = self.model.thinker.make_cache()
        self.ids: List[int] = []  # what the cache holds
        self.rows = None  # (embeds, hidden) [len(ids), H] each, when speaking

    @property
    def speak(self) -> bool:
        return bool(self.options.get("speak"))

    def send(self, content) -> Iterator[Event]:
        """Stream the reply to a user message (a string or a list of parts). Closing the
        generator early keeps what was said so far; the session serves the next turn."""
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        turn = Turn(self.model, **self.options)
        messages = turn.messages(self.messages + [{"role": "user", "content": content}])
        inputs = self.model.processor.prepare(messages)
        if len(inputs.input_ids) >= turn.context:
            raise ValueError(f"the conversation ({len(inputs.input_ids)} tokens) no longer fits "
                             f"the context of {turn.context}; reset it (/reset in the CLI)")
        keep = self._reusable(inputs.input_ids)
        self._trim(keep)
        prompt = build_prompt(self.model, inputs, keep)
        capture = ([self.rows] if self.rows else []) if self.speak else None
        fed: List[int] = []
        try:
            yield from turn.run(prompt, self.cache, capture, fed)
        finally:
            self._remember(messages, prompt.ids, fed, capture)

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
        if drop > 0:
            for c in self.cache:
                c.trim(drop)
            self.ids = self.ids[:keep]
            if self.rows is not None:
                self.rows = (self.rows[0][:keep], self.rows[1][:keep])

    def _remember(self, messages: List[dict], prompt_ids: List[int], fed: List[int], capture):
        offset = self.cache[0].offset
        self.ids = (prompt_ids + fed)[:offset]
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
        if fed and fed[-1] in eos or reply:
            text = self.model.processor.tokenizer.decode(reply)
            self.messages = messages + [
                {"role": "assistant", "content": [{"type": "text", "text": text}]}]
        else:  # nothing was generated (interrupted at once): drop the user message too
            self.messages = messages[:-1]
