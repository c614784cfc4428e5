"""Hugging Face Qwen2.5-Omni checkpoint → MLX weights (bf16/fp16/fp32, 4/8-bit), streamed shard by shard."""

import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from ..config import OmniConfig
from ..models.ecapa import ECAPA
from ..models.omni import OmniModel
from ..models.padded import pad_columns
from . import speakers as speakers_io
from .atomic import atomic_dir
from .hub import CheckpointError, resolve_model_path, weight_shards
from .presets import Q_BITS, Plan, resolve

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
Q_GROUP_SIZES = (32, 64, 128)
# A shard is held in memory until written, so its size bounds the converter's peak: 2 GB keeps a
# conversion within an 8 GB Mac (5 GB shards, mlx-lm's, peaked at 5.1 GB on a 3B q4-small).
MAX_SHARD_BYTES = 2 * 10**9
FORMAT_KEY = "omni_edge"
FORMAT_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "generation_config.json",
)
SPEAKER_FILES = ("speakers.safetensors", "speakers.json", speakers_io.ENCODINGS_NAME)
SPEAKER_ENCODER = "token2wav.code2wav_dit_model.input_embed.spk_encoder."
VISION = "thinker.visual."


def has_vision(config: dict) -> bool:
    """Whether a config.json's model carries its vision encoder (`convert --no-vision` drops it)."""
    return config.get(FORMAT_KEY, {}).get("vision", True)


def is_converted(config: dict) -> bool:
    return FORMAT_KEY in config


def quant_params(quantization: Optional[dict], key: str):
    """(bits, group_size) that `key`'s component was quantized with, or None."""
    if not quantization:
        return None
    comp = quantization.get("components", {}).get(OmniModel.component(key))
    return (comp["bits"], comp["group_size"]) if comp else None


class _ShardWriter:
    """Accumulates converted tensors and writes numbered shards of at most `limit` bytes."""

    def __init__(self, out_dir: Path, limit: int):
        self.out_dir, self.limit = out_dir, limit
        self.pending: Dict[str, mx.array] = {}
        self.pending_bytes = 0
        self.files: list = []
        self.weight_map: Dict[str, int] = {}
        self.total = 0

    def add(self, name: str, array: mx.array):
        mx.eval(array)
        if self.pending and self.pending_bytes + array.nbytes > self.limit:
            self.flush()
        self.pending[name] = array
        self.pending_bytes += array.nbytes
        self.total += array.nbytes

    def flush(self):
        if not self.pending:
            return
        path = self.out_dir / f"part-{len(self.files):05d}.safetensors"
        mx.save_safetensors(str(path), self.pending, metadata={"format": "mlx"})
        for name in self.pending:
            self.weight_map[name] = len(self.files)
        self.files.append(path)
        self.pending, self.pending_bytes = {}, 0

    def finish(self):
        self.flush()
        n = len(self.files)
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for path, name in zip(self.files, names):
            path.rename(self.out_dir / name)
        index = {
            "metadata": {"total_size": self.total},
            "weight_map": {k: names[i] for k, i in sorted(self.weight_map.items())},
        }
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _layout(config: OmniConfig) -> Tuple[Dict[str, tuple], set]:
    """The shape of every tensor the model needs, and the keys of its linear layers' weights
    (those whose input can be zero-padded). Building the model allocates nothing: MLX
    parameters stay lazy until evaluated."""
    model = OmniModel(config)
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    linear = {f"{path}.weight" for path, m in model.named_modules() if isinstance(m, nn.Linear)}
    return shapes, linear


def _convert_tensor(key: str, w: mx.array, *, dtype, token2wav_dtype, bits, group_size,
                    linear: bool = False) -> Dict[str, mx.array]:
    """Cast and maybe quantize one tensor already in MLX layout. A linear layer whose input
    width the group size doesn't divide is quantized zero-padded (models/padded.py)."""
    if mx.issubdtype(w.dtype, mx.floating):
        w = w.astype(token2wav_dtype if key.startswith("token2wav") else dtype)
    b = bits.get(OmniModel.component(key), 0)
    quantized = b in Q_BITS and OmniModel.is_quantizable(key, w.shape)
    if quantized and linear:
        w = pad_columns(w, group_size)
    if quantized and w.shape[-1] % group_size == 0:
        q, scales, biases = mx.quantize(w, group_size=group_size, bits=b)
        stem = key[: -len("weight")]
        return {key: q, stem + "scales": scales, stem + "biases": biases}
    return {key: w}


def convert(
    hf_path: str,
    mlx_path: str,
    dtype: Optional[str] = None,
    quantize: bool = False,
    q_bits: Optional[int] = None,
    q_group_size: int = 64,
    talker_bits: Optional[int] = None,
    audio_bits: Optional[int] = None,
    vision_bits: Optional[int] = None,
    force: bool = False,
    revision: Optional[str] = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    preset: Optional[str] = None,
    token2wav_dtype: Optional[str] = None,
    token2wav_bits: Optional[int] = None,
    progress: bool = True,
    vision: bool = True,
) -> Path:
    """Convert `hf_path` (a directory or hub repo id) into an MLX model directory `mlx_path`.

    `preset` (see convert/presets.py: bf16, q8, q4, q4-small, q4-min) picks the bits of each
    component and Token2Wav's float type; `quantize` alone means q4; the other arguments
    override single components. The voices' speaker encodings are computed here, so the
    runtime need not load the ECAPA encoder. `vision=False` leaves out the vision encoder: a
    model for sound and text only, which refuses images and video. The output appears
    atomically: it is written to a hidden sibling directory and renamed into place only when
    complete."""
    plan = resolve(preset, quantize, q_bits, talker_bits, audio_bits, vision_bits,
                   token2wav_bits, token2wav_dtype)
    dtype = dtype or "bfloat16"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if q_group_size not in Q_GROUP_SIZES:
        raise ValueError(f"--q-group-size must be one of {Q_GROUP_SIZES}, got {q_group_size}")
    out = Path(mlx_path).expanduser()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to overwrite it")
    src = resolve_model_path(hf_path, revision)
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"--mlx-path {out} is the input checkpoint itself; choose another folder")
    raw = json.loads((src / "config.json").read_text())
    config = OmniConfig.from_dict(raw, str(src / "config.json"))
    converted = is_converted(raw)
    vision = vision and has_vision(raw)
    if converted and (plan.bits or token2wav_dtype):
        raise ValueError(
            f"{src} is already an omni-edge MLX model (its weights are copied as they are); "
            "to quantize or change a preset, convert the original Hugging Face checkpoint instead"
        )

    with atomic_dir(out) as tmp:
        if converted:
            quantization = raw.get("quantization")
            meta = dict(raw[FORMAT_KEY])
        else:
            quantization = plan.section(q_group_size)
            meta = {"dtype": dtype, "token2wav_dtype": plan.token2wav_dtype,
                    **({"preset": preset} if preset else {})}
        if not vision:
            meta["vision"] = False
        encoder = _write_weights(src, tmp, config, dtype=DTYPES[dtype], plan=plan,
                                 group_size=q_group_size, converted=converted,
                                 max_shard_bytes=max_shard_bytes, progress=progress,
                                 vision=vision)
        _write_config(raw, tmp, meta, quantization)
        _copy_support_files(src, tmp, converted, config, encoder)
    return out


def _write_weights(src, out, config, *, dtype, plan: Plan, group_size, converted,
                   max_shard_bytes, progress, vision=True) -> Dict[str, mx.array]:
    """Stream every tensor into `out` (without `vision`, none of the vision encoder's);
    returns the speaker encoder's float32 weights."""
    expected, linear = _layout(config)
    if not vision:
        expected = {k: v for k, v in expected.items() if not k.startswith(VISION)}
    writer = _ShardWriter(out, max_shard_bytes)
    seen, encoder = set(), {}
    shards = weight_shards(src)
    bar = tqdm(total=sum(len(names) for _, names in shards), unit="tensor", desc="converting",
               disable=not progress)
    for path, names in shards:
        arrays = mx.load(str(path))  # lazy: each tensor is read when evaluated
        for key in names:
            w = arrays.pop(key)
            bar.update()
            if not vision and key.startswith(VISION):
                continue
            if converted:  # our own output: already in MLX layout, dtype and quantization
                writer.add(key, w)
                seen.add(key)
                continue
            w = OmniModel.sanitize({key: w})[key]
            shape = tuple(w.shape)
            if key in expected and shape != expected[key]:
                raise CheckpointError(
                    f"tensor {key} in {path.name} has shape {shape} but config.json implies "
                    f"{expected[key]}; the weights and config.json don't belong together"
                )
            if key.startswith(SPEAKER_ENCODER):
                encoder[key[len(SPEAKER_ENCODER):]] = w.astype(mx.float32)
            for name, arr in _convert_tensor(key, w, dtype=dtype, bits=plan.bits,
                                             token2wav_dtype=DTYPES[plan.token2wav_dtype],
                                             group_size=group_size,
                                             linear=key in linear).items():
                writer.add(name, arr)
                seen.add(name)
            mx.clear_cache()  # freed source buffers would otherwise stay in MLX's cache
        del arrays
    bar.close()
    missing = sorted(k for k in expected if k not in seen)
    if missing:
        raise CheckpointError(
            f"{src} lacks {len(missing)} tensors the model needs (e.g. {missing[0]}); "
            "the checkpoint is incomplete or for another model size"
        )
    writer.finish()
    return encoder


def speaker_encodings(config: OmniConfig, encoder: Dict[str, mx.array], speakers: dict) -> dict:
    """Each voice's ECAPA encoding, [2, enc_dim] float32: row 0 of its reference mel, row 1 of an
    all-zero mel of the same length (the DiT's unconditional half), as the runtime computes them."""
    ecapa = ECAPA(config.token2wav_config.dit_config)
    ecapa.load_weights(list(encoder.items()), strict=True)
    out = {}
    for name, voice in speakers.items():
        mel = mx.array(voice["ref_mel"], dtype=mx.float32)
        out[name] = ecapa(mx.concatenate([mel, mx.zeros_like(mel)]))
        mx.eval(out[name])
    return out


def _write_config(raw: dict, out: Path, meta: dict, quantization: Optional[dict]):
    config = {k: v for k, v in raw.items() if k not in ("quantization", FORMAT_KEY)}
    if quantization:
        config["quantization"] = quantization
    config[FORMAT_KEY] = {**meta, "format_version": FORMAT_VERSION}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _copy_support_files(src: Path, out: Path, converted: bool, config: OmniConfig, encoder: dict):
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    if not (out / "tokenizer.json").is_file() and not (out / "vocab.json").is_file():
        raise CheckpointError(f"{src} has no tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if converted:
        for name in SPEAKER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
    elif (src / "spk_dict.pt").is_file():
        speakers = speakers_io.load_speakers(src / "spk_dict.pt")
        speakers_io.save_speakers(speakers, out)
        if config.has_speech and encoder:
            speakers_io.save_encodings(speaker_encodings(config, encoder, speakers), out)
