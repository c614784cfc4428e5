"""Read Qwen2.5-Omni's ``spk_dict.pt`` without torch (a restricted unpickler that cannot run code),
write torch-loadable archives without torch, and store the voices as safetensors + JSON."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

# Storage class name (as pickled under module "torch") -> little-endian numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}
BFLOAT16_STORAGE = "BFloat16Storage"
WRITABLE_STORAGES = {np.dtype(code): name for name, code in STORAGE_DTYPES.items()
                     if name not in (BFLOAT16_STORAGE, "UntypedStorage")}
PLAIN_TYPES = (dict, list, tuple, int, float, bool, str, type(None), np.ndarray)
ARCHIVE_FOLDER = "archive"
DATA_ALIGNMENT = 64
PAD_FIELD_ID = 0x4246  # the "FB" extra field torch uses to pad local zip headers
LOCAL_HEADER_SIZE = 30
MEL_BINS = 80
VOICE_KEYS = ("cond", "ref_mel", "bos_token")
SAFETENSORS_NAME = "speakers.safetensors"
JSON_NAME = "speakers.json"
ENCODINGS_NAME = "speaker_encodings.safetensors"
REDOWNLOAD = "re-download spk_dict.pt from the model repo"
RECONVERT = "convert spk_dict.pt again with save_speakers"


class SpeakerFileError(ValueError):
    """A speaker file is unreadable, unsafe or malformed; the message names the file and the fix."""


class _Sealed:
    """Base of every object the unpickler hands out; BUILD cannot tamper with them."""

    __slots__ = ()

    def __setstate__(self, state):
        raise ValueError(f"the pickle tried to modify {type(self).__name__}")


class _StorageType(_Sealed):
    """Stand-in for a ``torch.*Storage`` class; deliberately not callable."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage(_Sealed):
    """A storage read from the archive; only tensor rebuilds may consume it."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _Callable(_Sealed):
    """An allowed global the pickle may call."""

    __slots__ = ("func",)

    def __init__(self, func):
        self.func = func

    def __call__(self, *args):
        return self.func(*args)


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _Storage):
        raise ValueError("tensor rebuilt from something that is not a storage")
    size, stride = tuple(size), tuple(stride)
    values = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"bad tensor geometry offset={storage_offset!r} size={size!r} stride={stride!r}")
    data = storage.array
    if 0 in size:
        return np.empty(size, data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise ValueError(f"tensor of size {size} reads past its storage of {data.size} elements")
    strides = tuple(s * data.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(data[storage_offset:], size, strides).copy()


SAFE_GLOBALS = {
    # v2 adds requires_grad, backward_hooks and (sometimes) metadata, none of which matter here.
    ("torch._utils", "_rebuild_tensor_v2"): _Callable(lambda *args: _rebuild_tensor(*args[:4])),
    ("torch._utils", "_rebuild_tensor"): _Callable(_rebuild_tensor),
    ("collections", "OrderedDict"): _Callable(dict),
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage"),
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self._path, self._archive, self._prefix, self._byteorder = path, archive, prefix, byteorder
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        target = SAFE_GLOBALS.get((module, name))
        if target is None:
            raise SpeakerFileError(
                f"{self._path} refers to the pickle global {module}.{name}, which is refused because "
                f"loading it could run code; use the official spk_dict.pt from the model repo")
        return target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[4]) is int and pid[4] >= 0):
            raise ValueError(f"unsupported persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if str(key) not in self._storages:
            self._storages[str(key)] = _Storage(self._read_storage(storage_type.name, str(key), numel))
        return self._storages[str(key)]

    def _read_storage(self, type_name: str, key: str, numel: int) -> np.ndarray:
        record = f"{self._prefix}data/{key}"
        dtype = np.dtype(STORAGE_DTYPES[type_name]).newbyteorder(self._byteorder)
        try:
            info = self._archive.getinfo(record)
        except KeyError:
            raise ValueError(f"storage record {record} is missing") from None
        if info.file_size != numel * dtype.itemsize:
            raise ValueError(f"storage record {record} does not hold {numel} {type_name} elements")
        raw = np.frombuffer(self._archive.read(record), dtype)
        if type_name == BFLOAT16_STORAGE:
            # bfloat16 is the top half of a float32, so widening is exact.
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(dtype.newbyteorder("="))


def _open_archive(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; download spk_dict.pt from the model repo")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(b"\x80"):
            why = "it is a legacy (pre-zip) torch.save file; re-save it in the zip format with torch>=1.6"
        elif head.startswith(b"PK"):
            why = f"the zip archive is truncated or corrupt ({exc}); {REDOWNLOAD}"
        else:
            why = f"it is not a torch zip archive (starts with {head!r}); {REDOWNLOAD}"
        raise SpeakerFileError(f"{path} cannot be read: {why}") from exc


def _archive_prefix(path: Path, archive: zipfile.ZipFile) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise SpeakerFileError(f"{path} is a zip archive but not a torch.save one (no single "
                               f"<folder>/data.pkl record); {REDOWNLOAD}")
    return pickles[0][: -len("data.pkl")]


def _byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    record = prefix + "byteorder"
    order = archive.read(record).decode() if record in archive.namelist() else "little"
    if order not in ("little", "big"):
        raise ValueError(f"unknown byteorder record {order!r}")
    return "<" if order == "little" else ">"


def _children(obj) -> list:
    if isinstance(obj, dict):
        return [item for pair in obj.items() for item in pair]
    return list(obj) if isinstance(obj, (list, tuple)) else []


def _check_plain(obj) -> None:
    if not isinstance(obj, PLAIN_TYPES):
        raise ValueError(f"the pickle produced a {type(obj).__name__}, which a speaker file never holds")
    for child in _children(obj):
        _check_plain(child)


def read_torch_pickle(path) -> object:
    """Load a torch.save zip archive into plain Python objects, tensors as numpy arrays."""
    path = Path(path)
    with _open_archive(path) as archive:
        prefix = _archive_prefix(path, archive)
        try:
            obj = _SafeUnpickler(path, archive, prefix, _byteorder(archive, prefix)).load()
            _check_plain(obj)
        except SpeakerFileError:
            raise
        except Exception as exc:  # any failure past this point (pickle, zip CRC, geometry) means a bad file
            raise SpeakerFileError(f"{path} is corrupt ({type(exc).__name__}: {exc}); {REDOWNLOAD}") from exc
    return obj


def _pickle_int(n: int) -> bytes:
    if 0 <= n < 1 << 8:
        return b"K" + bytes([n])
    if 0 <= n < 1 << 16:
        return b"M" + struct.pack("<H", n)
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _pickle_tensor(arr: np.ndarray, out: bytearray, storages: list[bytes]) -> None:
    dtype = arr.dtype.newbyteorder("<")
    if dtype not in WRITABLE_STORAGES:
        raise TypeError(f"write_torch_pickle cannot store arrays of dtype {arr.dtype}")
    key = str(len(storages))
    storages.append(arr.astype(dtype).tobytes())
    strides = tuple(int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim))
    out += b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
    out += f"ctorch\n{WRITABLE_STORAGES[dtype]}\n".encode()
    for item in (key, "cpu", arr.size):
        _pickle(item, out, storages)
    out += b"tQ"
    for item in (0, tuple(arr.shape), strides, False):
        _pickle(item, out, storages)
    out += b"ccollections\nOrderedDict\n)RtR"


def _pickle(obj, out: bytearray, storages: list[bytes]) -> None:
    if obj is None:
        out += b"N"
    elif isinstance(obj, (bool, np.bool_)):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, (int, np.integer)):
        out += _pickle_int(int(obj))
    elif isinstance(obj, (float, np.floating)):
        out += b"G" + struct.pack(">d", float(obj))
    elif isinstance(obj, str):
        data = obj.encode()
        out += b"X" + struct.pack("<I", len(data)) + data
    elif isinstance(obj, np.ndarray):
        _pickle_tensor(obj, out, storages)
    elif isinstance(obj, (dict, list, tuple)):
        start, end = {dict: (b"}(", b"u"), list: (b"](", b"e"), tuple: (b"(", b"t")}[type(obj)]
        out += start
        for item in _children(obj):
            _pickle(item, out, storages)
        out += end
    else:
        raise TypeError(f"write_torch_pickle cannot store {type(obj).__name__}")


def _write_aligned(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    # Torch pads each local header so record data starts on a 64-byte boundary (needed by mmap loads).
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    header_end = archive.fp.tell() + LOCAL_HEADER_SIZE + len(name.encode()) + 4
    pad = -header_end % DATA_ALIGNMENT
    info.extra = struct.pack("<HH", PAD_FIELD_ID, pad) + bytes(pad)
    archive.writestr(info, data)


def write_torch_pickle(obj, path) -> None:
    """Write ``obj`` (dicts, lists, tuples, scalars, str, numpy arrays) as a torch.save zip archive."""
    out, storages = bytearray(b"\x80\x02"), []
    _pickle(obj, out, storages)
    out += b"."
    serialization_id = str(int.from_bytes(hashlib.sha256(out).digest()[:16], "little")).zfill(40)
    records = [("data.pkl", bytes(out)), (".format_version", b"1"),
               (".storage_alignment", str(DATA_ALIGNMENT).encode()), ("byteorder", b"little"),
               *((f"data/{i}", data) for i, data in enumerate(storages)),
               ("version", b"3\n"), (".data/serialization_id", serialization_id.encode())]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            _write_aligned(archive, f"{ARCHIVE_FOLDER}/{name}", data)


def _check_voice(source, name, voice, fix: str = REDOWNLOAD) -> dict:
    def bad(key, what):
        return SpeakerFileError(f"{source}: speaker {name!r} key {key!r} {what}; {fix}")

    if not isinstance(name, str) or not name or not isinstance(voice, dict):
        raise bad("*", "is not a speaker name mapped to a dict")
    for key in VOICE_KEYS:
        if key not in voice:
            raise bad(key, "is missing")
    arrays = {}
    for key, batched_ndim in (("cond", 2), ("ref_mel", 3)):
        arr = voice[key]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise bad(key, "is not a finite float tensor")
        arr = arr[None] if arr.ndim == batched_ndim - 1 else arr
        if arr.ndim != batched_ndim or arr.shape[0] != 1 or 0 in arr.shape:
            raise bad(key, f"has shape {list(voice[key].shape)}, expected a non-empty batch of one")
        if key == "ref_mel" and arr.shape[2] != MEL_BINS:
            raise bad(key, f"has {arr.shape[2]} mel bins, expected {MEL_BINS}")
        arrays[key] = np.ascontiguousarray(arr, np.float32)
    bos = voice["bos_token"]
    if isinstance(bos, np.ndarray) and bos.dtype.kind in "iu" and bos.size == 1:
        bos = int(bos.item())
    if type(bos) is not int:
        raise bad("bos_token", f"is a {type(bos).__name__}, expected an int")
    return {**arrays, "bos_token": bos}


def load_speakers(path) -> dict[str, dict]:
    """Read and validate spk_dict.pt as ``{name: {"cond", "ref_mel", "bos_token"}}``.

    ``cond`` is float32 ``[1, D]``, ``ref_mel`` float32 ``[1, T, 80]``, ``bos_token`` an int;
    other keys are dropped.
    """
    obj = read_torch_pickle(path)
    if not isinstance(obj, dict) or not obj:
        raise SpeakerFileError(f"{path} should hold a non-empty dict of speaker name -> voice, "
                               f"found {type(obj).__name__}; {REDOWNLOAD}")
    return {name: _check_voice(path, name, voice) for name, voice in obj.items()}


def save_speakers(speakers: dict[str, dict], out_dir) -> None:
    """Write ``speakers.safetensors`` (float32 tensors) and ``speakers.json`` (tokens and shapes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{key}": np.ascontiguousarray(voice[key], np.float32)
               for name, voice in speakers.items() for key in ("cond", "ref_mel")}
    save_file(tensors, str(out_dir / SAFETENSORS_NAME))
    index = {name: {"bos_token": int(voice["bos_token"]), "cond_shape": list(voice["cond"].shape),
                    "ref_mel_shape": list(voice["ref_mel"].shape)} for name, voice in speakers.items()}
    (out_dir / JSON_NAME).write_text(json.dumps({"speakers": index}, indent=2, sort_keys=True) + "\n")


def load_converted_speakers(model_dir) -> dict[str, dict]:
    """Read the files written by :func:`save_speakers`, checking they agree with each other."""
    model_dir = Path(model_dir)
    json_path, tensor_path = model_dir / JSON_NAME, model_dir / SAFETENSORS_NAME
    for needed in (json_path, tensor_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist; convert spk_dict.pt with save_speakers first")
    try:
        index = json.loads(json_path.read_text())["speakers"]
        tensors = load_file(str(tensor_path))
        entries = {name: (entry["bos_token"], entry["cond_shape"], entry["ref_mel_shape"])
                   for name, entry in index.items()}
    except Exception as exc:  # malformed JSON or safetensors both mean: convert again
        raise SpeakerFileError(f"{model_dir} holds unreadable speaker files ({exc!r}); {RECONVERT}") from exc
    expected_keys = {f"{name}.{key}" for name in entries for key in ("cond", "ref_mel")}
    if set(tensors) != expected_keys:
        raise SpeakerFileError(f"{tensor_path} tensors {sorted(set(tensors) ^ expected_keys)} do not "
                               f"match the speakers in {json_path}; {RECONVERT}")
    speakers = {}
    for name, (bos, cond_shape, mel_shape) in entries.items():
        voice = {"cond": tensors[f"{name}.cond"], "ref_mel": tensors[f"{name}.ref_mel"], "bos_token": bos}
        speakers[name] = _check_voice(tensor_path, name, voice, RECONVERT)
        if [cond_shape, mel_shape] != [list(voice["cond"].shape), list(voice["ref_mel"].shape)]:
            raise SpeakerFileError(f"{json_path}: speaker {name!r} shapes disagree with {tensor_path}; "
                                   f"{RECONVERT}")
    return speakers


def save_encodings(encodings: dict, out_dir) -> None:
    """Write each voice's precomputed speaker encoding ([2, enc_dim] float32) for the DiT."""
    tensors = {name: np.ascontiguousarray(np.array(enc, np.float32)) for name, enc in encodings.items()}
    save_file(tensors, str(Path(out_dir) / ENCODINGS_NAME))


def load_encodings(model_dir, speakers: dict) -> dict:
    """The encodings :func:`save_encodings` wrote, or {} when the model has none (converted
    before they existed: the runtime then loads the ECAPA encoder)."""
    path = Path(model_dir) / ENCODINGS_NAME
    if not path.is_file():
        return {}
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file: convert again
        raise SpeakerFileError(f"{path} is unreadable ({exc!r}); {RECONVERT}") from exc
    if set(tensors) != set(speakers) or any(t.ndim != 2 or t.shape[0] != 2 for t in tensors.values()):
        raise SpeakerFileError(f"{path} does not match the voices in {JSON_NAME} "
                               f"({sorted(tensors)} vs {sorted(speakers)}); convert the model again")
    return tensors
