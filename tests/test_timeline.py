"""What a listener hears, worked by hand: the glitch-free start, the simple player's stalls and
the adaptive player's, from chunk arrival times."""

import pytest

from omni_edge.speech.timeline import listening

RATE = 1000  # samples per second, to keep the arithmetic readable


def test_glitch_free_start_is_the_latest_arrival_against_its_due_time():
    # chunks: 40 ms at 0.5 s, then 720 ms due at 0.04 s of audio arriving at 1.4 s, then 2 s
    # due at 0.76 s arriving at 2.0 s
    chunks = [(0.5, 0, 40, 0.9), (1.4, 40, 720, 0.6), (2.0, 760, 2000, 0.0)]
    heard = listening(chunks, RATE)
    assert heard.glitch_free_start_s == pytest.approx(max(0.5, 1.4 - 0.04, 2.0 - 0.76))
    # the simple player starts at 150 ms buffered: only after the second chunk (1.4 s); the
    # third is due at 1.4 + 0.76 = 2.16 s and arrives at 2.0: no stall
    assert (heard.stalls, heard.stall_s) == (0, 0.0)


def test_simple_player_stalls_when_a_chunk_is_late():
    chunks = [(0.2, 0, 200, 0.5), (1.0, 200, 500, 0.3), (1.3, 700, 300, 0.0)]
    heard = listening(chunks, RATE)
    # starts at 0.2 s (200 ms >= 150 ms); chunk 2 due at 0.4, arrives 1.0: stall 0.6 s;
    # chunk 3 due at 0.2 + 0.6 + 0.7 = 1.5, arrives 1.3: fine
    assert heard.stalls == 1 and heard.stall_s == pytest.approx(0.6)
    assert heard.glitch_free_start_s == pytest.approx(0.8)
    # the adaptive player needs 1.25 x the expected gap: 625 ms after the first chunk (it has
    # 200), 375 ms after the second (it has 700): it starts at 1.0 s and never stalls
    assert heard.player_start_s == pytest.approx(1.0)
    assert heard.player_stalls == 0


def test_no_audio():
    heard = listening([], RATE)
    assert heard.glitch_free_start_s == 0 and heard.stalls == 0
