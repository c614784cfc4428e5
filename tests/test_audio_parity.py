"""Audio in, end to end, against transformers on the fixture checkpoints (float32, same run):
prompt ids, TMRoPE positions, logits and greedy ids for audio prompts."""

import shutil
import subprocess

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from fixtures import load_reference_thinker, reference_processor  # noqa: E402

from omni_edge import load  # noqa: E402
from omni_edge.cli import main as cli_main  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402
from omni_edge.decode import generate_step
from omni_edge.processing.thinker_input import prepare_prompt  # noqa: E402
from omni_edge.processing.rope_index import rope_index  # noqa: E402

SR = 16000
GREEDY_TOKENS = 32
LOGITS_RTOL = 1e-5


def chirp(seconds: float, f0: float = 200.0, f1: float = 3000.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    sweep = np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)
    noise = np.random.default_rng(seed).normal(size=t.size)
    return (0.3 * sweep + 0.02 * noise).astype(np.float32)


def audio_message(*clips, text="What do you hear?"):
    parts = [{"type": "audio", "audio": c} for c in clips]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def setup(fixture_dir, tmp_path_factory):
    out = convert(str(fixture_dir), str(tmp_path_factory.mktemp("conv") / "fp32"), dtype="float32")
    return load(str(out)), load_reference_thinker(fixture_dir), reference_processor(fixture_dir), out


def reference_inputs(processor, messages):
    """What transformers feeds its thinker for `messages` (audio arrays at 16 kHz)."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    audios = [p["audio"] for m in messages if isinstance(m["content"], list)
              for p in m["content"] if p["type"] == "audio"]
    return processor(text=text, audio=audios or None, return_tensors="pt", padding=True)


def ours_greedy(model, messages, n=GREEDY_TOKENS):
    prompt = prepare_prompt(model, messages, n, 32768, False)
    ids, embeds = prompt.ids, prompt.embeds
    return list(generate_step(model, ids, max_tokens=n, input_embeddings=embeds))


def ref_greedy(ref, inputs, n=GREEDY_TOKENS):
    with torch.no_grad():
        out = ref.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


MESSAGE_CASES = {
    "one_audio": lambda: audio_message(chirp(3.3)),
    "two_audios": lambda: audio_message(chirp(2.0, seed=1), chirp(5.1, 400, 6000, seed=2)),
    "across_turns": lambda: audio_message(chirp(1.2, seed=3)) + [
        {"role": "assistant", "content": [{"type": "text", "text": "A sweep."}]},
        *audio_message(chirp(4.0, 100, 900, seed=4), text="And now?")],
}


@pytest.mark.parametrize("case", MESSAGE_CASES)
def test_prompt_ids_and_positions_match(setup, case):
    model, ref, processor, _ = setup
    messages = MESSAGE_CASES[case]()
    inputs = reference_inputs(processor, messages)
    prepared = model.processor.prepare(messages)
    assert prepared.input_ids == inputs["input_ids"][0].tolist()
    ref_pos, ref_delta = ref.model.get_rope_index(
        inputs["input_ids"], None, None, inputs["attention_mask"], False,
        inputs["feature_attention_mask"].sum(-1), None)
    pos, delta = rope_index(prepared.input_ids, model.config.thinker_config,
                            audio_lengths=[f.shape[-1] for f in prepared.audio_features])
    np.testing.assert_array_equal(np.asarray(pos), ref_pos[:, 0].numpy())
    assert delta == int(ref_delta.reshape(-1)[0])


def test_logits_match_for_an_audio_prompt(setup):
    model, ref, processor, _ = setup
    messages = MESSAGE_CASES["two_audios"]()
    inputs = reference_inputs(processor, messages)
    with torch.no_grad():
        ref_logits = ref(**inputs).logits[0].numpy()
    prompt = prepare_prompt(model, messages, 1, 32768, False)
    embeds = prompt.embeds
    ours = np.asarray(model.thinker(None, input_embeddings=embeds[None])[0])
    assert np.abs(ours - ref_logits).max() / np.abs(ref_logits).max() <= LOGITS_RTOL


@pytest.mark.parametrize("case", ["one_audio", "two_audios"])
def test_greedy_ids_match(setup, case):
    model, ref, processor, _ = setup
    messages = MESSAGE_CASES[case]()
    expected = ref_greedy(ref, reference_inputs(processor, messages))
    assert len(set(expected)) > 3
    assert ours_greedy(model, messages) == expected


def test_the_audio_content_moves_the_output(setup):
    """Noise instead of the clip must change the greedy ids, in ours and in the reference;
    otherwise the parity tests above could not see an audio bug."""
    model, ref, processor, _ = setup
    clip = chirp(3.3)
    noise = np.random.default_rng(7).normal(scale=0.3, size=clip.size).astype(np.float32)
    ours = [ours_greedy(model, audio_message(c), 16) for c in (clip, noise, clip * 0.5)]
    refs = [ref_greedy(ref, reference_inputs(processor, audio_message(c)), 16) for c in (clip, noise)]
    assert ours[0] != ours[1] and refs[0] != refs[1]
    assert ours[:2] == refs
    assert ours[2] != ours[0]


def test_real_speech_from_espeak(setup, tmp_path):
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    model, ref, processor, _ = setup
    wav = tmp_path / "question.wav"
    subprocess.run([espeak, "-w", str(wav), "What is the capital of France?"], check=True)
    import soxr

    data, rate = sf.read(wav, dtype="float32")
    # librosa.load(sr=16000), the reference loader: soxr HQ, length fixed to ceil(n * ratio)
    reference_audio = soxr.resample(data, rate, SR, quality="HQ").astype(np.float32)
    n_out = -(-len(data) * SR // rate)
    reference_audio = np.pad(reference_audio, (0, max(0, n_out - len(reference_audio))))[:n_out]
    expected = ref_greedy(ref, reference_inputs(processor, audio_message(reference_audio)))
    assert ours_greedy(model, audio_message(str(wav))) == expected


def test_cli_answers_an_audio_question(setup, tmp_path, capsys):
    _, _, _, out = setup
    wav = tmp_path / "q.wav"
    sf.write(wav, chirp(1.5), SR)
    cli_main(["generate", "--model", str(out), "--audio", str(wav), "--max-tokens", "4"])
    printed = capsys.readouterr().out
    assert "Generation: 4 tokens" in printed
    # --low-memory frees the encoder after use: the same reply
    cli_main(["generate", "--model", str(out), "--audio", str(wav), "--max-tokens", "4", "--low-memory"])
    assert capsys.readouterr().out.split("=" * 10)[0] == printed.split("=" * 10)[0]
    with pytest.raises(SystemExit) as exc:
        cli_main(["generate", "--model", str(out), "--audio", str(tmp_path / "missing.wav")])
    assert exc.value.code == 2
    assert "missing.wav" in capsys.readouterr().err


def test_quantized_audio_encoder_stays_close(setup, fixture_dir, tmp_path):
    """The converter's 8-bit audio encoder (its default with -q) against the float32 one."""
    model, _, _, _ = setup
    q_dir = convert(str(fixture_dir), str(tmp_path / "q4"), dtype="float32", quantize=True,
                    q_bits=4, q_group_size=32)
    quantized = load(str(q_dir))
    assert "scales" in quantized.thinker.audio_tower.layers[0].fc1
    features = [mx.array(f) for f in model.processor.prepare(audio_message(chirp(3.0))).audio_features]
    full, approx = model.thinker.audio_tower(features), quantized.thinker.audio_tower(features)
    err = float(mx.abs(approx - full).max() / mx.abs(full).max())
    assert 0 < err < 0.05
    assert len(ours_greedy(quantized, audio_message(chirp(3.0)), 4)) == 4
