"""Tests for the random-weight demo checkpoint writer (omni_edge/demo/checkpoint.py)."""

import copy
import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from omni_edge.config import OmniConfig
from omni_edge.demo.checkpoint import (
    DEMO_CONFIG, INDEX_NAME, QK_SCALE, WEIGHT_STD, bf16_round, published_tensor_shapes,
    write_demo_checkpoint,
)

DIT_INV_FREQ = "token2wav.code2wav_dit_model.rotary_embed.inv_freq"
# transformers 5 keeps the thinker under thinker.model.{language_model,audio_tower,visual} in
# memory and renames on load/save (conversion_mapping.py); the files keep the 4.x names.
IN_MEMORY_TO_DISK = [
    (re.compile(r"^thinker\.model\.language_model\."), "thinker.model."),
    (re.compile(r"^thinker\.model\.(audio_tower|visual)\."), r"thinker.\1."),
]
SHARD_FILE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")


def _hf():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _hf_config(transformers, config):
    """transformers ignores the DiT's published dim/depth/heads aliases: pass the real names."""
    config = copy.deepcopy(config)
    dit = config.get("token2wav_config", {}).get("dit_config")
    if dit:
        dit.update(hidden_size=dit["dim"], num_hidden_layers=dit["depth"],
                   num_attention_heads=dit["heads"])
    return transformers.Qwen2_5OmniConfig(**config)


def _disk_name(name):
    for pattern, repl in IN_MEMORY_TO_DISK:
        name = pattern.sub(repl, name)
    return name


def _hf_model(config):
    transformers = _hf()
    model = transformers.Qwen2_5OmniForConditionalGeneration(_hf_config(transformers, config))
    return model.float()


def _assert_matches_state_dict(config):
    model = _hf_model(config)
    hf = {_disk_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    ours = published_tensor_shapes(config)
    if DIT_INV_FREQ in ours:
        # A stored buffer in the published files; transformers 5 recomputes it and drops it.
        inv_freq = model.token2wav.code2wav_dit_model.rotary_embed.inv_freq
        assert ours.pop(DIT_INV_FREQ) == tuple(inv_freq.shape)
    assert len(hf) == len(model.state_dict())  # the renaming merged nothing
    assert sorted(ours) == sorted(hf)
    assert {k: v for k, v in ours.items() if hf[k] != v} == {}
    return model, ours


def _variant(**talker):
    config = copy.deepcopy(DEMO_CONFIG)
    config["talker_config"].update(talker)
    return config


def test_shapes_match_transformers_and_save_pretrained(tmp_path):
    model, ours = _assert_matches_state_dict(DEMO_CONFIG)
    model.save_pretrained(tmp_path)
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    saved = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    assert saved == ours


def test_shapes_match_transformers_7b_like_talker():
    # 7B: talker heads * head_dim (12 * 128) != hidden (896); o_proj is [hidden, heads*head_dim].
    config = _variant(head_dim=24, rope_scaling={"type": "default", "mrope_section": [4, 4, 4]})
    _, ours = _assert_matches_state_dict(config)
    assert ours["talker.model.layers.0.self_attn.q_proj.weight"] == (48, 32)
    assert ours["talker.model.layers.0.self_attn.k_proj.weight"] == (24, 32)
    assert ours["talker.model.layers.0.self_attn.o_proj.weight"] == (32, 48)


def test_shapes_match_transformers_without_speech():
    config = copy.deepcopy(DEMO_CONFIG)
    config["enable_audio_output"] = False
    _, ours = _assert_matches_state_dict(config)
    assert not any(k.startswith(("talker.", "token2wav.")) for k in ours)


def test_published_counts_per_component():
    # Per-layer counts as in spec §1.2: 12/decoder layer, 15/audio layer, 16/vision block,
    # 14/DiT block, 40 ECAPA tensors for 3 SE-Res2Net blocks, 24/BigVGAN resblock.
    shapes = published_tensor_shapes(DEMO_CONFIG)

    def count(prefix):
        return sum(k.startswith(prefix) for k in shapes)

    assert count("thinker.model.") == 2 * 12 + 2
    assert count("thinker.audio_tower.") == 4 + 2 * 15 + 5
    assert count("thinker.visual.") == 1 + 2 * 16 + 5
    assert count("talker.") == 2 + 1 + 2 * 12 + 1 + 1
    assert count("token2wav.code2wav_dit_model.input_embed.spk_encoder.") == 40
    assert count("token2wav.code2wav_dit_model.") == 4 + 1 + 2 + 40 + 1 + 3 * 14 + 4
    assert count("token2wav.code2wav_bigvgan_model.") == 2 + 12 + 18 * 24 + 2 + 1
    assert shapes["thinker.visual.patch_embed.proj.weight"] == (32, 3, 2, 14, 14)
    assert shapes["token2wav.code2wav_dit_model.input_embed.proj.weight"] == (32, 80 + 16 + 24 + 16)
    assert shapes["token2wav.code2wav_bigvgan_model.ups.0.0.weight"] == (64, 32, 11)
    assert shapes["token2wav.code2wav_bigvgan_model.conv_post.weight"] == (1, 1, 7)
    assert shapes[DIT_INV_FREQ] == (8,)


def test_bf16_round_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 100
    ties = np.float32(1.0) + np.arange(16, dtype=np.float32) * np.float32(2.0 ** -8)
    for values in (x, ties):
        expected = torch.from_numpy(values).bfloat16().float().numpy()
        np.testing.assert_array_equal(bf16_round(values), expected)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo"))


def _load_all(directory):
    index = json.loads((directory / INDEX_NAME).read_text())
    tensors = {}
    for filename in sorted(set(index["weight_map"].values())):
        shard = load_file(str(directory / filename))
        assert all(index["weight_map"][k] == filename for k in shard)
        assert not tensors.keys() & shard.keys()
        tensors.update(shard)
    return index, tensors


def test_index_covers_every_tensor_once(demo_dir):
    index, tensors = _load_all(demo_dir)
    shapes = published_tensor_shapes(DEMO_CONFIG)
    files = sorted(set(index["weight_map"].values()))
    assert [SHARD_FILE.match(f).groups() for f in files] == [("00001", "00002"),
                                                             ("00002", "00002")]
    assert list(index["weight_map"]) == list(shapes)
    assert {k: v.shape for k, v in tensors.items()} == shapes
    assert all(v.dtype == np.float32 for v in tensors.values())
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())


def test_values_follow_the_init_rules(demo_dir):
    _, t = _load_all(demo_dir)
    assert all(not v.any() for k, v in t.items() if k.endswith(".bias"))
    assert all(not v.any() for k, v in t.items() if re.search(r"\.act\.(alpha|beta)$", k))
    assert (t["thinker.model.norm.weight"] == 1).all()
    assert (t["thinker.visual.blocks.0.norm1.weight"] == 1).all()
    assert (t["thinker.audio_tower.ln_post.weight"] == 1).all()
    qk = ["thinker.model.layers.1.self_attn.k_proj.weight",
          "talker.model.layers.0.self_attn.q_proj.weight",
          "thinker.audio_tower.layers.0.self_attn.q_proj.weight",
          "thinker.visual.blocks.1.attn.k.weight",
          "token2wav.code2wav_dit_model.transformer_blocks.2.attn.to_q.weight"]
    for name in qk:
        assert t[name].std() == pytest.approx(WEIGHT_STD * QK_SCALE, rel=0.15), name
    for name in ("thinker.model.layers.0.self_attn.v_proj.weight", "thinker.lm_head.weight",
                 "token2wav.code2wav_dit_model.proj_out.weight"):
        assert t[name].std() == pytest.approx(WEIGHT_STD, rel=0.15), name
    inv_freq = t[DIT_INV_FREQ]
    assert not (inv_freq.view(np.uint32) & 0xFFFF).any()  # exactly bf16-representable
    exact = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(inv_freq, exact, rtol=2 ** -8)


def test_dit_inv_freq_is_transformers_buffer_rounded_to_bf16(demo_dir):
    model = _hf_model(DEMO_CONFIG)
    expected = model.token2wav.code2wav_dit_model.rotary_embed.inv_freq.bfloat16().float()
    np.testing.assert_array_equal(_load_all(demo_dir)[1][DIT_INV_FREQ], expected.numpy())


def test_side_files(demo_dir):
    assert json.loads((demo_dir / "config.json").read_text()) == DEMO_CONFIG
    assert OmniConfig.from_file(demo_dir / "config.json").has_speech
    gen = json.loads((demo_dir / "generation_config.json").read_text())
    assert gen["_from_model_config"] is True
    pre = json.loads((demo_dir / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen2_5OmniProcessor"
    assert (pre["feature_size"], pre["n_samples"], pre["max_pixels"]) == (128, 4800000, 12845056)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (demo_dir / name).is_file(), name


def test_speaker_file(demo_dir):
    from omni_edge.convert.speakers import read_torch_pickle

    voices = read_torch_pickle(demo_dir / "spk_dict.pt")
    assert sorted(voices) == ["Chelsie", "Ethan"]
    assert voices["Chelsie"]["bos_token"] == 151870 and voices["Ethan"]["bos_token"] == 151871
    for voice in voices.values():
        assert voice["cond"].shape == (1, 24) and voice["cond"].dtype == np.float32
        assert voice["ref_mel"].shape == (1, 40, 80) and voice["ref_mel"].dtype == np.float32


def test_transformers_reads_config_json(demo_dir):
    transformers = _hf()
    hf = transformers.AutoConfig.from_pretrained(demo_dir)
    assert type(hf).__name__ == "Qwen2_5OmniConfig"
    text = hf.thinker_config.text_config
    assert (text.hidden_size, text.vocab_size, text.num_key_value_heads) == (64, 151936, 2)
    assert text.rope_parameters["mrope_section"] == [2, 3, 3]
    assert hf.talker_config.rope_parameters["mrope_section"] == [4, 4, 0]
    assert (hf.thinker_config.vision_config.hidden_size, hf.talker_config.head_dim) == (32, 16)
    assert list(hf.token2wav_config.dit_config.look_backward_layers) == [0, 2]


def test_seed_and_shard_count(tmp_path):
    config = copy.deepcopy(DEMO_CONFIG)
    config["enable_audio_output"] = False  # no spk_dict.pt, no talker/token2wav tensors
    a = write_demo_checkpoint(tmp_path / "a", config, seed=1, shards=3)
    b = write_demo_checkpoint(tmp_path / "b", config, seed=1, shards=1)
    c = write_demo_checkpoint(tmp_path / "c", config, seed=2, shards=1)
    (ia, ta), (ib, tb), (_, tc) = _load_all(a), _load_all(b), _load_all(c)
    assert len(set(ia["weight_map"].values())) == 3
    assert set(ib["weight_map"].values()) == {"model-00001-of-00001.safetensors"}
    assert not (a / "spk_dict.pt").exists()
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(tb["thinker.lm_head.weight"], tc["thinker.lm_head.weight"])
    with pytest.raises(ValueError, match="shards"):
        write_demo_checkpoint(tmp_path / "d", config, shards=0)
