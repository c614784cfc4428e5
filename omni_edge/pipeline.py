"""Streaming speech: the Talker decodes alongside the Thinker, one reply token per codec step.

The Talker's prefill needs the Thinker's state at the first reply token and its step j the
state at reply token j+2; each exists once the Thinker has fed that token, so every Thinker
step is followed by one Talker step. When the reply ends, the Talker reads `text_eos`, then
`text_pad` until it ends the utterance (omni_spec §7.3). Codes are the same as a Talker run
after the whole reply (`speech.talker_codes`)."""

import time
from typing import Iterator, List, Optional, Tuple

import mlx.core as mx

from .speech import SpeechError, TalkerOptions, TalkerSession, hand_off, reply_tail, start_talker


class Lockstep:
    """Runs the Talker in step with a running Thinker (`generate_step(..., capture=...)`),
    yielding ("text", token) and ("code", code) items in order."""

    def __init__(self, model, prompt_ids: List[int], placeholders: tuple, voice: dict,
                 opts: TalkerOptions, max_tokens: int, media: Optional[dict] = None):
        self.model, self.prompt_ids, self.placeholders = model, prompt_ids, placeholders
        self.media = media or {}  # rope_index's media lists when the prompt holds vision
        self.voice, self.opts, self.max_tokens = voice, opts, max_tokens
        self.tail = reply_tail(model.thinker, model.talker.cfg)
        self.session: Optional[TalkerSession] = None
        self.pending: Optional[mx.array] = None
        self.codes, self.done, self.finish_reason = 0, False, "length"

    def _start(self, capture: list, first_token: int):
        rows = capture[:]  # the prefill passes, then the pass that fed r1
        embeds = mx.concatenate([e for e, _ in rows])
        hidden = mx.concatenate([h for _, h in rows])
        prefill, text_ids, codec_prompt = hand_off(
            self.model.thinker, self.model.talker.cfg, self.prompt_ids, embeds, hidden,
            self.placeholders, self.voice["bos_token"], first_token)
        self.session, self.pending = start_talker(self.model, prefill, text_ids, codec_prompt,
                                                  self.media, self.opts)
        self.first_fed = len(rows)  # capture index of the pass that fed r2

    def _advance(self, part: mx.array) -> Optional[int]:
        """Queue the Talker's next step, then read the code before it; None once it stopped."""
        if self.done:
            return None
        last = self.codes + 1 >= self.opts.max_codec_tokens
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
        for j in range(self.opts.max_codec_tokens):
            code = self._advance(self.tail[min(j, 1)])
            if code is None:
                return
            yield "code", code
