"""Package size budget: the 3B Thinker at 4 bits must fit in 2.0 GB.

A 3B torch model can't be built in CI memory and time, so a mid-size decoder (random weights,
the real layer structure and the real 151936-row vocabulary) goes through the same build ->
int4 -> multifunction path, its bytes per parameter are measured, and the 3B Thinker's in-package
parameter count (from its published config) is multiplied by that rate. The package's fixed
overhead makes the mid-size rate an upper bound for the larger model."""

import numpy as np
import pytest

pytest.importorskip("coremltools")
pytest.importorskip("torch")

from omni_edge.config import TextConfig  # noqa: E402
from omni_edge.convert.coreml import compress, decoder  # noqa: E402
from omni_edge.convert.coreml.components import save_multifunction  # noqa: E402
from omni_edge.convert.coreml.manifest import package_bytes  # noqa: E402


BUDGET_3B_INT4 = 2.0e9
# Qwen/Qwen2.5-Omni-3B thinker_config.text_config (omni_spec.md §2)
TEXT_3B = TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, mrope_section=[16, 24, 24])
MID = TextConfig(vocab_size=151936, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, mrope_section=[16, 24, 24])


def test_3b_thinker_int4_fits_the_budget(tmp_path):
    spec = decoder.DecoderSpec.thinker(MID)
    rng = np.random.default_rng(0)
    weights = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in spec.weight_shapes().items()}
    parts = {}
    for function, tokens in (("prefill", 64), ("decode", 1)):
        program = decoder.build_program(spec, weights, context=128, tokens=tokens)
        model = compress.compress(decoder.convert_program(program), 4)
        parts[function] = tmp_path / f"{function}.mlpackage"
        model.save(str(parts[function]))
    save_multifunction(parts, "prefill", tmp_path / "thinker.mlpackage")
    rate = package_bytes(tmp_path / "thinker.mlpackage") / spec.parameter_count()
    assert 0.5 + 2 / 32 <= rate < 0.6  # int4 values + a float16 scale per 32, stored once
    params_3b = decoder.DecoderSpec.thinker(TEXT_3B).parameter_count()
    projected = params_3b * rate
    print(f"int4: {rate:.4f} bytes/param; 3B thinker {params_3b / 1e9:.2f} B params "
          f"-> {projected / 1e9:.2f} GB")
    assert projected <= BUDGET_3B_INT4
