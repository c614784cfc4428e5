"""The fixture checkpoints look like the published Qwen2.5-Omni repos and load in transformers.

Covers the stand-in tokenizer (omni_edge/demo/tokenizer.py), the on-disk layout written by
tests/fixtures.py (shards + index, tensor names, config.json, side files) and the transformers
round trip that the parity tests rely on.
"""

import ast
import json
import re
from pathlib import Path

import pytest

from omni_edge.demo import tokenizer as omni_tok

SHARD_FILE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")
PUBLISHED_PREFIXES = (
    "thinker.model.",
    "thinker.lm_head.weight",
    "thinker.audio_tower.",
    "thinker.visual.",
    "talker.",
    "token2wav.code2wav_dit_model.",
    "token2wav.code2wav_bigvgan_model.",
)
EXPECTED_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "model.safetensors.index.json",
    "spk_dict.pt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
)
MESSAGES = [{"role": "user", "content": "Hello, world!"}]
EXPECTED_CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHello, world!<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MULTIMODAL_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "audio", "audio": "a.wav"},
            {"type": "image", "image": "b.png"},
            {"type": "video", "video": "c.mp4"},
            {"type": "text", "text": "What is this?"},
        ],
    },
]
EXPECTED_MULTIMODAL = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|IMAGE|><|vision_eos|>"
    "<|vision_bos|><|VIDEO|><|vision_eos|>What is this?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
UNICODE_TEXT = "Grüße, 世界! Ünïcödé ½ — émoji 🎧🤖\n\ttabs  and  spaces\r\n"


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _walk(doc, path=""):
    """Yield (dotted path, key, value) for every key of a nested JSON document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}" if path else key)


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    return omni_tok.write_standin_tokenizer(tmp_path_factory.mktemp("standin_tokenizer"))


def test_tokenizer_module_imports_only_stdlib():
    tree = ast.parse(Path(omni_tok.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):  # relative: the template, itself only a string
            imported.add(node.module if node.level else node.module.split(".")[0])
    assert imported <= {"json", "pathlib", "typing", "tokenizers", "processing.chat_template"}
    template = Path(omni_tok.__file__).parent.parent / "processing" / "chat_template.py"
    assert not [n for n in ast.walk(ast.parse(template.read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_special_tokens_are_the_published_ids():
    assert list(omni_tok.SPECIAL_TOKENS.values()) == list(range(151643, 151665))
    assert omni_tok.SPECIAL_TOKENS["<|im_start|>"] == 151644
    assert omni_tok.SPECIAL_TOKENS["<|AUDIO|>"] == 151646
    assert omni_tok.SPECIAL_TOKENS["<|IMAGE|>"] == 151655
    assert omni_tok.SPECIAL_TOKENS["<|VIDEO|>"] == 151656


def test_base_vocab_fills_every_id_below_the_specials(standin_dir):
    vocab = _json(standin_dir / "vocab.json")
    assert sorted(vocab.values()) == list(range(omni_tok.BASE_VOCAB_SIZE))
    assert set(omni_tok.bytes_to_unicode().values()) <= set(vocab)


def test_vocab_and_merges_files_match_tokenizer_json(standin_dir):
    model = _json(standin_dir / "tokenizer.json")["model"]
    assert _json(standin_dir / "vocab.json") == model["vocab"]
    lines = (standin_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    assert lines[1:] == model["merges"]
    assert _json(standin_dir / "added_tokens.json") == omni_tok.SPECIAL_TOKENS
    assert _json(standin_dir / "chat_template.json") == {"chat_template": omni_tok.OMNI_CHAT_TEMPLATE}


@pytest.mark.parametrize("text", ["<|im_start|>", "<|AUDIO|>", "<|vision_bos|><|IMAGE|><|vision_eos|>"])
def test_tokenizers_library_encodes_specials_to_real_ids(standin_dir, text):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(standin_dir / "tokenizer.json"))
    expected = [omni_tok.SPECIAL_TOKENS[t] for t in re.findall(r"<\|[^|]+\|>", text)]
    assert tok.encode(text).ids == expected


def test_tokenizers_library_round_trips_unicode(standin_dir):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(standin_dir / "tokenizer.json"))
    ids = tok.encode(UNICODE_TEXT).ids
    assert max(ids) < omni_tok.BASE_VOCAB_SIZE
    assert tok.decode(ids) == UNICODE_TEXT
    assert tok.get_vocab_size() == 151665


def test_transformers_tokenizer_ids_and_round_trip(standin_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(standin_dir))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok("<|im_start|>").input_ids == [151644]
    assert tok("<|AUDIO|>").input_ids == [151646]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token) == (151645, 151643, None)
    assert len(tok) == 151665
    assert tok.decode(tok(UNICODE_TEXT).input_ids) == UNICODE_TEXT


def test_transformers_tokenizer_names_the_multimodal_tokens(standin_dir):
    """Qwen2_5OmniProcessor reads these attributes off the tokenizer."""
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(standin_dir))
    for attr, token in omni_tok.NAMED_MULTIMODAL_TOKENS.items():
        assert getattr(tok, attr) == token
        assert getattr(tok, f"{attr}_id") == omni_tok.SPECIAL_TOKENS[token]


@pytest.mark.parametrize(
    "messages, expected", [(MESSAGES, EXPECTED_CHATML), (MULTIMODAL_MESSAGES, EXPECTED_MULTIMODAL)]
)
def test_chat_template_renders_chatml(standin_dir, messages, expected):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(standin_dir))
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == expected


# --------------------------------------------------------------------------- on-disk layout


def test_fixture_has_the_published_files(fixture_dir):
    missing = [name for name in EXPECTED_FILES if not (fixture_dir / name).is_file()]
    assert not missing
    assert not (fixture_dir / "model.safetensors").exists()


def test_index_maps_every_tensor_to_an_existing_shard(fixture_dir):
    from safetensors import safe_open

    index = _json(fixture_dir / "model.safetensors.index.json")
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    in_files, total = {}, 0
    for shard in shards:
        match = SHARD_FILE.match(shard)
        assert match and int(match.group(2)) == len(shards), shard
        with safe_open(str(fixture_dir / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                tensor = f.get_tensor(key)
                in_files[key] = shard
                total += tensor.numel() * tensor.element_size()
    assert in_files == index["weight_map"]
    assert index["metadata"]["total_size"] == total


def _disk_state(fixture_dir):
    from safetensors.torch import load_file

    index = _json(fixture_dir / "model.safetensors.index.json")
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(fixture_dir / shard)))
    return state


def test_tensor_names_and_counts_are_the_published_ones(fixture_dir):
    torch = pytest.importorskip("torch")
    state = _disk_state(fixture_dir)
    assert all(k.startswith(PUBLISHED_PREFIXES) for k in state)
    assert not [k for k in state if "language_model" in k or k.startswith("thinker.model.audio_tower")]
    assert all(t.dtype == torch.float32 for t in state.values())

    def count(prefix):
        return sum(k.startswith(prefix) for k in state)

    # omni_spec.md §1.2 formulas at the tiny depths: 12/layer + 2; 15/layer + 9; 16/block + 6.
    assert count("thinker.model.") == 12 * 3 + 2
    assert count("thinker.audio_tower.") == 4 + 15 * 2 + 5
    assert count("thinker.visual.") == 1 + 16 * 2 + 5
    assert count("talker.") == 2 + 1 + 12 * 2 + 1 + 1
    assert count("token2wav.code2wav_bigvgan_model.") == 449
    assert "thinker.audio_tower.layers.0.self_attn.k_proj.bias" not in state
    assert "token2wav.code2wav_bigvgan_model.conv_post.bias" not in state


def test_thinker_lm_head_is_untied_on_disk(fixture_dir):
    torch = pytest.importorskip("torch")
    state = _disk_state(fixture_dir)
    head, embed = state["thinker.lm_head.weight"], state["thinker.model.embed_tokens.weight"]
    assert head.shape == embed.shape
    assert not torch.equal(head, embed)


def test_dit_inv_freq_is_stored_bf16_rounded(fixture_dir):
    torch = pytest.importorskip("torch")
    from fixtures import DIT_INV_FREQ_KEY

    inv_freq = _disk_state(fixture_dir)[DIT_INV_FREQ_KEY]
    head_dim = _json(fixture_dir / "config.json")["token2wav_config"]["dit_config"]["head_dim"]
    exact = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (head_dim // 2,)
    assert torch.equal(inv_freq, inv_freq.to(torch.bfloat16).to(torch.float32))
    assert torch.allclose(inv_freq, exact, rtol=2 ** -8)
    assert not torch.equal(inv_freq, exact)


def test_attention_is_peaky(fixture_dir):
    """q/k weights carry the ×10 (std ~0.2 against 0.02 for v), the audio convs ×30."""
    state = _disk_state(fixture_dir)
    for q_name in (
        "thinker.model.layers.0.self_attn.q_proj.weight",
        "talker.model.layers.0.self_attn.k_proj.weight",
        "thinker.audio_tower.layers.0.self_attn.q_proj.weight",
        "thinker.visual.blocks.0.attn.k.weight",
        "token2wav.code2wav_dit_model.transformer_blocks.0.attn.to_q.weight",
    ):
        v_name = re.sub(r"(q_proj|k_proj|attn\.q|attn\.k|to_q)\.weight$", _value_name, q_name)
        assert state[q_name].std() > 5 * state[v_name].std(), q_name
    assert state["thinker.audio_tower.conv1.weight"].std() > 0.3
    assert state["token2wav.code2wav_dit_model.proj_out.weight"].std() > 0.3


def _value_name(match) -> str:
    return {"q_proj": "v_proj", "k_proj": "v_proj", "attn.q": "attn.v", "attn.k": "attn.v", "to_q": "to_v"}[
        match.group(1)
    ] + ".weight"


# --------------------------------------------------------------------------- config.json


def test_config_uses_the_published_layout(fixture_dir):
    config = _json(fixture_dir / "config.json")
    assert config["model_type"] == "qwen2_5_omni"
    assert config["architectures"] == ["Qwen2_5OmniForConditionalGeneration"]
    assert config["enable_audio_output"] is True and config["enable_talker"] is True
    assert not [p for p, key, _ in _walk(config) if key == "rope_parameters"]
    thinker, talker = config["thinker_config"], config["talker_config"]
    for sub in (thinker["text_config"], talker):
        assert sub["rope_theta"] == 1000000.0
        assert sub["rope_scaling"]["type"] == "default"
        head_dim = sub.get("head_dim", sub["hidden_size"] // sub["num_attention_heads"])
        assert sum(sub["rope_scaling"]["mrope_section"]) * 2 == head_dim
    assert thinker["tie_word_embeddings"] is False
    assert thinker["text_config"]["tie_word_embeddings"] is False
    ids = (thinker["bos_token_id"], thinker["eos_token_id"], thinker["pad_token_id"])
    assert ids == (151644, 151645, 151643)
    assert (thinker["audio_start_token_id"], thinker["vision_start_token_id"]) == (151647, 151652)


def test_config_kind_specific_shapes(fixture_dir):
    from fixtures import fixture_kind

    config = _json(fixture_dir / "config.json")
    kind = fixture_kind(fixture_dir)
    text, talker = config["thinker_config"]["text_config"], config["talker_config"]
    assert text["vocab_size"] == {"3b": 151936, "7b": 152064}[kind]
    width = talker["num_attention_heads"] * talker["head_dim"]
    assert (width == talker["hidden_size"]) == (kind == "3b")
    assert talker["rope_scaling"]["mrope_section"] == {"3b": [4, 4, 0], "7b": [4, 4, 4]}[kind]
    assert talker["embedding_size"] == text["hidden_size"]


def test_dit_config_aliases_and_omissions(fixture_dir):
    from fixtures import fixture_kind

    dit = _json(fixture_dir / "config.json")["token2wav_config"]["dit_config"]
    assert (dit["dim"], dit["depth"], dit["heads"]) == (
        dit["hidden_size"],
        dit["num_hidden_layers"],
        dit["num_attention_heads"],
    )
    assert "block_size" not in dit and "rope_theta" not in dit
    if fixture_kind(fixture_dir) == "3b":
        assert "look_ahead_layers" not in dit and "look_backward_layers" not in dit
    else:
        assert (dit["look_ahead_layers"], dit["look_backward_layers"]) == ([1], [0, 2])


def test_side_configs(fixture_dir):
    assert _json(fixture_dir / "generation_config.json")["_from_model_config"] is True
    pre = _json(fixture_dir / "preprocessor_config.json")
    assert pre["processor_class"] == "Qwen2_5OmniProcessor"
    assert pre["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (pre["feature_size"], pre["sampling_rate"], pre["hop_length"], pre["n_fft"]) == (128, 16000, 160, 400)
    assert (pre["min_pixels"], pre["max_pixels"], pre["patch_size"], pre["merge_size"]) == (3136, 12845056, 14, 2)
    tok_config = _json(fixture_dir / "tokenizer_config.json")
    assert tok_config["chat_template"] == omni_tok.OMNI_CHAT_TEMPLATE
    assert (tok_config["eos_token"], tok_config["pad_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert tok_config["model_max_length"] == 32768


def test_speaker_file(fixture_dir):
    torch = pytest.importorskip("torch")
    speakers = torch.load(fixture_dir / "spk_dict.pt", weights_only=True)
    config = _json(fixture_dir / "config.json")
    enc_emb_dim = config["token2wav_config"]["dit_config"]["enc_emb_dim"]
    vocab = config["thinker_config"]["text_config"]["vocab_size"]
    assert sorted(speakers) == ["Chelsie", "Ethan"]
    for entry in speakers.values():
        assert entry["cond"].dtype == torch.float32 and entry["cond"].shape == (1, enc_emb_dim)
        assert entry["ref_mel"].dtype == torch.float32 and entry["ref_mel"].shape == (1, 40, 80)
        assert -7 < entry["ref_mel"].mean().item() < -3
        assert isinstance(entry["bos_token"], int) and entry["bos_token"] < vocab
    assert speakers["Chelsie"]["bos_token"] != speakers["Ethan"]["bos_token"]


def test_fixture_tokenizer_matches_the_standin(fixture_dir):
    from fixtures import reference_tokenizer

    tok = reference_tokenizer(fixture_dir)
    assert tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == EXPECTED_CHATML
    assert tok("<|im_start|><|AUDIO|>").input_ids == [151644, 151646]


# --------------------------------------------------------------------------- transformers round trip


@pytest.fixture(scope="module")
def loaded(fixture_dir):
    """(kind, transformers model loaded from the fixture dir, freshly built in-memory model)."""
    from fixtures import build_model, fixture_kind, load_reference_model

    kind = fixture_kind(fixture_dir)
    return kind, load_reference_model(fixture_dir), build_model(kind)


def test_from_pretrained_reports_no_missing_or_unexpected_keys(fixture_dir):
    """Qwen2_5OmniForConditionalGeneration.from_pretrained can't return loading info itself
    (its override calls load_speakers on the returned tuple), so ask the base loader."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5OmniForConditionalGeneration as Omni

    from fixtures import NON_PERSISTENT_ON_DISK

    _, info = super(Omni, Omni).from_pretrained(str(fixture_dir), dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] <= set(NON_PERSISTENT_ON_DISK)
    assert info["mismatched_keys"] == set() and not info["error_msgs"]


def test_every_parameter_round_trips(loaded):
    torch = pytest.importorskip("torch")
    _, model, reference = loaded
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ
    assert all(t.dtype == torch.float32 for t in got.values())


def test_loaded_model_keeps_lm_head_untied(loaded):
    torch = pytest.importorskip("torch")
    _, model, _ = loaded
    thinker = model.thinker
    head, embed = thinker.lm_head.weight, thinker.get_input_embeddings().weight
    assert head.data_ptr() != embed.data_ptr()
    assert not torch.equal(head, embed)


def test_loaded_config_rope_and_dit_blocks(loaded):
    kind, model, _ = loaded
    config = model.config
    assert config.thinker_config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert config.talker_config.rope_parameters["mrope_section"] == {"3b": [4, 4, 0], "7b": [4, 4, 4]}[kind]
    assert config.talker_config.rope_parameters["rope_theta"] == 1000000.0
    dit = model.token2wav.code2wav_dit_model
    blocks = [(b.look_backward_block, b.look_ahead_block) for b in dit.transformer_blocks]
    # "3b" omits the fields: reference defaults look-ahead [10], look-back [0, 20] at 3 layers.
    assert blocks == {"3b": [(1, 0), (0, 0), (0, 0)], "7b": [(1, 0), (0, 1), (1, 0)]}[kind]
    assert dit.block_size == 24


def test_reference_dit_uses_the_stored_inv_freq(loaded):
    torch = pytest.importorskip("torch")
    from fixtures import dit_inv_freq

    _, model, _ = loaded
    assert torch.equal(model.token2wav.code2wav_dit_model.rotary_embed.inv_freq, dit_inv_freq())


def test_from_pretrained_loads_the_speakers(loaded):
    _, model, _ = loaded
    assert sorted(model.speaker_map) == ["Chelsie", "Ethan"]


def test_from_pretrained_requires_the_speaker_file(fixture_3b, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5OmniForConditionalGeneration as Omni

    for path in fixture_3b.iterdir():
        if path.name != "spk_dict.pt":
            (tmp_path / path.name).symlink_to(path)
    with pytest.raises(OSError, match="spk_dict.pt"):
        Omni.from_pretrained(str(tmp_path), dtype=torch.float32)


def test_reference_thinker_runs(fixture_dir):
    torch = pytest.importorskip("torch")
    from fixtures import load_reference_thinker, reference_tokenizer

    thinker = load_reference_thinker(fixture_dir)
    assert type(thinker).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert not thinker.training
    ids = reference_tokenizer(fixture_dir).apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        logits = thinker(input_ids=ids).logits
    assert logits.dtype == torch.float32 and logits.shape[-1] == thinker.config.text_config.vocab_size
    assert torch.isfinite(logits).all()


def test_token2wav_runs_with_the_published_dit_defaults(loaded):
    """30 codes -> 60 mel frames spans three 24-frame blocks; 480 samples per code."""
    torch = pytest.importorskip("torch")
    _, model, _ = loaded
    speaker = model.speaker_map["Chelsie"]
    code = torch.arange(30).unsqueeze(0) * 97 % 8192
    torch.manual_seed(0)
    with torch.no_grad():
        wav = model.token2wav(code, conditioning=speaker["cond"], reference_mel=speaker["ref_mel"], num_steps=2)
    assert wav.shape == (30 * 480,)
    assert torch.isfinite(wav).all() and 1e-3 < wav.abs().max() < 1.0
