"""Files next to the packages that an app reads directly: embedding tables and voices.

Raw little-endian arrays with their shape and dtype in the manifest, so Swift can memory-map a
file and gather rows without a parser. With 4/8-bit decoders the tables are int8 with one fp16
scale per row (row = int8 row · scale); at 16 bits they are fp16.
"""

from pathlib import Path
from typing import Dict

import numpy as np

from .. import speakers as speakers_io

INT8_MAX = 127


def write_embeddings(table: np.ndarray, out_dir: Path, stem: str, bits: int) -> dict:
    """Write one embedding table [rows, dim]; return its manifest entry."""
    rows, dim = table.shape
    if bits == 16:
        path = out_dir / f"{stem}.f16.bin"
        np.ascontiguousarray(table, "<f2").tofile(path)
        return {"file": path.name, "dtype": "float16", "shape": [rows, dim], "layout": "row-major"}
    scales = np.abs(table).max(axis=1) / INT8_MAX
    scales = np.where(scales == 0, 1.0, scales).astype(np.float16)
    q = np.clip(np.rint(table / scales.astype(np.float32)[:, None]), -INT8_MAX, INT8_MAX).astype("<i1")
    path, scale_path = out_dir / f"{stem}.i8.bin", out_dir / f"{stem}.scales.f16.bin"
    q.tofile(path)
    np.ascontiguousarray(scales, "<f2").tofile(scale_path)
    return {"file": path.name, "dtype": "int8", "shape": [rows, dim], "layout": "row-major",
            "scales": {"file": scale_path.name, "dtype": "float16", "shape": [rows]},
            "dequantize": "embedding[id] = float(int8_row[id]) * scales[id]"}


def read_embeddings(entry: dict, out_dir: Path) -> np.ndarray:
    """The float32 table an app would reconstruct from `entry` (used by the tests)."""
    shape = entry["shape"]
    if entry["dtype"] == "float16":
        return np.fromfile(Path(out_dir) / entry["file"], "<f2").reshape(shape).astype(np.float32)
    q = np.fromfile(Path(out_dir) / entry["file"], "<i1").reshape(shape).astype(np.float32)
    scales = np.fromfile(Path(out_dir) / entry["scales"]["file"], "<f2").astype(np.float32)
    return q * scales[:, None]


def write_voices(speakers: Dict[str, dict], conditions: Dict[str, np.ndarray], out_dir: Path) -> dict:
    """speakers.safetensors/json (the project's voice files, as `omni-edge convert` writes them) and
    `voice_conditions.f32.bin` [voices, 2, enc_dim + enc_emb_dim]: per voice the DiT's guided
    and null speaker columns (see wrappers.DiTWindow)."""
    speakers_io.save_speakers(speakers, out_dir)
    names = list(speakers)
    entry = {"files": [speakers_io.SAFETENSORS_NAME, speakers_io.JSON_NAME],
             "voices": [{"name": n, "index": i, "bos_token": int(speakers[n]["bos_token"])}
                        for i, n in enumerate(names)]}
    if conditions:
        table = np.stack([conditions[n] for n in names]).astype("<f4")
        path = out_dir / "voice_conditions.f32.bin"
        table.tofile(path)
        entry["dit_conditions"] = {"file": path.name, "dtype": "float32", "shape": list(table.shape),
                                   "rows": ["guided: ECAPA(ref_mel) ++ x-vector",
                                            "null: ECAPA(zeros) ++ zeros"]}
    return entry
