"""What generation yields: text deltas, audio chunks and a final Done with the turn's stats."""

from dataclasses import dataclass, field
from typing import List, Optional, Union

import numpy as np

SPEECH_SAMPLE_RATE = 24000  # Hz; Token2Wav's output (the input side is processing.audio's 16 kHz)


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    peak_memory_gb: float
    codec_tokens: int = 0
    talker_tps: float = 0.0
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0  # wall time from the first codec token to the last audio
    time_to_first_audio: float = 0.0  # from the call to the first audio chunk
    first_audio_seconds: float = 0.0  # how much audio that first chunk holds
    real_time_factor: float = 0.0  # the turn's wall time / seconds of speech
    # What a listener hears (a contract: benchmarks and other scripts read these names):
    glitch_free_start_s: float = 0.0  # earliest playback start, from the call, that never stalls
    stalls: int = 0  # stalls of a player that starts at 150 ms buffered and pauses when dry
    stall_s: float = 0.0  # their total length
    # the adaptive player (playback.Player: buffers what the renderer expects to need)
    player_start_s: float = 0.0
    player_stalls: int = 0
    player_stall_s: float = 0.0


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int
    type: str = "text"


@dataclass(frozen=True)
class AudioChunk:
    audio: np.ndarray  # float32 waveform at `sample_rate`
    start_sample: int  # where this chunk starts in the utterance
    sample_rate: int = SPEECH_SAMPLE_RATE
    next_in_s: float = 0.0  # the renderer's estimate of the seconds until the next chunk
    type: str = "audio"


@dataclass(frozen=True)
class Done:
    text: str
    token_ids: List[int]
    finish_reason: str  # "stop" (end-of-turn token) or "length"
    stats: GenerationStats
    codec_ids: List[int] = field(default_factory=list)
    type: str = "done"


Event = Union[TextDelta, AudioChunk, Done]


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: List[int]
    finish_reason: str
    stats: GenerationStats
    codec_ids: List[int] = field(default_factory=list)
    audio: Optional[np.ndarray] = None  # 24 kHz float32 when speech was asked
    sample_rate: int = SPEECH_SAMPLE_RATE
