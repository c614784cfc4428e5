"""Processed prompt → what the Thinker's prefill reads: the ids (with the part the KV cache
already holds), the input embeddings with the media encoded in, and the TMRoPE positions."""

import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import mlx.core as mx
import numpy as np

from .prompt import MediaCache, PromptInputs
from .rope_index import rope_index


@dataclass
class Prompt:
    """A turn's Thinker input: `ids` is the whole context, of which the first `cached` are
    already in the KV cache (earlier turns); `embeds` [L, H] are the input embeddings of the
    rest when it holds media; `positions` [3, L] their TMRoPE positions when not sequential,
    and `rope_delta` where decoding continues (next position minus cache offset)."""

    ids: List[int]
    embeds: Optional[mx.array] = None
    placeholders: tuple = ()  # media placeholder ids, whose embeddings the Talker must not see
    positions: Optional[np.ndarray] = None
    rope_delta: int = 0
    cached: int = 0
    media: dict = field(default_factory=dict, repr=False)  # rope_index's media, with vision

    @property
    def new_ids(self) -> List[int]:
        return self.ids[self.cached:]


def media_placeholders(model) -> tuple:
    cfg = model.config.thinker_config
    return (cfg.audio_token_index, cfg.image_token_index, cfg.video_token_index)


def end_of_turn_ids(model) -> set:
    """The ids that end the Thinker's reply: the tokenizer's and the config's."""
    return set(model.processor.tokenizer.eos_token_ids) | {model.config.thinker_config.eos_token_id}


def media_before(ids: List[int], cfg, start: int) -> Dict[str, int]:
    """How many audio streams, images and videos begin before position `start` (each has one
    <|audio_bos|> or one <|vision_bos|> followed by its placeholder or, for a video that uses
    its audio, by <|audio_bos|>)."""
    counts = {"audio": 0, "image": 0, "video": 0}
    for i in range(min(start, len(ids))):
        nxt = ids[i + 1] if i + 1 < len(ids) else None
        if ids[i] == cfg.audio_start_token_id:
            counts["audio"] += 1
        elif ids[i] == cfg.vision_start_token_id and nxt is not None:
            counts["image" if nxt == cfg.image_token_index else "video"] += 1
    return counts


def embed_prompt(model, inputs: PromptInputs, start: int = 0) -> Optional[mx.array]:
    """Input embeddings [L - start, H] of `inputs.input_ids[start:]` with the media that begin
    there (`start` never falls inside a medium); None when that part is plain text."""
    ids = inputs.input_ids[start:]
    before = media_before(inputs.input_ids, model.config.thinker_config, start)
    audio = inputs.audio_features[before["audio"]:]
    images = [(v.pixel_values, v.grid_thw) for v in inputs.images[before["image"]:]]
    videos = [(v.pixel_values, v.grid_thw) for v in inputs.videos[before["video"]:]]
    if not (audio or images or videos):
        return None
    features = [mx.array(f) for f in audio]
    return model.thinker.embed_multimodal(mx.array([ids]), features, images, videos)[0]


def prompt_positions(model, inputs: PromptInputs, start: int = 0):
    """TMRoPE positions [3, L - start] of the prompt from `start` and the rope delta, or
    (None, 0) when they are sequential (no image or video)."""
    if not inputs.has_vision:
        return None, 0
    positions, delta = rope_index(inputs.input_ids, model.config.thinker_config, **inputs.media())
    return positions[:, start:], delta


def build_prompt(model, inputs: PromptInputs, cached: int = 0) -> Prompt:
    """The Prompt of processed `inputs` whose first `cached` ids the KV cache already holds:
    the rest embedded with its media, and its positions laid out."""
    positions, delta = prompt_positions(model, inputs, cached)
    return Prompt(inputs.input_ids, embed_prompt(model, inputs, cached), media_placeholders(model),
                  positions, delta, cached, inputs.media() if inputs.has_vision else {})


def fit_context(prompt_ids: List[int], max_tokens: int, context: int, truncate: bool) -> List[int]:
    if len(prompt_ids) < context:
        return prompt_ids
    if not truncate:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens but the context holds {context}; "
            "shorten it, or pass truncate=True (--truncate) to drop its oldest tokens"
        )
    keep = max(1, context - max_tokens)
    warnings.warn(f"prompt truncated from {len(prompt_ids)} to its last {keep} tokens")
    return prompt_ids[-keep:]


def prepare_prompt(model, messages, max_tokens: int, context: int, truncate: bool,
                   use_audio_in_video: bool = False, media: Optional[MediaCache] = None) -> Prompt:
    """The prompt of `messages` fitted to the context, with its media embedded and its
    positions laid out."""
    inputs = model.processor.prepare(messages, use_audio_in_video=use_audio_in_video, media=media)
    prompt_ids = fit_context(inputs.input_ids, max_tokens, context, truncate)
    drop = len(inputs.input_ids) - len(prompt_ids)
    if drop and inputs.has_vision:
        raise ValueError(f"the prompt ({len(inputs.input_ids)} tokens) does not fit the context of "
                         f"{context}; with images or video it can't be truncated: use fewer or "
                         "smaller ones (max_pixels) or a larger max_context")
    prompt = build_prompt(model, inputs)
    if not drop:
        return prompt
    return replace(prompt, ids=prompt_ids,
                   embeds=prompt.embeds[drop:] if prompt.embeds is not None else None)
