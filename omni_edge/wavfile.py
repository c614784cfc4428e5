"""Writing speech to a file: all or nothing."""

import os
from typing import List

import numpy as np
import soundfile as sf

from .events import SPEECH_SAMPLE_RATE


def save_wav(path: str, chunks: List[np.ndarray], sample_rate: int = SPEECH_SAMPLE_RATE):
    """Write the chunks as one float wav, next to its final name first, so a failure leaves no
    partial file."""
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    tmp = f"{path}.partial"
    try:
        sf.write(tmp, wav, sample_rate, format="WAV", subtype="FLOAT")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
