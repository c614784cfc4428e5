"""TMRoPE position ids for a prompt: transformers' `get_rope_index`, as integers."""

from typing import List, Optional, Sequence, Tuple

import numpy as np


def rope_index(
    input_ids: Sequence[int],
    cfg,
    audio_lengths: Optional[List[int]] = None,
    image_grids: Optional[list] = None,
    video_grids: Optional[list] = None,
) -> Tuple[np.ndarray, int]:
    """Position ids [3, L] and the rope delta (next position minus sequence length).

    Text and audio advance one position per token on all three axes (audio tokens are
    already 40 ms apart), which is what the reference computes whenever no image or video
    grid is present; images and videos arrive with the vision issue."""
    if image_grids or video_grids:
        raise NotImplementedError("image and video positions are not implemented yet")
    length = len(input_ids)
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), (3, length))
    return positions, 0
