"""After a barge-in the conversation keeps the reply only as far as it was heard.

The lead moves this into `ChatSession.keep_heard(samples)`; until then it works on a
ChatSession from outside (its `.messages`, `.ids` and the tokenizer). The next `send` re-renders
the conversation, finds where the cache stops matching and trims the cache (and the Talker
rows) there, so only `.messages` needs changing here."""

from typing import List, Optional

SAMPLES_PER_CODE = 480  # 24 kHz audio per 50 Hz codec code
# Speech rate of the real model, used when the reply was cut before its end (so its own ratio of
# codes to tokens is unknown): about 4 reply tokens per second of speech.
CODES_PER_TOKEN = 12.5


def reply_ids(session) -> List[int]:
    """The last assistant reply's token ids as the cache holds them."""
    tok = session.model.processor.tokenizer
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    ids = session.ids
    for i in range(len(ids) - len(header), -1, -1):
        if ids[i:i + len(header)] == header:
            return list(ids[i + len(header):])
    return []


def tokens_heard(samples: int, reply_tokens: int, codes: Optional[int] = None) -> int:
    """How many of the reply's tokens the first `samples` of its speech covered: in proportion
    when the whole reply's `codes` count is known, else at the model's speech rate."""
    heard = samples // SAMPLES_PER_CODE
    if codes:
        n = round(reply_tokens * min(heard, codes) / codes)
    else:
        n = int(heard / CODES_PER_TOKEN)
    return max(0, min(reply_tokens, n))


def keep_heard(session, samples: int, codes: Optional[int] = None) -> str:
    """Cut `session`'s last assistant reply (its generator already closed) to what its first
    `samples` samples (24 kHz) of speech covered; `codes`, the reply's whole codec count when it
    was generated to the end. Returns the text kept."""
    if not session.messages or session.messages[-1]["role"] != "assistant":
        return ""  # the turn was stopped before any reply: nothing to cut
    ids = reply_ids(session)
    eos = _end_ids(session)
    ids = [t for t in ids if t not in eos]
    n = tokens_heard(samples, len(ids), codes)
    text = session.model.processor.tokenizer.decode(ids[:n]) if n else ""
    session.messages[-1] = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    return text


def _end_ids(session) -> set:
    tok = session.model.processor.tokenizer
    return set(tok.eos_token_ids) | {session.model.config.thinker_config.eos_token_id}
