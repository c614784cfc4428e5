"""After a barge-in the conversation keeps the reply only as far as it was heard.

The lead moves this into `ChatSession.keep_heard(samples)`; until then it works on a
ChatSession from outside: it cuts the text of `.messages[-1]` at a token boundary (the reply's
tokens as the next turn's template will tokenize them). The next `send` re-renders the
conversation, finds where the cache stops matching and trims the cache (and the Talker rows)
there, so only `.messages` needs changing here."""

from typing import Optional

SAMPLES_PER_CODE = 480  # 24 kHz audio per 50 Hz codec code
# Speech rate of the real model, used when the reply was cut before its end (so its own ratio of
# codes to tokens is unknown): about 4 reply tokens per second of speech.
CODES_PER_TOKEN = 12.5


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
    tok = session.model.processor.tokenizer
    said = "".join(p.get("text", "") for p in session.messages[-1]["content"])
    ids = tok.encode(said, add_special_tokens=False)
    n = tokens_heard(samples, len(ids), codes)
    text = tok.decode(ids[:n]) if n else ""
    session.messages[-1] = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    return text

