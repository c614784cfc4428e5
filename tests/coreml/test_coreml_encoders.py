"""The traced packages (audio and vision encoders, DiT, BigVGAN), run by the test interpreter,
against transformers' modules in float32 on the fixture checkpoint."""

import json

import numpy as np
import pytest

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from coreml_driver import rel_err  # noqa: E402
from mil_interpreter import Interpreter  # noqa: E402

from omni_edge.convert import speakers as speakers_io  # noqa: E402
from omni_edge.convert.coreml.runtime import vocoder_calls  # noqa: E402


FLOAT32_RTOL = 1e-3
FLOAT16_RTOL = 1e-2  # measured: audio 9e-4, vision 2.7e-3 (float16 activations)
AUDIO_FRAMES = 450  # chunks of 200, 200 and a 50-frame tail
VISION_SIZES = ((224, 224), (224, 168))  # 2x2 equal windows (batched); unequal ones (masked)


def config(out, name):
    return json.loads((out / "manifest.json").read_text())["components"][name]["config"]


def audio_error(out, ref):
    cfg = config(out, "audio")
    feats = np.random.default_rng(0).standard_normal((cfg["mel_bins"], AUDIO_FRAMES)).astype(np.float32)
    with torch.no_grad():
        expected = ref.thinker.model.audio_tower(torch.tensor(feats),
                                                 feature_lens=torch.tensor([AUDIO_FRAMES]))
    frames = cfg["chunk_frames"]
    lengths = [min(frames, AUDIO_FRAMES - s) for s in range(0, AUDIO_FRAMES, frames)]
    batch = min(b for b in cfg["batch_sizes"] if b >= len(lengths))
    chunks = np.zeros((batch, cfg["mel_bins"], frames), np.float32)
    mask = np.zeros((batch, frames), np.float32)
    for i, n in enumerate(lengths):
        chunks[i, :, :n] = feats[:, i * frames: i * frames + n]
        mask[i, :n] = 1
    feeds = {"input_features": chunks, "frame_mask": mask}
    got = Interpreter(out / "audio_encoder.mlpackage").run(feeds)
    valid = [((n - 1) // 2 + 1) // 2 for n in lengths]
    ours = np.concatenate([got["audio_embeds"][i, :v] for i, v in enumerate(valid)])
    return rel_err(ours, expected.last_hidden_state.numpy())


def vision_errors(out, ref):
    interp = Interpreter(out / "vision_encoder.mlpackage")
    cfg = config(out, "vision")
    errors = []
    for (h, w), size in zip(VISION_SIZES, cfg["image_sizes"]):
        assert (size["height"], size["width"]) == (h, w)
        gh, gw = size["grid_thw"][1:]
        pixels = np.random.default_rng(h).standard_normal((gh * gw, cfg["patch_dim"])).astype(np.float32)
        with torch.no_grad():
            expected = ref.thinker.model.visual(torch.tensor(pixels),
                                                grid_thw=torch.tensor([[1, gh, gw]]))
        got = interp.run({"pixel_patches": pixels}, function=size["function"])["image_embeds"]
        errors.append(rel_err(got, expected.pooler_output.numpy()))
    return errors


def test_audio_encoder_matches_transformers(float32_export, float16_export, reference):
    err32, err16 = audio_error(float32_export, reference), audio_error(float16_export, reference)
    print(f"audio encoder float32 {err32:.2e}, float16 {err16:.2e}")
    assert err32 <= FLOAT32_RTOL
    assert err16 <= FLOAT16_RTOL


def test_vision_encoder_matches_transformers(float32_export, float16_export, reference):
    err32 = max(vision_errors(float32_export, reference))
    err16 = max(vision_errors(float16_export, reference))
    print(f"vision encoder float32 {err32:.2e}, float16 {err16:.2e}")
    assert err32 <= FLOAT32_RTOL
    assert err16 <= FLOAT16_RTOL


def test_voice_conditions_are_the_speaker_encoder_rows(default_export, reference, fixture_3b):
    speakers = json.loads((default_export / "manifest.json").read_text())["speakers"]
    entry = speakers["dit_conditions"]
    table = np.fromfile(default_export / entry["file"], "<f4").reshape(entry["shape"])
    voices = speakers_io.load_speakers(fixture_3b / "spk_dict.pt")
    ecapa = reference.token2wav.code2wav_dit_model.input_embed.spk_encoder
    for v in speakers["voices"]:
        voice = voices[v["name"]]
        assert v["bos_token"] == voice["bos_token"]
        with torch.no_grad():
            mel = torch.tensor(voice["ref_mel"])
            guided = np.concatenate([ecapa(mel)[0].numpy(), voice["cond"][0]])
            null = np.concatenate([ecapa(torch.zeros_like(mel))[0].numpy(),
                                   np.zeros_like(voice["cond"][0])])
        np.testing.assert_allclose(table[v["index"]], np.stack([guided, null]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, frames", [("3b", None), ("3b", 100), ("7b", 100)])
def test_dit_window_matches_transformers(request, kind, frames):
    """A full window, and a short one padded at the end and masked (exact as well; the 7B-shaped
    fixture has a look-ahead layer, whose last real block sees the padded one)."""
    out = request.getfixturevalue("default_export" if kind == "3b" else "float32_export_7b")
    ref = request.getfixturevalue("reference" if kind == "3b" else "reference_7b")
    voices = speakers_io.load_speakers(request.getfixturevalue(f"fixture_{kind}") / "spk_dict.pt")
    cfg = config(out, "dit")
    window = cfg["window_frames"]
    n = frames or window
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, n, cfg["mel_dim"])).astype(np.float32)
    codes = rng.integers(0, cfg["codebook_size"], (1, n // cfg["repeats"]))
    voice = voices["Ethan"]
    with torch.no_grad():
        both = ref.token2wav.code2wav_dit_model(
            hidden_states=torch.tensor(x), condition_vector=torch.tensor(voice["ref_mel"]),
            speaker_embedding=torch.tensor(voice["cond"])[:, None].expand(1, n, -1),
            quantized_code=torch.tensor(codes), time_step=torch.tensor(0.3), apply_cfg=True).numpy()
    guidance = cfg["ode"]["guidance"]
    expected = both[0] + (both[0] - both[1]) * guidance
    entry = json.loads((out / "manifest.json").read_text())["speakers"]
    table = entry["dit_conditions"]
    conditions = np.fromfile(out / table["file"], "<f4").reshape(table["shape"])
    index = next(v["index"] for v in entry["voices"] if v["name"] == "Ethan")
    feeds = {"noisy_mel": np.zeros((1, window, cfg["mel_dim"]), np.float32),
             "codes": np.zeros((1, window // cfg["repeats"]), np.int32),
             "frame_mask": np.zeros((1, window), np.float32), "condition": conditions[index],
             "time": np.array([0.3], np.float32), "guidance": np.array([guidance], np.float32)}
    feeds["noisy_mel"][:, :n], feeds["frame_mask"][:, :n] = x, 1
    feeds["codes"][:, : n // cfg["repeats"]] = codes
    got = Interpreter(out / "dit.mlpackage").run(feeds)["velocity"][0, :n]
    print(f"DiT {kind} {n} frames: {rel_err(got, expected):.2e}")
    assert rel_err(got, expected) <= FLOAT32_RTOL


def test_bigvgan_windows_rebuild_the_full_length_vocoder(default_export, reference):
    """Windows placed by `vocoder_calls` (the README's rule) reproduce BigVGAN run on the whole mel."""
    cfg = config(default_export, "bigvgan")
    window, hop, context = cfg["window_frames"], cfg["samples_per_frame"], cfg["context_frames"]
    total = window + 38
    mel = (np.random.default_rng(0).standard_normal((1, 80, total)) * 2 - 6).astype(np.float32)
    with torch.no_grad():
        expected = reference.token2wav.code2wav_bigvgan_model(torch.tensor(mel)).numpy()
    calls = vocoder_calls(total, 0, True, window, context)
    assert len(calls) == 2 and calls[0][1] == 0 and calls[-1][2] == total
    interp, pieces = Interpreter(default_export / "bigvgan.mlpackage"), []
    for start, first, end in calls:
        wav = interp.run({"mel": mel[:, :, start:start + window]})["waveform"][0]
        pieces.append(wav[(first - start) * hop:(end - start) * hop])
    err = rel_err(np.concatenate(pieces), expected)
    print(f"BigVGAN windows vs full length: {err:.2e}")
    assert err <= FLOAT32_RTOL


def test_vocoder_calls_emit_every_frame_once():
    for total in (30, 111, 112, 150, 400):
        emitted, ready = 0, 0
        pieces = []
        for ready in range(10, total, 72):  # frames arrive in chunks, as the DiT windows produce them
            for start, first, end in vocoder_calls(ready, emitted, False, 112, 20):
                assert first == emitted and (first - start >= 20 or start == 0) and end <= ready - 20
                pieces.append((first, end))
                emitted = end
        for start, first, end in vocoder_calls(total, emitted, True, 112, 20):
            pieces.append((first, end))
            emitted = end
        assert emitted == total and all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
