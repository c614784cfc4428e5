"""Tiny test videos written with PyAV: a moving colour pattern and, optionally, a 440 Hz sine."""

from pathlib import Path

import numpy as np

TONE_HZ = 440.0


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of the test pattern, uint8 [H, W, 3]; every frame differs."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 4 + index * 8) % 256, (yy * 5 + index * 3) % 256,
                     ((xx + yy) * 3 + index * 11) % 256], axis=-1).astype(np.uint8)


def write_clip(path: Path, video_codec: str, audio_codec=None, size=(64, 48), fps: int = 10,
               seconds: float = 3.0, rate: int = 44100, channels: int = 1, first: int = 0) -> Path:
    """Encode `seconds` of the pattern from frame `first` at `fps` (and a sine on `channels`
    at `rate` Hz)."""
    import av

    width, height = size
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream(audio_codec, rate=rate, layout=layout) if audio_codec else None
        for i in range(int(fps * seconds)):
            frame = av.VideoFrame.from_ndarray(pattern(first + i, width, height), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            t = np.arange(int(rate * seconds)) / rate
            tone = np.repeat((0.5 * np.sin(2 * np.pi * TONE_HZ * t))[None], channels, axis=0)
            for start in range(0, tone.shape[1], 1024):
                chunk = np.ascontiguousarray(tone[:, start:start + 1024], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = rate, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path
