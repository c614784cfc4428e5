"""load(): a converted MLX directory, a Hugging Face directory or a hub repo id → one ready model."""

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tokenizer_utils import load as load_tokenizer

from .config import OmniConfig
from .convert import hub
from .convert.mlx import convert, is_converted, quant_params
from .convert.speakers import load_converted_speakers
from .models.omni import IMPLEMENTED_PREFIXES, OmniModel
from .processing.prompt import Processor, read_chat_template
from .speech.voice import UnknownVoiceError

CACHE_ENV = "OMNI_EDGE_CACHE"
DEFAULT_CACHE = "~/.cache/omni-edge"


class Voices(Mapping):
    """The speakers of a converted model: name → {"cond", "ref_mel", "bos_token"}."""

    def __init__(self, speakers: dict):
        self._speakers = dict(speakers)

    def __getitem__(self, name):
        if name not in self._speakers:
            raise UnknownVoiceError(name, sorted(self._speakers))
        return self._speakers[name]

    def __iter__(self):
        return iter(sorted(self._speakers))

    def __len__(self):
        return len(self._speakers)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser()


def _cache_dir_for(source: str, dtype: str, q_bits: Optional[int]) -> Path:
    key = os.path.abspath(source) if Path(source).exists() else source
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    tag = f"{dtype}-q{q_bits}" if q_bits else dtype
    return cache_root() / f"{Path(key).name}-{digest}-{tag}"


def ensure_converted(path_or_repo: str, dtype: str = "bfloat16", q_bits: Optional[int] = None) -> Path:
    """A converted directory for `path_or_repo`, converting into the cache on first use."""
    path = Path(path_or_repo).expanduser()
    if (path / "config.json").is_file() and is_converted(json.loads((path / "config.json").read_text())):
        return path
    target = _cache_dir_for(str(path_or_repo), dtype, q_bits)
    if (target / "config.json").is_file():
        return target
    print(f"[omni-edge] converting {path_or_repo} to MLX ({target}); this happens once",
          file=sys.stderr)
    return convert(str(path_or_repo), str(target), dtype=dtype, quantize=bool(q_bits),
                   q_bits=q_bits or 4)


def load_weights(model: OmniModel, model_dir: Path, config: dict):
    weights = {}
    for path, _ in hub.weight_shards(model_dir):
        weights.update(mx.load(str(path)))
    weights = {k: v for k, v in weights.items() if k.startswith(IMPLEMENTED_PREFIXES)}
    quantization = config.get("quantization")
    if quantization:
        def predicate(path, module):
            if f"{path}.scales" not in weights:
                return False
            bits, group_size = quant_params(quantization, f"{path}.weight")
            return {"bits": bits, "group_size": group_size}

        nn.quantize(model, class_predicate=predicate)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())


def _quiet_tokenizer(model_dir: Path):
    # transformers validates config.json while finding the tokenizer class and warns that the
    # Talker's text-space token ids lie outside the codec vocabulary: true, and by design.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load_tokenizer(model_dir)
    finally:
        hf_logging.set_verbosity(level)


def load(path_or_repo: str, dtype: str = "bfloat16", q_bits: Optional[int] = None) -> OmniModel:
    """Load a Qwen2.5-Omni model. A converted omni-edge directory loads directly; a Hugging
    Face directory or repo id is converted once (to `dtype`, optionally `q_bits`-quantized)
    into the cache ($OMNI_EDGE_CACHE, default ~/.cache/omni-edge) and loaded from there.

    The returned model carries `.config`, `.processor` and `.voices`."""
    model_dir = ensure_converted(path_or_repo, dtype, q_bits)
    raw = json.loads((model_dir / "config.json").read_text())
    config = OmniConfig.from_dict(raw, str(model_dir / "config.json"))
    model = OmniModel(config)
    load_weights(model, model_dir, raw)
    model.eval()
    model.path = model_dir
    model.processor = Processor(_quiet_tokenizer(model_dir), read_chat_template(model_dir),
                                model.config.thinker_config)
    has_voices = (model_dir / "speakers.json").is_file()
    model.voices = Voices(load_converted_speakers(model_dir) if has_voices else {})
    if config.has_speech:
        model.token2wav.voices = model.voices
    return model
