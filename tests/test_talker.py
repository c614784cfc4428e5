"""The Talker and the Thinker → Talker hand-off against transformers (float32, fixtures).

Greedy codec ids come from transformers 4.57.6's end-to-end generate() (the release behaviour;
5.x drops the all-ones attention mask and with it the codec pad/bos embeddings, omni_spec §0),
run in its own venv named by $OMNI_EDGE_REF457_PYTHON (.ci/run makes it)."""

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fixtures import load_reference_model, reference_processor  # noqa: E402

from omni_edge import generate, load  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402
from omni_edge.decode import generate_step
from omni_edge.processing.thinker_input import prepare_prompt  # noqa: E402
from omni_edge.processing.prompt import SPEECH_SYSTEM_PROMPT, normalize_messages  # noqa: E402
from omni_edge.options import SpeechOptions  # noqa: E402
from omni_edge.sampling import make_talker_sampler  # noqa: E402
from omni_edge.speech.talker import ThinkerTrace, talker_codes, talker_inputs, talker_positions  # noqa: E402
from omni_edge.speech.voice import SpeechError, with_speech_system_prompt  # noqa: E402

REF457 = os.environ.get("OMNI_EDGE_REF457_PYTHON")
REF_SCRIPT = Path(__file__).parent / "reference" / "omni_457.py"
THINKER_TOKENS = 12
TALKER_TOKENS = 48
GREEDY = SpeechOptions(talker_temperature=0.0, max_codec_tokens=TALKER_TOKENS)


@pytest.fixture(scope="module")
def setup(fixture_dir, tmp_path_factory):
    out = convert(str(fixture_dir), str(tmp_path_factory.mktemp("conv") / "fp32"), dtype="float32")
    return load(str(out)), fixture_dir


def speech_messages(content):
    return with_speech_system_prompt(normalize_messages(
        [{"role": "user", "content": content}]))


def trace_for(model, messages, n=THINKER_TOKENS):
    """Run our Thinker greedily for n tokens, capturing what the Talker reads."""
    prompt = prepare_prompt(model, messages, n, 32768, False)
    capture = []
    reply = list(generate_step(model, prompt.ids, max_tokens=n, input_embeddings=prompt.embeds,
                               capture=capture, position_ids=prompt.positions,
                               rope_delta=prompt.rope_delta))
    return ThinkerTrace(prompt.ids, mx.concatenate([e for e, _ in capture]),
                        mx.concatenate([h for _, h in capture]), reply, prompt.placeholders,
                        prompt.media)


def spoken(codes):
    """Codes past the DiT's codebook are spoken as code 0 (ours; the reference would index
    out of range), so that is what the reference's codes become."""
    return [c if c < 8194 else 0 for c in codes]


def reference_457(tmp_path, model_dir, trace, inputs=None, use_audio_in_video=False):
    if not REF457:
        pytest.skip("set OMNI_EDGE_REF457_PYTHON to a python with torch 2.13.0 + transformers 4.57.6")
    request = {"model": str(model_dir), "input_ids": trace.prompt_ids, "voice": "Chelsie",
               "thinker_tokens": THINKER_TOKENS, "talker_tokens": TALKER_TOKENS}
    if inputs is not None:
        np.savez(tmp_path / "inputs.npz", **inputs)
        request["inputs"] = str(tmp_path / "inputs.npz")
    request["use_audio_in_video"] = use_audio_in_video
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run([REF457, str(REF_SCRIPT), str(tmp_path / "request.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_talker_logits_match_for_identical_inputs(setup):
    model, fixture = setup
    trace = trace_for(model, speech_messages("Say something kind."))
    voice = model.voices["Chelsie"]
    embeds, text_ids, codec_prompt, _ = talker_inputs(model.thinker, model.talker.cfg, trace, voice["bos_token"])
    ref = load_reference_model(fixture).talker.eval()
    with torch.no_grad():
        ref_logits = ref(input_ids=torch.tensor([codec_prompt]), inputs_embeds=torch.tensor(np.asarray(embeds))[None],
                         attention_mask=torch.ones(1, len(codec_prompt), dtype=torch.long),
                         input_text_ids=torch.tensor([text_ids]), use_cache=False).logits[0].numpy()
    cfg = model.talker.cfg
    codec = model.talker.embed_codes(mx.array([cfg.tts_codec_pad_token_id, cfg.tts_codec_start_token_id]))
    ours = np.asarray(model.talker(mx.concatenate([embeds[:-2], embeds[-2:] + codec])[None])[0])
    assert np.abs(ours - ref_logits).max() / np.abs(ref_logits).max() <= 1e-5
    # the hand-off matters: the same prompt without the codec pad/bos embeddings differs
    plain = np.asarray(model.talker(embeds[None])[0])
    assert np.abs(plain - ref_logits).max() / np.abs(ref_logits).max() > 1e-3


def test_greedy_codes_match_the_release_pipeline_text(setup, tmp_path):
    model, fixture = setup
    trace = trace_for(model, speech_messages("Say something kind."))
    expected = reference_457(tmp_path, fixture, trace)
    assert trace.reply_ids == expected["thinker_ids"]
    codes = list(talker_codes(model, trace, model.voices["Chelsie"], GREEDY))
    # 4.57.6 drops the last code even when it stopped on length (omni_spec §0); we keep it
    assert codes[: len(expected["codes"])] == spoken(expected["codes"])
    assert len(set(codes)) > 3


def test_greedy_codes_match_the_release_pipeline_audio(setup, tmp_path):
    model, fixture = setup
    rng = np.random.default_rng(5)
    clip = (0.3 * np.sin(np.linspace(0, 900, 16000 * 2)) + 0.05 * rng.normal(size=32000)).astype(np.float32)
    messages = speech_messages([{"type": "audio", "audio": clip}, {"type": "text", "text": "Reply."}])
    trace = trace_for(model, messages)
    processor = reference_processor(fixture)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, audio=[clip], return_tensors="pt", padding=True)
    assert inputs["input_ids"][0].tolist() == trace.prompt_ids
    expected = reference_457(tmp_path, fixture, trace, {
        "input_features": inputs["input_features"].numpy(),
        "feature_attention_mask": inputs["feature_attention_mask"].numpy()})
    assert trace.reply_ids == expected["thinker_ids"]
    codes = list(talker_codes(model, trace, model.voices["Chelsie"], GREEDY))
    assert codes[: len(expected["codes"])] == spoken(expected["codes"])


def test_greedy_codes_match_the_release_pipeline_image(setup, tmp_path):
    """With an image the Talker's positions come from the TMRoPE index over its own ids."""
    model, fixture = setup
    image = (np.random.default_rng(6).integers(0, 256, (12, 16, 3), dtype=np.uint8)
             .repeat(7, axis=0).repeat(7, axis=1))  # 84 x 112, blocky
    messages = speech_messages([{"type": "image", "image": image}, {"type": "text", "text": "Describe it."}])
    trace = trace_for(model, messages)
    assert trace.media["image_grids"] == [(1, 6, 8)]
    processor = reference_processor(fixture)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[image], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == trace.prompt_ids
    expected = reference_457(tmp_path, fixture, trace, {
        "pixel_values": inputs["pixel_values"].numpy(),
        "image_grid_thw": inputs["image_grid_thw"].numpy()})
    assert trace.reply_ids == expected["thinker_ids"]
    codes = list(talker_codes(model, trace, model.voices["Chelsie"], GREEDY))
    assert codes[: len(expected["codes"])] == spoken(expected["codes"])
    # the positions matter: sequential ones give other codes
    sequential = replace(trace, media={})
    assert list(talker_codes(model, sequential, model.voices["Chelsie"], GREEDY)) != codes


@pytest.mark.parametrize("with_sound", [False, True])
def test_greedy_codes_match_the_release_pipeline_video(setup, tmp_path, with_sound):
    """A video (and its sound interleaved per 2 s): the Talker's time-aligned positions. Both
    sides read the same pixels and log-mel (our processing equals the reference pipeline's,
    tests/test_vision_parity.py), so no torchvision is needed here."""
    pytest.importorskip("av")
    from media import write_clip

    model, fixture = setup
    clip = write_clip(tmp_path / "clip.mp4", "libx264", "aac" if with_sound else None,
                      size=(84, 56), seconds=4.5)
    messages = speech_messages([{"type": "video", "video": str(clip)},
                                {"type": "text", "text": "What happens?"}])
    inputs = model.processor.prepare(messages, use_audio_in_video=with_sound)
    prompt = prepare_prompt(model, messages, THINKER_TOKENS, 32768, False, with_sound)
    capture = []
    reply = list(generate_step(model, prompt.ids, max_tokens=THINKER_TOKENS,
                               input_embeddings=prompt.embeds, capture=capture,
                               position_ids=prompt.positions, rope_delta=prompt.rope_delta))
    trace = ThinkerTrace(prompt.ids, mx.concatenate([e for e, _ in capture]),
                         mx.concatenate([h for _, h in capture]), reply, prompt.placeholders,
                         prompt.media)
    video = inputs.videos[0]
    arrays = {"pixel_values_videos": video.pixel_values,
              "video_grid_thw": np.array([video.grid_thw]),
              "video_second_per_grid": np.array([video.second_per_grid], np.float32)}
    if with_sound:
        mel = inputs.audio_features[0]
        arrays.update(input_features=mel[None],
                      feature_attention_mask=np.ones((1, mel.shape[-1]), np.int64))
    expected = reference_457(tmp_path, fixture, trace, arrays, use_audio_in_video=with_sound)
    assert trace.reply_ids == expected["thinker_ids"]
    codes = list(talker_codes(model, trace, model.voices["Chelsie"], GREEDY))
    assert codes[: len(expected["codes"])] == spoken(expected["codes"])
    # The fixture's greedy codes happen not to change with sequential positions here, so show
    # the time-aligned positions do reach the Talker's logits (the positions themselves equal
    # transformers' in tests/test_rope_index.py).
    embeds, text_ids, _, _ = talker_inputs(model.thinker, model.talker.cfg, trace,
                                           model.voices["Chelsie"]["bos_token"])
    positions, _ = talker_positions(model.talker.cfg, text_ids, trace.media)
    aligned = np.asarray(model.talker(embeds[None], position_ids=mx.array(positions)[:, None]))
    sequential = np.asarray(model.talker(embeds[None]))
    assert np.abs(aligned - sequential).max() / np.abs(sequential).max() > 1e-3


def test_talker_sampler_keeps_what_transformers_keeps():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(1).normal(size=(1, 300)).astype(np.float32) * 3
    t = torch.tensor(logits) / 0.9
    t[:, 7] = -float("inf")
    t = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(40)(None, t))
    keep_ref = np.isfinite(t.numpy())
    mx.random.seed(0)
    seen = {int(make_talker_sampler(0.9, 40, 0.8, suppress=[7])(mx.array(logits)).item()) for _ in range(400)}
    assert seen <= set(np.flatnonzero(keep_ref[0])) and len(seen) > 1


def test_speech_system_prompt_is_added():
    msgs = with_speech_system_prompt(normalize_messages("hi"))
    assert msgs[0]["role"] == "system" and msgs[0]["content"][0]["text"] == SPEECH_SYSTEM_PROMPT
    with pytest.warns(UserWarning, match="system prompt"):
        with_speech_system_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])


def test_bad_speech_requests(setup):
    model, _ = setup
    with pytest.raises(SpeechError, match="unknown voice 'Nobody'.*Chelsie"):
        generate(model, "hi", speak=True, voice="Nobody", max_tokens=2)
    trace = trace_for(model, speech_messages("hi"), 1)
    with pytest.raises(SpeechError, match="empty"):
        talker_inputs(model.thinker, model.talker.cfg, trace, 151870)
    talker = model.pop("talker")  # an MLX Module is a dict of its children
    try:
        with pytest.raises(SpeechError, match="cannot speak"):
            generate(model, "hi", speak=True, max_tokens=2)
    finally:
        model.talker = talker
