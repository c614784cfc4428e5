"""What a listener hears of a streamed reply: from each audio chunk's arrival time (seconds from
the call) and its place in the utterance, the earliest playback start that never stalls, and
the stalls of two players: a simple one that starts once a little audio is buffered, and the
adaptive one (`playback.Player`) that buffers what the renderer expects the next chunk to take."""

from dataclasses import dataclass
from typing import Sequence, Tuple

PREBUFFER_S = 0.150  # the simple player's start threshold (the stats' `stalls` contract)
AHEAD_MARGIN = 1.25  # as playback.Player


@dataclass(frozen=True)
class Listening:
    glitch_free_start_s: float  # max over chunks of arrival - start_sample / rate
    stalls: int  # for a player that starts at PREBUFFER_S buffered and pauses when dry
    stall_s: float
    player_start_s: float  # the adaptive player: when it starts, and its stalls
    player_stalls: int
    player_stall_s: float


def _play(chunks, rate: int, need_s) -> Tuple[float, int, float]:
    """Start at the first arrival whose buffered audio reaches need_s(i); each late chunk
    pauses playback until it arrives. (start, stalls, stalled seconds)"""
    begin = chunks[-1][0]
    for i, (t, start, n, _) in enumerate(chunks):
        if (start + n) / rate >= need_s(i):
            begin = t
            break
    stalls, stalled = 0, 0.0
    for t, start, _, _ in chunks:
        due = begin + stalled + start / rate
        if t > due + 1e-9:
            stalls += 1
            stalled += t - due
    return begin, stalls, stalled


def listening(chunks: Sequence[Tuple[float, int, int, float]], rate: int,
              prebuffer_s: float = PREBUFFER_S, floor_s: float = PREBUFFER_S) -> Listening:
    """`chunks`: (arrival seconds from the call, start sample, samples, the renderer's estimate
    of the seconds to the next chunk) in utterance order."""
    if not chunks:
        return Listening(0.0, 0, 0.0, 0.0, 0, 0.0)
    glitch_free = max(t - start / rate for t, start, _, _ in chunks)
    _, stalls, stalled = _play(chunks, rate, lambda i: prebuffer_s)
    adaptive = _play(chunks, rate, lambda i: max(floor_s, AHEAD_MARGIN * chunks[i][3]))
    return Listening(glitch_free, stalls, stalled, *adaptive)
