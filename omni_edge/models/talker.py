"""The Talker: a Qwen2 decoder that turns the Thinker's states into speech-codec tokens."""

from typing import Any, Callable, List, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from ..config import TalkerConfig
from .layers import Decoder


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.cfg = cfg
        self.thinker_to_talker_proj = nn.Linear(cfg.embedding_size, cfg.hidden_size, bias=True)
        # Codec embeddings live at the Thinker's width; they are added to Thinker states
        # before the projection into the Talker.
        self.model = Decoder(cfg, cfg.vocab_size, embed_dim=cfg.embedding_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self) -> List[Any]:
        return [KVCache() for _ in self.model.layers]

    def embed_codes(self, codes: mx.array) -> mx.array:
        return self.model.embed_tokens(codes)

    def __call__(
        self,
        inputs_embeds: mx.array,
        cache: Optional[List[Any]] = None,
        position_ids: Optional[mx.array] = None,
        rope_delta: int = 0,
        last_only: bool = False,
        run: Optional[Callable] = None,
    ) -> mx.array:
        """Codec logits (float32, as the reference casts them) for `inputs_embeds` [B, L, E];
        with `last_only`, for the last position alone [B, 1, V] (all a decode step reads).
        `run(decoder, h, cache, position_ids, rope_delta)` stands in for calling the decoder
        (the compiled decode step, `compiled_step.decoder_pass`)."""
        run = run or (lambda decoder, *args: decoder(*args))
        h = run(self.model, self.thinker_to_talker_proj(inputs_embeds), cache, position_ids,
                rope_delta)
        if last_only:
            h = h[:, -1:, :]
        return self.codec_head(h).astype(mx.float32)
