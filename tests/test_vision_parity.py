"""Images and video end to end against transformers (fp32, fixture checkpoints): the same
prompt ids, positions and greedy token ids as the reference pipeline (the Omni processor;
qwen-omni-utils for video frames and a video's sound), and the reference's ids do depend on
the pixels and the sound (else matching them would prove nothing)."""

import logging
import warnings

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fixtures import load_reference_thinker, reference_processor  # noqa: E402
from media import write_clip  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402
from omni_edge.processing.chat_template import OMNI_CHAT_TEMPLATE  # noqa: E402
from omni_edge.decode import generate_step
from omni_edge.processing.thinker_input import prepare_prompt  # noqa: E402
from omni_edge.loading import load  # noqa: E402

GREEDY_TOKENS = 8
VIDEO_SIZE = {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}


@pytest.fixture(scope="module")
def pair(fixture_3b, tmp_path_factory):
    ours = load(str(convert(str(fixture_3b), str(tmp_path_factory.mktemp("v") / "fp32"),
                            dtype="float32")))
    return ours, load_reference_thinker(fixture_3b), fixture_3b


def picture(height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), np.uint8))[:height, :width]  # blocky, so resize matters


def user(*parts):
    content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def ours_greedy(model, messages, use_audio_in_video=False):
    prompt = prepare_prompt(model, messages, GREEDY_TOKENS, 32768, False, use_audio_in_video)
    ids = list(generate_step(model, prompt.ids, max_tokens=GREEDY_TOKENS,
                             input_embeddings=prompt.embeds, position_ids=prompt.positions,
                             rope_delta=prompt.rope_delta))
    return prompt, ids


def ref_greedy(ref, inputs, use_audio_in_video=False):
    # The processor's output doesn't say a video carries its sound; the positions need it.
    extra = {"use_audio_in_video": True} if use_audio_in_video else {}
    with torch.no_grad():
        out = ref.generate(**inputs, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                           do_sample=False, **extra)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def check_positions(ref, prompt, inputs, use_audio_in_video=False):
    args = dict(input_ids=inputs["input_ids"], image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs.get("video_grid_thw"), attention_mask=inputs["attention_mask"],
                use_audio_in_video=use_audio_in_video,
                audio_seqlens=(inputs["feature_attention_mask"].sum(-1)
                               if "feature_attention_mask" in inputs else None),
                second_per_grids=inputs.get("video_second_per_grid"))
    positions, delta = ref.model.get_rope_index(**args)
    np.testing.assert_array_equal(prompt.positions, positions[:, 0].numpy())
    assert prompt.rope_delta == int(delta.reshape(-1)[0])


def test_image_prompt_matches_transformers(pair):
    model, ref, path = pair
    processor = reference_processor(path)

    def reference_inputs(image):
        messages = user({"type": "image", "image": image}, "What is in the picture?")
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return messages, processor(text=text, images=[image], return_tensors="pt")

    image = picture(90, 130)
    messages, inputs = reference_inputs(image)
    prompt, ours = ours_greedy(model, messages)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    check_positions(ref, prompt, inputs)
    ref_ids = ref_greedy(ref, inputs)
    assert ours == ref_ids
    _, other = reference_inputs(picture(90, 130, seed=1))
    assert ref_greedy(ref, other) != ref_ids, "the reference ignores the pixels: no evidence"


def test_two_images_and_text_match_transformers(pair):
    model, ref, path = pair
    processor = reference_processor(path)
    images = [picture(56, 84, 2), picture(120, 60, 3)]
    messages = user({"type": "image", "image": images[0]}, "and",
                    {"type": "image", "image": images[1]}, "Compare them.")
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=images, return_tensors="pt")
    prompt, ours = ours_greedy(model, messages)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    check_positions(ref, prompt, inputs)
    assert ours == ref_greedy(ref, inputs)


@pytest.fixture(scope="module")
def video_reference(pair, tmp_path_factory):
    """qwen-omni-utils (frames, sampling fps, the clip's sound) + the Omni processor."""
    pytest.importorskip("torchvision")
    pytest.importorskip("av")
    vision = pytest.importorskip("qwen_omni_utils.v2_5.vision_process")
    audio_process = pytest.importorskip("qwen_omni_utils.v2_5.audio_process")
    logging.getLogger(vision.__name__).setLevel(logging.ERROR)
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    _, _, path = pair
    base = reference_processor(path)
    processor = Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), Qwen2VLVideoProcessor(),
                                     base.feature_extractor, base.tokenizer,
                                     chat_template=OMNI_CHAT_TEMPLATE)
    root = tmp_path_factory.mktemp("clips")

    def run(messages, with_audio: bool):
        part = next(p for p in messages[0]["content"] if p["type"] == "video")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames, fps = vision.fetch_video(part, return_video_sample_fps=True)
        kwargs = {}
        if with_audio:
            sound = audio_process.process_audio_info(messages, True)
            kwargs = dict(audio=sound, audio_from_video_indices=[0], load_audio_from_video=True)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return processor(text=text, videos=[frames], videos_kwargs={"fps": fps, "size": VIDEO_SIZE},
                         return_tensors="pt", **kwargs)

    return run, root


def test_video_prompt_matches_transformers(pair, video_reference):
    model, ref, _ = pair
    run, root = video_reference
    clip = write_clip(root / "clip.mp4", "libx264", size=(84, 56), seconds=3.0)
    messages = user({"type": "video", "video": str(clip)}, "What happens?")
    inputs = run(messages, with_audio=False)
    prompt, ours = ours_greedy(model, messages)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    check_positions(ref, prompt, inputs)
    ref_ids = ref_greedy(ref, inputs)
    assert ours == ref_ids
    still = write_clip(root / "other.mp4", "libx264", size=(84, 56), seconds=3.0, first=40)
    other = run(user({"type": "video", "video": str(still)}, "What happens?"), with_audio=False)
    assert ref_greedy(ref, other) != ref_ids, "the reference ignores the frames: no evidence"


def test_video_with_its_sound_matches_transformers(pair, video_reference):
    model, ref, _ = pair
    run, root = video_reference
    clip = write_clip(root / "talk.mp4", "libx264", "aac", size=(84, 56), seconds=4.5)
    messages = user({"type": "video", "video": str(clip)}, "What do you see and hear?")
    inputs = run(messages, with_audio=True)
    prompt, ours = ours_greedy(model, messages, use_audio_in_video=True)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    check_positions(ref, prompt, inputs, use_audio_in_video=True)
    ref_ids = ref_greedy(ref, inputs, use_audio_in_video=True)
    assert ours == ref_ids
    quiet = inputs.copy()
    quiet["input_features"] = torch.zeros_like(inputs["input_features"]) - 1.5
    assert ref_greedy(ref, quiet, True) != ref_ids, "the reference ignores the sound: no evidence"


def test_image_embeddings_reach_the_prompt(pair):
    """Our own side: the vision tower's output lands on the <|IMAGE|> positions only."""
    model, _, _ = pair
    messages = user({"type": "image", "image": picture(56, 56)}, "Hi")
    prompt = prepare_prompt(model, messages, 4, 32768, False)
    ids = mx.array(prompt.ids)
    text_only = model.thinker.embed(ids[None])[0]
    changed = np.abs(np.array(prompt.embeds - text_only)).max(axis=-1) > 0
    is_image = np.array(ids) == model.config.thinker_config.image_token_index
    np.testing.assert_array_equal(changed, is_image)
