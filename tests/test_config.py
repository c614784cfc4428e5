"""Config parsing: the published layout, the transformers-5 layout, aliases, defaults, errors."""

import copy

import pytest

from omni_edge.config import ConfigError, OmniConfig
from omni_edge.demo.checkpoint import DEMO_CONFIG


def test_published_layout_reads_every_part():
    cfg = OmniConfig.from_dict(copy.deepcopy(DEMO_CONFIG))
    text = cfg.thinker_config.text_config
    assert text.mrope_section == DEMO_CONFIG["thinker_config"]["text_config"]["rope_scaling"]["mrope_section"]
    assert text.head_dim * text.num_attention_heads == text.hidden_size
    assert not text.tie_word_embeddings
    assert cfg.has_speech
    dit = cfg.token2wav_config.dit_config
    raw_dit = DEMO_CONFIG["token2wav_config"]["dit_config"]
    assert (dit.hidden_size, dit.num_hidden_layers, dit.num_attention_heads) == (
        raw_dit["dim"], raw_dit["depth"], raw_dit["heads"])


def test_absent_dit_fields_take_reference_defaults():
    raw = copy.deepcopy(DEMO_CONFIG)
    for k in ("block_size", "look_ahead_layers", "look_backward_layers", "rope_theta"):
        raw["token2wav_config"]["dit_config"].pop(k, None)
    dit = OmniConfig.from_dict(raw).token2wav_config.dit_config
    assert (dit.block_size, dit.look_ahead_layers, dit.look_backward_layers, dit.rope_theta) == (
        24, [10], [0, 20], 10000.0)


def test_rope_parameters_layout_is_accepted():
    raw = copy.deepcopy(DEMO_CONFIG)
    text = raw["thinker_config"]["text_config"]
    section = text.pop("rope_scaling")["mrope_section"]
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5, "mrope_section": section}
    text.pop("rope_theta")
    cfg = OmniConfig.from_dict(raw).thinker_config.text_config
    assert cfg.rope_theta == 5e5 and cfg.mrope_section == section


def test_unknown_keys_are_ignored():
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["thinker_config"]["text_config"]["some_future_field"] = 1
    raw["brand_new"] = {"x": 1}
    OmniConfig.from_dict(raw)


def test_tie_flags_must_both_be_true_to_tie():
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["thinker_config"]["text_config"]["tie_word_embeddings"] = True
    assert not OmniConfig.from_dict(raw).thinker_config.text_config.tie_word_embeddings
    raw["thinker_config"]["tie_word_embeddings"] = True
    assert OmniConfig.from_dict(raw).thinker_config.text_config.tie_word_embeddings


@pytest.mark.parametrize("path", [
    ("thinker_config", "text_config", "hidden_size"),
    ("talker_config", "embedding_size"),
    ("thinker_config", "vision_config", "hidden_size"),
])
def test_missing_required_key_is_named(path):
    raw = copy.deepcopy(DEMO_CONFIG)
    d = raw
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]
    with pytest.raises(ConfigError, match=".".join(path)):
        OmniConfig.from_dict(raw)


def test_other_model_type_is_refused():
    with pytest.raises(ConfigError, match="model_type 'qwen2'"):
        OmniConfig.from_dict({"model_type": "qwen2", "hidden_size": 8})


def test_mrope_section_must_fit_head_dim():
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["thinker_config"]["text_config"]["rope_scaling"]["mrope_section"] = [1, 1, 1]
    with pytest.raises(ConfigError, match="mrope_section"):
        OmniConfig.from_dict(raw)


def test_missing_and_corrupt_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        OmniConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        OmniConfig.from_file(tmp_path / "config.json")
