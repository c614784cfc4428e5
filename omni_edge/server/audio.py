"""Speech out as bytes: pcm16 chunks for streams, whole files (wav, flac, mp3, opus) otherwise."""

import io
import struct

import numpy as np
import soundfile as sf

from ..events import SPEECH_SAMPLE_RATE as SAMPLE_RATE

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg",
               "opus": "audio/ogg", "pcm": "audio/pcm", "pcm16": "audio/pcm"}
SOUNDFILE_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"),
                     "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
UNKNOWN_SIZE = 0xFFFFFFFF  # what streaming wav writers put in the sizes they can't know yet


def pcm16(audio: np.ndarray) -> bytes:
    """Little-endian signed 16-bit samples of float audio in [-1, 1] (clipped)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def encode(audio: np.ndarray, fmt: str) -> bytes:
    """The whole utterance as a `fmt` file (pcm/pcm16: the raw samples)."""
    if fmt in ("pcm", "pcm16"):
        return pcm16(audio)
    container, subtype = SOUNDFILE_FORMATS[fmt]
    out = io.BytesIO()
    sf.write(out, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format=container, subtype=subtype)
    return out.getvalue()


def wav_stream_header() -> bytes:
    """A 24 kHz mono pcm16 wav header whose sizes say 'unknown': the samples follow as they
    are rendered (players read such a stream to its end)."""
    block = 2
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * block,
                                    block, 16)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))
