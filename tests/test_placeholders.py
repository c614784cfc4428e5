"""Placeholder expansion against transformers' Qwen2_5OmniProcessor (same run, exact ids).

Images and audio go through `reference_processor` (no torchvision needed). Videos need the
processor's torchvision video processor: those tests skip without torchvision; they feed
decoded frames, so no video file or decoder is involved, and also check the positions of the
processor's ids against the reference `get_rope_index`."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fixtures import load_reference_thinker, reference_processor, reference_tokenizer  # noqa: E402

from omni_edge.config import OmniConfig  # noqa: E402
from omni_edge.processing.chat_template import OMNI_CHAT_TEMPLATE  # noqa: E402
from omni_edge.processing.placeholders import (  # noqa: E402
    audio_in_video_tokens,
    expand_placeholders,
)
from omni_edge.processing.rope_index import PromptLayoutError, rope_index  # noqa: E402

SR = 16000
FRAME_H, FRAME_W = 56, 84  # 4 x 6 patches per frame, 2 x 3 tokens after the 2 x 2 merge
# Keep frames at their size (the processor's default minimum would upscale them to ~100k pixels).
VIDEO_SIZE = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 64}


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).normal(size=int(seconds * SR))).astype(np.float32)


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def clip(n_frames: int, seed: int = 0) -> np.ndarray:
    shape = (n_frames, FRAME_H, FRAME_W, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def turn(*parts, role="user"):
    return {"role": role, "content": [p if isinstance(p, dict) else {"type": "text", "text": p}
                                      for p in parts]}


def thinker_config(path):
    return OmniConfig.from_dict(json.loads((path / "config.json").read_text())).thinker_config


def media_of(out) -> dict:
    """The processor's own media sizes, in prompt order, as our functions take them."""
    media = {}
    if "feature_attention_mask" in out:
        media["audio_lengths"] = out["feature_attention_mask"].sum(-1).tolist()
    if "image_grid_thw" in out:
        media["image_grids"] = out["image_grid_thw"].tolist()
    if "video_grid_thw" in out:
        media["video_grids"] = out["video_grid_thw"].tolist()
        media["video_seconds_per_grid"] = [float(s) for s in out["video_second_per_grid"]]
    return media


def expand_like(processor, cfg, messages, out, video_uses_audio=None):
    """Our expansion of the unexpanded template ids, with the processor's media sizes."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor.tokenizer.encode(text, add_special_tokens=False)
    return expand_placeholders(ids, cfg, video_uses_audio=video_uses_audio, **media_of(out))


# --------------------------------------------------------------------------- text, audio, images

IMAGE_AUDIO_CASES = {
    "text_only": lambda: [turn("Just text, please.")],
    "one_image": lambda: [turn({"type": "image", "image": picture(56, 84)}, "Describe it.")],
    "two_images_with_text": lambda: [turn(
        "First", {"type": "image", "image": picture(56, 56, 1)}, "then",
        {"type": "image", "image": picture(112, 84, 2)}, "Compare.")],
    "audio": lambda: [turn({"type": "audio", "audio": noise(3.3)}, "What is it?")],
    "mixed": lambda: [turn({"type": "audio", "audio": noise(2.0, 1)},
                           {"type": "image", "image": picture(84, 56)},
                           {"type": "audio", "audio": noise(5.1, 2)}, "Explain.")],
    "multi_turn": lambda: [
        turn({"type": "image", "image": picture(56, 84)}, "What is this?"),
        turn("A square.", role="assistant"),
        turn({"type": "audio", "audio": noise(1.2)}, {"type": "image", "image": picture(56, 56)},
             "And these?")],
}


@pytest.fixture(scope="module")
def image_audio_setup(fixture_3b):
    return reference_processor(fixture_3b), thinker_config(fixture_3b)


@pytest.mark.parametrize("case", IMAGE_AUDIO_CASES)
def test_image_and_audio_ids_match_processor(image_audio_setup, case):
    processor, cfg = image_audio_setup
    messages = IMAGE_AUDIO_CASES[case]()
    parts = [p for m in messages for p in m["content"]]
    images = [p["image"] for p in parts if p["type"] == "image"] or None
    audio = [p["audio"] for p in parts if p["type"] == "audio"] or None
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = processor(text=text, images=images, audio=audio, return_tensors="pt")
    assert expand_like(processor, cfg, messages, out) == out["input_ids"][0].tolist()


def test_counts_that_do_not_fit_the_prompt_are_errors(fixture_3b):
    cfg = thinker_config(fixture_3b)
    tokenizer = reference_tokenizer(fixture_3b)
    text = "<|vision_bos|><|IMAGE|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    with pytest.raises(PromptLayoutError, match="audio_lengths"):
        expand_placeholders(ids, cfg, image_grids=[(1, 4, 4)])
    with pytest.raises(PromptLayoutError, match="image_grids has 2 entries"):
        expand_placeholders(ids, cfg, audio_lengths=[300], image_grids=[(1, 4, 4)] * 2)
    video = tokenizer.encode("<|vision_bos|><|VIDEO|><|vision_eos|>", add_special_tokens=False)
    with pytest.raises(PromptLayoutError, match="video_seconds_per_grid"):
        expand_placeholders(video, cfg, video_grids=[(2, 4, 4)])
    with pytest.raises(PromptLayoutError, match="audio_lengths"):
        expand_placeholders(video, cfg, video_grids=[(2, 4, 4)], video_seconds_per_grid=[1.0],
                            video_uses_audio=[True])


def test_audio_in_video_chunks_interleave_two_seconds_at_a_time(fixture_3b):
    """3 frame groups at 1 s each, 7 s of audio (175 tokens): video t=0,25 | audio 0-49,
    then video t=50 | audio 50-99, then audio 100-149, then audio 150-174."""
    cfg = thinker_config(fixture_3b)
    V, A = cfg.video_token_index, cfg.audio_token_index
    ids = audio_in_video_tokens(cfg, (3, 4, 6), 1.0, 175)
    expected = ([cfg.audio_start_token_id] + [V] * 12 + [A] * 50 + [V] * 6 + [A] * 50
                + [A] * 50 + [A] * 25 + [cfg.audio_end_token_id])
    assert ids == expected


# --------------------------------------------------------------------------- videos (torchvision)


@pytest.fixture(scope="module")
def video_setup(fixture_3b):
    pytest.importorskip("torchvision")
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    base = reference_processor(fixture_3b)  # its feature extractor and tokenizer
    processor = Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), Qwen2VLVideoProcessor(),
                                     base.feature_extractor, base.tokenizer,
                                     chat_template=OMNI_CHAT_TEMPLATE)
    return processor, thinker_config(fixture_3b), load_reference_thinker(fixture_3b).model


def run_processor(processor, messages, fps, audio_from_video=None):
    """Processor output for `messages`; `audio_from_video` maps a video index to the waveform
    of its audio track (passed as already decoded audio, one per audio slot)."""
    parts = [p for m in messages for p in m["content"]]
    videos = [p["video"] for p in parts if p["type"] == "video"]
    kwargs = {}
    audio, slots, v = [], [], 0
    for p in parts:
        if p["type"] == "audio":
            audio.append(p["audio"])
            slots.append(None)
        elif p["type"] == "video":
            if audio_from_video and v in audio_from_video:
                audio.append(audio_from_video[v])
                slots.append(v)
            v += 1
    if audio_from_video:
        kwargs = {"audio_from_video_indices": slots, "load_audio_from_video": True}
    images = [p["image"] for p in parts if p["type"] == "image"] or None
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=images, videos=videos or None, audio=audio or None,
                     videos_kwargs={"fps": fps, "size": VIDEO_SIZE}, return_tensors="pt", **kwargs)


def check_video_case(video_setup, messages, fps, audio_from_video=None, positions=True):
    processor, cfg, ref = video_setup
    out = run_processor(processor, messages, fps, audio_from_video)
    n_videos = len(out["video_grid_thw"])
    uses_audio = [i in (audio_from_video or {}) for i in range(n_videos)]
    ids = expand_like(processor, cfg, messages, out, uses_audio)
    ref_ids = out["input_ids"][0].tolist()
    assert ids == ref_ids
    if positions:  # the reference handles all-or-none audio-in-video only
        media = media_of(out)
        pos, delta = rope_index(ids, cfg, **media)
        ref_pos, ref_delta = ref.get_rope_index(
            out["input_ids"], out.get("image_grid_thw"), out["video_grid_thw"],
            out["attention_mask"], any(uses_audio),
            out["feature_attention_mask"].sum(-1) if "feature_attention_mask" in out else None,
            out["video_second_per_grid"])
        np.testing.assert_array_equal(pos, ref_pos[:, 0].numpy())
        assert delta == int(ref_delta.reshape(-1)[0])
    return out


@pytest.mark.parametrize("fps", [2.0, 4.0, 2.5])  # seconds per grid 1.0, 0.5, 0.8
def test_video_ids_match_processor(video_setup, fps):
    messages = [turn({"type": "video", "video": clip(6)}, "What happens?")]
    out = check_video_case(video_setup, messages, fps)
    assert out["video_grid_thw"].tolist() == [[3, 4, 6]]


@pytest.mark.parametrize("fps, frames, seconds", [
    (2.0, 6, 7.0),    # audio longer: 2 video chunks, 4 audio chunks
    (2.0, 16, 1.5),   # video longer: 4 video chunks, 1 audio chunk
    (5.0, 10, 4.3),   # 0.4 s per grid
    (0.8, 8, 9.0),    # 2.5 s per grid: time steps jump over whole chunks
])
def test_audio_in_video_ids_match_processor(video_setup, fps, frames, seconds):
    messages = [turn({"type": "video", "video": clip(frames)}, "What do you see and hear?")]
    check_video_case(video_setup, messages, fps, {0: noise(seconds)})


def test_mixed_prompt_with_audio_in_video(video_setup):
    messages = [turn({"type": "audio", "audio": noise(2.2, 1)},
                     {"type": "image", "image": picture(56, 84)},
                     {"type": "video", "video": clip(6)}, "Explain all of it.")]
    check_video_case(video_setup, messages, 2.0, {0: noise(6.1, 2)})
    check_video_case(video_setup, messages, 2.0)  # the video without its audio


def test_multi_turn_videos(video_setup):
    messages = [turn({"type": "video", "video": clip(6, 1)}, "What happens?"),
                turn("Someone talks.", role="assistant"),
                turn({"type": "image", "image": picture(56, 56)},
                     {"type": "video", "video": clip(4, 2)}, "And now?")]
    check_video_case(video_setup, messages, 2.0, {0: noise(3.0, 1), 1: noise(5.0, 2)})
    check_video_case(video_setup, messages, 4.0)


def test_silent_video_next_to_one_with_audio(video_setup):
    """The processor keeps a video without an audio track as plain <|VIDEO|> tokens; our
    positions give each video the form its tokens have (transformers' get_rope_index takes
    one flag for all videos, so it is not the oracle here)."""
    processor, cfg, _ = video_setup
    messages = [turn({"type": "video", "video": clip(6, 1)},
                     {"type": "video", "video": clip(4, 2)})]
    out = check_video_case(video_setup, messages, 2.0, {0: noise(3.0)}, positions=False)
    pos, _ = rope_index(out["input_ids"][0].tolist(), cfg, **media_of(out))
    assert pos.shape == (3, out["input_ids"].shape[1])
