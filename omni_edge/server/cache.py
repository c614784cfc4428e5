"""Prefix reuse for clients that resend the whole conversation each turn (every chat UI does):
the KV cache of the last request is kept with the token ids it holds, and the next request
feeds only what follows their longest common prefix, as mlx-lm's server does.

It is `ChatSession`'s cache logic (prefix search that never splits a medium, trim, remember,
and, for speech, the Thinker rows and the Talker's cache) applied to whole conversations
instead of one user message at a time."""

from dataclasses import replace
from typing import Iterator, List

from ..chat import ChatSession
from ..events import Event
from ..processing.thinker_input import build_prompt
from ..turn import Turn


class PromptCache(ChatSession):
    """One KV cache (and, for speech, the Talker's) keyed by the token ids it holds."""

    def __init__(self, model):
        super().__init__(model)
        self.reused = self.prompt_tokens = 0
        self.fed: List[int] = []

    def run(self, turn: Turn, messages: list) -> Iterator[Event]:
        """Stream the reply to `messages` (omni-edge's shape, speech system prompt included
        when the turn speaks), reusing the cached prefix. `reused`, `prompt_tokens` and `fed`
        tell the caller what this request cost."""
        if turn.options.speak != self.speak:  # a text cache has no Talker rows, and back
            self.options = replace(self.options, speak=turn.options.speak)
            self.reset()
        # media are decoded per request: the session's media cache keys on the part dicts, and
        # a request's dicts are new each time (an old id() could even come back)
        inputs = self.model.processor.prepare(messages, turn.options.use_audio_in_video)
        if len(inputs.input_ids) >= turn.context:
            raise ValueError(f"the conversation ({len(inputs.input_ids)} tokens) does not fit the "
                             f"context of {turn.context} tokens; send fewer or shorter messages")
        self._trim(self._reusable(inputs.input_ids))
        keep = len(self.ids)  # what the cache still holds (a wrapped rotating cache starts over)
        prompt = build_prompt(self.model, inputs, keep)
        self.reused, self.prompt_tokens, self.fed = keep, len(prompt.ids), []
        capture = ([self.rows] if self.rows else []) if self.speak else None
        try:
            yield from turn.run(prompt, self.cache, capture, self.fed, self.talker)
        except Exception:
            self.reset()  # a failure mid-turn leaves the caches in an unknown state
            raise
        finally:
            if self.cache[0].offset or self.ids:
                self._remember(messages, prompt.ids, self.fed, capture)
