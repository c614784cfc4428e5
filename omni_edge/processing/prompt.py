"""Chat messages → prompt token ids, with the Qwen2.5-Omni chat template."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from ..demo.tokenizer import OMNI_CHAT_TEMPLATE

Messages = Union[str, List[Dict[str, Any]]]
AUDIO_TOKEN_ID = 151646  # <|AUDIO|>
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
            if kind in ("image", "video"):
                raise NotImplementedError(
                    f"messages[{i}]['content'][{j}] is {kind} input, which this version of "
                    "omni-edge does not read yet; send text and audio parts"
                )
            if kind != "text" and part.get(kind) is None:
                raise ValueError(f"messages[{i}]['content'][{j}] has no '{kind}' value")
    return messages


def media_parts(messages: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    """The `kind` parts of all messages, in order of appearance (the template's order)."""
    return [p for m in messages if isinstance(m["content"], list) for p in m["content"]
            if p.get("type") == kind]


@dataclass
class PromptInputs:
    """Everything the Thinker's prefill needs: token ids with each <|AUDIO|> expanded to its
    token count, and the log-mel features of every audio clip in prompt order."""

    input_ids: List[int]
    audio_features: List[np.ndarray] = field(default_factory=list)


def expand_placeholders(ids: List[int], token_id: int, counts: List[int], what: str) -> List[int]:
    """Replace the i-th `token_id` with counts[i] copies of it."""
    out, k = [], 0
    for t in ids:
        if t != token_id:
            out.append(t)
            continue
        if k >= len(counts):
            raise ValueError(f"the prompt text holds more {what} placeholders than {what} inputs")
        out.extend([token_id] * counts[k])
        k += 1
    if k != len(counts):
        raise ValueError(f"{len(counts)} {what} inputs but {k} placeholders in the prompt")
    return out


class Processor:
    """Tokenizer plus chat template: what turns messages into Thinker input ids."""

    def __init__(self, tokenizer, chat_template: str):
        self.tokenizer = tokenizer  # mlx-lm TokenizerWrapper (streaming detokenizer included)
        self.chat_template = chat_template

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            normalize_messages(messages),
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def encode(self, messages: Messages) -> List[int]:
        return self.prepare(messages).input_ids

    def prepare(self, messages: Messages, audio_token_id: int = AUDIO_TOKEN_ID) -> PromptInputs:
        from .audio import feature_length_to_tokens, prepare_audio

        messages = normalize_messages(messages)
        ids = self.tokenizer.encode(self.render(messages), add_special_tokens=False)
        features = [prepare_audio(p["audio"], p.get("sampling_rate"))[0]
                    for p in media_parts(messages, "audio")]
        counts = [feature_length_to_tokens(f.shape[-1]) for f in features]
        return PromptInputs(expand_placeholders(ids, audio_token_id, counts, "audio"), features)
