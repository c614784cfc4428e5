"""The options of a turn, one object per concern, taken alike by `stream()`, `generate()`,
`ChatSession`, the CLIs and the server: `GenerationOptions` (the Thinker's sampling and limits)
and `SpeechOptions` (voice, Talker sampling, audio windows, Token2Wav solver)."""

from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Optional, Tuple

from .models.solvers import SOLVERS, Solver

DEFAULT_MAX_TOKENS = 512
PREFILL_STEP = 2048
# The reference's talker generation defaults (Qwen2_5OmniForConditionalGeneration.generate).
TALKER_TEMPERATURE = 0.9
TALKER_TOP_K = 40
TALKER_TOP_P = 0.8
TALKER_REPETITION_PENALTY = 1.05
MAX_CODEC_TOKENS = 4096
# Streaming Token2Wav windows (mel frames): a one-block first chunk for early audio, then long
# chunks for fewer windows (benchmarks/results/turn_3b_h100.json).
FIRST_CHUNK_FRAMES = 48
CHUNK_FRAMES = 216
DIT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class GenerationOptions:
    """The Thinker's sampling (temperature 0 is greedy) and the turn's limits."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0  # the reply is not ended before this many tokens (forced lengths)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    max_context: Optional[int] = None
    truncate: bool = False
    prefill_step_size: int = PREFILL_STEP
    use_audio_in_video: bool = False
    speak: bool = False
    noise: Any = None  # Token2Wav's starting noise [frames, 80], for reproducible speech
    max_kv_size: Optional[int] = None  # a rotating Thinker KV cache of this many positions
    kv_bits: Optional[int] = None  # quantize the Thinker KV cache (4 or 8 bits) after prefill
    # one-token steps as one compiled graph (compiled_step); off: slower on MLX's CUDA backend
    # in the H200 turn benchmark, not yet measured on Apple silicon
    compile_decode: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must lie in [0, max_tokens={self.max_tokens}], got "
                             f"{self.min_tokens}")
        if self.max_kv_size is not None and self.max_kv_size < 16:
            raise ValueError(f"max_kv_size must be at least 16 positions, got {self.max_kv_size}")
        if self.kv_bits not in (None, 4, 8):
            raise ValueError(f"kv_bits must be 4 or 8 (or None for a float cache), got "
                             f"{self.kv_bits}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.prefill_step_size < 1:
            raise ValueError(f"prefill_step_size must be at least 1, got {self.prefill_step_size}")


@dataclass(frozen=True)
class SpeechOptions:
    """How a reply is spoken. Talker options keep the reference's names and defaults;
    `first_chunk_frames`/`chunk_frames` size the audio windows (multiples of the DiT's 24-frame
    block; None for the reference's 72); `solver` is Token2Wav's ODE solver preset ("reference":
    RK4 on 10 time points, guided every evaluation; "fast", ...) and `token2wav_steps` overrides
    its time points; `dit_dtype`
    the DiT's compute type (None keeps the model's); `overlap` renders each audio window on a
    stream of its own while decoding goes on (False: decoding waits for each window)."""

    voice: str = "Chelsie"
    talker_temperature: float = TALKER_TEMPERATURE
    talker_top_k: int = TALKER_TOP_K
    talker_top_p: float = TALKER_TOP_P
    talker_repetition_penalty: float = TALKER_REPETITION_PENALTY
    max_codec_tokens: int = MAX_CODEC_TOKENS
    min_codec_tokens: int = 0  # the end codes are never sampled before this many codes
    first_chunk_frames: Optional[int] = FIRST_CHUNK_FRAMES
    chunk_frames: Optional[int] = CHUNK_FRAMES
    solver: Any = "reference"  # Token2Wav's ODE solver: a models.solvers.SOLVERS name or a Solver
    token2wav_steps: Optional[int] = None  # overrides the solver's time points
    dit_dtype: Optional[str] = None
    overlap: bool = True  # render audio windows on their own stream while decoding goes on
    compile_decode: bool = False  # the Talker's steps as one compiled graph (compiled_step)

    def __post_init__(self):
        if self.talker_repetition_penalty <= 0:
            raise ValueError("talker_repetition_penalty must be > 0, got "
                             f"{self.talker_repetition_penalty}")
        if self.max_codec_tokens < 1:
            raise ValueError(f"max_codec_tokens must be at least 1, got {self.max_codec_tokens}")
        if self.token2wav_steps is not None and self.token2wav_steps < 2:
            raise ValueError(f"token2wav_steps must be >= 2 (time points from 0 to 1), got "
                             f"{self.token2wav_steps}")
        if not isinstance(self.solver, Solver) and self.solver not in SOLVERS:
            raise ValueError(f"unknown Token2Wav solver {self.solver!r}; the presets are: "
                             f"{', '.join(SOLVERS)} (or pass a models.solvers.Solver)")
        if self.dit_dtype is not None and self.dit_dtype not in DIT_DTYPES:
            raise ValueError(f"dit_dtype must be one of {DIT_DTYPES}, got {self.dit_dtype!r}")


# Named speech settings (`omni-edge bench --presets`, `eval-speech`): "reference" is the
# reference's streaming exactly (72-frame windows, float32 DiT, each window in line, RK4 on 10
# points); the others keep this project's windows and overlap, with the named solver.
SPEECH_PRESETS: Dict[str, SpeechOptions] = {
    "reference": SpeechOptions(first_chunk_frames=None, chunk_frames=None, dit_dtype="float32",
                               overlap=False),
    "default": SpeechOptions(),
    **{name: SpeechOptions(solver=name) for name in SOLVERS if name != "reference"},
}


GENERATION_FIELDS = tuple(f.name for f in fields(GenerationOptions))
SPEECH_FIELDS = tuple(f.name for f in fields(SpeechOptions))


def split_options(options: Dict[str, Any], speech: Optional[SpeechOptions] = None,
                  ) -> Tuple[GenerationOptions, SpeechOptions]:
    """Keyword options → (GenerationOptions, SpeechOptions); speech keywords override `speech`.
    An unknown name is a ValueError that lists the valid ones."""
    unknown = sorted(set(options) - set(GENERATION_FIELDS) - set(SPEECH_FIELDS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; generation options are "
                         f"{', '.join(GENERATION_FIELDS)}; speech options are "
                         f"{', '.join(SPEECH_FIELDS)} (or speech=SpeechOptions(...))")
    if speech is not None and not isinstance(speech, SpeechOptions):
        raise ValueError(f"speech must be a SpeechOptions, got {type(speech).__name__}")
    generation = GenerationOptions(**{k: v for k, v in options.items() if k in GENERATION_FIELDS})
    spoken = {k: v for k, v in options.items() if k in SPEECH_FIELDS}
    return generation, replace(speech or SpeechOptions(), **spoken)
