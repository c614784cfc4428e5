"""load(): a converted MLX directory, a Hugging Face directory or a hub repo id → one ready model."""

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map
from mlx_lm.tokenizer_utils import load as load_tokenizer

from .config import OmniConfig
from .convert import hub
from .convert.mlx import SPEAKER_ENCODER, convert, has_vision, is_converted, quant_params
from .convert.speakers import load_converted_speakers, load_encodings
from .memory import check_fits
from .models.omni import OmniModel, OnDemand, SpeakerTable
from .models.padded import use_padded_layers
from .processing.prompt import Processor, read_chat_template
from .speech.voice import UnknownVoiceError

CACHE_ENV = "OMNI_EDGE_CACHE"
DEFAULT_CACHE = "~/.cache/omni-edge"
THINKER_LLM = ("thinker.model.", "thinker.lm_head.")
ENCODERS = {"thinker.audio_tower": "audio encoder", "thinker.visual": "vision encoder"}


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
                   q_bits=q_bits or None)


def _tensor_bytes(model_dir: Path) -> Dict[str, Tuple[Path, int]]:
    """name → (shard, bytes) from the shards' headers: sizes known before reading any weight."""
    out = {}
    for path, names in hub.weight_shards(model_dir):
        header = hub.safetensors_header(path)
        for name in names:
            start, end = header[name]["data_offsets"]
            out[name] = (path, end - start)
    return out


def _read(tensors: Dict[str, Tuple[Path, int]], prefixes: Tuple[str, ...]) -> Dict[str, mx.array]:
    """The tensors under `prefixes`, lazily mapped (a shard's other tensors are never read)."""
    out = {}
    for shard in sorted({path for name, (path, _) in tensors.items() if name.startswith(prefixes)}):
        arrays = mx.load(str(shard))
        out.update({k: v for k, v in arrays.items() if k.startswith(prefixes)})
    return out


def _load_into(module: nn.Module, weights: Dict[str, mx.array], prefix: str, quantization):
    """Quantize `module` as its stored weights say (mlx-lm's rule: a layer is quantized iff its
    `.scales` are stored), then load the weights under `prefix` into it."""
    weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if quantization:
        def stored(path):
            if f"{path}.scales" not in weights:
                return None
            return quant_params(quantization, f"{prefix}{path}.weight")

        def predicate(path, m):
            params = None if isinstance(m, nn.QuantizedLinear) else stored(path)
            return {"bits": params[0], "group_size": params[1]} if params else False

        use_padded_layers(module, stored)  # widths no group size divides, stored zero-padded
        nn.quantize(module, class_predicate=predicate)
    module.load_weights(list(weights.items()), strict=True)
    mx.eval(module.parameters())
    module.eval()
    return module


def _parts(tensors, speech: bool, encoder_needed: bool) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Bytes of what loads now and what loads on first use, by part."""
    def size(*prefixes, skip=()):
        return sum(n for k, (_, n) in tensors.items() if k.startswith(prefixes)
                   and not (skip and k.startswith(skip)))

    eager = {"Thinker LLM": size(*THINKER_LLM)}
    if speech:
        eager["Talker"] = size("talker.")
        eager["Token2Wav"] = size("token2wav.", skip=() if encoder_needed else (SPEAKER_ENCODER,))
    later = {label: size(prefix + ".") for prefix, label in ENCODERS.items()}
    return eager, {label: n for label, n in later.items() if n}  # a --no-vision model has none


def _on_demand(model: OmniModel, tensors, quantization, source: str, check_memory: bool,
               keep: bool = True, vision: bool = True):
    """The audio and vision encoders, loaded (and checked against memory) on first use; without
    `keep`, loaded for each use and freed after it; without `vision` (converted with
    --no-vision), a vision encoder that refuses to run."""
    for prefix, label in ENCODERS.items():
        name = prefix.split(".")[-1]
        real = getattr(model.thinker, name)
        if prefix == "thinker.visual" and not vision:
            def missing():
                raise ValueError(_left_out(source))

            setattr(model.thinker, name, OnDemand(model.thinker, name, missing))
            continue

        def build(real=real, prefix=prefix, label=label):
            if check_memory:
                need = _parts(tensors, False, False)[1][label]
                check_fits(f"{source}'s {label}", {label: need}, {}, in_use=mx.get_active_memory())
            return _load_into(real, _read(tensors, (prefix + ".",)), prefix + ".", quantization)

        def release(real=real):
            # Unevaluated zeros of the same shapes: they hold no memory, and the next build's
            # strict load still finds every parameter's shape.
            real.update(tree_map(lambda a: mx.zeros(a.shape, a.dtype), real.parameters()))
            mx.clear_cache()

        setattr(model.thinker, name, OnDemand(model.thinker, name, build,
                                              None if keep else release))


def _left_out(source: str, kind: str = "image or video") -> str:
    return (f"{source} was converted without its vision encoder (omni-edge convert --no-vision), "
            f"so it takes no {kind}; convert the checkpoint again without --no-vision to send "
            "images and video")


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


def load(path_or_repo: str, dtype: str = "bfloat16", q_bits: Optional[int] = None,
         speech: bool = True, check_memory: bool = True, speaker_encoder: bool = False,
         keep_encoders: bool = True) -> OmniModel:
    """Load a Qwen2.5-Omni model. A converted omni-edge directory loads directly; a Hugging
    Face directory or repo id is converted once (to `dtype`, optionally `q_bits`-quantized)
    into the cache ($OMNI_EDGE_CACHE, default ~/.cache/omni-edge) and loaded from there.

    Only what is used is loaded: `speech=False` leaves out the Talker and Token2Wav; the audio
    and vision encoders load on their first use; the DiT's speaker encoder (ECAPA) is left out
    when the voices' encodings were computed at conversion (`speaker_encoder=True` loads it, for
    voices of your own). `keep_encoders=False` frees an encoder's weights as soon as its output
    is computed and reads them again for the next sound or image: the lowest peak memory (the
    3B audio encoder is 0.37 GB at q4-min), at the cost of that read each turn with media.
    A model that can't fit this machine's memory is refused before any
    weight is read (`check_memory=False` tries anyway).

    The returned model carries `.config`, `.processor` and `.voices`."""
    model_dir = ensure_converted(path_or_repo, dtype, q_bits)
    raw = json.loads((model_dir / "config.json").read_text())
    config = OmniConfig.from_dict(raw, str(model_dir / "config.json"))
    model = OmniModel(config, speech=speech)  # its `speech_error` says why it can't speak
    speech = speech and config.has_speech
    has_voices = (model_dir / "speakers.json").is_file()
    voices = load_converted_speakers(model_dir) if has_voices else {}
    encodings = load_encodings(model_dir, voices) if speech and not speaker_encoder else {}
    tensors = _tensor_bytes(model_dir)
    if check_memory:
        eager, later = _parts(tensors, speech, not encodings)
        check_fits(str(path_or_repo), eager, later)

    quantization = raw.get("quantization")
    vision = has_vision(raw)
    _on_demand(model, tensors, quantization, str(path_or_repo), check_memory, keep_encoders,
               vision)
    if encodings:  # before loading: the ECAPA's random init is never evaluated
        model.token2wav.code2wav_dit_model.input_embed.spk_encoder = SpeakerTable(voices, encodings)
    eager = THINKER_LLM + (("talker.", "token2wav.") if speech else ())
    weights = _read(tensors, eager)
    if encodings:
        weights = {k: v for k, v in weights.items() if not k.startswith(SPEAKER_ENCODER)}
    _load_into(model, weights, "", quantization)
    model.path = model_dir
    model.processor = Processor(_quiet_tokenizer(model_dir), read_chat_template(model_dir),
                                model.config.thinker_config)
    if not vision:
        # refused before any work, so a chat's caches are never touched
        model.processor.refused = {kind: _left_out(str(path_or_repo), kind)
                                   for kind in ("image", "video")}
    model.voices = Voices(voices)
    if speech:
        model.token2wav.voices = model.voices
    return model
