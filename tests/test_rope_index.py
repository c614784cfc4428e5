"""TMRoPE position ids and rope deltas against transformers' `get_rope_index`, integer-exact.

Each prompt is rendered with the chat template, expanded by `placeholders.expand_placeholders`
and handed to both implementations with the same media descriptions."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fixtures import load_reference_model, reference_tokenizer  # noqa: E402

from omni_edge.config import OmniConfig  # noqa: E402
from omni_edge.processing.chat_template import OMNI_CHAT_TEMPLATE  # noqa: E402
from omni_edge.processing.placeholders import expand_placeholders  # noqa: E402
from omni_edge.processing.rope_index import PromptLayoutError, rope_index, time_chunks  # noqa: E402

# Mel frame counts: 700 → 175 tokens (7 s, four 2 s chunks), 150 → 37, 333 → 83, 1010 → 252.
AUDIO_7S, AUDIO_1_5S, AUDIO_3_3S, AUDIO_10S = 700, 150, 333, 1010


@pytest.fixture(scope="module")
def omni(fixture_3b):
    raw = json.loads((fixture_3b / "config.json").read_text())
    return OmniConfig.from_dict(raw), load_reference_model(fixture_3b)


@pytest.fixture(scope="module")
def setup(omni, fixture_3b):
    config, ref = omni
    return config.thinker_config, ref.thinker.model, reference_tokenizer(fixture_3b)


def user(*parts, role="user"):
    content = [{"type": p} if p in ("audio", "image", "video") else {"type": "text", "text": p}
               for p in parts]
    return {"role": role, "content": content}


def template_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, chat_template=OMNI_CHAT_TEMPLATE,
                                         add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def reference_positions(ref, ids, media, use_audio_in_video):
    ids_t = torch.tensor([ids])
    grids = {k: torch.tensor(media[k]) if media.get(k) else None
             for k in ("image_grids", "video_grids")}
    pos, delta = ref.get_rope_index(
        ids_t, grids["image_grids"], grids["video_grids"], torch.ones_like(ids_t),
        use_audio_in_video,
        torch.tensor(media["audio_lengths"]) if media.get("audio_lengths") else None,
        torch.tensor(media.get("video_seconds_per_grid") or []))
    return pos[:, 0].numpy(), int(delta.reshape(-1)[0])


def check_against_reference(setup, messages, **media):
    cfg, ref, tokenizer = setup
    uses_audio = media.pop("video_uses_audio", None)
    ids = expand_placeholders(template_ids(tokenizer, messages), cfg, video_uses_audio=uses_audio,
                              **media)
    pos, delta = rope_index(ids, cfg, **media)
    ref_pos, ref_delta = reference_positions(ref, ids, media, any(uses_audio or []))
    assert pos.dtype == np.int64 and pos.shape == (3, len(ids))
    np.testing.assert_array_equal(pos, ref_pos)
    assert delta == ref_delta
    return ids, pos, delta


CASES = {
    "text_only": ([user("Hello there, how are you?")], {}),
    "audio_only": ([user("audio", "What is this?")], {"audio_lengths": [AUDIO_3_3S]}),
    "one_image": ([user("image", "Describe it.")], {"image_grids": [(1, 6, 8)]}),
    "two_images_with_text": (
        [user("First:", "image", "and second:", "image", "Compare them.")],
        {"image_grids": [(1, 4, 4), (1, 8, 6)]}),
    "tall_image": ([user("image")], {"image_grids": [(1, 40, 4)]}),  # h > every t value
    **{f"video_spg_{s}": ([user("video", "What happens?")],
                          {"video_grids": [(3, 4, 6)], "video_seconds_per_grid": [s]})
       for s in (1.0, 0.5, 0.8, 0.3, 2.5)},
    "audio_in_video_audio_longer": (
        [user("video", "What do you see and hear?")],
        {"video_grids": [(3, 4, 6)], "video_seconds_per_grid": [1.0],
         "audio_lengths": [AUDIO_7S], "video_uses_audio": [True]}),
    "audio_in_video_video_longer": (
        [user("video", "What do you see and hear?")],
        {"video_grids": [(8, 4, 4)], "video_seconds_per_grid": [1.0],
         "audio_lengths": [AUDIO_1_5S], "video_uses_audio": [True]}),
    **{f"audio_in_video_spg_{s}": (
        [user("video")],
        {"video_grids": [(5, 4, 6)], "video_seconds_per_grid": [s],
         "audio_lengths": [AUDIO_10S], "video_uses_audio": [True]})
       for s in (0.5, 0.8, 2.5)},
    "mixed_audio_image_video": (
        [user("audio", "Then", "image", "and", "video", "Explain.")],
        {"audio_lengths": [AUDIO_3_3S], "image_grids": [(1, 6, 8)],
         "video_grids": [(3, 4, 6)], "video_seconds_per_grid": [0.8]}),
    "mixed_with_audio_in_video": (
        [user("image", "audio", "video", "audio", "Explain.")],
        {"audio_lengths": [AUDIO_3_3S, AUDIO_7S, AUDIO_1_5S], "image_grids": [(1, 6, 8)],
         "video_grids": [(4, 4, 6)], "video_seconds_per_grid": [1.0],
         "video_uses_audio": [True]}),
    "multi_turn": (
        [user("image", "What is this?"), user("A cat.", role="assistant"),
         user("video", "audio", "And this?")],
        {"image_grids": [(1, 4, 6)], "video_grids": [(3, 4, 4)],
         "video_seconds_per_grid": [0.5], "audio_lengths": [AUDIO_1_5S]}),
    "multi_turn_audio_in_video": (
        [user("video", "What happens?"), user("Someone talks.", role="assistant"),
         user("image", "video", "And now?")],
        {"image_grids": [(1, 4, 6)], "video_grids": [(3, 4, 6), (6, 4, 4)],
         "video_seconds_per_grid": [1.0, 0.5], "audio_lengths": [AUDIO_7S, AUDIO_1_5S],
         "video_uses_audio": [True, True]}),
}


@pytest.mark.parametrize("case", CASES)
def test_positions_match_reference(setup, case):
    messages, media = CASES[case]
    check_against_reference(setup, messages, **dict(media))


@pytest.mark.parametrize("seconds", [0.1, 0.2, 0.4, 0.6, 0.7, 0.9, 1.1, 1.3, 1.7, 2.0, 2.2, 3.0])
def test_video_time_truncation_matches_reference(setup, seconds):
    """float32 frame times truncated to ints, for plain and audio-carrying videos alike."""
    messages = [user("video", "video")]
    check_against_reference(setup, messages, video_grids=[(9, 4, 4), (7, 2, 6)],
                            video_seconds_per_grid=[seconds, seconds])
    check_against_reference(setup, messages, video_grids=[(9, 4, 4), (7, 2, 6)],
                            video_seconds_per_grid=[seconds, seconds],
                            audio_lengths=[AUDIO_7S, AUDIO_3_3S], video_uses_audio=[True, True])


@pytest.mark.parametrize("case", ["mixed_with_audio_in_video", "multi_turn"])
def test_talker_positions_match_reference(setup, omni, case):
    """The Talker runs the same computation on the prompt ids with its own config."""
    cfg, _, tokenizer = setup
    talker_cfg, ref_talker = omni[0].talker_config, omni[1].talker
    messages, media = CASES[case]
    media = dict(media)
    uses_audio = media.pop("video_uses_audio", None)
    ids = expand_placeholders(template_ids(tokenizer, messages), cfg, video_uses_audio=uses_audio,
                              **media)
    pos, delta = rope_index(ids, talker_cfg, **media)
    ref_pos, ref_delta = reference_positions(ref_talker, ids, media, any(uses_audio or []))
    np.testing.assert_array_equal(pos, ref_pos)
    assert delta == ref_delta


def test_audio_in_video_shares_boundary_positions(setup):
    """The two opening and the two closing tokens of a video with audio share a position."""
    cfg = setup[0]
    ids, pos, _ = check_against_reference(
        setup, [user("video")], video_grids=[(3, 4, 6)], video_seconds_per_grid=[1.0],
        audio_lengths=[AUDIO_7S], video_uses_audio=[True])
    opening = ids.index(cfg.vision_start_token_id)
    closing = ids.index(cfg.vision_end_token_id)
    assert ids[opening + 1] == cfg.audio_start_token_id
    assert ids[closing - 1] == cfg.audio_end_token_id
    assert (pos[:, opening] == pos[:, opening + 1]).all()
    assert (pos[:, closing] == pos[:, closing - 1]).all()


def test_without_audio_lengths_counts_come_from_the_prompt(setup):
    cfg, _, tokenizer = setup
    media = {"video_grids": [(3, 4, 6)], "video_seconds_per_grid": [1.0]}
    ids = expand_placeholders(template_ids(tokenizer, [user("audio", "video")]), cfg,
                              audio_lengths=[AUDIO_3_3S, AUDIO_7S], video_uses_audio=[True],
                              **media)
    with_lengths = rope_index(ids, cfg, audio_lengths=[AUDIO_3_3S, AUDIO_7S], **media)
    without = rope_index(ids, cfg, **media)
    np.testing.assert_array_equal(with_lengths[0], without[0])
    assert with_lengths[1] == without[1]


def test_time_chunks_open_one_chunk_per_value():
    assert time_chunks([0, 10, 49, 50, 99, 100], 50) == [(0, 3), (3, 5), (5, 6)]
    # a jump over two spans opens the skipped chunk at the next value
    assert time_chunks([0, 0, 125, 125, 125], 50) == [(0, 2), (2, 3), (3, 5)]
    assert time_chunks([], 50) == [(0, 0)]


def test_layout_errors_name_the_fix(setup):
    cfg, _, tokenizer = setup
    ids = expand_placeholders(template_ids(tokenizer, [user("image")]), cfg,
                              image_grids=[(1, 4, 4)])
    with pytest.raises(PromptLayoutError, match="image_grids"):
        rope_index(ids, cfg)
    with pytest.raises(PromptLayoutError, match="its size needs 16"):
        rope_index(ids, cfg, image_grids=[(1, 8, 8)])
    with pytest.raises(PromptLayoutError, match="image_grids has 2 entries"):
        rope_index(ids, cfg, image_grids=[(1, 4, 4), (1, 4, 4)])
    audio_ids = expand_placeholders(template_ids(tokenizer, [user("audio")]), cfg,
                                    audio_lengths=[AUDIO_3_3S])
    with pytest.raises(PromptLayoutError, match="mel frames give"):
        rope_index(audio_ids, cfg, audio_lengths=[AUDIO_7S])
    video_ids = expand_placeholders(template_ids(tokenizer, [user("video")]), cfg,
                                    video_grids=[(2, 4, 4)], video_seconds_per_grid=[1.0])
    with pytest.raises(PromptLayoutError, match="video_seconds_per_grid"):
        rope_index(video_ids, cfg, video_grids=[(2, 4, 4)])
