"""TMRoPE position ids for a prompt: transformers' `get_rope_index`, as integers.

Text and audio tokens advance one position per token on all three axes (an audio token is
40 ms, i.e. one position at 25 positions per second). Image and video tokens get
(time, row, column) positions from their grid. A video that uses its own audio track holds
2-second chunks of video and audio tokens interleaved; both streams then share one time axis,
and its two opening tokens (<|vision_bos|><|audio_bos|>) share one position, as do its two
closing tokens. Each stretch starts one past the largest position of the stretch before it.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .audio import feature_length_to_tokens

Grid = Sequence[int]  # (t, h, w) in patches, before the spatial merge
IMAGE_SECONDS_PER_GRID = 1.0  # an image's time steps are spaced as a 1 s video's
# What the Talker's positions need but our TalkerConfig doesn't read (the published values).
DEFAULT_SPATIAL_MERGE_SIZE = 2
DEFAULT_VISION_END_TOKEN_ID = 151653


class PromptLayoutError(ValueError):
    """Token ids and media descriptions that don't fit together."""


def time_chunks(times: Sequence[float], per_chunk: int) -> List[Tuple[int, int]]:
    """Split ascending time values into [start, end) index ranges, one per `per_chunk` span.

    A new chunk opens at the first value reaching the next multiple of `per_chunk`, and at
    most one opens per value: when values jump several spans at once the following values
    open the skipped chunks one by one. That is the reference's rule, and both the prompt
    layout and the position ids depend on it."""
    bounds, start, k = [], 0, 1
    for i, value in enumerate(times):
        if value >= k * per_chunk:
            bounds.append((start, i))
            start, k = i, k + 1
    bounds.append((start, len(times)))
    return bounds


def model_frame_times(n_frames: int, seconds_per_grid: float, per_second: float) -> np.ndarray:
    """Time index of each frame group as the model computes it: float32 products, truncated."""
    frames = np.arange(n_frames, dtype=np.float32)
    return (frames * np.float32(seconds_per_grid) * np.float32(per_second)).astype(np.int64)


def spatial_merge_size(cfg) -> int:
    """The vision merge size of a ThinkerConfig (vision_config) or a TalkerConfig."""
    vision = getattr(cfg, "vision_config", None)
    if vision is not None:
        return vision.spatial_merge_size
    return getattr(cfg, "spatial_merge_size", DEFAULT_SPATIAL_MERGE_SIZE)


def merged_grid(grid: Grid, merge: int) -> Tuple[int, int, int]:
    t, h, w = (int(x) for x in grid)
    return t, h // merge, w // merge


def vision_positions(start: int, times: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """[3, len(times)*grid_h*grid_w] (time, row, column) + start, time-major then row, column."""
    per_frame = grid_h * grid_w
    t = np.repeat(times, per_frame)
    h = np.tile(np.repeat(np.arange(grid_h), grid_w), len(times))
    w = np.tile(np.arange(grid_w), len(times) * grid_h)
    return np.stack([t, h, w]).astype(np.int64) + start


class _Positions:
    """Position segments in prompt order; `next` is one past the last segment's maximum."""

    def __init__(self):
        self.segments: List[np.ndarray] = []
        self.next = 0

    def add(self, segment: np.ndarray):
        self.segments.append(segment)
        self.next = int(segment.max()) + 1

    def text(self, n: int):
        if n:
            self.add(np.broadcast_to(np.arange(n, dtype=np.int64) + self.next, (3, n)))

    def shared(self, n: int):
        self.add(np.full((3, n), self.next, dtype=np.int64))


class MediaQueue:
    """One argument's per-medium entries, handed out in prompt order."""

    def __init__(self, what: str, argument: str, items: Optional[Sequence] = ()):
        self.what, self.argument, self.used = what, argument, 0
        self.items = None if items is None else list(items)

    def take(self):
        if self.used >= len(self.items):
            raise PromptLayoutError(
                f"the prompt holds more {self.what}s than the {len(self.items)} entries of "
                f"{self.argument}; pass one entry per {self.what} in prompt order"
            )
        self.used += 1
        return self.items[self.used - 1]

    def check_all_used(self):
        if self.items is not None and self.used != len(self.items):
            raise PromptLayoutError(
                f"{self.argument} has {len(self.items)} entries but the prompt holds {self.used} "
                f"{self.what}(s); pass exactly one entry per {self.what} in prompt order"
            )


def _run_length(ids: np.ndarray, i: int, token: int) -> int:
    j = i
    while j < len(ids) and ids[j] == token:
        j += 1
    return j - i


class _Walker:
    """Walks the token ids once, appending each stretch's positions."""

    def __init__(self, ids, cfg, audio_lengths, image_grids, video_grids, seconds_per_grid):
        self.ids, self.cfg = ids, cfg
        self.merge = spatial_merge_size(cfg)
        self.per_second = cfg.position_id_per_seconds
        self.audio = MediaQueue("audio stream", "audio_lengths", audio_lengths)
        self.images = MediaQueue("image", "image_grids", image_grids or ())
        self.videos = MediaQueue("video", "video_grids", video_grids or ())
        self.seconds = MediaQueue("video", "video_seconds_per_grid", seconds_per_grid or ())
        self.pos = _Positions()

    def check_run(self, i: int, token: int, expected: int, what: str):
        found = _run_length(self.ids, i, token)
        if found != expected:
            raise PromptLayoutError(
                f"{what} has {found} placeholder tokens at token {i} but its size needs "
                f"{expected}; expand the prompt with omni_edge.processing.placeholders."
                "expand_placeholders using the same media descriptions"
            )

    def audio_tokens(self, found: int) -> int:
        """Token count of the next audio stream, checked against its `found` tokens."""
        if self.audio.items is None:  # counts come from the prompt alone
            self.audio.used += 1
            return found
        frames = int(self.audio.take())
        n = feature_length_to_tokens(frames)
        if n != found:
            raise PromptLayoutError(
                f"audio stream {self.audio.used - 1} has {found} <|AUDIO|> tokens in the prompt "
                f"but its {frames} mel frames give {n}; pass audio_lengths in prompt order "
                "(a video's own audio track at the video's place)"
            )
        return n

    def vision(self, i: int, grid: Grid, seconds: float, what: str) -> int:
        t, gh, gw = merged_grid(grid, self.merge)
        self.check_run(i, self.ids[i], t * gh * gw, what)
        times = model_frame_times(t, seconds, self.per_second)
        self.pos.add(vision_positions(self.pos.next, times, gh, gw))
        return i + t * gh * gw

    def audio_in_video(self, i: int) -> int:
        """<|vision_bos|><|audio_bos|> chunks <|audio_eos|><|vision_eos|> starting at ids[i]."""
        cfg = self.cfg
        t, gh, gw = merged_grid(self.videos.take(), self.merge)
        seconds = float(self.seconds.take())
        body = end = i + 2
        inside = (cfg.video_token_index, cfg.audio_token_index)
        while end < len(self.ids) and self.ids[end] in inside:
            end += 1
        n_video = int(np.sum(self.ids[body:end] == cfg.video_token_index))
        if n_video != t * gh * gw:
            raise PromptLayoutError(
                f"video {self.videos.used - 1} has {n_video} <|VIDEO|> tokens in the prompt but "
                f"its grid needs {t * gh * gw}; expand the prompt with the same video descriptions"
            )
        n_audio = self.audio_tokens(end - body - n_video)
        closing = [int(x) for x in self.ids[end:end + 2]]
        vision_end = getattr(cfg, "vision_end_token_id", DEFAULT_VISION_END_TOKEN_ID)
        if closing != [cfg.audio_end_token_id, vision_end]:
            raise PromptLayoutError(
                f"video {self.videos.used - 1} with its audio must end in "
                f"<|audio_eos|><|vision_eos|> at token {end}"
            )
        self.pos.shared(2)
        start = self.pos.next
        audio = np.broadcast_to(np.arange(n_audio, dtype=np.int64) + start, (3, n_audio))
        video = vision_positions(start, model_frame_times(t, seconds, self.per_second), gh, gw)
        per_chunk = int(self.per_second * cfg.seconds_per_chunk)
        video_chunks = time_chunks(video[0] - start, per_chunk)
        audio_chunks = time_chunks(np.arange(n_audio), per_chunk)
        for j in range(max(len(video_chunks), len(audio_chunks))):
            for chunks, stream in ((video_chunks, video), (audio_chunks, audio)):
                if j < len(chunks):
                    self.pos.add(stream[:, chunks[j][0]:chunks[j][1]])
        self.pos.shared(2)
        return end + 2

    def step(self, i: int) -> int:
        """Positions of the medium starting at ids[i]; returns the index after it."""
        cfg, tok = self.cfg, self.ids[i]
        if tok == cfg.vision_start_token_id:
            return self.audio_in_video(i)
        if tok == cfg.image_token_index:
            grid = self.images.take()
            return self.vision(i, grid, IMAGE_SECONDS_PER_GRID, f"image {self.images.used - 1}")
        if tok == cfg.video_token_index:
            grid, seconds = self.videos.take(), float(self.seconds.take())
            return self.vision(i, grid, seconds, f"video {self.videos.used - 1}")
        n = _run_length(self.ids, i, tok)
        self.pos.text(self.audio_tokens(n))
        return i + n

    def run(self) -> np.ndarray:
        ids, cfg = self.ids, self.cfg
        media = (cfg.image_token_index, cfg.video_token_index, cfg.audio_token_index)
        i, text_from = 0, 0
        while i < len(ids):
            opens_av = (ids[i] == cfg.vision_start_token_id and i + 1 < len(ids)
                        and ids[i + 1] == cfg.audio_start_token_id)
            if ids[i] in media or opens_av:
                self.pos.text(i - text_from)
                i = text_from = self.step(i)
            else:
                i += 1
        self.pos.text(len(ids) - text_from)
        for queue in (self.audio, self.images, self.videos, self.seconds):
            queue.check_all_used()
        if not self.pos.segments:
            return np.zeros((3, 0), dtype=np.int64)
        return np.concatenate(self.pos.segments, axis=1)


def rope_index(
    input_ids: Sequence[int],
    cfg,
    audio_lengths: Optional[Sequence[int]] = None,
    image_grids: Optional[Sequence[Grid]] = None,
    video_grids: Optional[Sequence[Grid]] = None,
    video_seconds_per_grid: Optional[Sequence[float]] = None,
) -> Tuple[np.ndarray, int]:
    """Position ids [3, L] (int64) and the rope delta (next position minus sequence length).

    `input_ids` is an expanded prompt (see placeholders.expand_placeholders); `cfg` the
    ThinkerConfig, or the TalkerConfig for the Talker's own input ids. Each media list is in prompt order: `audio_lengths` holds the mel frame
    count of every audio stream, the audio track of a video that uses it included (at the
    video's place); when left out the token counts in the prompt are taken as they are.
    `image_grids` / `video_grids` are (t, h, w) patch grids and `video_seconds_per_grid` the
    seconds each video grid step spans (temporal_patch_size / fps). A video uses its audio
    when <|audio_bos|> follows its <|vision_bos|>."""
    ids = np.asarray(list(input_ids), dtype=np.int64)
    positions = _Walker(ids, cfg, audio_lengths, image_grids, video_grids,
                        video_seconds_per_grid).run()
    assert positions.shape == (3, len(ids)), (positions.shape, len(ids))
    delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return positions, delta
