"""Chat messages → prompt token ids, with the Qwen2.5-Omni chat template."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..config import ThinkerConfig
from .chat_template import OMNI_CHAT_TEMPLATE
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
        self.refused: Dict[str, str] = {}  # part type → why this model can't take it

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            normalize_messages(messages),
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def encode(self, messages: Messages) -> List[int]:
        return self.prepare(messages).input_ids

    def prepare(self, messages: Messages, use_audio_in_video: bool = False,
                media: Optional["MediaCache"] = None) -> PromptInputs:
        """Render, tokenize and expand `messages`, loading every medium they hold. A video
        part's own "use_audio_in_video" key overrides the argument for that video. With a
        `media` cache, a part processed before is taken from it, never loaded again (a chat
        keeps one, so a later turn never reopens an earlier file)."""
        messages = normalize_messages(messages)
        parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
        for part in parts:
            if part.get("type") in self.refused:
                raise ValueError(self.refused[part["type"]])
        ids = self.tokenizer.encode(self.render(messages), add_special_tokens=False)
        inputs = PromptInputs(ids)
        media = media if media is not None else MediaCache()
        for part in parts:
            if part.get("type") in ("audio", "image", "video"):
                media.load(part, use_audio_in_video).add_to(inputs)
        inputs.input_ids = expand_placeholders(ids, self.cfg, **inputs.media(),
                                               video_uses_audio=inputs.video_uses_audio)
        return inputs


@dataclass
class LoadedPart:
    """One processed medium: audio features, or an image's or video's patches (and the
    video's own sound track's features when it is used)."""

    kind: str
    value: Any
    audio_features: Optional[np.ndarray] = None  # a video's track, when it is used

    def add_to(self, inputs: PromptInputs):
        if self.kind == "audio":
            inputs.audio_features.append(self.value)
        elif self.kind == "image":
            inputs.images.append(self.value)
        else:
            inputs.videos.append(self.value)
            inputs.video_uses_audio.append(self.audio_features is not None)
            if self.audio_features is not None:
                inputs.audio_features.append(self.audio_features)


class MediaCache:
    """Processed media by message part (the part dict itself: the conversation keeps it), so
    each file is opened and decoded once per conversation."""

    def __init__(self):
        self._parts: Dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self._parts)

    def retain(self, messages: Messages):
        """Forget the media of parts no longer in `messages` (turns a chat dropped)."""
        alive = {id(p) for m in messages if isinstance(m.get("content"), list) for p in m["content"]}
        self._parts = {k: v for k, v in self._parts.items() if k[0] in alive}

    def load(self, part: Dict[str, Any], use_audio_in_video: bool) -> LoadedPart:
        with_audio = bool(part.get("use_audio_in_video", use_audio_in_video))
        key = (id(part), with_audio)
        hit = self._parts.get(key)
        if hit is not None and hit[0] is part:
            return hit[1]
        loaded = _load(part, with_audio)
        self._parts[key] = (part, loaded)  # holding the part keeps its id unique
        return loaded


def _load(part: Dict[str, Any], with_audio: bool) -> LoadedPart:
    from .audio import INPUT_SAMPLE_RATE, prepare_audio
    from .image import IMAGE_OPTIONS, process_image
    from .video import VIDEO_OPTIONS, extract_audio, process_video

    kind = part["type"]
    if kind == "audio":
        return LoadedPart(kind, prepare_audio(part["audio"], part.get("sampling_rate"))[0])
    if kind == "image":
        return LoadedPart(kind, process_image(part["image"], **_options(part, IMAGE_OPTIONS)))
    options = _options(part, VIDEO_OPTIONS)
    video = process_video(part["video"], **options)
    track = None
    if with_audio:
        sound = extract_audio(part["video"], options.get("video_start"), options.get("video_end"))
        track = prepare_audio(sound, INPUT_SAMPLE_RATE)[0]
    return LoadedPart(kind, video, track)


def _options(part: Dict[str, Any], names) -> Dict[str, Any]:
    return {k: part[k] for k in names if k in part}
