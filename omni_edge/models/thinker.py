"""The Thinker: the Qwen2.5 LLM that reads text, audio, images and video and writes the reply."""

from typing import Any, List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, RotatingKVCache

from ..config import ThinkerConfig
from .audio_encoder import AudioEncoder
from .layers import Decoder
from .vision_encoder import VisionEncoder

Vision = Tuple[Any, Sequence[int]]  # (pixel_values [N, 1176], grid (t, h, w))


def scatter(h: mx.array, positions: mx.array, features: mx.array, what: str) -> mx.array:
    """h [B, L, H] with its `positions` (bool [B, L]) replaced, in order, by features [N, H]."""
    n = int(positions.sum().item())
    if n != features.shape[0]:
        raise ValueError(f"the prompt has {n} {what} positions but the {what} inputs encode to "
                         f"{features.shape[0]} tokens")
    index = mx.maximum(mx.cumsum(positions.astype(mx.int32), axis=-1) - 1, 0)
    return mx.where(positions[..., None], features.astype(h.dtype)[index], h)


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        text = cfg.text_config
        self.audio_tower = AudioEncoder(cfg.audio_config)
        self.visual = VisionEncoder(cfg.vision_config)
        self.model = Decoder(text, text.vocab_size)
        if not text.tie_word_embeddings:
            self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self, max_kv_size: Optional[int] = None) -> List[Any]:
        """One KV cache per layer; with `max_kv_size`, rotating ones that keep the first 4
        positions and the last max_kv_size - 4 (mlx-lm's layout)."""
        if max_kv_size:
            return [RotatingKVCache(max_size=max_kv_size, keep=4) for _ in self.model.layers]
        return [KVCache() for _ in self.model.layers]

    def embed(self, input_ids: mx.array) -> mx.array:
        return self.model.embed_tokens(input_ids)

    def embed_multimodal(self, input_ids: mx.array, audio_features: Sequence[mx.array] = (),
                         images: Sequence[Vision] = (), videos: Sequence[Vision] = ()) -> mx.array:
        """Token embeddings [B, L, H] with the <|AUDIO|>, <|IMAGE|> and <|VIDEO|> positions
        replaced, in order, by the encoders' outputs (the reference's masked_scatter). Images
        and videos are (pixel_values [N, 1176], grid (t, h, w)) pairs."""
        h = self.embed(input_ids)
        if audio_features:
            audio = self.audio_tower(list(audio_features))  # (N_audio_tokens, H)
            h = scatter(h, input_ids == self.cfg.audio_token_index, audio, "audio")
        for media, token, what in ((images, self.cfg.image_token_index, "image"),
                                   (videos, self.cfg.video_token_index, "video")):
            if media:
                pixels = mx.concatenate([mx.array(p) for p, _ in media])
                features = self.visual(pixels, [g for _, g in media])  # (N_tokens, H)
                h = scatter(h, input_ids == token, features, what)
        return h

    def logits(self, hidden: mx.array) -> mx.array:
        if self.cfg.text_config.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(hidden)
        return self.lm_head(hidden)

    def __call__(
        self,
        inputs: Optional[mx.array],
        cache: Optional[List[Any]] = None,
        input_embeddings: Optional[mx.array] = None,
        position_ids: Optional[mx.array] = None,
        rope_delta: int = 0,
    ) -> mx.array:
        """Logits for token ids `inputs` [B, L] (or precomputed `input_embeddings`).

        Without `position_ids` the positions continue from the cache offset plus
        `rope_delta`, equal on all three TMRoPE axes (text, and every decode step)."""
        h = input_embeddings if input_embeddings is not None else self.embed(inputs)
        return self.logits(self.model(h, cache, position_ids, rope_delta))
