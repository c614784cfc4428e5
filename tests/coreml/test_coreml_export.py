"""What the export writes (packages, functions, states, compression, manifest, sidecars) and how it
refuses bad input. Structural checks read the saved packages with coremltools' own loader."""

import argparse
import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("coremltools")
pytest.importorskip("torch")

from coremltools.converters.mil.mil import types  # noqa: E402
from mil_interpreter import load_program  # noqa: E402

from omni_edge.config import OmniConfig  # noqa: E402
from omni_edge.convert.coreml import check_backends  # noqa: E402
from omni_edge.convert.coreml.cli import add_parser  # noqa: E402
from omni_edge.convert.coreml.export import export  # noqa: E402
from omni_edge.convert.coreml.options import COMPONENTS  # noqa: E402


PACKAGES = {"audio": "audio_encoder", "vision": "vision_encoder", "thinker": "thinker",
            "talker": "talker", "dit": "dit", "bigvgan": "bigvgan"}
THRESHOLD = 256  # compress.WEIGHT_THRESHOLD: smaller matrices may stay float


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def io(entry, function="main", kind="inputs"):
    return {f["name"]: (f["shape"], f["dtype"]) for f in entry["functions"][function][kind]}


def test_every_component_is_exported_and_described(default_export, fixture_3b):
    doc = manifest(default_export)
    assert list(doc["components"]) == list(COMPONENTS)
    for name, entry in doc["components"].items():
        package = default_export / entry["package"]
        assert package.is_dir() and entry["package"] == PACKAGES[name] + ".mlpackage"
        assert entry["bytes"] == sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    for name in ("speakers.safetensors", "speakers.json", "tokenizer.json", "vocab.json", "merges.txt"):
        assert (default_export / name).is_file()
    assert not list(default_export.parent.glob(".default.partial-*"))


def test_decoders_are_stateful_multifunction_packages(default_export, fixture_3b):
    cfg = OmniConfig.from_file(fixture_3b / "config.json")
    doc = manifest(default_export)["components"]
    for name, text, context, width in (
            ("thinker", cfg.thinker_config.text_config, 32, cfg.thinker_config.text_config.hidden_size),
            ("talker", cfg.talker_config, 64, cfg.talker_config.embedding_size)):
        entry = doc[name]
        assert set(entry["functions"]) == {"prefill", "decode"}
        assert entry["default_function"] == "prefill"
        hd, kv = text.head_dim, text.num_key_value_heads
        for function, tokens in (("prefill", 8), ("decode", 1)):
            assert io(entry, function) == {
                "inputs_embeds": ([1, tokens, width], "float16"),
                "position_cos": ([1, tokens, hd], "float16"),
                "position_sin": ([1, tokens, hd], "float16"),
                "attention_mask": ([1, 1, tokens, context], "float16"), "cache_offset": ([1], "int32")}
            outputs = io(entry, function, "outputs")
            assert outputs["logits"] == ([1, 1, text.vocab_size], "float16")  # the last position only
            if name == "thinker":
                assert outputs["hidden_states"] == ([1, tokens, text.hidden_size], "float16")
            states = {s["name"]: (s["shape"], s["dtype"])
                      for s in entry["functions"][function]["states"]}
            shape = [text.num_hidden_layers, kv, context, hd]
            assert states == {"key_cache": (shape, "float16"), "value_cache": (shape, "float16")}


def test_encoder_shapes(default_export, fixture_3b):
    doc = manifest(default_export)["components"]
    audio = io(doc["audio"])
    assert audio["input_features"] == ([1, 128, 200], "float16")
    enumerated = doc["audio"]["functions"]["main"]["inputs"][0]["enumerated_shapes"]
    assert enumerated == [[b, 128, 200] for b in (1, 2, 4)]
    vision = doc["vision"]
    assert set(vision["functions"]) == {"image_224x224", "image_224x168"}
    assert io(vision, "image_224x168") == {"pixel_patches": ([16 * 12, 1176], "float16")}
    assert io(vision, "image_224x168", "outputs") == {"image_embeds": ([16 * 12 // 4, 64], "float16")}
    assert io(doc["dit"]) == {"noisy_mel": ([1, 144, 80], "float32"), "time": ([1], "float32"),
                              "codes": ([1, 72], "int32"), "condition": ([2, 40], "float32"),
                              "frame_mask": ([1, 144], "float32"), "guidance": ([1], "float32")}
    assert io(doc["dit"], kind="outputs") == {"velocity": ([1, 144, 80], "float32")}
    assert io(doc["bigvgan"]) == {"mel": ([1, 80, 112], "float32")}
    assert io(doc["bigvgan"], kind="outputs") == {"waveform": ([1, 112 * 240], "float32")}


def float_weights(package):
    """Constants used as they are (not the int data or scales of a compressed weight)."""
    for function in load_program(package).functions.values():
        for op in function.operations:
            value = op.outputs[0].val if op.op_type == "const" else None
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                continue
            if not all(c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
                yield value


def test_compression_ops_and_no_float_weights_left(default_export):
    for name, op in (("thinker", 4), ("talker", 8)):
        program = load_program(default_export / f"{name}.mlpackage")
        for function in program.functions.values():
            ops = function.operations
            quantized = [o for o in ops if o.op_type == "constexpr_blockwise_shift_scale"]
            linears = [o for o in ops if o.op_type == "linear"]
            assert len(quantized) == len(linears) > 0  # every projection
            for q in quantized:
                data, scale = q.data.val, q.scale.val
                blocks = data.shape[1] // scale.shape[1]
                assert blocks == (32 if op == 4 else data.shape[1]) and scale.dtype == np.float16
                assert types.builtin_to_string(q.data.dtype) == f"int{op}"
        for value in float_weights(default_export / f"{name}.mlpackage"):
            assert value.ndim < 2 or value.size <= THRESHOLD, value.shape
    for name in ("audio", "vision"):
        for value in float_weights(default_export / f"{PACKAGES[name]}.mlpackage"):
            assert not (value.dtype == np.float32 and value.size > 1024), (name, value.shape)


def test_weights_are_stored_once_across_functions(default_export):
    """prefill and decode share one copy: the package is about the size of one int4 model."""
    entry = manifest(default_export)["components"]["thinker"]
    params = entry["config"]["parameters_in_package"]
    int4 = params * (0.5 + 2 / 32)  # 4-bit values and one float16 scale per 32
    assert entry["bytes"] < 1.25 * int4


def test_manifest_carries_what_an_app_needs(default_export, fixture_3b):
    doc = manifest(default_export)
    thinker = doc["components"]["thinker"]["config"]
    assert (thinker["mrope_section"], thinker["prefill_chunk"], thinker["context"]) == ([2, 3, 3], 8, 32)
    assert thinker["audio_token_index"] == 151646 and thinker["eos_token_id"] == 151645
    talker = doc["components"]["talker"]["config"]
    assert talker["tts_codec_start_token_id"] == 8293
    assert talker["sampling"]["eos_token_ids"] == [8292, 8294]
    assert doc["components"]["dit"]["config"]["ode"]["steps"] == 10
    assert [v["name"] for v in doc["speakers"]["voices"]] == ["Chelsie", "Ethan"]
    vision = doc["components"]["vision"]["config"]
    assert vision["preprocessor"]["image_mean"][0] == pytest.approx(0.48145466)


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(components="thinker,ears"), "unknown component 'ears'"),
    (dict(bits=3), "--bits must be one of 4, 8, 16"),
    (dict(talker_bits=2), "--talker-bits must be one of 4, 8, 16"),
    (dict(compression="prune"), "--compression must be one of linear, palettize"),
    (dict(context=100, prefill_chunk=64), "multiple of --prefill-chunk"),
    (dict(context=65536), "exceeds the model's max_position_embeddings"),
    (dict(components="talker", talker_context=30, prefill_chunk=8), "--talker-context 30"),
    (dict(components="vision", image_sizes="448x450"), "multiples of 28"),
    (dict(components="vision", image_sizes="big"), "HEIGHTxWIDTH"),
    (dict(precision="bfloat16"), "--precision must be one of float16, float32"),
])
def test_bad_options_are_refused_before_any_work(fixture_3b, tmp_path, kwargs, message):
    components = kwargs.pop("components", "thinker")
    with pytest.raises(ValueError, match=message):
        export(str(fixture_3b), str(tmp_path / "out"), components, **kwargs)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_existing_output_needs_force(fixture_3b, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        export(str(fixture_3b), str(tmp_path / "out"), "thinker")


def test_a_failed_export_leaves_nothing_and_keeps_the_old_output(fixture_3b, tmp_path, monkeypatch):
    from omni_edge.convert.coreml import components

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("old")

    def boom(ctx):
        raise RuntimeError("disk full")

    monkeypatch.setitem(components.EXPORTERS, "audio", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(str(fixture_3b), str(out), "audio", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "keep").read_text() == "old"


@pytest.mark.parametrize("missing", ["torch", "coremltools"])
def test_missing_backend_names_the_install_command(monkeypatch, capsys, missing, fixture_3b, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == missing else real(name, *a))
    with pytest.raises(ImportError, match=rf"needs {missing} .*pip install \"omni-edge\[coreml\]\""):
        check_backends()
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["convert-coreml", "--hf-path", str(fixture_3b),
                              "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 2 and 'pip install "omni-edge[coreml]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_numpy_too_new_for_coremltools(monkeypatch):
    monkeypatch.setattr(np, "__version__", "2.4.0")
    with pytest.raises(ImportError, match="numpy < 2.4"):
        check_backends()


def test_speech_components_need_a_talker(fixture_3b, tmp_path):
    raw = json.loads((fixture_3b / "config.json").read_text())
    raw["enable_audio_output"] = False
    src = tmp_path / "src"
    src.mkdir()
    for f in fixture_3b.iterdir():
        (src / f.name).symlink_to(f)
    (src / "config.json").unlink()
    (src / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="no speech output, so talker,dit can't be exported"):
        export(str(src), str(tmp_path / "out"), "thinker,talker,dit")
