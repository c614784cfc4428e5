"""Hugging Face Qwen2.5-Omni checkpoint → MLX weights (bf16/fp16/fp32, 4/8-bit), streamed shard by shard."""

import json
import shutil
from pathlib import Path
from typing import Dict, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from ..config import OmniConfig
from ..models.omni import OmniModel
from . import speakers as speakers_io
from .atomic import atomic_dir
from .hub import CheckpointError, resolve_model_path, weight_shards

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
Q_BITS = (4, 8)
Q_GROUP_SIZES = (32, 64, 128)
MAX_SHARD_BYTES = 5 * 10**9
# Measured defaults (README, "Quantization"): the Thinker takes the asked bits; the Talker
# and both encoders stay at 8 bits, where their outputs keep ≤1% error; Token2Wav is float32.
DEFAULT_COMPONENT_BITS = {"talker": 8, "thinker.audio_tower": 8, "thinker.visual": 8}
FORMAT_KEY = "omni_edge"
FORMAT_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "generation_config.json",
)
SPEAKER_FILES = ("speakers.safetensors", "speakers.json")


def is_converted(config: dict) -> bool:
    return FORMAT_KEY in config


def component_bits(q_bits: int, talker_bits=None, audio_bits=None, vision_bits=None) -> Dict[str, int]:
    """Bits per component; 0 or 16 keeps a component in float."""
    bits = {"thinker": q_bits, **DEFAULT_COMPONENT_BITS}
    for name, value in (("talker", talker_bits), ("thinker.audio_tower", audio_bits),
                        ("thinker.visual", vision_bits)):
        if value is not None:
            bits[name] = value
    for name, value in bits.items():
        if value not in Q_BITS + (0, 16):
            raise ValueError(f"{name} bits must be one of 4, 8 (or 0/16 for float), got {value}")
    return bits


def quantization_section(bits: Dict[str, int], group_size: int) -> dict:
    return {
        "group_size": group_size,
        "bits": bits["thinker"],
        "mode": "affine",
        "components": {c: {"bits": b, "group_size": group_size} for c, b in bits.items()
                       if b in Q_BITS},
    }


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


def _expected_shapes(config: OmniConfig) -> Dict[str, tuple]:
    # Building the model allocates nothing: MLX parameters stay lazy until evaluated.
    return {k: tuple(v.shape) for k, v in tree_flatten(OmniModel(config).parameters())}


def _convert_tensor(key: str, w: mx.array, *, dtype, bits, group_size) -> Dict[str, mx.array]:
    """Cast and maybe quantize one tensor already in MLX layout."""
    if mx.issubdtype(w.dtype, mx.floating):
        w = w.astype(mx.float32 if key.startswith("token2wav") else dtype)
    b = bits.get(OmniModel.component(key), 0) if bits else 0
    if b in Q_BITS and OmniModel.is_quantizable(key, w.shape) and w.shape[-1] % group_size == 0:
        q, scales, biases = mx.quantize(w, group_size=group_size, bits=b)
        stem = key[: -len("weight")]
        return {key: q, stem + "scales": scales, stem + "biases": biases}
    return {key: w}


def convert(
    hf_path: str,
    mlx_path: str,
    dtype: str = "bfloat16",
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    talker_bits: Optional[int] = None,
    audio_bits: Optional[int] = None,
    vision_bits: Optional[int] = None,
    force: bool = False,
    revision: Optional[str] = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Convert `hf_path` (a directory or hub repo id) into an MLX model directory `mlx_path`.

    The output appears atomically: it is written to a hidden sibling directory and renamed
    into place only when complete, so a failure never leaves a half-converted model."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if q_group_size not in Q_GROUP_SIZES:
        raise ValueError(f"--q-group-size must be one of {Q_GROUP_SIZES}, got {q_group_size}")
    bits = component_bits(q_bits, talker_bits, audio_bits, vision_bits) if quantize else None
    out = Path(mlx_path).expanduser()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to overwrite it")
    src = resolve_model_path(hf_path, revision)
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"--mlx-path {out} is the input checkpoint itself; choose another folder")
    raw = json.loads((src / "config.json").read_text())
    config = OmniConfig.from_dict(raw, str(src / "config.json"))
    converted = is_converted(raw)
    if converted and quantize:
        raise ValueError(
            f"{src} is already an omni-edge MLX model (its weights are copied as they are); "
            "to quantize, convert the original Hugging Face checkpoint instead"
        )

    with atomic_dir(out) as tmp:
        quantization = (quantization_section(bits, q_group_size) if quantize
                        else raw.get("quantization") if converted else None)
        _write_weights(src, tmp, config, dtype=DTYPES[dtype], bits=bits, group_size=q_group_size,
                       converted=converted, max_shard_bytes=max_shard_bytes)
        if converted:
            dtype = raw[FORMAT_KEY].get("dtype", dtype)
        _write_config(raw, tmp, dtype, quantization)
        _copy_support_files(src, tmp, converted)
    return out


def _write_weights(src, out, config, *, dtype, bits, group_size, converted, max_shard_bytes):
    expected = _expected_shapes(config)
    writer = _ShardWriter(out, max_shard_bytes)
    seen = set()
    for path, names in weight_shards(src):
        arrays = mx.load(str(path))  # lazy: each tensor is read when evaluated
        for key in names:
            w = arrays.pop(key)
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
            for name, arr in _convert_tensor(key, w, dtype=dtype, bits=bits,
                                             group_size=group_size).items():
                writer.add(name, arr)
                seen.add(name)
        del arrays
    missing = sorted(k for k in expected if k not in seen)
    if missing:
        raise CheckpointError(
            f"{src} lacks {len(missing)} tensors the model needs (e.g. {missing[0]}); "
            "the checkpoint is incomplete or for another model size"
        )
    writer.finish()


def _write_config(raw: dict, out: Path, dtype: str, quantization: Optional[dict]):
    config = {k: v for k, v in raw.items() if k not in ("quantization", FORMAT_KEY)}
    if quantization:
        config["quantization"] = quantization
    config[FORMAT_KEY] = {"format_version": FORMAT_VERSION, "dtype": dtype,
                          "token2wav_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _copy_support_files(src: Path, out: Path, converted: bool):
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
        speakers_io.save_speakers(speakers_io.load_speakers(src / "spk_dict.pt"), out)

