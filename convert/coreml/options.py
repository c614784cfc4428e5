"""Export options: defaults, parsing and validation against the model, before any heavy import."""

from dataclasses import dataclass
from typing import Optional, Tuple

from ...config import OmniConfig

COMPONENTS = ("audio", "vision", "thinker", "talker", "dit", "bigvgan")
BITS = (4, 8, 16)
MODES = ("linear", "palettize")
SPEECH_COMPONENTS = ("talker", "dit", "bigvgan")
PRECISIONS = ("float16", "float32")
DEFAULT_CONTEXT = 2048
DEFAULT_TALKER_CONTEXT = 4096
DEFAULT_PREFILL_CHUNK = 64
DEFAULT_AUDIO_BATCHES = (1, 2, 4, 8)
DEFAULT_IMAGE_SIZES = ((448, 448),)
# An 8-bit Talker keeps its codes close to the float ones (as `omni-edge convert` defaults).
DEFAULT_TALKER_BITS = 8


@dataclass
class ExportOptions:
    components: Tuple[str, ...] = COMPONENTS
    bits: int = 4
    talker_bits: int = DEFAULT_TALKER_BITS
    compression: str = "linear"
    context: int = DEFAULT_CONTEXT
    talker_context: int = DEFAULT_TALKER_CONTEXT
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    precision: str = "float16"
    token2wav_precision: str = "float32"
    audio_batches: Tuple[int, ...] = DEFAULT_AUDIO_BATCHES
    image_sizes: Tuple[Tuple[int, int], ...] = DEFAULT_IMAGE_SIZES
    dit_frames: Optional[int] = None
    vocoder_frames: Optional[int] = None


def parse_components(value) -> Tuple[str, ...]:
    names = [c.strip() for c in (value.split(",") if isinstance(value, str) else value) if c.strip()]
    for name in names or [""]:
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r} in --components; choose from "
                             f"{','.join(COMPONENTS)}")
    return tuple(c for c in COMPONENTS if c in names)


def parse_sizes(value) -> Tuple[Tuple[int, int], ...]:
    """"448x448,336x504" -> ((448, 448), (336, 504)) (height x width in pixels)."""
    if not isinstance(value, str):
        return tuple(tuple(int(v) for v in s) for s in value)
    sizes = []
    for item in filter(None, (s.strip() for s in value.split(","))):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--image-sizes entry {item!r} is not HEIGHTxWIDTH, e.g. 448x448") from None
        sizes.append((h, w))
    return tuple(sizes)


def parse_ints(value, flag: str) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"{flag} needs positive integers, got {value!r}")
    return tuple(sorted(set(out)))


def validate(opts: ExportOptions, config: OmniConfig) -> None:
    """Every option checked against the model before any work starts."""
    for flag, bits in (("--bits", opts.bits), ("--talker-bits", opts.talker_bits)):
        if bits not in BITS:
            raise ValueError(f"{flag} must be one of {', '.join(map(str, BITS))}, got {bits}")
    if opts.compression not in MODES:
        raise ValueError(f"--compression must be one of {', '.join(MODES)}, got {opts.compression!r}")
    for flag, value in (("--precision", opts.precision),
                        ("--token2wav-precision", opts.token2wav_precision)):
        if value not in PRECISIONS:
            raise ValueError(f"{flag} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    wanted_speech = [c for c in opts.components if c in SPEECH_COMPONENTS]
    if wanted_speech and not config.has_speech:
        raise ValueError(f"this checkpoint has no speech output, so {','.join(wanted_speech)} can't be "
                         "exported; leave them out of --components")
    if "thinker" in opts.components:
        check_context(config.thinker_config.text_config.max_position_embeddings, opts.context,
                      opts.prefill_chunk)
    if "talker" in opts.components:
        check_context(config.talker_config.max_position_embeddings, opts.talker_context,
                      opts.prefill_chunk, "--talker-context")
    if "vision" in opts.components:
        vc = config.thinker_config.vision_config
        unit = vc.patch_size * vc.spatial_merge_size
        if not opts.image_sizes:
            raise ValueError("--image-sizes is empty; pass e.g. 448x448")
        for h, w in opts.image_sizes:
            if h <= 0 or w <= 0 or h % unit or w % unit:
                raise ValueError(f"--image-sizes {h}x{w}: height and width must be positive multiples "
                                 f"of {unit} (patch {vc.patch_size} x merge {vc.spatial_merge_size}), "
                                 f"e.g. {max(unit, h - h % unit)}x{max(unit, w - w % unit)}")
    for flag, frames in (("--dit-frames", opts.dit_frames), ("--vocoder-frames", opts.vocoder_frames)):
        if frames is not None and frames < 1:
            raise ValueError(f"{flag} must be positive, got {frames}")
    repeats = config.token2wav_config.dit_config.repeats if config.has_speech else 1
    if opts.dit_frames is not None and opts.dit_frames % repeats:
        raise ValueError(f"--dit-frames must be a multiple of {repeats} (mel frames per codec token), "
                         f"got {opts.dit_frames}")


def check_context(spec_max_positions: int, context: int, chunk: int, what: str = "--context",
                  chunk_flag: str = "--prefill-chunk") -> None:
    """The state layout needs whole prefill chunks in the cache and positions RoPE was trained on."""
    if chunk < 1:
        raise ValueError(f"{chunk_flag} must be at least 1, got {chunk}")
    if context < chunk or context % chunk:
        nearest = max(chunk, context - context % chunk)
        raise ValueError(f"{what} {context} can't hold whole prefill chunks of {chunk} slots: the "
                         f"KV-cache state must be a positive multiple of {chunk_flag} (e.g. {nearest})")
    if context > spec_max_positions:
        raise ValueError(f"{what} {context} exceeds the model's max_position_embeddings "
                         f"({spec_max_positions}); pass at most {spec_max_positions}")
