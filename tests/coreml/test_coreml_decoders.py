"""The exported Thinker and Talker packages, run by the test interpreter, against transformers.

A prompt is prefilled in fixed chunks (the last one overlapping, or a short prompt left-padded with
masked slots) and then decoded token by token with the `decode` function, sharing one KV state;
every step's logits are compared with transformers' full forward pass at the same TMRoPE
positions (three distinct axes)."""

import copy
import json

import numpy as np
import pytest

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from coreml_driver import rel_err, run_decoder  # noqa: E402
from mil_interpreter import _blockwise, _lut_to_dense, load_program  # noqa: E402

from omni_edge.convert.coreml.export import export  # noqa: E402
from omni_edge.convert.coreml.sidecars import read_embeddings  # noqa: E402


FLOAT32_RTOL = 1e-3  # float32 compute; the KV cache is float16 (Core ML states are fp16 only)
FLOAT16_RTOL = 5e-3  # float16 compute: measured 1.3e-3..2.8e-3 (fp16 has 11 significant bits)
PROMPTS = (13, 5)  # longer than a prefill chunk of 8 (last chunk overlaps), and shorter (padded)
DECODE_STEPS = 3


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def positions(n):
    t = np.arange(n)
    return np.stack([t, t // 2 + 3, t % 5])


def thinker_reference(thinker, embeds, pos):
    lm = thinker.model.language_model
    with torch.no_grad():
        out = lm(inputs_embeds=torch.tensor(embeds[None]), position_ids=torch.tensor(pos[:, None]))
        return thinker.lm_head(out.last_hidden_state)[0].numpy(), out.last_hidden_state[0].numpy()


def talker_reference(ref, embeds, pos):
    talker = ref.talker
    with torch.no_grad():
        x = talker.thinker_to_talker_proj(torch.tensor(embeds[None]))
        h = talker.model(inputs_embeds=x, position_ids=torch.tensor(pos[:, None])).last_hidden_state
        return talker.codec_head(h)[0].numpy()


def thinker_inputs(ref, n, seed=0):
    ids = np.random.default_rng(seed).integers(0, ref.config.thinker_config.text_config.vocab_size, n)
    return ref.thinker.get_input_embeddings().weight.detach().numpy()[ids], positions(n)


def talker_inputs(ref, n, seed=1):
    width = ref.config.talker_config.embedding_size
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32), positions(n)


def compare_thinker(out, ref, prompt_len, rtol):
    cfg = manifest(out)["components"]["thinker"]["config"]
    embeds, pos = thinker_inputs(ref, prompt_len + DECODE_STEPS)
    logits, hidden = run_decoder(out / "thinker.mlpackage", embeds, pos, cfg, prompt_len)
    ref_logits, ref_hidden = thinker_reference(ref.thinker, embeds, pos)
    errors = [rel_err(logits[k], ref_logits[prompt_len - 1 + k]) for k in range(len(logits))]
    errors.append(rel_err(hidden, ref_hidden))
    print(f"thinker {out.name} prompt {prompt_len}: {max(errors):.2e}")
    assert max(errors) <= rtol, errors
    return max(errors)


def compare_talker(out, ref, prompt_len, rtol):
    cfg = manifest(out)["components"]["talker"]["config"]
    embeds, pos = talker_inputs(ref, prompt_len + DECODE_STEPS)
    logits, _ = run_decoder(out / "talker.mlpackage", embeds, pos, cfg, prompt_len)
    ref_logits = talker_reference(ref, embeds, pos)
    errors = [rel_err(logits[k], ref_logits[prompt_len - 1 + k]) for k in range(len(logits))]
    print(f"talker {out.name} prompt {prompt_len}: {max(errors):.2e}")
    assert max(errors) <= rtol, errors
    return max(errors)


@pytest.mark.parametrize("prompt_len", PROMPTS)
def test_thinker_float32_matches_transformers(float32_export, reference, prompt_len):
    compare_thinker(float32_export, reference, prompt_len, FLOAT32_RTOL)


@pytest.mark.parametrize("prompt_len", PROMPTS)
def test_talker_float32_matches_transformers(float32_export, reference, prompt_len):
    compare_talker(float32_export, reference, prompt_len, FLOAT32_RTOL)


def test_talker_7b_shapes_match_transformers(float32_export_7b, reference_7b):
    """Attention width (heads x head_dim = 48) differs from the hidden size (32) here."""
    compare_talker(float32_export_7b, reference_7b, PROMPTS[0], FLOAT32_RTOL)


def test_float16_decoders_match_transformers(float16_export, reference):
    err = compare_thinker(float16_export, reference, PROMPTS[0], FLOAT16_RTOL)
    err = max(err, compare_talker(float16_export, reference, PROMPTS[0], FLOAT16_RTOL))
    print(f"float16 decoders: max relative error {err:.2e}")


# ------------------------------------------------------------------------------- quantized


def quantized_weights(package):
    """{shape: [(dequantized weight, data, scale)]} for every blockwise-quantized constant."""
    out = {}
    for op in load_program(package).functions["decode"].operations:
        if op.op_type == "constexpr_blockwise_shift_scale":
            data, scale = op.data.val, op.scale.val
            offset = op.offset.val if op.offset is not None else None
            out.setdefault(data.shape, []).append((_blockwise(data, scale, offset), data, scale))
    return out


def matched_weights(module, package, block, prefixes=("",)):
    """Each 2-D weight of `module` paired with its dequantized package constant; checks the int
    layout (blocks of `block` input channels, one scale each) and that the dequantized values lie
    within half a quantization step of the float weights."""
    table = quantized_weights(package)
    pairs = {}
    for name, p in module.named_parameters():
        if p.ndim != 2 or "embed_tokens" in name or not name.startswith(prefixes):
            continue
        w = p.detach().numpy()
        candidates = table.get(w.shape, [])
        assert candidates, f"{name} {w.shape} is not quantized in {package.name}"
        deq, data, scale = min(candidates, key=lambda c: np.abs(c[0] - w).max())
        assert data.shape[1] // scale.shape[1] == block and scale.shape[0] == w.shape[0], name
        step = np.repeat(scale.astype(np.float32), data.shape[1] // scale.shape[1], axis=1)
        assert (np.abs(deq - w) <= 0.5 * step + 1e-3 * np.abs(w) + 1e-8).all(), name
        pairs[name] = deq
    return pairs


def with_weights(module, weights):
    module = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in weights:
                p.copy_(torch.from_numpy(weights[name]))
    return module


def test_int4_thinker_is_the_model_with_int4_weights(default_export, reference):
    """The int4 package computes exactly the reference with its dequantized weights (float16
    tolerance); what remains against the float model is the quantization error itself."""
    entry = manifest(default_export)["components"]["thinker"]
    assert entry["compression"] == {"weights": "int4", "op": "constexpr_blockwise_shift_scale",
                                    "mode": "linear_symmetric", "granularity": "per_block",
                                    "block_size": 32}
    package = default_export / "thinker.mlpackage"
    fake = with_weights(reference.thinker, matched_weights(
        reference.thinker, package, 32, ("model.language_model.", "lm_head.")))
    prompt = PROMPTS[0]
    embeds, pos = thinker_inputs(reference, prompt + DECODE_STEPS)
    logits, _ = run_decoder(package, embeds, pos, entry["config"], prompt)
    fake_logits, _ = thinker_reference(fake, embeds, pos)
    true_logits, _ = thinker_reference(reference.thinker, embeds, pos)
    steps = range(prompt - 1, prompt + DECODE_STEPS)
    fake_err, int4_err = rel_err(logits, fake_logits[steps]), rel_err(logits, true_logits[steps])
    print(f"int4 Thinker: {fake_err:.2e} vs the dequantized-weight model, {int4_err:.3f} vs the float "
          "model (random fixture weights, q/k x10)")
    assert fake_err <= FLOAT16_RTOL
    assert int4_err < 1.0


def test_int8_talker_is_the_model_with_int8_weights(default_export, reference):
    entry = manifest(default_export)["components"]["talker"]
    assert (entry["compression"]["weights"], entry["compression"]["granularity"]) == ("int8", "per_channel")
    package = default_export / "talker.mlpackage"
    table = quantized_weights(package)
    for name, p in reference.talker.named_parameters():
        if p.ndim == 2 and "embed_tokens" not in name:
            (_, data, scale), = [c for c in table[tuple(p.shape)]
                                 if np.abs(c[0] - p.detach().numpy()).max() <= np.abs(c[2]).max()]
            assert data.dtype == np.int8 and scale.shape == (p.shape[0], 1), name
    prompt = PROMPTS[0]
    embeds, pos = talker_inputs(reference, prompt + DECODE_STEPS)
    logits, _ = run_decoder(package, embeds, pos, entry["config"], prompt)
    err = rel_err(logits, talker_reference(reference, embeds, pos)[prompt - 1:])
    print(f"int8 Talker vs float reference: {err:.4f}")
    assert err <= 0.05


def test_palettized_thinker(fixture_3b, reference, tmp_path):
    """4-bit palettization: 16-entry tables per group of channels, and the package computes the
    model with its palettized weights."""
    out = export(str(fixture_3b), str(tmp_path / "pal"), "thinker", bits=4, compression="palettize",
                 prefill_chunk=8, context=16)
    entry = manifest(out)["components"]["thinker"]
    assert entry["compression"]["op"] == "constexpr_lut_to_dense"
    package = out / "thinker.mlpackage"
    ops = [o for o in load_program(package).functions["decode"].operations
           if o.op_type == "constexpr_lut_to_dense"]
    assert len(ops) == 3 * 7 + 1 and all(o.lut.val.shape[-2] == 16 for o in ops)
    dense = [_lut_to_dense(o.indices.val, o.lut.val) for o in ops]
    weights = {}
    for name, p in reference.thinker.named_parameters():
        if p.ndim == 2 and name.startswith(("model.language_model.layers", "lm_head")):
            w = p.detach().numpy()
            best = min((d for d in dense if d.shape == w.shape), key=lambda d: np.abs(d - w).max())
            assert np.abs(best - w).max() <= (w.max() - w.min()) / 15, name  # within a table step
            weights[name] = best
    prompt = 10
    embeds, pos = thinker_inputs(reference, prompt + 1)
    logits, _ = run_decoder(package, embeds, pos, entry["config"], prompt)
    expected, _ = thinker_reference(with_weights(reference.thinker, weights), embeds, pos)
    err = rel_err(logits, expected[prompt - 1:])
    print(f"palettized Thinker vs the model with its palettized weights: {err:.2e}")
    assert err <= FLOAT16_RTOL


def test_embedding_sidecars(default_export, float32_export, reference):
    tables = {"thinker": reference.thinker.get_input_embeddings().weight.detach().numpy(),
              "talker": reference.talker.get_input_embeddings().weight.detach().numpy()}
    for out, exact in ((default_export, False), (float32_export, True)):
        for name, table in tables.items():
            entry = manifest(out)["components"][name]["sidecars"]["embeddings"]
            assert entry["shape"] == list(table.shape)
            got = read_embeddings(entry, out)
            if exact:  # bits 16: float16 rows
                np.testing.assert_array_equal(got, table.astype(np.float16).astype(np.float32))
            else:  # int8 rows with one float16 scale each: within half a step
                step = np.abs(table).max(axis=1, keepdims=True) / 127
                assert (np.abs(got - table) <= 0.5 * step * 1.01 + 1e-6).all()
