"""Find a Hugging Face checkpoint (local directory or hub repo id) and read its weight shards."""

import json
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Everything a Qwen2.5-Omni repo holds that the runtime uses (no PyTorch .bin shards).
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.pt", "tokenizer*"]
HEADER_LIMIT = 100 * 2**20


class CheckpointError(ValueError):
    """A checkpoint directory whose files are missing, truncated or inconsistent."""


def looks_like_repo_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and "\\" not in path


def resolve_model_path(path_or_repo: str, revision: Optional[str] = None) -> Path:
    """A local model directory as is; a hub repo id downloaded (with progress) or taken
    from the local Hugging Face cache."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the model directory that holds config.json")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json, so it is not a model directory; pass the folder "
                "of a Qwen2.5-Omni checkpoint (e.g. a download of Qwen/Qwen2.5-Omni-3B)"
            )
        return path
    if not looks_like_repo_id(str(path_or_repo)):
        raise FileNotFoundError(
            f"{path_or_repo} does not exist; pass a model directory or a hub repo id such as "
            "Qwen/Qwen2.5-Omni-3B"
        )
    return Path(_download(str(path_or_repo), revision))


def _download(repo_id: str, revision: Optional[str]) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "not here"
        try:
            return snapshot_download(
                repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS, local_files_only=True
            )
        except Exception:  # noqa: BLE001
            pass
        raise CheckpointError(
            f"could not download {repo_id} ({type(err).__name__}: {err}) and it is not in the "
            "local Hugging Face cache. Connect to the internet once, or download it elsewhere "
            "and pass the local directory."
        ) from None


def safetensors_header(path: Path) -> Dict[str, dict]:
    """The tensor table of a .safetensors file, checked against the file's real size so a
    truncated or corrupt download is reported before anything reads it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes); re-download it")
        (n,) = struct.unpack("<Q", raw)
        if n > min(HEADER_LIMIT, size - 8):
            raise CheckpointError(f"{path} is not a valid safetensors file (bad header); re-download it")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} has a corrupt safetensors header; re-download it") from None
    header.pop("__metadata__", None)
    data_size = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + data_size > size:
        raise CheckpointError(
            f"{path} is truncated: its header needs {8 + n + data_size} bytes but the file has "
            f"{size}; re-download it"
        )
    return header


def weight_shards(model_dir: Path) -> List[Tuple[Path, List[str]]]:
    """The safetensors shards of a checkpoint, in order, with the tensor names each holds."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index} is not a valid safetensors index; re-download it") from None
        by_shard: Dict[str, List[str]] = {}
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        shards = []
        for shard in sorted(by_shard):
            path = model_dir / shard
            if not path.is_file():
                raise CheckpointError(
                    f"{path} is listed in {INDEX_FILE} but missing; the download is incomplete, "
                    "fetch the missing shard"
                )
            header = safetensors_header(path)
            absent = [k for k in by_shard[shard] if k not in header]
            if absent:
                raise CheckpointError(
                    f"{path} lacks {len(absent)} tensors that {INDEX_FILE} puts there "
                    f"(e.g. {absent[0]}); re-download the shard"
                )
            shards.append((path, sorted(by_shard[shard])))
        return shards
    files = sorted(model_dir.glob("*.safetensors"))
    files = [f for f in files if f.name != "speakers.safetensors"]
    if not files:
        raise CheckpointError(
            f"{model_dir} holds no safetensors weights ({INDEX_FILE} or {SINGLE_FILE}); "
            "PyTorch .bin checkpoints are not supported"
        )
    return [(f, sorted(safetensors_header(f))) for f in files]
