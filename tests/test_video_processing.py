"""Video input against the reference pipeline: qwen-omni-utils' `fetch_video` (frame sampling,
pixel budget, torchvision resize) followed by transformers' `Qwen2VLVideoProcessor` with the Omni
processor's video size, and qwen-omni-utils' audio-from-video path (ffmpeg + librosa).

The clips are written here with PyAV (64x48, 3 s at 10 fps, with a 440 Hz tone)."""

import importlib.util
import logging
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from media import pattern, write_clip
from omni_edge.processing.image import CLIP_STD, VisionError
from omni_edge.processing.video import (extract_audio, load_video, process_video, resize_frame,
                                        sample_frame_indices)

pytest.importorskip("av")

# Qwen2_5OmniProcessor's videos_kwargs size
VIDEO_SIZE = {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}
CLIPS = {  # name: (video codec, audio codec, audio rate, channels)
    "clip.mp4": ("libx264", "aac", 44100, 1),
    "clip.webm": ("libvpx-vp9", "libopus", 48000, 1),
    "clip.mkv": ("mpeg4", "aac", 22050, 2),
    "clip.mov": ("mpeg4", "aac", 44100, 2),
}
AUDIO_TOLERANCE = 1e-4  # the reference decodes through 16-bit PCM (~3e-5 steps)
LEVEL = 1 / (255 * min(CLIP_STD))  # one 0..255 step, normalized


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    paths = {name: write_clip(root / name, video, audio, rate=rate, channels=channels)
             for name, (video, audio, rate, channels) in CLIPS.items()}
    paths["silent.mp4"] = write_clip(root / "silent.mp4", "libx264")
    return paths


@pytest.fixture(scope="module")
def qou():
    pytest.importorskip("torchvision")
    module = pytest.importorskip("qwen_omni_utils.v2_5.vision_process")
    logging.getLogger(module.__name__).setLevel(logging.ERROR)
    return module


@pytest.fixture(scope="module")
def video_processor():
    pytest.importorskip("torchvision")
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLVideoProcessor(size=VIDEO_SIZE)


def needs_file_reader():
    # qwen-omni-utils reads files with torchcodec or decord (its torchvision reader is gone)
    if not (importlib.util.find_spec("decord") or importlib.util.find_spec("torchcodec")):
        pytest.skip("qwen-omni-utils needs decord or torchcodec to read video files")


def reference(qou, video_processor, source, options):
    """qwen-omni-utils frames + sampling fps, then the processor's pixel values and grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (frames, meta), fps = qou.fetch_video({"video": source, **options},
                                              return_video_sample_fps=True,
                                              return_video_metadata=True)
        out = video_processor(videos=[frames], do_sample_frames=False, return_tensors="np")
    grid = tuple(int(v) for v in out["video_grid_thw"][0])
    return frames.numpy(), fps, meta, out["pixel_values_videos"], grid


def exact_build() -> bool:
    """torch's AVX2 / AVX-512 resize kernels are reproduced bit for bit; other builds (no fused
    multiply-add) round a rare pixel one step the other way."""
    torch = pytest.importorskip("torch")
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def assert_frames_equal(ours, expected):
    assert ours.shape == expected.shape
    diff = np.abs(ours - expected)
    if exact_build():
        assert diff.max() == 0
    else:
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-2


def assert_pixels_equal(ours, expected):
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    diff = np.abs(ours - expected)
    if exact_build():
        assert diff.max() <= 1e-6
    else:
        assert diff.max() <= 1.5 * LEVEL and (diff > 1e-4).mean() <= 1e-2


FILE_OPTIONS = [{}, {"fps": 4.0}, {"nframes": 6}, {"video_start": 0.5, "video_end": 2.2},
                {"min_pixels": 3136, "max_pixels": 28 * 28 * 16},
                {"resized_height": 112, "resized_width": 140},
                {"max_frames": 4, "total_pixels": 28 * 28 * 300}]


@pytest.mark.parametrize("name", sorted(CLIPS))
@pytest.mark.parametrize("options", FILE_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_file_matches_reference(clips, qou, video_processor, name, options):
    needs_file_reader()
    frames, fps, _, pixel_values, grid = reference(qou, video_processor, str(clips[name]), options)
    ours_frames, ours_fps = load_video(clips[name], **options)
    assert ours_fps == pytest.approx(fps, rel=1e-12)
    assert_frames_equal(ours_frames, frames)
    ours = process_video(clips[name], **options)
    assert ours.grid_thw == grid
    assert_pixels_equal(ours.pixel_values, pixel_values)
    assert ours.second_per_grid == pytest.approx(2 / fps)
    assert ours.num_tokens == np.prod(grid) // 4


def test_frame_indices_match_reference(clips, qou):
    needs_file_reader()
    for options in ({}, {"fps": 3.0}, {"nframes": 10}, {"video_start": 0.45, "video_end": 2.0}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, meta = qou.fetch_video({"video": str(clips["clip.mp4"]), **options},
                                      return_video_metadata=True)
        indices, _ = sample_frame_indices(30, 10.0, options)  # the clip: 3 s at 10 fps
        assert indices.tolist() == list(meta["frames_indices"])


@pytest.mark.parametrize("total, video_fps", [(30, 10.0), (301, 29.97), (7, 25.0), (2000, 24.0),
                                              (90, 30.0)])
def test_sampling_rules_match_reference(qou, total, video_fps):
    torch = pytest.importorskip("torch")
    seconds = total / video_fps
    for options in ({}, {"fps": 1.0}, {"fps": 6.0, "max_frames": 40}, {"nframes": 4},
                    {"min_frames": 8}, {"video_start": 0.2 * seconds, "video_end": 0.8 * seconds},
                    {"video_start": 0.1 * seconds}, {"video_end": 0.5 * seconds}):
        first, last, count = qou.calculate_video_frame_range(options, total, video_fps)
        nframes = qou.smart_nframes(options, count, video_fps)
        expected = torch.linspace(first, last, nframes).round().long().tolist()
        indices, sample_fps = sample_frame_indices(total, video_fps, options)
        assert indices.tolist() == expected, options
        assert sample_fps == pytest.approx(nframes / count * video_fps)


def test_frame_list_matches_reference(qou, video_processor):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (100, 130, 3), np.uint8)) for _ in range(5)]
    for options in ({}, {"sample_fps": 1.0}, {"min_pixels": 784 * 8, "max_pixels": 784 * 20}):
        ref_frames, fps, _, pixel_values, grid = reference(qou, video_processor, frames, options)
        ours_frames, ours_fps = load_video(frames, **options)
        assert ours_fps == fps
        assert_frames_equal(ours_frames, ref_frames)
        ours = process_video(frames, **options)
        assert ours.grid_thw == grid
        assert_pixels_equal(ours.pixel_values, pixel_values)


@pytest.mark.parametrize("source, target", [((48, 64), (308, 420)), ((360, 640), (308, 588)),
                                            ((1080, 1920), (476, 840)), ((100, 37), (56, 28))])
def test_resize_matches_torchvision(source, target):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchvision.transforms.functional")
    frame = np.random.default_rng(1).integers(0, 256, (3,) + source, np.uint8)
    expected = functional.resize(torch.from_numpy(frame), list(target), antialias=True,
                                 interpolation=functional.InterpolationMode.BICUBIC).numpy()
    assert_frames_equal(resize_frame(frame, target), expected)
    expected = torch.nn.functional.interpolate(torch.from_numpy(frame[None]).float(), size=target,
                                               mode="bicubic", antialias=True).numpy()[0]
    assert np.abs(resize_frame(frame, target, quantize=False) - expected).max() <= 1e-3


def test_decoded_frames_are_the_pattern(clips):
    # lossless-enough check that frames come back in order (the pattern moves every frame)
    frames, fps = load_video(clips["clip.mp4"], nframes=30, resized_height=48, resized_width=64)
    assert fps == 10.0 and frames.shape == (30, 3, 56, 56)
    first = resize_frame(pattern(0, 64, 48).transpose(2, 0, 1), (56, 56))
    errors = [np.abs(f - first).mean() for f in frames[:3]]
    assert errors[0] < 10 < min(errors[1:])


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.mov"])
def test_audio_matches_reference(clips, name):
    if shutil.which("ffmpeg") is None:
        pytest.skip("qwen-omni-utils reads video audio through the ffmpeg binary")
    audio_process = pytest.importorskip("qwen_omni_utils.v2_5.audio_process")
    for options in ({}, {"video_start": 0.5, "video_end": 1.7}):
        part = {"type": "video", "video": str(clips[name]), **options}
        expected = audio_process.process_audio_info([{"role": "user", "content": [part]}], True)[0]
        ours = extract_audio(clips[name], **options)
        assert ours.dtype == np.float32 and ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= AUDIO_TOLERANCE


def test_audio_is_the_tone(clips):
    audio = extract_audio(clips["clip.mkv"])  # stereo 22.05 kHz aac
    assert audio.ndim == 1 and abs(len(audio) - 48000) < 800  # 3 s at 16 kHz (+ codec padding)
    middle = audio[4000:44000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.fft.rfftfreq(len(middle), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=1)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_silent_video_audio_error(clips):
    assert process_video(clips["silent.mp4"]).grid_thw == (3, 20, 28)
    with pytest.raises(VisionError, match="silent.mp4.*no audio track.*use_audio_in_video=False"):
        extract_audio(clips["silent.mp4"])


def test_broken_files(clips, tmp_path):
    data = clips["clip.mp4"].read_bytes()
    cases = {"garbage.mp4": bytes(range(256)) * 20, "truncated.mp4": data[: len(data) // 10]}
    for filename, blob in cases.items():
        (tmp_path / filename).write_bytes(blob)
        for read in (process_video, extract_audio):
            with pytest.raises(VisionError, match=f"{filename}.*could not be opened"):
                read(tmp_path / filename)
    # an mkv whose codec id FFmpeg does not know
    mkv = write_clip(tmp_path / "h264.mkv", "libx264").read_bytes()
    assert mkv.count(b"V_MPEG4/ISO/AVC") == 1
    (tmp_path / "unknown.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))
    with pytest.raises(VisionError, match="unknown.mkv.*codec.*re-encode"):
        process_video(tmp_path / "unknown.mkv")
    with pytest.raises(FileNotFoundError, match="missing.mp4.*does not exist"):
        process_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4.*does not exist"):
        extract_audio(tmp_path / "missing.mp4")
    with pytest.raises(VisionError, match="not fetched"):
        process_video("http://example.com/clip.mp4")


def test_bad_options(clips):
    clip = clips["clip.mp4"]
    with pytest.raises(VisionError, match="select no frames.*widen"):
        process_video(clip, video_start=2.5, video_end=2.5)
    with pytest.raises(VisionError, match="40 frames would be sampled from 30"):
        process_video(clip, nframes=40)
    with pytest.raises(VisionError, match="fps or nframes, not both"):
        process_video(clip, fps=1.0, nframes=4)
    with pytest.raises(VisionError, match="unknown option.*'speed'"):
        process_video(clip, speed=2)
    with pytest.raises(VisionError, match="fps must be a positive number"):
        process_video(clip, fps=0)
    with pytest.raises(VisionError, match="sample_fps applies to frame lists"):
        process_video(clip, sample_fps=1.0)
    with pytest.raises(VisionError, match="apply to video files"):
        process_video([Image.new("RGB", (64, 64))], fps=2.0)
    with pytest.raises(VisionError, match="empty frame list"):
        process_video([])
    with pytest.raises(VisionError, match="different sizes"):
        process_video([Image.new("RGB", (64, 64)), Image.new("RGB", (300, 100))])
