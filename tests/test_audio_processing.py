"""Audio input: loading, resampling and log-mel parity against the transformers reference.

The reference pipeline is qwen-omni-utils' `librosa.load(path, sr=16000)` (soundfile read, channel
mean, soxr HQ resample padded to ceil(n * ratio)) followed by `WhisperFeatureExtractor` with the
Qwen2.5-Omni parameters, called as `Qwen2_5OmniProcessor` calls it.
"""

import io
import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from omni_edge.processing.audio import (
    MIN_SAMPLES, N_SAMPLES, INPUT_SAMPLE_RATE, AudioError, feature_length_to_tokens, load_audio, log_mel,
    mel_filters, prepare_audio)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def extractor():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    return transformers.WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=300,
        padding_value=0.0, dither=0.0, return_attention_mask=True)


def reference_features(extractor, audio):
    """The valid frames of the reference features and their count (feature_attention_mask.sum())."""
    out = extractor(audio, sampling_rate=16000, padding="max_length", truncation=True,
                    return_attention_mask=True, return_tensors="np")
    n_valid = int(out["attention_mask"].sum())
    return out["input_features"][0][:, :n_valid], n_valid


def reference_load(path):
    """librosa.load(path, sr=16000), spelled out: float32 read, to_mono, resample(fix=True)."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate == 16000:
        return mono
    out = soxr.resample(mono, rate, 16000, quality="HQ")
    n_out = math.ceil(len(mono) * 16000 / rate)
    return np.concatenate([out, np.zeros(n_out, np.float32)])[:n_out]


def assert_parity(extractor, audio, ours=None):
    ref, n_valid = reference_features(extractor, audio)
    ours = log_mel(audio) if ours is None else ours
    assert ours.shape == (128, n_valid) and ours.dtype == np.float32
    err = np.abs(ours - ref).max()
    assert err <= TOLERANCE, err
    return ref


def chirp(seconds, rate=INPUT_SAMPLE_RATE, amplitude=0.3, seed=0):
    t = np.arange(int(round(seconds * rate))) / rate
    sweep = np.sin(2 * np.pi * (100 + 3500 * t / max(seconds, 1e-3)) * t)
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (amplitude * sweep + 0.02 * amplitude * noise).astype(np.float32)


def test_mel_filters_match_reference(extractor):
    np.testing.assert_allclose(mel_filters(), extractor.mel_filters, atol=1e-12)


@pytest.mark.parametrize("seconds, amplitude", [(0.5, 0.9), (7.3, 0.05), (30.0, 0.3), (4.0, 0.2)])
def test_log_mel_parity(extractor, seconds, amplitude):
    audio = chirp(seconds, amplitude=amplitude, seed=int(seconds * 10))
    if seconds == 7.3:
        audio[-INPUT_SAMPLE_RATE:] *= 1e-4  # a near-silent tail, so the max - 8 clamp bites
        audio[INPUT_SAMPLE_RATE: INPUT_SAMPLE_RATE + 40] = 1.0  # loud transient sets the max
    ref = assert_parity(extractor, audio)
    if seconds == 7.3:
        assert np.isclose(ref, ref.max() - 2.0).any()  # clamped values: (max - 8 + 4) / 4


def test_clamp_counts_frames_past_the_clip(extractor):
    # The loudest frame is the one centred just after the clip's end, outside the valid frames.
    audio = chirp(0.5, amplitude=1e-3)
    audio[-20:] = 1.0
    assert_parity(extractor, audio)


def test_matches_float64_reference_exactly(extractor):
    # The ≤ 1e-4 gaps above are the reference's float32 STFT; in float64 the pipelines agree.
    torch = pytest.importorskip("torch")
    audio = chirp(2.0, amplitude=1e-3)
    audio[-20:] = 1.0
    padded = np.zeros(N_SAMPLES)
    padded[: len(audio)] = audio
    window = torch.hann_window(400, dtype=torch.float64)
    stft = torch.stft(torch.from_numpy(padded), 400, 160, window=window, return_complex=True)
    mel = torch.from_numpy(extractor.mel_filters).T @ stft[:, :-1].abs() ** 2
    ref = torch.clamp(mel, min=1e-10).log10()
    ref = ((torch.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0).numpy()[:, :200]
    np.testing.assert_allclose(log_mel(audio), ref, atol=1e-6)


@pytest.mark.parametrize("n_samples", [1, 150, 399, 401, N_SAMPLES - 300, N_SAMPLES])
def test_log_mel_edge_lengths(extractor, n_samples):
    audio = np.random.default_rng(n_samples).uniform(-0.5, 0.5, n_samples).astype(np.float32)
    assert_parity(extractor, audio)


@pytest.mark.parametrize("rate, channels, subtype", [
    (8000, 1, "PCM_16"), (44100, 2, "PCM_16"), (48000, 1, "FLOAT"), (48000, 2, "FLOAT"),
    (44100, 1, "FLOAT"), (8000, 2, "PCM_24")])
def test_resampled_wav_parity(extractor, tmp_path, rate, channels, subtype):
    path = tmp_path / f"clip_{rate}_{channels}.wav"
    left = chirp(1.3, rate, 0.4)
    data = np.stack([left, np.roll(left, 37) * 0.5][:channels], axis=1)
    sf.write(path, data, rate, subtype=subtype)
    audio = load_audio(path)
    np.testing.assert_allclose(audio, reference_load(path), atol=1e-6)
    assert_parity(extractor, reference_load(path), log_mel(audio))


@pytest.mark.parametrize("fmt, subtype, suffix", [
    ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_compressed_formats(extractor, tmp_path, fmt, subtype, suffix):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}")
    path = tmp_path / f"clip.{suffix}"
    sf.write(path, np.stack([chirp(2.1, 44100), chirp(2.1, 44100, seed=1)], 1), 44100,
             format=fmt, subtype=subtype)
    audio = load_audio(str(path))
    assert_parity(extractor, reference_load(path), log_mel(audio))


def test_espeak_speech(extractor, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not on PATH (apt-get install espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog."],
                   check=True, capture_output=True)
    audio = load_audio(path)
    assert sf.info(path).samplerate != INPUT_SAMPLE_RATE  # it really went through the resampler
    features = assert_parity(extractor, reference_load(path), log_mel(audio))
    assert features.shape[1] > 100


def test_bytes_and_arrays_match_the_file(tmp_path):
    path = tmp_path / "stereo.wav"
    pcm = (chirp(0.8, 22050)[:, None] * [1.0, 0.25] * 32767).astype(np.int16)  # [samples, channels]
    sf.write(path, pcm, 22050, subtype="PCM_16")
    from_file = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), from_file)
    np.testing.assert_array_equal(load_audio(memoryview(bytearray(path.read_bytes()))), from_file)
    np.testing.assert_array_equal(load_audio(pcm, 22050), from_file)  # int16 scaled by 1/32768
    np.testing.assert_array_equal(load_audio(pcm.T.copy(), 22050), from_file)  # [channels, samples]
    floats = sf.read(path, dtype="float32")[0]
    np.testing.assert_array_equal(load_audio(floats, 22050), from_file)


def test_array_defaults_to_16k_and_int16_scaling():
    pcm = np.array([0, 16384, -32768, 32767] * 100, dtype=np.int16)
    audio = load_audio(pcm)
    assert audio.dtype == np.float32 and audio.shape == (400,)
    np.testing.assert_array_equal(audio[:4], [0.0, 0.5, -1.0, 32767 / 32768])


def test_prepare_audio_tokens():
    features, n_tokens = prepare_audio(chirp(4.0))
    assert features.shape == (128, 400)
    assert n_tokens == feature_length_to_tokens(400) == 100  # 25 tokens per second
    # 1–2 frames give no token at all (conv stride 2, then a 2-wide avg-pool)
    assert [feature_length_to_tokens(n) for n in (1, 2, 3, 5, 7, 8, 100)] == [0, 0, 1, 1, 2, 2, 25]
    assert prepare_audio(np.ones(MIN_SAMPLES, np.float32) * 0.1)[1] == 1
    with pytest.raises(AudioError, match="too short for one audio token"):
        prepare_audio(np.ones(MIN_SAMPLES - 1, np.float32) * 0.1)


def test_silence_is_valid():
    features = log_mel(load_audio(np.zeros(8000, np.float32)))
    assert features.shape == (128, 50) and np.isfinite(features).all()
    np.testing.assert_array_equal(features, -1.5)  # log10(1e-10) = -10 → (-10 + 4) / 4


def test_long_clip_warns_and_truncates():
    with pytest.warns(UserWarning, match=r"<array shape \(4816000,\).*301\.0 s.*truncated"):
        audio = load_audio(np.zeros(301 * INPUT_SAMPLE_RATE, np.float32))
    assert audio.shape == (N_SAMPLES,)


def _wav_bytes(samples, rate=16000):
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)
    text = tmp_path / "notes.m4a"
    text.write_text("not audio at all " * 20)
    with pytest.raises(AudioError, match=r"notes\.m4a.*ffmpeg"):
        load_audio(text)
    flac = io.BytesIO()
    sf.write(flac, chirp(1.0), 16000, format="FLAC")
    truncated = flac.getvalue()[: len(flac.getvalue()) // 2]
    with pytest.raises(AudioError, match=rf"<bytes, {len(truncated)} bytes>.*could not be decoded"):
        load_audio(truncated)
    with pytest.raises(AudioError, match="<bytes, 20 bytes>"):
        load_audio(_wav_bytes(chirp(0.1))[:20])
    with pytest.raises(AudioError, match="no samples"):
        load_audio(_wav_bytes(np.zeros(0, np.float32)))
    with pytest.raises(AudioError, match="is 16000 Hz but sampling_rate=8000"):
        load_audio(_wav_bytes(chirp(0.1)), 8000)


@pytest.mark.parametrize("source, rate, message", [
    (np.zeros(0, np.float32), None, r"<array shape \(0,\).*no samples"),
    (np.array([0.0, np.nan, 0.1], np.float32), None, "NaN or inf"),
    (np.array([0.0, np.inf], np.float64), None, "NaN or inf"),
    (np.zeros((2, 3, 4), np.float32), None, r"<array shape \(2, 3, 4\).*1-D mono or 2-D"),
    (np.zeros((100, 100), np.float32), None, "neither axis looks like channels"),
    (np.zeros(10, np.uint8), None, "float or signed integer"),
    (np.zeros(10, np.complex64), None, "float or signed integer"),
    (np.zeros(10, np.float32), 0, "sampling_rate must be positive"),
    (np.zeros(10, np.float32), -16000, "sampling_rate must be positive"),
    ([0.0, 0.1], None, "type list"),
])
def test_bad_arrays(source, rate, message):
    with pytest.raises(AudioError, match=message):
        load_audio(source, rate)


@pytest.mark.parametrize("audio", [np.zeros((2, 400), np.float32), np.zeros(0, np.float32),
                                   np.zeros(400, np.int16)])
def test_log_mel_rejects_non_clips(audio):
    with pytest.raises(AudioError, match="log_mel needs a non-empty 1-D float clip"):
        log_mel(audio)
