"""Chat messages → prompt token ids, with the Qwen2.5-Omni chat template."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from ..config import ThinkerConfig
from ..demo.tokenizer import OMNI_CHAT_TEMPLATE
from .placeholders import expand_placeholders

Messages = Union[str, List[Dict[str, Any]]]
# Placeholder ids and sizes of the published checkpoints, for a Processor made without a config.
PUBLISHED_THINKER = {"text_config": {"vocab_size": 151936, "hidden_size": 2048,
                                     "intermediate_size": 11008, "num_hidden_layers": 36,
                                     "num_attention_heads": 16, "num_key_value_heads": 2,
                                     "rope_scaling": {"type": "default",
                                                      "mrope_section": [16, 24, 24]}},
                     "vision_config": {"hidden_size": 1280, "out_hidden_size": 2048}}
ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "audio", "image", "video")
# Speech output only works under this exact system prompt (the model was trained so).
SPEECH_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)


def read_chat_template(model_dir: Path) -> str:
    """The template as the checkpoint ships it (.jinja, chat_template.json or the tokenizer
    config), falling back to the published Qwen2.5-Omni one."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            template = json.loads(path.read_text()).get("chat_template")
            if isinstance(template, str):
                return template
    return OMNI_CHAT_TEMPLATE


def normalize_messages(messages: Messages) -> List[Dict[str, Any]]:
    """Accept a plain string or Qwen's chat format; reject anything else with a clear error."""
    if isinstance(messages, str):
        return [{"role": "user", "content": [{"type": "text", "text": messages}]}]
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts or a string")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            raise ValueError(
                f"messages[{i}] must be a dict with 'role' in {ROLES} and 'content'; got {m!r:.80}"
            )
        content = m["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"messages[{i}]['content'] must be a string or a list of parts")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PART_TYPES:
                raise ValueError(
                    f"messages[{i}]['content'][{j}] has type {kind!r}; use one of {PART_TYPES}"
                )
            if kind != "text" and part.get(kind) is None:
                raise ValueError(f"messages[{i}]['content'][{j}] has no '{kind}' value")
    return messages


@dataclass
class PromptInputs:
    """Everything the Thinker's prefill needs: token ids with every placeholder expanded, the
    log-mel features of every audio stream in prompt order (a video's own track at the video's
    place), and the images' and videos' patches."""

    input_ids: List[int]
    audio_features: List[np.ndarray] = field(default_factory=list)
    images: List[Any] = field(default_factory=list)  # processing.image.VisionInput
    videos: List[Any] = field(default_factory=list)
    video_uses_audio: List[bool] = field(default_factory=list)

    @property
    def has_vision(self) -> bool:
        return bool(self.images or self.videos)

    def media(self) -> Dict[str, list]:
        """The media lists `rope_index` and `expand_placeholders` read."""
        return dict(audio_lengths=[f.shape[-1] for f in self.audio_features],
                    image_grids=[i.grid_thw for i in self.images],
                    video_grids=[v.grid_thw for v in self.videos],
                    video_seconds_per_grid=[v.second_per_grid for v in self.videos])


class Processor:
    """Tokenizer plus chat template: what turns messages into Thinker input ids. `cfg` (the
    ThinkerConfig) gives the placeholder ids and the vision merge size; the published
    values when left out."""

    def __init__(self, tokenizer, chat_template: str, cfg=None):
        self.tokenizer = tokenizer  # mlx-lm TokenizerWrapper (streaming detokenizer included)
        self.chat_template = chat_template
        self.cfg = cfg or ThinkerConfig.from_dict(PUBLISHED_THINKER)

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            normalize_messages(messages),
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def encode(self, messages: Messages) -> List[int]:
        return self.prepare(messages).input_ids

    def prepare(self, messages: Messages, use_audio_in_video: bool = False) -> PromptInputs:
        """Render, tokenize and expand `messages`, loading every medium they hold. A video
        part's own "use_audio_in_video" key overrides the argument for that video."""
        messages = normalize_messages(messages)
        ids = self.tokenizer.encode(self.render(messages), add_special_tokens=False)
        inputs = PromptInputs(ids)
        for part in (p for m in messages if isinstance(m["content"], list) for p in m["content"]):
            self._load(part, use_audio_in_video, inputs)
        inputs.input_ids = expand_placeholders(ids, self.cfg, **inputs.media(),
                                               video_uses_audio=inputs.video_uses_audio)
        return inputs

    @staticmethod
    def _load(part: Dict[str, Any], use_audio_in_video: bool, inputs: PromptInputs):
        from .audio import prepare_audio
        from .image import IMAGE_OPTIONS, process_image
        from .video import VIDEO_OPTIONS, extract_audio, process_video

        kind = part.get("type")
        if kind == "audio":
            inputs.audio_features.append(prepare_audio(part["audio"], part.get("sampling_rate"))[0])
        elif kind == "image":
            inputs.images.append(process_image(part["image"], **_options(part, IMAGE_OPTIONS)))
        elif kind == "video":
            options = _options(part, VIDEO_OPTIONS)
            inputs.videos.append(process_video(part["video"], **options))
            with_audio = bool(part.get("use_audio_in_video", use_audio_in_video))
            inputs.video_uses_audio.append(with_audio)
            if with_audio:
                track = extract_audio(part["video"], options.get("video_start"),
                                      options.get("video_end"))
                inputs.audio_features.append(prepare_audio(track, 16000)[0])


def _options(part: Dict[str, Any], names) -> Dict[str, Any]:
    return {k: part[k] for k in names if k in part}
