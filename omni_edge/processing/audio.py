"""Audio input for Qwen2.5-Omni: load → mono → 16 kHz → log-mel features → Thinker token count.

Matches the reference pipeline (qwen-omni-utils' `librosa.load(path, sr=16000)`, then
`WhisperFeatureExtractor` as `Qwen2_5OmniProcessor` calls it) to ≤ 1e-4, using only numpy,
soundfile and soxr.  Unlike the reference, the features are computed on the clip itself rather than
on the clip zero-padded to 300 s; `log_mel` reproduces what that padding does to the result.
"""

import io
import math
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import soundfile as sf
import soxr

INPUT_SAMPLE_RATE = 16000  # Hz; what the audio encoder was trained on
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: one mel frame per 160 samples
N_MELS = 128
MEL_FMAX = 8000.0  # Hz
MAX_SECONDS = 300  # the feature extractor's chunk_length
N_SAMPLES = MAX_SECONDS * INPUT_SAMPLE_RATE  # 4_800_000
MAX_FRAMES = N_SAMPLES // HOP_LENGTH  # 30_000
LOG_FLOOR = 1e-10  # mel power clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the loudest value
RESAMPLE_QUALITY = "HQ"  # librosa's default res_type is soxr_hq
MAX_CHANNELS = 8  # an array axis this short is taken to be channels
MIN_SAMPLES = 2 * HOP_LENGTH + 1  # 3 mel frames: the fewest that give one Thinker token

AudioSource = Union[str, Path, bytes, bytearray, memoryview, np.ndarray]


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the input and the fix."""


def load_audio(source: AudioSource, sampling_rate: Optional[float] = None) -> np.ndarray:
    """Load `source` as float32 mono 16 kHz samples (1-D), like `librosa.load(source, sr=16000)`.

    `source` is a path (wav, flac, ogg, mp3 or anything else libsndfile reads), the encoded bytes of
    such a file, or a numpy array of samples at `sampling_rate` Hz (16000 when None, as
    qwen-omni-utils assumes).  A 2-D array is [samples, channels] (soundfile's layout) when its last
    axis has ≤ 8 entries, else [channels, samples] when its first axis has ≤ 8.  Integer arrays are
    scaled by 2**(bits-1) into [-1, 1].  Channels are averaged, then resampled with soxr HQ.  Clips
    longer than 300 s are truncated with a warning.  Raises `AudioError` for unusable input.
    """
    name = _describe(source)
    _check_rate(sampling_rate, name)
    if isinstance(source, np.ndarray):
        mono, rate = _array_to_mono(source, name), sampling_rate or INPUT_SAMPLE_RATE
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        mono, rate = _decode(source, name, sampling_rate)
    else:
        raise AudioError(f"{name}: pass a file path, encoded file bytes or a numpy array")
    if mono.size == 0:
        raise AudioError(f"{name} holds no samples; pass a non-empty clip")
    if not np.isfinite(mono).all():
        raise AudioError(f"{name} contains NaN or inf samples; clean the signal before passing it")
    return _truncate(_resample(mono, rate), name)


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return f"audio file {str(source)!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes, {memoryview(source).nbytes} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape {source.shape} dtype {source.dtype}>"
    return f"audio source of type {type(source).__name__}"


def _check_rate(sampling_rate, name: str) -> None:
    if sampling_rate is None:
        return
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.number)):
        raise AudioError(f"{name}: sampling_rate must be a number of Hz, got {sampling_rate!r}")
    if not math.isfinite(sampling_rate) or sampling_rate <= 0:
        raise AudioError(f"{name}: sampling_rate must be positive, got {sampling_rate!r}")


def _decode(source, name: str, sampling_rate) -> Tuple[np.ndarray, int]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            url = "://" in str(source)
            hint = " (URLs are not fetched; download the file first)" if url else ""
            raise FileNotFoundError(f"{name} does not exist{hint}")
        if not path.is_file():
            raise AudioError(f"{name} is not a file; pass the path of an audio file")
        handle = str(path)
    else:
        handle = io.BytesIO(bytes(source))
    try:
        samples, rate = sf.read(handle, dtype="float32", always_2d=True)  # [samples, channels]
    except (sf.SoundFileError, RuntimeError, TypeError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise AudioError(
            f"{name} could not be decoded ({reason}); it is corrupt, truncated or in a format "
            "libsndfile does not read (it reads wav, flac, ogg, mp3); convert it, e.g. "
            "`ffmpeg -i in.m4a out.wav`") from err
    if sampling_rate is not None and sampling_rate != rate:
        raise AudioError(f"{name} is {rate} Hz but sampling_rate={sampling_rate} was passed; "
                         "drop sampling_rate for files (their header gives the rate)")
    return samples.mean(axis=1, dtype=np.float32), rate


def _array_to_mono(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim not in (1, 2):
        raise AudioError(f"{name}: expected a 1-D mono or 2-D multi-channel array of samples")
    samples = _to_float32(array, name)
    if samples.ndim == 1:
        return samples
    if samples.shape[1] <= MAX_CHANNELS:
        return samples.mean(axis=1, dtype=np.float32)  # [samples, channels]
    if samples.shape[0] <= MAX_CHANNELS:
        return samples.mean(axis=0, dtype=np.float32)  # [channels, samples]
    raise AudioError(f"{name}: neither axis looks like channels (≤ {MAX_CHANNELS}); "
                     "pass [samples, channels] or [channels, samples]")


def _to_float32(array: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.signedinteger):
        # PCM integers span ±2**(bits-1), as librosa's buf_to_float assumes
        return array.astype(np.float32) * np.float32(2.0 ** (1 - 8 * array.dtype.itemsize))
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise AudioError(f"{name}: samples must be float or signed integer PCM; convert the array, "
                     "e.g. `x.astype(np.float32)` scaled to [-1, 1]")


def _resample(mono: np.ndarray, rate: float) -> np.ndarray:
    if rate == INPUT_SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    out = soxr.resample(mono, rate, INPUT_SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    # librosa.resample(fix=True) pads/trims soxr's output to ceil(n * ratio) samples
    n_out = math.ceil(len(mono) * INPUT_SAMPLE_RATE / rate)
    return np.pad(out[:n_out], (0, max(0, n_out - len(out)))).astype(np.float32)


def _truncate(audio: np.ndarray, name: str) -> np.ndarray:
    if len(audio) <= N_SAMPLES:
        return audio
    warnings.warn(f"{name} is {len(audio) / INPUT_SAMPLE_RATE:.1f} s long; Qwen2.5-Omni reads at most "
                  f"{MAX_SECONDS} s, so it was truncated (split longer audio into several clips)",
                  stacklevel=3)
    return audio[:N_SAMPLES]


@lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """The periodic Hann window of N_FFT samples (torch.hann_window's default), float64."""
    return _frozen(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT))


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz < 1000.0, 3.0 * hz / 200.0, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_part = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel < 15.0, 200.0 * mel / 3.0, log_part)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-scale, Slaney-normalized triangular filters [N_FFT//2+1, N_MELS], float64
    (= librosa.filters.mel(sr=16000, n_fft=400, n_mels=128, fmax=8000).T)."""
    fft_hz = np.linspace(0.0, INPUT_SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(MEL_FMAX)),
                                   N_MELS + 2))
    widths = np.diff(edges)
    rising = (fft_hz[:, None] - edges[None, :-2]) / widths[:-1]
    falling = (edges[None, 2:] - fft_hz[:, None]) / widths[1:]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return _frozen(triangles * (2.0 / (edges[2:] - edges[:-2])))  # equal area per filter


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # cached and shared between callers
    return array


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper-style log-mel features [N_MELS, ceil(len(audio) / HOP_LENGTH)] (float32) of 16 kHz
    mono `audio`, equal to the valid frames of Qwen2.5-Omni's WhisperFeatureExtractor output.

    The reference zero-pads to 300 s first, so frames past the clip see zeros (not reflected audio)
    and the `max - 8` clamp also counts the frames that overlap the clip's last 200 samples.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.size == 0 or not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"<array shape {audio.shape} dtype {audio.dtype}>: log_mel needs a "
                         "non-empty 1-D float clip at 16 kHz; use load_audio to get one")
    audio = _truncate(audio, f"<array shape {audio.shape}>").astype(np.float64)
    n_valid = math.ceil(len(audio) / HOP_LENGTH)
    # frames whose window touches the clip; every later frame is all zeros, log10 = -10, which
    # never raises the max because every value is clamped to ≥ -10 anyway
    n_frames = min(MAX_FRAMES, math.ceil((len(audio) + N_FFT // 2) / HOP_LENGTH))
    spec = np.log10(np.maximum(_mel_power(audio, n_frames), LOG_FLOOR))  # [N_MELS, n_frames]
    spec = np.maximum(spec, spec.max() - DYNAMIC_RANGE)
    return ((spec[:, :n_valid] + 4.0) / 4.0).astype(np.float32)


def _mel_power(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Mel power of the first `n_frames` centered STFT frames of `audio` zero-padded to 300 s."""
    half = N_FFT // 2
    # enough trailing zeros that reflect-padding the end mirrors zeros, as in the 300 s buffer
    length = min(N_SAMPLES, max(HOP_LENGTH * (n_frames - 1) + half, half + 1))
    signal = np.zeros(length)
    signal[: len(audio)] = audio
    padded = np.pad(signal, half, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    spectrum = np.fft.rfft(frames * hann_window(), axis=-1)  # [n_frames, N_FFT//2+1]
    power = spectrum.real**2 + spectrum.imag**2
    return mel_filters().T @ power.T  # [N_MELS, n_frames]


def feature_length_to_tokens(n_frames: int) -> int:
    """Thinker audio tokens for `n_frames` mel frames: conv stride 2, then avg-pool stride 2."""
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def prepare_audio(source: AudioSource,
                  sampling_rate: Optional[float] = None) -> Tuple[np.ndarray, int]:
    """Load `source` (see `load_audio`) → (log-mel [N_MELS, n_frames], Thinker token count)."""
    audio = load_audio(source, sampling_rate)
    n_tokens = feature_length_to_tokens(math.ceil(len(audio) / HOP_LENGTH))
    if n_tokens < 1:
        raise AudioError(f"{_describe(source)} lasts {len(audio) / INPUT_SAMPLE_RATE * 1000:.1f} ms, "
                         f"too short for one audio token; pass at least {MIN_SAMPLES} samples "
                         "at 16 kHz (about 20 ms)")
    return log_mel(audio), n_tokens
