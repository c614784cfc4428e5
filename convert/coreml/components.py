"""One exporter per component: build or trace the graph, convert, compress, save, describe."""

from pathlib import Path
from typing import Callable, Dict, List

import coremltools as ct
import numpy as np
import torch

from ...streaming import CHUNK_BLOCKS, FUTURE_BLOCKS, PAST_BLOCKS, VOCODER_CONTEXT_FRAMES
from ..hub import CheckpointError
from . import compress, decoder, runtime, sidecars, wrappers
from .manifest import describe_package, package_bytes

OPSET = ct.target.iOS18
NP_DTYPES = {"float16": np.float16, "float32": np.float32}
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
PRECISIONS = {"float16": ct.precision.FLOAT16, "float32": ct.precision.FLOAT32}
DIT_INV_FREQ = "rotary_embed.inv_freq"
ODE_STEPS = 10  # the reference sampler: RK4 over 10 time points, guidance 0.5, sway -1
GUIDANCE = 0.5
SWAY = -1.0
SPEECH_SAMPLE_RATE = 24000


def save_multifunction(parts: Dict[str, Path], default: str, dest: Path) -> None:
    """Merge single-function packages into one; identical weights are stored once."""
    desc = ct.utils.MultiFunctionDescriptor()
    for name, path in parts.items():
        desc.add_function(str(path), "main", name)
    desc.default_function_name = default
    ct.utils.save_multifunction(desc, str(dest))


def _entry(package: Path, **extra) -> dict:
    return {"package": package.name, "bytes": package_bytes(package),
            "default_function": extra.pop("default_function", "main"),
            "functions": describe_package(package), **extra}


# ---------------------------------------------------------------------------------- decoders


def _decoder(ctx, name: str, spec: decoder.DecoderSpec, component: str, top: str, context: int,
             bits: int, embed_name: str, config: dict) -> dict:
    opts = ctx.options
    outside = [spec.head_name + ".weight"]  # tensors beside `model.` in the checkpoint
    if spec.input_proj:
        outside += ["thinker_to_talker_proj.weight", "thinker_to_talker_proj.bias"]
    dtype = NP_DTYPES[opts.precision]
    inside = [n for n in decoder.weight_names(spec) if n not in outside]
    weights = ctx.reader.component(component, inside, TORCH_DTYPES[opts.precision])
    weights.update(ctx.reader.component(top, outside, TORCH_DTYPES[opts.precision]))
    parts = {}
    for function, tokens in (("prefill", opts.prefill_chunk), ("decode", 1)):
        program = decoder.build_program(spec, weights, context=context, tokens=tokens, dtype=dtype)
        model = compress.compress(decoder.convert_program(program, dtype), bits, opts.compression)
        parts[function] = ctx.work / f"{name}_{function}.mlpackage"
        model.save(str(parts[function]))
        del program, model
    del weights
    package = ctx.out / f"{name}.mlpackage"
    save_multifunction(parts, "prefill", package)
    table = ctx.reader.array(ctx.reader.resolve(component, "embed_tokens.weight"))
    embeddings = sidecars.write_embeddings(table, ctx.out, embed_name, bits)
    return _entry(package, default_function="prefill",
                  compression=compress.describe(bits, opts.compression), precision=opts.precision,
                  sidecars={"embeddings": embeddings},
                  config={**config, "context": context, "prefill_chunk": opts.prefill_chunk,
                          "layers": spec.layers, "hidden_size": spec.hidden, "heads": spec.heads,
                          "kv_heads": spec.kv_heads, "head_dim": spec.head_dim, "vocab_size": spec.vocab,
                          "parameters_in_package": spec.parameter_count(),
                          "kv_cache_bytes": decoder.cache_bytes(spec, context),
                          "mask_value": runtime.MASK_VALUE})


def export_thinker(ctx) -> dict:
    cfg = ctx.config.thinker_config
    text = cfg.text_config
    spec = decoder.DecoderSpec.thinker(text)
    if text.tie_word_embeddings:
        raise CheckpointError("this thinker ties lm_head to embed_tokens (tie_word_embeddings); "
                              "tied heads are not exported yet")
    config = {"mrope_section": text.mrope_section, "rope_theta": text.rope_theta,
              "rms_norm_eps": text.rms_norm_eps, "hidden_states_output": "final normed hidden states "
              "of every query position (the Talker's input)",
              **{k: getattr(cfg, k) for k in (
                  "audio_token_index", "image_token_index", "video_token_index", "audio_start_token_id",
                  "audio_end_token_id", "vision_start_token_id", "vision_end_token_id", "bos_token_id",
                  "eos_token_id", "pad_token_id", "position_id_per_seconds", "seconds_per_chunk")}}
    return _decoder(ctx, "thinker", spec, "thinker", "thinker.lm_head", ctx.options.context,
                    ctx.options.bits, "thinker_embeddings", config)


def export_talker(ctx) -> dict:
    cfg = ctx.config.talker_config
    spec = decoder.DecoderSpec.talker(cfg)
    config = {"mrope_section": cfg.mrope_section, "rope_theta": cfg.rope_theta,
              "embedding_size": cfg.embedding_size, "input": "inputs_embeds at the Thinker's width; "
              "thinker_to_talker_proj is inside the package",
              **{k: getattr(cfg, k) for k in (
                  "tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id",
                  "tts_codec_start_token_id", "tts_codec_end_token_id", "tts_codec_pad_token_id",
                  "tts_codec_mask_token_id")},
              "sampling": {"temperature": 0.9, "top_k": 40, "top_p": 0.8, "repetition_penalty": 1.05,
                           "suppress_tokens": [cfg.tts_codec_start_token_id],
                           "eos_token_ids": [cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id]}}
    return _decoder(ctx, "talker", spec, "talker", "talker.top", ctx.options.talker_context,
                    ctx.options.talker_bits, "talker_codec_embeddings", config)


# ---------------------------------------------------------------------------------- traced


def _load(cls, hf_config, state: Dict[str, torch.Tensor], what: str):
    module = cls._from_config(hf_config).float().eval()
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"the {what} weights don't fit its config.json: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}; the checkpoint and config.json disagree")
    return module


def _convert_traced(module, examples: List[torch.Tensor], inputs: list, outputs: list, precision: str,
                    path: Path) -> Path:
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), tuple(examples), check_trace=False)
    model = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                       minimum_deployment_target=OPSET, compute_precision=PRECISIONS[precision],
                       skip_model_load=True)
    model.save(str(path))
    return path


def _tensor(name, shape, precision, dtype=None):
    return ct.TensorType(name=name, shape=shape, dtype=dtype or NP_DTYPES[precision])


def export_audio(ctx) -> dict:
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf

    opts, cfg = ctx.options, ctx.hf_config.thinker_config.audio_config
    tower = _load(hf.Qwen2_5OmniAudioEncoder, cfg, ctx.reader.state_dict("audio"), "audio encoder")
    frames = 2 * cfg.n_window
    wrapper = wrappers.AudioChunkEncoder(tower, frames)
    b0 = opts.audio_batches[0]
    def shapes(*rest):
        return ct.EnumeratedShapes(shapes=[[b, *rest] for b in opts.audio_batches], default=[b0, *rest])

    package = ctx.out / "audio_encoder.mlpackage"
    _convert_traced(wrapper, [torch.zeros(b0, cfg.num_mel_bins, frames), torch.ones(b0, frames)],
                    [_tensor("input_features", shapes(cfg.num_mel_bins, frames), opts.precision),
                     _tensor("frame_mask", shapes(frames), opts.precision)],
                    [ct.TensorType(name="audio_embeds", dtype=NP_DTYPES[opts.precision])],
                    opts.precision, package)
    return _entry(package, precision=opts.precision, compression={"weights": opts.precision},
                  config={"chunk_frames": frames, "batch_sizes": list(opts.audio_batches),
                          "mel_bins": cfg.num_mel_bins, "output_dim": cfg.output_dim,
                          "tokens_per_chunk": frames // 4,
                          "valid_tokens": "((frames - 1) // 2 + 1) // 2 for a chunk of `frames` real "
                                          "mel frames; pad the tail chunk with zeros and mask it"})


def export_vision(ctx) -> dict:
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf

    opts, cfg = ctx.options, ctx.hf_config.thinker_config.vision_config
    visual = _load(hf.Qwen2_5OmniVisionEncoder, cfg, ctx.reader.state_dict("vision"), "vision encoder")
    patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
    parts, sizes = {}, []
    for height, width in opts.image_sizes:
        gh, gw = height // cfg.patch_size, width // cfg.patch_size
        name = f"image_{height}x{width}"
        parts[name] = _convert_traced(
            wrappers.VisionImageEncoder(visual, gh, gw), [torch.zeros(gh * gw, patch_dim)],
            [_tensor("pixel_patches", (gh * gw, patch_dim), opts.precision)],
            [ct.TensorType(name="image_embeds", dtype=NP_DTYPES[opts.precision])],
            opts.precision, ctx.work / f"{name}.mlpackage")
        sizes.append({"function": name, "height": height, "width": width, "grid_thw": [1, gh, gw],
                      "patches": gh * gw, "tokens": gh * gw // cfg.spatial_merge_size ** 2})
    package = ctx.out / "vision_encoder.mlpackage"
    save_multifunction(parts, next(iter(parts)), package)
    return _entry(package, default_function=next(iter(parts)), precision=opts.precision,
                  compression={"weights": opts.precision},
                  config={"image_sizes": sizes, "patch_size": cfg.patch_size,
                          "temporal_patch_size": cfg.temporal_patch_size,
                          "spatial_merge_size": cfg.spatial_merge_size, "patch_dim": patch_dim,
                          "out_hidden_size": cfg.out_hidden_size, "preprocessor": ctx.preprocessor,
                          "input": "the processor's flattened patches of one still image (the frame "
                                   "repeated temporal_patch_size times), in its patch order"})


def export_dit(ctx) -> dict:
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf

    opts, cfg = ctx.options, ctx.hf_config.token2wav_config.dit_config
    state = ctx.reader.state_dict("dit")
    stored = state.pop(DIT_INV_FREQ, None)
    dit = _load(hf.Qwen2_5OmniToken2WavDiTModel, cfg, state, "DiT")
    frames = opts.dit_frames or (PAST_BLOCKS + CHUNK_BLOCKS + FUTURE_BLOCKS) * cfg.block_size
    ctx.dit = dit
    wrapper = wrappers.DiTWindow(dit, frames, inv_freq=stored)
    cond_dim = cfg.enc_dim + cfg.enc_emb_dim
    p = opts.token2wav_precision
    codes = frames // cfg.repeats
    examples = [torch.zeros(1, frames, cfg.mel_dim), torch.zeros(1), torch.zeros(1, codes, dtype=torch.int32),
                torch.zeros(2, cond_dim), torch.ones(1, frames), torch.ones(1)]
    inputs = [_tensor("noisy_mel", (1, frames, cfg.mel_dim), p), _tensor("time", (1,), p),
              _tensor("codes", (1, codes), p, np.int32), _tensor("condition", (2, cond_dim), p),
              _tensor("frame_mask", (1, frames), p), _tensor("guidance", (1,), p)]
    outputs = [ct.TensorType(name="velocity", dtype=NP_DTYPES[p])]
    package = _convert_traced(wrapper, examples, inputs, outputs, p, ctx.out / "dit.mlpackage")
    return _entry(package, precision=p, compression={"weights": p},
                  config={"window_frames": frames, "block_size": cfg.block_size, "repeats": cfg.repeats,
                          "mel_dim": cfg.mel_dim, "codebook_size": cfg.num_embeds + 1,
                          "chunk_frames": CHUNK_BLOCKS * cfg.block_size,
                          "past_frames": PAST_BLOCKS * cfg.block_size,
                          "future_frames": FUTURE_BLOCKS * cfg.block_size,
                          "ode": {"method": "rk4 (3/8 rule)", "steps": ODE_STEPS, "guidance": GUIDANCE,
                                  "sway": SWAY, "time_points": "t = linspace(0, 1, steps); "
                                  "t += sway * (cos(pi/2 * t) - 1 + t)"}})


def export_bigvgan(ctx) -> dict:
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf

    opts, cfg = ctx.options, ctx.hf_config.token2wav_config.bigvgan_config
    vocoder = _load(hf.Qwen2_5OmniToken2WavBigVGANModel, cfg, ctx.reader.state_dict("bigvgan"),
                    "BigVGAN")
    block = ctx.hf_config.token2wav_config.dit_config.block_size
    frames = opts.vocoder_frames or 2 * VOCODER_CONTEXT_FRAMES + CHUNK_BLOCKS * block
    p = opts.token2wav_precision
    package = _convert_traced(wrappers.BigVGANWindow(vocoder), [torch.zeros(1, cfg.mel_dim, frames)],
                              [_tensor("mel", (1, cfg.mel_dim, frames), p)],
                              [ct.TensorType(name="waveform", dtype=NP_DTYPES[p])], p,
                              ctx.out / "bigvgan.mlpackage")
    hop = wrappers.samples_per_frame(cfg.upsample_rates)
    return _entry(package, precision=p, compression={"weights": p},
                  config={"window_frames": frames, "samples_per_frame": hop, "sample_rate": SPEECH_SAMPLE_RATE,
                          "context_frames": VOCODER_CONTEXT_FRAMES,
                          "calls": "runtime.vocoder_calls: vocode mel[start : start + window] (frames "
                                   "past the last real one repeat it) and keep the samples of frames "
                                   "[emit_start, emit_end); see the README"})


def export_voices(ctx) -> dict:
    from .. import speakers as speakers_io

    path = ctx.src / "spk_dict.pt"
    if not path.is_file():
        raise CheckpointError(f"{ctx.src} has no spk_dict.pt, which speech output needs; re-download it "
                              "or leave talker and dit out of --components")
    voices = speakers_io.load_speakers(path)
    conditions = {}
    if ctx.dit is not None:
        for name, voice in voices.items():
            conditions[name] = wrappers.voice_condition(
                ctx.dit, torch.from_numpy(voice["cond"]), torch.from_numpy(voice["ref_mel"])).numpy()
    return sidecars.write_voices(voices, conditions, ctx.out)


EXPORTERS: Dict[str, Callable] = {
    "audio": export_audio, "vision": export_vision, "thinker": export_thinker,
    "talker": export_talker, "dit": export_dit, "bigvgan": export_bigvgan,
}
