"""The Thinker: the Qwen2.5 LLM that reads text (and, later, audio and vision) and writes the reply."""

from typing import Any, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from ..config import ThinkerConfig
from .audio_encoder import AudioEncoder
from .layers import Decoder


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        text = cfg.text_config
        self.audio_tower = AudioEncoder(cfg.audio_config)
        self.model = Decoder(text, text.vocab_size)
        if not text.tie_word_embeddings:
            self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self) -> List[Any]:
        return [KVCache() for _ in self.model.layers]

    def embed(self, input_ids: mx.array) -> mx.array:
        return self.model.embed_tokens(input_ids)

    def embed_multimodal(self, input_ids: mx.array, audio_features: Sequence[mx.array] = ()) -> mx.array:
        """Token embeddings [B, L, H] with each run of <|AUDIO|> positions replaced, in order,
        by the audio encoder's output for the clips (the reference's masked_scatter)."""
        h = self.embed(input_ids)
        if not audio_features:
            return h
        audio = self.audio_tower(list(audio_features)).astype(h.dtype)  # (N_audio_tokens, H)
        is_audio = input_ids == self.cfg.audio_token_index
        n = int(is_audio.sum().item())
        if n != audio.shape[0]:
            raise ValueError(f"the prompt has {n} audio positions but the audio encodes to "
                             f"{audio.shape[0]} tokens")
        index = mx.maximum(mx.cumsum(is_audio.astype(mx.int32), axis=-1) - 1, 0)
        return mx.where(is_audio[..., None], audio[index], h)

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
