"""What a listener hears of a streamed reply: from each audio chunk's arrival time (seconds from
the call) and its place in the utterance, the earliest playback start that never stalls, and
the stalls of a player that starts once a little audio is buffered."""

from dataclasses import dataclass
from typing import Sequence, Tuple

PREBUFFER_S = 0.150  # the simple player's start threshold (the stats' `stalls` contract)


@dataclass(frozen=True)
class Listening:
    glitch_free_start_s: float  # max over chunks of arrival - start_sample / rate
    stalls: int  # for a player that starts at PREBUFFER_S buffered and pauses when dry
    stall_s: float
    player_start_s: float  # when that player started


def listening(chunks: Sequence[Tuple[float, int, int]], sample_rate: int,
              prebuffer_s: float = PREBUFFER_S) -> Listening:
    """`chunks`: (arrival seconds from the call, start sample, samples) in utterance order."""
    if not chunks:
        return Listening(0.0, 0, 0.0, 0.0)
    glitch_free = max(t - start / sample_rate for t, start, _ in chunks)
    need = prebuffer_s * sample_rate
    begin = chunks[-1][0]
    for t, start, n in chunks:
        if start + n >= need:
            begin = t
            break
    stalls, stalled = 0, 0.0
    for t, start, _ in chunks:
        due = begin + stalled + start / sample_rate
        if t > due + 1e-9:
            stalls += 1
            stalled += t - due
    return Listening(glitch_free, stalls, stalled, begin)

