"""Core ML exports of the fixture checkpoints, made once per session and shared by the tests.

Each test module skips where the `coreml` extra (coremltools 9, which needs numpy < 2.4) is not
installed. Small shapes keep the exports quick: prefill chunk 8, Thinker context 32, Talker
context 64."""

import argparse

import pytest

SMALL = dict(prefill_chunk=8, context=32, talker_context=64, image_sizes="224x224,224x168",
             audio_batches="1,2,4")
ENCODERS_AND_DECODERS = ("audio", "vision", "thinker", "talker")


def _export(root, name, fixture, components, **options):
    from omni_edge.convert.coreml.export import export

    return export(str(fixture), str(root / name), components, **{**SMALL, **options})


@pytest.fixture(scope="session")
def coreml_root(tmp_path_factory):
    return tmp_path_factory.mktemp("coreml")


@pytest.fixture(scope="session")
def default_export(coreml_root, fixture_3b):
    """Every component through the CLI with its defaults: int4 Thinker, int8 Talker, float16
    encoders, float32 DiT and BigVGAN."""
    from omni_edge.convert.coreml.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = coreml_root / "default"
    args = parser.parse_args(["convert-coreml", "--hf-path", str(fixture_3b), "--out", str(out),
                              "--prefill-chunk", "8", "--context", "32", "--talker-context", "64",
                              "--image-sizes", "224x224,224x168", "--audio-batches", "1,2,4"])
    args.func(args)
    return out


@pytest.fixture(scope="session")
def float32_export(coreml_root, fixture_3b):
    """Encoders and float decoders computing in float32: the parity baseline."""
    return _export(coreml_root, "fp32", fixture_3b, ENCODERS_AND_DECODERS, precision="float32",
                   bits=16, talker_bits=16)


@pytest.fixture(scope="session")
def float16_export(coreml_root, fixture_3b):
    """The same in float16 (what runs on the GPU / Neural Engine)."""
    return _export(coreml_root, "fp16", fixture_3b, ENCODERS_AND_DECODERS, bits=16, talker_bits=16)


@pytest.fixture(scope="session")
def reference(fixture_3b):
    """transformers' model of the fixture, float32."""
    from fixtures import load_reference_model

    return load_reference_model(fixture_3b)


@pytest.fixture(scope="session")
def float32_export_7b(coreml_root, fixture_7b):
    """The 7B-shaped fixture's Talker (attention width 48 != hidden 32, three M-RoPE bands) and DiT
    (a look-ahead layer), in float32."""
    return _export(coreml_root, "fp32_7b", fixture_7b, ("talker", "dit"), precision="float32",
                   talker_bits=16)


@pytest.fixture(scope="session")
def reference_7b(fixture_7b):
    from fixtures import load_reference_model

    return load_reference_model(fixture_7b)
