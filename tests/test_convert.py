"""The HF → MLX converter on the torch-free demo checkpoint: layout, quantization,
idempotence, atomic output, and every bad input the issue names."""

import json
import shutil
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from omni_edge import generate, load
from omni_edge.cli import main as cli_main
from omni_edge.config import ConfigError
from omni_edge.convert.hub import CheckpointError
from omni_edge.convert.mlx import convert
from omni_edge.convert.speakers import SpeakerFileError
from omni_edge.demo.checkpoint import write_demo_checkpoint

AUDIO_CONV1 = "thinker.audio_tower.conv1.weight"
BIGVGAN_UP = "token2wav.code2wav_bigvgan_model.ups.0.0.weight"
EMBED = "thinker.model.embed_tokens.weight"


@pytest.fixture(scope="module")
def demo_hf(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "hf")


@pytest.fixture(scope="module")
def demo_mlx(demo_hf, tmp_path_factory):
    return convert(str(demo_hf), str(tmp_path_factory.mktemp("mlx") / "out"), dtype="float32")


@pytest.fixture
def hf_copy(demo_hf, tmp_path):
    return Path(shutil.copytree(demo_hf, tmp_path / "hf"))


def read_all(model_dir: Path) -> dict:
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(mx.load(str(model_dir / shard)))
    assert sorted(out) == sorted(index["weight_map"])
    return out


def hf_tensors(model_dir: Path) -> dict:
    return read_all(model_dir)


def no_leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_output_layout(demo_hf, demo_mlx):
    src, out = hf_tensors(demo_hf), read_all(demo_mlx)
    assert set(src) == set(out)
    # Conv1d [out, in, k] → [out, k, in]; ConvTranspose1d [in, out, k] → [out, k, in].
    np.testing.assert_array_equal(np.array(out[AUDIO_CONV1]), np.array(src[AUDIO_CONV1]).transpose(0, 2, 1))
    np.testing.assert_array_equal(np.array(out[BIGVGAN_UP]), np.array(src[BIGVGAN_UP]).transpose(1, 2, 0))
    patch = "thinker.visual.patch_embed.proj.weight"
    assert out[patch].shape == (src[patch].shape[0], int(np.prod(src[patch].shape[1:])))
    cfg = json.loads((demo_mlx / "config.json").read_text())
    assert cfg["omni_edge"]["format_version"] == 1 and "quantization" not in cfg
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json",
                 "preprocessor_config.json", "speakers.safetensors", "speakers.json"):
        assert (demo_mlx / name).is_file(), name


def test_bf16_keeps_token2wav_float32(demo_hf, tmp_path):
    out = read_all(convert(str(demo_hf), str(tmp_path / "bf16")))
    assert out[EMBED].dtype == mx.bfloat16
    assert out[BIGVGAN_UP].dtype == mx.float32
    assert out["token2wav.code2wav_dit_model.proj_out.weight"].dtype == mx.float32


def test_convert_is_idempotent(demo_mlx, tmp_path):
    again = convert(str(demo_mlx), str(tmp_path / "again"))
    a, b = read_all(demo_mlx), read_all(again)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item(), k
    assert json.loads((demo_mlx / "config.json").read_text()) == json.loads((again / "config.json").read_text())
    assert (demo_mlx / "speakers.safetensors").read_bytes() == (again / "speakers.safetensors").read_bytes()


def test_output_is_sharded_by_size(demo_hf, tmp_path):
    out = convert(str(demo_hf), str(tmp_path / "small"), dtype="float32", max_shard_bytes=20 * 2**20)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert all(s.stat().st_size < 2 * 20 * 2**20 for s in shards)
    assert len(shards[0].name.split("-of-")) == 2
    read_all(out)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_models_load_and_generate(demo_hf, tmp_path, bits):
    out = convert(str(demo_hf), str(tmp_path / f"q{bits}"), quantize=True, q_bits=bits, q_group_size=32)
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization"]
    assert q["bits"] == bits and q["components"]["thinker"]["bits"] == bits
    assert q["components"]["talker"]["bits"] == 8 and "token2wav" not in q["components"]
    w = read_all(out)
    assert EMBED.replace("weight", "scales") in w  # embeddings quantized, as mlx-lm does
    assert "thinker.lm_head.scales" in w
    assert not any(k.startswith("token2wav") and k.endswith(".scales") for k in w)
    model = load(str(out))
    result = generate(model, "hello", max_tokens=4)
    assert len(result.token_ids) == 4 or result.finish_reason == "stop"


def test_existing_output_is_refused_then_forced(demo_hf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        convert(str(demo_hf), str(out))
    assert (out / "keep.txt").read_text() == "mine"
    convert(str(demo_hf), str(out), force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert no_leftovers(tmp_path) == []


def test_missing_and_non_model_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert(str(tmp_path / "nope" / "x" / "y"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert(str(tmp_path / "empty"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_other_model_type(hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["model_type"] = "llama"
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="llama"):
        convert(str(hf_copy), str(tmp_path / "out"))


def _first_shard(model_dir: Path) -> Path:
    return sorted(model_dir.glob("model-*.safetensors"))[0]


def test_truncated_shard_leaves_nothing(hf_copy, tmp_path):
    shard = _first_shard(hf_copy)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard.name} is truncated"):
        convert(str(hf_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_corrupt_header(hf_copy, tmp_path):
    shard = _first_shard(hf_copy)
    data = bytearray(shard.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 : 8 + n] = b"#" * n
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        convert(str(hf_copy), str(tmp_path / "out"))


def test_shard_missing_from_disk(hf_copy, tmp_path):
    shard = _first_shard(hf_copy)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name} is listed in"):
        convert(str(hf_copy), str(tmp_path / "out"))


def test_tensor_with_wrong_shape_is_named(hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["thinker_config"]["text_config"]["intermediate_size"] += 8
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"thinker\.model\.layers\.0\.mlp\.\w+_proj\.weight"):
        convert(str(hf_copy), str(tmp_path / "out"))
    assert no_leftovers(tmp_path) == []


def test_tensor_missing_from_checkpoint(hf_copy, tmp_path):
    index_path = hf_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop("thinker.model.norm.weight")
    tensors = dict(mx.load(str(hf_copy / shard)))
    tensors.pop("thinker.model.norm.weight")
    mx.save_safetensors(str(hf_copy / shard), tensors)
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="thinker.model.norm.weight"):
        convert(str(hf_copy), str(tmp_path / "out"))


def test_foreign_pickle_in_speakers_fails_cleanly(hf_copy, tmp_path):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(hf_copy / "spk_dict.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"Chelsie": Evil()}, protocol=2))
    with pytest.raises(SpeakerFileError, match="spk_dict.pt"):
        convert(str(hf_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_prompt_longer_than_context(demo_mlx):
    model = load(str(demo_mlx))
    long_prompt = "word " * 200
    with pytest.raises(ValueError, match="context holds 64"):
        generate(model, long_prompt, max_tokens=4, max_context=64)
    with pytest.warns(UserWarning, match="truncated"):
        result = generate(model, long_prompt, max_tokens=4, max_context=64, truncate=True)
    assert len(result.token_ids) <= 4


def test_cli_convert_and_generate(demo_hf, tmp_path, capsys):
    out = tmp_path / "cli"
    cli_main(["convert", "--hf-path", str(demo_hf), "--mlx-path", str(out), "-q", "--q-group-size", "32"])
    assert (out / "config.json").is_file()
    cli_main(["generate", "--model", str(out), "--prompt", "hi", "--max-tokens", "3"])
    printed = capsys.readouterr().out
    assert "Generation: 3 tokens" in printed and "Peak memory" in printed
    with pytest.raises(SystemExit) as exc:
        cli_main(["convert", "--hf-path", str(demo_hf), "--mlx-path", str(out)])
    assert exc.value.code == 2
    assert "--force" in capsys.readouterr().err


def _run_offline(code: str, cache: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_repo_id_from_the_hub_cache_and_offline_error(demo_hf, tmp_path):
    cache = tmp_path / "hub"
    repo = cache / "models--Qwen--Qwen2.5-Omni-3B"
    shutil.copytree(demo_hf, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    out = tmp_path / "from-cache"
    done = _run_offline(
        f"from omni_edge.convert.mlx import convert; convert('Qwen/Qwen2.5-Omni-3B', {str(out)!r})", cache)
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").is_file()
    failed = _run_offline(
        f"from omni_edge.convert.mlx import convert; convert('Qwen/Not-There', {str(tmp_path / 'x')!r})", cache)
    assert failed.returncode != 0
    assert "could not download Qwen/Not-There" in failed.stderr and "local directory" in failed.stderr
    assert not (tmp_path / "x").exists()


def test_no_vision_conversion_drops_the_encoder_and_refuses_images(demo_hf, demo_mlx, tmp_path, capsys):
    from omni_edge import ChatSession

    out = tmp_path / "novision"
    cli_main(["convert", "--hf-path", str(demo_hf), "--mlx-path", str(out), "--dtype", "float32",
              "--no-vision"])
    full, lean = read_all(demo_mlx), read_all(out)
    visual = {k for k in full if k.startswith("thinker.visual.")}
    assert visual and set(lean) == set(full) - visual
    assert json.loads((out / "config.json").read_text())["omni_edge"]["vision"] is False
    # a copy of it stays without (and its check for missing tensors does not ask for them)
    assert set(read_all(convert(str(out), str(tmp_path / "copy")))) == set(lean)

    model, reference = load(str(out)), load(str(demo_mlx))
    sound = {"type": "audio", "audio": np.sin(np.linspace(0, 600, 16000)).astype(np.float32),
             "sampling_rate": 16000}
    turn = [{"role": "user", "content": [sound, {"type": "text", "text": "What?"}]}]
    assert generate(model, turn, max_tokens=4).token_ids == generate(reference, turn, max_tokens=4).token_ids
    image = {"type": "image", "image": np.zeros((56, 56, 3), np.uint8)}
    for thing in ([{"role": "user", "content": [image]}], [{"role": "user", "content": [
            {"type": "video", "video": [np.zeros((56, 56, 3), np.uint8)] * 2}]}]):
        with pytest.raises(ValueError, match=r"without its vision encoder .*--no-vision"):
            generate(model, thing, max_tokens=2)
    gone = {"type": "image", "image": str(tmp_path / "nowhere.png")}  # refused before it's read
    with pytest.raises(ValueError, match="--no-vision"):
        generate(model, [{"role": "user", "content": [gone]}], max_tokens=2)
    with pytest.raises(ValueError, match="without its vision encoder"):  # called directly too
        model.thinker.visual(mx.zeros((4, 1176)), [(1, 2, 2)])
    chat = ChatSession(model, max_tokens=3)
    with pytest.raises(ValueError, match="--no-vision"):
        list(chat.send([image]))
    assert list(chat.send("Hello")) and chat.cache[0].offset > 0  # the session goes on
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (56, 56)).save(png)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(["generate", "--model", str(out), "--image", str(png), "--prompt", "hi"])
    assert exc.value.code == 2 and "--no-vision" in capsys.readouterr().err
