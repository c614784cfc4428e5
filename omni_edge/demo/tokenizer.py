"""Qwen2.5-Omni tokenizer data and a stand-in tokenizer writer.

The published Qwen2.5-Omni checkpoints ship a Qwen2 byte-level BPE tokenizer (151643 base
ids) plus 22 added tokens at ids 151643..151664, and a ChatML chat template that knows about
audio / image / video parts.  This module holds that model data (`OMNI_CHAT_TEMPLATE`,
`SPECIAL_TOKENS`) and `write_standin_tokenizer`, which writes a small-merge byte-level BPE
tokenizer in exactly the published file layout.  The stand-in encodes any text (every byte
has a symbol) and gives every special token its real id, so test fixtures and demos work
without the real vocabulary.

Runtime code: only the standard library is used here (the files are consumed by the
`tokenizers` library or by transformers).
"""

import json
from pathlib import Path
from typing import Dict, List, Tuple

from ..processing.chat_template import OMNI_CHAT_TEMPLATE


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Number of ids in the base byte-level BPE vocabulary (ids 0..151642).
BASE_VOCAB_SIZE = 151643

# The Qwen2.5-Omni added tokens, content -> real id (ids 151643..151664, in id order).
SPECIAL_TOKENS: Dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_bos|>": 151652,
    "<|vision_eos|>": 151653,
    "<|vision_pad|>": 151654,
    "<|IMAGE|>": 151655,
    "<|VIDEO|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
}

# Added tokens that the published tokenizer marks `special: false` (tool-call / FIM markers).
NON_SPECIAL_ADDED_TOKENS = frozenset(
    [
        "<tool_call>",
        "</tool_call>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ]
)

# `additional_special_tokens` of the published tokenizer_config.json / special_tokens_map.json.
ADDITIONAL_SPECIAL_TOKENS: List[str] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
]

# Named multimodal tokens that Qwen2_5OmniProcessor reads off the tokenizer (`tokenizer.audio_token`, ...).
NAMED_MULTIMODAL_TOKENS: Dict[str, str] = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 32768

# Qwen2 pre-tokenizer split pattern (identical to the published tokenizer.json).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Words (in byte-level symbols: "Ġ" is a space, "Ċ" a newline) that get merge chains, so common
# English and ChatML text encodes to fewer, more realistic tokens.  Whole words come first so
# their chains outrank the generic pairs.  Purely cosmetic: any text encodes without them.
MERGE_WORDS: List[str] = [
    "Ġthe", "Ġand", "Ġto", "Ġof", "Ġin", "Ġis", "Ġit", "Ġyou", "Ġthat", "Ġfor",
    "Ġwith", "Ġare", "Ġthis", "Ġwhat", "Ġhello", "Ġworld", "Ġhelpful", "Ġassistant",
    "Hello", "What", "You", "The", "system", "user", "assistant", "ĊĊ", "ĠĠ",
    "ing", "th", "he", "in", "er", "an", "re", "on", "at", "en", "es", "or", "ed",
    "Ġt", "Ġa", "Ġs", "Ġw", "Ġo", "Ġi", "Ġc", "Ġb", "Ġf", "Ġp", "Ġm",
]

PLACEHOLDER_FORMAT = "<unused_{}>"

_BYTE_LEVEL = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2 / Qwen2 byte -> printable unicode symbol table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def _byte_symbols() -> List[str]:
    """The 256 byte symbols in Qwen2 vocabulary order (printable bytes first)."""
    return list(bytes_to_unicode().values())


def _merge_chains(words: List[str], vocab: Dict[str, int]) -> List[Tuple[str, str]]:
    """Left-to-right merge chains for `words`; adds every merged piece to `vocab`."""
    merges: List[Tuple[str, str]] = []
    seen = set()
    for word in words:
        left = word[0]
        for ch in word[1:]:
            pair = (left, ch)
            left = left + ch
            if pair in seen:
                continue
            seen.add(pair)
            merges.append(pair)
            if left not in vocab:
                vocab[left] = len(vocab)
    return merges


def build_base_vocab() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Base BPE vocabulary (exactly BASE_VOCAB_SIZE ids) and its merges, in rank order."""
    vocab: Dict[str, int] = {}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    merges = _merge_chains(MERGE_WORDS, vocab)
    for i in range(len(vocab), BASE_VOCAB_SIZE):
        vocab[PLACEHOLDER_FORMAT.format(i)] = i
    assert len(vocab) == BASE_VOCAB_SIZE
    return vocab, merges


def _added_token_entry(content: str, token_id: int) -> dict:
    """One `added_tokens` entry of tokenizer.json."""
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": content not in NON_SPECIAL_ADDED_TOKENS,
    }


def tokenizer_json(vocab: Dict[str, int], merges: List[Tuple[str, str]]) -> dict:
    """The tokenizer.json document (Qwen2 pipeline: NFC, regex split, byte-level BPE)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token_entry(c, i) for c, i in SPECIAL_TOKENS.items()],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": PRETOKENIZE_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", **_BYTE_LEVEL},
            ],
        },
        "post_processor": {"type": "ByteLevel", **_BYTE_LEVEL},
        "decoder": {"type": "ByteLevel", **_BYTE_LEVEL},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def _added_tokens_decoder() -> Dict[str, dict]:
    """`added_tokens_decoder` of tokenizer_config.json (id string -> token flags)."""
    out = {}
    for content, token_id in SPECIAL_TOKENS.items():
        entry = _added_token_entry(content, token_id)
        del entry["id"]
        out[str(token_id)] = entry
    return out


def tokenizer_config_json() -> dict:
    """The tokenizer_config.json document, in the published Qwen2.5-Omni layout."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(),
        "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
        **NAMED_MULTIMODAL_TOKENS,
        "bos_token": None,
        "chat_template": OMNI_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _token_map_entry(content: str) -> dict:
    """A special_tokens_map.json token object."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def special_tokens_map_json() -> dict:
    """The special_tokens_map.json document."""
    return {
        "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
        "eos_token": _token_map_entry(EOS_TOKEN),
        "pad_token": _token_map_entry(PAD_TOKEN),
    }


def _write_json(path: Path, doc, indent=2) -> None:
    """Write `doc` as UTF-8 JSON (non-ASCII kept verbatim, as the hub files are)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_standin_tokenizer(out_dir) -> Path:
    """Write a stand-in Qwen2.5-Omni tokenizer into `out_dir` in the published file layout.

    Files: tokenizer.json, vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json, added_tokens.json and chat_template.json.  Returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_base_vocab()
    _write_json(out / "tokenizer.json", tokenizer_json(vocab, merges), indent=None)
    _write_json(out / "vocab.json", vocab, indent=None)
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    _write_json(out / "tokenizer_config.json", tokenizer_config_json())
    _write_json(out / "special_tokens_map.json", special_tokens_map_json())
    _write_json(out / "added_tokens.json", dict(sorted(SPECIAL_TOKENS.items())))
    _write_json(out / "chat_template.json", {"chat_template": OMNI_CHAT_TEMPLATE})
    return out
