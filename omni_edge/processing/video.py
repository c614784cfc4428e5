"""Video input for Qwen2.5-Omni: decode → sample frames → resize → normalize → patches, and
the audio track for `use_audio_in_video`.

Reproduces qwen-omni-utils' `fetch_video` (decord/torchcodec frame sampling, per-frame pixel
budget, torchvision bicubic antialiased resize) followed by the Omni processor's
`Qwen2VLVideoProcessor`, with PyAV and numpy only.  `extract_audio` replaces its ffmpeg + librosa
audio path (16 kHz mono float32, soxr HQ resampling).
"""

import math
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .audio import load_audio
from .image import (CLIP_MEAN, CLIP_STD, FACTOR, IMAGE_OPTIONS, MERGE_SIZE, RESCALE_FACTOR,
                    TEMPORAL_PATCH_SIZE, VisionError, VisionInput, describe, load_image, local_path,
                    patchify, smart_resize)

FPS = 2.0  # frames sampled per second of video
FRAME_FACTOR = 2  # sampled frame counts are even (two frames per temporal patch)
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR  # 100_352 per frame
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # 602_112 per frame
VIDEO_TOTAL_PIXELS = 128000 * FACTOR * FACTOR * 0.9  # whole-video budget (90% of a 128k context)
MIN_PIXELS_SLACK = 1.05  # the per-frame cap never drops below 1.05 x min_pixels
FRAME_LIST_FPS = 2.0  # assumed rate of a list of frames
BICUBIC_A = -0.5  # Keys' cubic, as torch uses with antialias=True
VIDEO_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels",
                 "total_pixels", "video_start", "video_end", "resized_height", "resized_width",
                 "sample_fps")
REENCODE = "re-encode it, e.g. `ffmpeg -i in.mkv -c:v libx264 -c:a aac out.mp4`"
FILE_ONLY_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "video_start", "video_end")

VideoSource = Union[str, Path, Sequence]


def process_video(source: VideoSource, **options) -> VisionInput:
    """Pixel values, grid and seconds per temporal patch of one video, equal to
    `Qwen2_5OmniProcessor(videos=...)` applied to qwen-omni-utils' `fetch_video` output with the
    sampling fps it returns.  `options` are those of `load_video` (VIDEO_OPTIONS)."""
    frames, sample_fps = load_video(source, **options)
    height, width = frames.shape[-2:]
    # the processor's own smart_resize: a no-op unless min_pixels / resized_* fell outside it
    name = describe(source, "video")
    size = smart_resize(height, width, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, name)
    if size != (height, width):
        frames = np.stack([resize_frame(f, size, quantize=False) for f in frames])
    pixel_values, grid = patchify(_normalize(frames))
    return VisionInput(pixel_values, grid, TEMPORAL_PATCH_SIZE / sample_fps)


def _normalize(frames: np.ndarray) -> np.ndarray:
    """In place: the video processor folds the 1/255 rescale into the mean and std."""
    mean = np.array(CLIP_MEAN, np.float32) * np.float32(1 / RESCALE_FACTOR)
    std = np.array(CLIP_STD, np.float32) * np.float32(1 / RESCALE_FACTOR)
    frames -= mean[:, None, None]
    frames /= std[:, None, None]
    return frames


def load_video(source: VideoSource, **options) -> Tuple[np.ndarray, float]:
    """Sampled, resized frames float32 [T, 3, H, W] (integers 0..255) and the sampling rate in
    frames per second, like qwen-omni-utils' `fetch_video(..., return_video_sample_fps=True)`.

    `source` is a video file path (mp4, mov, mkv, webm, ... anything FFmpeg reads; `file://`
    accepted, http(s) refused) or a list of frames (each an image source as `load_image` takes).
    Options, all optional, as qwen-omni-utils names them:
      fps (2.0) or nframes; min_frames (4), max_frames (768); video_start / video_end (seconds);
      min_pixels, max_pixels, total_pixels (per-frame and whole-video pixel budgets);
      resized_height + resized_width (a fixed frame size); sample_fps (frame lists only, 2.0).
    """
    name = describe(source, "video")
    unknown = set(options) - set(VIDEO_OPTIONS)
    if unknown:
        raise VisionError(f"{name}: unknown option(s) {sorted(unknown)}; use {VIDEO_OPTIONS}")
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(source, (list, tuple)):
        frames, sample_fps = _frame_list(source, options, name)
    elif isinstance(source, (str, Path)):
        if "sample_fps" in options:
            raise VisionError(f"{name}: sample_fps applies to frame lists; use fps for files")
        frames, sample_fps = _decode_video(local_path(source, name), options, name)
    else:
        raise VisionError(f"{name}: pass a video file path or a list of frames")
    size = _frame_size(frames.shape[1:3], len(frames), options, name)
    out = np.empty((len(frames), 3) + size, np.float32)
    for i, frame in enumerate(frames):
        out[i] = resize_frame(frame.transpose(2, 0, 1), size)
    return out, sample_fps


def _frame_size(hw: Tuple[int, int], nframes: int, options: Dict, name: str) -> Tuple[int, int]:
    if "resized_height" in options or "resized_width" in options:
        height, width = (_positive_int(options.get(k), k, name)
                         for k in ("resized_height", "resized_width"))
        return smart_resize(height, width, name=name)
    min_pixels = _number(options, "min_pixels", VIDEO_MIN_PIXELS, name)
    total_pixels = _number(options, "total_pixels", VIDEO_TOTAL_PIXELS, name)
    # each frame gets an even share of the whole-video budget, within the per-frame limits
    budget = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR),
                 int(min_pixels * MIN_PIXELS_SLACK))
    max_pixels = min(_number(options, "max_pixels", budget, name), budget)
    return smart_resize(*hw, min_pixels, max_pixels, name)


def sample_frame_indices(total_frames: int, video_fps: float, options: Optional[Dict] = None,
                         name: str = "video") -> Tuple[np.ndarray, float]:
    """Indices of the frames to keep and the rate they are sampled at (frames per second), by
    qwen-omni-utils' rules: `video_start`/`video_end` pick a frame range, `smart_nframes` an even
    frame count in it, spread evenly (linspace, rounded half to even)."""
    options = options or {}
    first, last = _frame_range(total_frames, video_fps, options, name)
    count = last - first + 1
    nframes = _smart_nframes(count, video_fps, options, name)
    indices = np.round(np.linspace(first, last, nframes)).astype(np.int64)
    return indices, nframes / max(count, 1e-6) * video_fps


def _frame_range(total: int, fps: float, options: Dict, name: str) -> Tuple[int, int]:
    start, end = (_seconds(options.get(k), k, name) for k in ("video_start", "video_end"))
    if start is None and end is None:
        return 0, total - 1
    duration = total / fps
    first = math.ceil(max(0.0, min(start, duration)) * fps) if start is not None else 0
    last = total - 1
    if end is not None:
        last = min(math.floor(max(0.0, min(end, duration)) * fps), total - 1)
    if first >= last:
        raise VisionError(f"{name}: video_start={start} / video_end={end} select no frames of "
                          f"a {duration:.2f} s video ({total} frames at {fps:g} fps); widen the "
                          "range")
    return first, last


def _smart_nframes(total: int, video_fps: float, options: Dict, name: str) -> int:
    if "fps" in options and "nframes" in options:
        raise VisionError(f"{name}: pass fps or nframes, not both")
    if "nframes" in options:
        nframes = round(_number(options, "nframes", None, name) / FRAME_FACTOR) * FRAME_FACTOR
    else:
        fps = _number(options, "fps", FPS, name)
        min_frames = _ceil_even(_number(options, "min_frames", FPS_MIN_FRAMES, name))
        max_frames = _floor_even(_number(options, "max_frames", min(FPS_MAX_FRAMES, total), name))
        nframes = _floor_even(min(max(total / video_fps * fps, min_frames), max_frames, total))
    if not FRAME_FACTOR <= nframes <= total:
        raise VisionError(f"{name}: {nframes} frames would be sampled from {total}; a video needs "
                          f"at least {FRAME_FACTOR} frames (in the video_start..video_end range) "
                          "and nframes must not exceed them")
    return nframes


def _ceil_even(x: float) -> int:
    return math.ceil(x / FRAME_FACTOR) * FRAME_FACTOR


def _floor_even(x: float) -> int:
    return math.floor(x / FRAME_FACTOR) * FRAME_FACTOR


def _frame_list(frames: Sequence, options: Dict, name: str) -> Tuple[np.ndarray, float]:
    misplaced = sorted(set(options) & set(FILE_ONLY_OPTIONS))
    if misplaced:
        raise VisionError(f"{name}: {misplaced} apply to video files; a frame list is used whole "
                          "(pass sample_fps for its rate)")
    if not frames:
        raise VisionError(f"{name} is an empty frame list; pass at least one frame")
    image_options = {k: options[k] for k in IMAGE_OPTIONS if k in options}
    # qwen-omni-utils pre-resizes listed frames on a 56-pixel grid (it hands fetch_image the merge
    # factor as the patch size); the video resize below then sets the final size
    images = [np.asarray(load_image(frame, **image_options, factor=FACTOR * MERGE_SIZE))
              for frame in frames]
    if len({im.shape for im in images}) > 1:
        raise VisionError(f"{name}: frames resize to different sizes "
                          f"{sorted({im.shape[:2] for im in images})}; pass frames of one size")
    images += images[-1:] * (-len(images) % FRAME_FACTOR)
    sample_fps = _number(options, "sample_fps", FRAME_LIST_FPS, name)
    return np.stack(images), sample_fps


def _decode_video(path: Path, options: Dict, name: str) -> Tuple[np.ndarray, float]:
    av = _import_av()
    with _open(av, path, name) as container:
        if not container.streams.video:
            raise VisionError(f"{name} has no video stream; pass a video file (audio goes in an "
                              "audio part)")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VisionError(f"{name}: its video codec is not one FFmpeg decodes; {REENCODE}")
        video_fps = float(stream.average_rate or stream.guessed_rate or 0)
        total = stream.frames
    if video_fps <= 0:
        raise VisionError(f"{name}: the frame rate is unknown; remux it, e.g. "
                          "`ffmpeg -i in.webm -r 30 out.mp4`")
    if total <= 0:  # no frame count in the header (mkv, webm): count the packets
        total = _count_packets(av, path, name)
    indices, sample_fps = sample_frame_indices(total, video_fps, options, name)
    frames, decoded = _read_frames(av, path, indices, name)
    if len(frames) < len(set(indices.tolist())):  # the header promised more frames than exist
        if decoded < FRAME_FACTOR:
            raise VisionError(f"{name}: only {decoded} frame(s) could be decoded (corrupt or "
                              f"truncated file?); {REENCODE}")
        indices, sample_fps = sample_frame_indices(decoded, video_fps, options, name)
        frames, _ = _read_frames(av, path, indices, name)
    return np.stack([frames[i] for i in indices]), sample_fps


def _import_av():
    try:
        import av
    except ImportError as err:
        raise ImportError("video input needs PyAV: `pip install av`") from err
    return av


def _open(av, path: Path, name: str):
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise VisionError(f"{name} could not be opened ({err}); it is corrupt or not a media file "
                          "FFmpeg reads") from err


def _count_packets(av, path: Path, name: str) -> int:
    with _open(av, path, name) as container:
        try:
            return sum(1 for p in container.demux(container.streams.video[0]) if p.size)
        except av.error.FFmpegError as err:
            raise VisionError(f"{name} could not be read ({err}); re-encode it") from err


def _read_frames(av, path: Path, indices: np.ndarray,
                 name: str) -> Tuple[Dict[int, np.ndarray], int]:
    """The frames at `indices` (decode order = presentation order) as uint8 [H, W, 3], and how
    many frames were decoded."""
    wanted, frames, count = set(indices.tolist()), {}, 0
    with _open(av, path, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    frames[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if len(frames) == len(wanted):
                    break
        except av.error.FFmpegError as err:
            raise VisionError(f"{name}: the video stream could not be decoded ({err}); "
                              f"{REENCODE}") from err
    if count == 0:
        raise VisionError(f"{name}: no frame could be decoded (corrupt file?); {REENCODE}")
    return frames, count


def resize_frame(frame: np.ndarray, size: Tuple[int, int], quantize: bool = True) -> np.ndarray:
    """One frame [C, H, W] → float32 [C, h, w] by antialiased bicubic resampling, as
    torchvision's `resize(..., BICUBIC, antialias=True)` computes it (float32, width then
    height); `quantize` rounds to 0..255 as it does for uint8 input."""
    x = frame.astype(np.float32)
    height, width = size
    if x.shape[2] != width:
        x = _resample_axis(x, width, axis=2)
    if x.shape[1] != height:
        x = _resample_axis(x, height, axis=1)
    return np.round(np.clip(x, 0, 255)) if quantize else x


def _resample_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    index, weight, fused = _bicubic_taps(x.shape[axis], n_out)
    x = np.ascontiguousarray(np.moveaxis(x, axis, 0))  # gather whole rows along axis 0
    shape = (-1,) + (1,) * (x.ndim - 1)
    acc = x[index[:, 0]] * weight[:, 0].reshape(shape)
    for j in range(1, index.shape[1]):
        term, w = x[index[:, j]], weight[:, j].reshape(shape)
        # torch's compiled loop fuses multiply-add (one rounding) outside its 4-wide unrolled
        # blocks; doing the same makes frames bit-identical to torch's on x86
        if fused[:, j].all():
            acc = (acc.astype(np.float64) + term.astype(np.float64) * w).astype(np.float32)
        elif fused[:, j].any():
            exact = (acc.astype(np.float64) + term.astype(np.float64) * w).astype(np.float32)
            acc = np.where(fused[:, j].reshape(shape), exact, acc + term * w)
        else:
            acc = acc + term * w
    return np.moveaxis(acc, 0, axis)


@lru_cache(maxsize=64)
def _bicubic_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices, weights [n_out, K] and fused-step mask of the antialiased bicubic filter
    (PIL's support scaling), computed in float32 as torch computes them."""
    f32, f64 = np.float32, np.float64
    scale = f32(n_in) / f32(n_out)
    support = f32(2.0 * scale) if scale >= 1 else f32(2.0)
    inv_scale = f64(f32(1.0 / f64(scale))) if scale >= 1 else 1.0
    centers = (f64(scale) * (np.arange(n_out) + 0.5)).astype(f32)
    first = np.maximum(((centers - support).astype(f64) + 0.5).astype(np.int64), 0)
    n_taps = np.minimum(((centers + support).astype(f64) + 0.5).astype(np.int64), n_in) - first
    width = int(math.ceil(support)) * 2 + 1
    n_taps = np.clip(n_taps, 0, width)
    taps = np.arange(width)
    offsets = (first[:, None] + taps).astype(f32) - centers[:, None]
    weight = _keys_cubic(((offsets.astype(f64) + 0.5) * inv_scale).astype(f32))
    weight = np.where(taps < n_taps[:, None], weight, f32(0))
    total = np.zeros(n_out, f32)
    for j in range(width):
        total = total + weight[:, j]
    weight = np.where(total[:, None] != 0, weight / np.where(total == 0, 1, total)[:, None], weight)
    index = np.minimum(first[:, None] + taps, n_in - 1)
    used = int(n_taps.max())
    fused = taps[None, :used] > 4 * ((n_taps[:, None] - 1) // 4)
    return index[:, :used], weight[:, :used].astype(f32), fused


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel (a = -0.5) in float32, with the fused multiply-adds torch's build uses."""
    a, x = np.float32(BICUBIC_A), np.abs(x).astype(np.float32)

    def fma(p, q, r):  # p * q + r with one rounding
        return (p.astype(np.float64) * q + np.float64(r)).astype(np.float32)

    near = fma(fma(np.full_like(x, a + 2), x, -(a + 3)) * x, x, 1.0)
    far = fma(fma(fma(np.full_like(x, a), x, -5 * a), x, 8 * a), x, -4 * a)
    return np.where(x < 1, near, np.where(x < 2, far, np.float32(0))).astype(np.float32)


def extract_audio(source: Union[str, Path], video_start: Optional[float] = None,
                  video_end: Optional[float] = None) -> np.ndarray:
    """The audio track of a video as float32 mono 16 kHz samples (for `use_audio_in_video`), like
    qwen-omni-utils' `librosa.load(FFmpegAudioFile(path), sr=16000, offset=video_start,
    duration=video_end - video_start)`: channels averaged, soxr HQ resampling."""
    name = describe(source, "video")
    start = _seconds(video_start, "video_start", name) or 0.0
    end = _seconds(video_end, "video_end", name)
    path = local_path(source, name)
    av = _import_av()
    with _open(av, path, name) as container:
        if not container.streams.audio:
            raise VisionError(f"{name} has no audio track, so its sound cannot be used; pass "
                              "use_audio_in_video=False or add the audio as a separate part")
        stream = container.streams.audio[0]
        chunks, rate = _decode_audio(av, container, stream, name)
    samples = (np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32) if chunks
               else np.zeros(0, np.float32))
    first = int(round(rate * start))  # librosa's offset / duration, at the native rate
    last = None if end is None else first + int(round(rate * (end - start)))
    samples = samples[first:last]
    if samples.size == 0:
        raise VisionError(f"{name}: the audio track holds no samples in the selected range; check "
                          "video_start / video_end or pass use_audio_in_video=False")
    return load_audio(samples, sampling_rate=rate)


def _decode_audio(av, container, stream, name: str) -> Tuple[List[np.ndarray], int]:
    planar = av.AudioResampler(format="fltp")  # keeps the layout and rate
    chunks: List[np.ndarray] = []
    try:
        for frame in container.decode(stream):
            for out in planar.resample(frame):
                chunks.append(out.to_ndarray())  # [channels, samples]
        for out in planar.resample(None):
            chunks.append(out.to_ndarray())
    except av.error.FFmpegError as err:
        raise VisionError(f"{name}: the audio track could not be decoded ({err}); re-encode it, "
                          "e.g. `ffmpeg -i in -c:a aac out.mp4`") from err
    return chunks, stream.rate or stream.codec_context.sample_rate


def _number(options: Dict, key: str, default, name: str):
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise VisionError(f"{name}: {key} must be a positive number, got {value!r}")
    return value


def _seconds(value, key: str, name: str) -> Optional[float]:
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if value is not None and (not number or not value >= 0):
        raise VisionError(f"{name}: {key} must be a time in seconds (>= 0), got {value!r}")
    return value


def _positive_int(value, key: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise VisionError(f"{name}: {key} must be a positive integer (pass resized_height and "
                          f"resized_width together), got {value!r}")
    return int(value)
