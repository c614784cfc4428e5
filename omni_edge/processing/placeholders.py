"""Expand the chat template's single <|AUDIO|>, <|IMAGE|> and <|VIDEO|> tokens to their sizes.

This is what transformers' `Qwen2_5OmniProcessor` does to the rendered prompt: an audio clip
becomes one <|AUDIO|> per 40 ms token, an image or video one <|IMAGE|> / <|VIDEO|> per merged
patch. A video that uses its own audio track becomes

    <|audio_bos|> [video tokens of chunk j, audio tokens of chunk j] per 2 s chunk <|audio_eos|>

inside the template's <|vision_bos|> … <|vision_eos|>. The processor computes the video's chunk
times in float64 without truncation (the model's positions use float32, truncated); this module
follows the processor so the token layout is the one the model was fed in training.
"""

from typing import List, Optional, Sequence

import numpy as np

from .audio import feature_length_to_tokens
from .rope_index import Grid, MediaQueue, merged_grid, spatial_merge_size, time_chunks


def grid_tokens(grid: Grid, merge: int) -> int:
    """Placeholder tokens of one image or video: merged patches, t·(h/merge)·(w/merge)."""
    t, h, w = merged_grid(grid, merge)
    return t * h * w


def audio_in_video_tokens(cfg, grid: Grid, seconds_per_grid: float, n_audio: int) -> List[int]:
    """What replaces <|VIDEO|> for a video that uses its audio track (`n_audio` tokens)."""
    t, h, w = merged_grid(grid, spatial_merge_size(cfg))
    per_second = cfg.position_id_per_seconds
    # float64 as the processor computes it: frame index x seconds per grid x positions/s
    video_times = np.repeat(np.arange(t), h * w) * float(seconds_per_grid) * per_second
    per_chunk = int(per_second * cfg.seconds_per_chunk)
    video_chunks = time_chunks(video_times, per_chunk)
    audio_chunks = time_chunks(np.arange(n_audio), per_chunk)
    out = [cfg.audio_start_token_id]
    for j in range(max(len(video_chunks), len(audio_chunks))):
        if j < len(video_chunks):
            out += [cfg.video_token_index] * (video_chunks[j][1] - video_chunks[j][0])
        if j < len(audio_chunks):
            out += [cfg.audio_token_index] * (audio_chunks[j][1] - audio_chunks[j][0])
    out.append(cfg.audio_end_token_id)
    return out


def expand_placeholders(
    input_ids: Sequence[int],
    cfg,
    audio_lengths: Sequence[int] = (),
    image_grids: Sequence[Grid] = (),
    video_grids: Sequence[Grid] = (),
    video_seconds_per_grid: Sequence[float] = (),
    video_uses_audio: Optional[Sequence[bool]] = None,
) -> List[int]:
    """The prompt ids with every placeholder expanded (`cfg` is the ThinkerConfig).

    `input_ids` holds one <|AUDIO|> / <|IMAGE|> / <|VIDEO|> per medium, as the chat template
    renders them. Each list is in prompt order: `audio_lengths` the mel frame count of every
    audio stream, including (at the video's place) the track of each video that uses its
    audio; `image_grids` / `video_grids` the (t, h, w) patch grids; `video_seconds_per_grid`
    per video (temporal_patch_size / fps); `video_uses_audio` per video (default: none do).
    The same arguments give `rope_index` its positions."""
    merge = spatial_merge_size(cfg)
    audio = MediaQueue("audio stream", "audio_lengths", audio_lengths)
    images = MediaQueue("image", "image_grids", image_grids)
    videos = MediaQueue("video", "video_grids", video_grids)
    seconds = MediaQueue("video", "video_seconds_per_grid", video_seconds_per_grid)
    if video_uses_audio is None:
        video_uses_audio = [False] * len(video_grids)
    uses_audio = MediaQueue("video", "video_uses_audio", video_uses_audio)
    out: List[int] = []
    for tok in map(int, input_ids):
        if tok == cfg.audio_token_index:
            out += [tok] * feature_length_to_tokens(int(audio.take()))
        elif tok == cfg.image_token_index:
            out += [tok] * grid_tokens(images.take(), merge)
        elif tok == cfg.video_token_index:
            grid, per_grid = videos.take(), seconds.take()
            if uses_audio.take():
                n_audio = feature_length_to_tokens(int(audio.take()))
                out += audio_in_video_tokens(cfg, grid, per_grid, n_audio)
            else:
                out += [tok] * grid_tokens(grid, merge)
        else:
            out.append(tok)
    for media in (audio, images, videos, seconds, uses_audio):
        media.check_all_used()
    return out
