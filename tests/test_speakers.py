"""Tests for the torch-free spk_dict.pt reader/writer and the converted speaker files."""

import json
import zipfile

import numpy as np
import pytest

from omni_edge.convert import speakers

BOS_CHELSIE = 151870
BOS_ETHAN = 151871


def _torch():
    return pytest.importorskip("torch")


def _real_like_dict(torch):
    torch.manual_seed(0)
    bigger = torch.randn(3, 200)
    return {
        "Chelsie": {"cond": torch.randn(1, 192), "ref_mel": torch.randn(1, 400, 80).bfloat16(),
                    "bos_token": BOS_CHELSIE, "note": "extra keys are ignored"},
        "Ethan": {"cond": bigger[1:2, 4:196],  # storage offset 204 into a bigger storage
                  "ref_mel": torch.randn(1, 80, 50).half().transpose(1, 2),  # non-contiguous view
                  "bos_token": BOS_ETHAN},
    }


def _numpy_voices():
    rng = np.random.default_rng(0)
    return {"Chelsie": {"cond": rng.standard_normal((1, 192), np.float32),
                        "ref_mel": rng.standard_normal((1, 30, 80), np.float32), "bos_token": BOS_CHELSIE},
            "Ethan": {"cond": rng.standard_normal((1, 192), np.float32),
                      "ref_mel": rng.standard_normal((1, 20, 80), np.float32), "bos_token": BOS_ETHAN}}


def _replace_pickle(src, dst, pickle_bytes):
    """Copy a torch archive, swapping in a hand-made data.pkl."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, pickle_bytes if name.endswith("/data.pkl") else zin.read(name))


def _zip_bytes(tmp_path, records):
    path = tmp_path / "scratch.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)
    return path.read_bytes()


def test_load_speakers_matches_torch_exactly(tmp_path):
    torch = _torch()
    original = _real_like_dict(torch)
    path = tmp_path / "spk_dict.pt"
    torch.save(original, path)
    loaded = speakers.load_speakers(path)
    assert sorted(loaded) == ["Chelsie", "Ethan"]
    for name, voice in loaded.items():
        assert set(voice) == {"cond", "ref_mel", "bos_token"}
        for key in ("cond", "ref_mel"):
            assert voice[key].dtype == np.float32
            np.testing.assert_array_equal(voice[key], original[name][key].float().numpy())
    assert (loaded["Chelsie"]["bos_token"], loaded["Ethan"]["bos_token"]) == (BOS_CHELSIE, BOS_ETHAN)


def test_read_torch_pickle_dtypes_shared_and_edge_tensors(tmp_path):
    torch = _torch()
    base = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    obj = {"i64": base, "col": base[:, 1], "f64": torch.randn(2, 3, dtype=torch.float64),
           "i32": torch.tensor([-5, 7], dtype=torch.int32), "i8": torch.tensor([-1, 2], dtype=torch.int8),
           "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False]),
           "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 80), "list": [1, 2.0, None, "x", (True,)]}
    path = tmp_path / "misc.pt"
    torch.save(obj, path)
    loaded = speakers.read_torch_pickle(path)
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            assert loaded[key].dtype == value.numpy().dtype, key
            np.testing.assert_array_equal(loaded[key], value.numpy())
        else:
            assert loaded[key] == value


def test_write_torch_pickle_is_read_by_torch(tmp_path):
    torch = _torch()
    obj = {"Chelsie": {"cond": np.linspace(-1, 1, 192, dtype=np.float32).reshape(1, 192),
                       "ref_mel": np.arange(400, dtype=np.float16).reshape(1, 5, 80),
                       "bos_token": BOS_CHELSIE},
           "ints": np.arange(6, dtype=np.int64).reshape(2, 3).T,  # non-contiguous input
           "scalars": [0, 255, 256, 70000, -3, 2**40, -(2**70), 1.5, True, None, "späker"],
           "tuple": (1, ()), "empty": {}}
    path = tmp_path / "written.pt"
    speakers.write_torch_pickle(obj, path)
    for back in (torch.load(path, weights_only=True), torch.load(path, weights_only=True, mmap=True)):
        chelsie = back["Chelsie"]
        assert chelsie["cond"].dtype == torch.float32 and chelsie["ref_mel"].dtype == torch.float16
        np.testing.assert_array_equal(chelsie["cond"].numpy(), obj["Chelsie"]["cond"])
        np.testing.assert_array_equal(chelsie["ref_mel"].numpy(), obj["Chelsie"]["ref_mel"])
        np.testing.assert_array_equal(back["ints"].numpy(), obj["ints"])
        assert chelsie["bos_token"] == BOS_CHELSIE
        assert back["scalars"] == obj["scalars"] and back["tuple"] == obj["tuple"] and back["empty"] == {}
    ours = speakers.read_torch_pickle(path)
    np.testing.assert_array_equal(ours["Chelsie"]["ref_mel"], obj["Chelsie"]["ref_mel"])
    assert ours["Chelsie"]["ref_mel"].dtype == np.float16 and ours["scalars"] == obj["scalars"]


def test_write_torch_pickle_without_torch_round_trips(tmp_path):
    path = tmp_path / "spk_dict.pt"
    voices = _numpy_voices()
    speakers.write_torch_pickle(voices, path)
    loaded = speakers.load_speakers(path)
    for name, voice in voices.items():
        np.testing.assert_array_equal(loaded[name]["cond"], voice["cond"])
        np.testing.assert_array_equal(loaded[name]["ref_mel"], voice["ref_mel"])
        assert loaded[name]["bos_token"] == voice["bos_token"]


def test_save_and_load_converted_speakers(tmp_path):
    voices = _numpy_voices()
    speakers.save_speakers(voices, tmp_path / "model")
    index = json.loads((tmp_path / "model" / "speakers.json").read_text())
    assert index["speakers"]["Ethan"] == {"bos_token": BOS_ETHAN, "cond_shape": [1, 192],
                                          "ref_mel_shape": [1, 20, 80]}
    loaded = speakers.load_converted_speakers(tmp_path / "model")
    assert sorted(loaded) == ["Chelsie", "Ethan"]
    for name, voice in voices.items():
        np.testing.assert_array_equal(loaded[name]["cond"], voice["cond"])
        np.testing.assert_array_equal(loaded[name]["ref_mel"], voice["ref_mel"])
        assert loaded[name]["bos_token"] == voice["bos_token"]


def test_load_converted_speakers_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="speakers.json"):
        speakers.load_converted_speakers(tmp_path)
    speakers.save_speakers(_numpy_voices(), tmp_path)
    index = json.loads((tmp_path / "speakers.json").read_text())
    index["speakers"]["Ghost"] = dict(index["speakers"]["Ethan"])
    (tmp_path / "speakers.json").write_text(json.dumps(index))
    with pytest.raises(speakers.SpeakerFileError, match="Ghost"):
        speakers.load_converted_speakers(tmp_path)


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def test_refuses_os_system_without_running_it(tmp_path):
    import os

    torch = _torch()
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"Chelsie": _RunsCode(os.system, f"echo pwned > {marker}")}, path)
    with pytest.raises(speakers.SpeakerFileError, match=r"(os|posix)\.system") as err:
        speakers.load_speakers(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_refuses_builtins_eval_without_running_it(tmp_path):
    torch = _torch()
    marker = tmp_path / "MARKER"
    real = tmp_path / "real.pt"
    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, real)
    code = f"open({str(marker)!r}, 'w').write('pwned')".encode()
    # PROTO 2, GLOBAL builtins.eval, BINUNICODE code, TUPLE1, REDUCE, STOP
    evil_pickle = b"\x80\x02cbuiltins\neval\nX" + len(code).to_bytes(4, "little") + code + b"\x85R."
    _replace_pickle(real, evil, evil_pickle)
    with pytest.raises(speakers.SpeakerFileError, match=r"builtins\.eval") as err:
        speakers.read_torch_pickle(evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # proves the crafted file really is an exploit
    assert marker.exists()


BARE_STORAGE = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
RENAME_STATE = b"}X\x04\x00\x00\x00nameX\x0f\x00\x00\x00BFloat16Storages"


@pytest.mark.parametrize("body, why", [
    (BARE_STORAGE, "_Storage"),  # a storage handed out instead of a tensor
    (b"ctorch\nFloatStorage\n" + RENAME_STATE + b"b", "modify _StorageType"),  # BUILD poisoning a stand-in
    (b"ctorch\nFloatStorage\nN" + RENAME_STATE + b"\x86b", "modify _StorageType"),  # slot-state variant
    (b"ctorch._utils\n_rebuild_tensor_v2\n" + RENAME_STATE + b"b", "modify _Callable"),
    (b"ctorch\nFloatStorage\n)R", "not callable"),
])
def test_refuses_objects_outside_the_allowed_types(tmp_path, body, why):
    real = tmp_path / "real.pt"
    evil = tmp_path / "bad.pt"
    speakers.write_torch_pickle({"x": np.zeros(1, np.float32)}, real)
    _replace_pickle(real, evil, b"\x80\x02" + body + b".")
    with pytest.raises(speakers.SpeakerFileError, match=why):
        speakers.read_torch_pickle(evil)
    assert speakers.SAFE_GLOBALS[("torch", "FloatStorage")].name == "FloatStorage"


def test_bad_files_name_the_path(tmp_path):
    good = tmp_path / "good.pt"
    speakers.write_torch_pickle(_numpy_voices(), good)
    data = good.read_bytes()
    cases = {"truncated.pt": (data[: len(data) // 2], "truncated or corrupt"),
             "garbage.pt": (b"not a checkpoint " * 20, "not a torch zip archive"),
             "legacy.pt": (b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19." + b"\x00" * 20, "legacy"),
             "other_zip.pt": (_zip_bytes(tmp_path, {"model/weights.bin": b"\x00" * 8}), "not a torch.save")}
    for name, (content, why) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(speakers.SpeakerFileError, match=why) as err:
            speakers.load_speakers(path)
        assert str(path) in str(err.value), name
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError) as err:
        speakers.load_speakers(missing)
    assert str(missing) in str(err.value)


def test_legacy_torch_file_is_rejected(tmp_path):
    torch = _torch()
    path = tmp_path / "legacy.pt"
    torch.save({"Chelsie": {"bos_token": 1}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(speakers.SpeakerFileError, match="legacy") as err:
        speakers.load_speakers(path)
    assert str(path) in str(err.value)


def test_corrupt_storage_bytes_are_rejected(tmp_path):
    path = tmp_path / "spk_dict.pt"
    voices = _numpy_voices()
    speakers.write_torch_pickle(voices, path)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(voices["Chelsie"]["cond"].tobytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(speakers.SpeakerFileError, match="CRC") as err:
        speakers.load_speakers(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("edit, key", [
    (lambda v: v["Ethan"].pop("bos_token"), "bos_token"),
    (lambda v: v["Ethan"].update(bos_token=1.5), "bos_token"),
    (lambda v: v["Ethan"].update(ref_mel=np.zeros((1, 20, 81), np.float32)), "ref_mel"),
    (lambda v: v["Ethan"].update(cond=np.zeros((2, 192), np.float32)), "cond"),
    (lambda v: v["Ethan"].update(cond=np.arange(192, dtype=np.int64)), "cond"),
])
def test_wrong_structure_names_speaker_and_key(tmp_path, edit, key):
    voices = _numpy_voices()
    edit(voices)
    path = tmp_path / "spk_dict.pt"
    speakers.write_torch_pickle(voices, path)
    with pytest.raises(speakers.SpeakerFileError, match=f"'Ethan' key '{key}'") as err:
        speakers.load_speakers(path)
    assert str(path) in str(err.value)


def test_top_level_must_be_a_dict(tmp_path):
    path = tmp_path / "spk_dict.pt"
    speakers.write_torch_pickle([1, 2], path)
    with pytest.raises(speakers.SpeakerFileError, match="non-empty dict"):
        speakers.load_speakers(path)


def test_big_endian_archive_is_byteswapped(tmp_path):
    voices = _numpy_voices()
    little, big = tmp_path / "little.pt", tmp_path / "big.pt"
    speakers.write_torch_pickle(voices, little)
    with zipfile.ZipFile(little) as zin, zipfile.ZipFile(big, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if "/data/" in name:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            zout.writestr(name, b"big" if name.endswith("/byteorder") else data)
    loaded = speakers.load_speakers(big)
    np.testing.assert_array_equal(loaded["Ethan"]["ref_mel"], voices["Ethan"]["ref_mel"])
