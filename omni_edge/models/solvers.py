"""Token2Wav's ODE solvers: named presets (the reference RK4 and cheaper ones), one integration
step each, and their cost in DiT evaluations and FLOP per second of speech.

The DiT's flow runs from noise (t = 0) to a mel (t = 1) on a time grid bent towards 0 by `sway`.
Classifier-free guidance doubles a DiT evaluation's batch (a conditional and an unconditional
row); a preset may guide only its first intervals, where the coarse structure forms, and run
the rest on the conditional row alone.
"""

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

import mlx.core as mx

# DiT evaluations per interval of each method.
STAGES = {"rk4": 4, "midpoint": 2, "euler": 1}
MEL_FRAMES_PER_SECOND = 100  # 24 kHz audio, 240 samples per mel frame
# Below this guidance the sampler skips the unconditional batch row, as the reference does.
MIN_GUIDANCE = 1e-5


@dataclass(frozen=True)
class Solver:
    """`method` over `steps` time points (steps - 1 intervals); classifier-free guidance on the
    first `cfg_intervals` intervals (None: all of them)."""

    method: str = "rk4"
    steps: int = 10
    cfg_intervals: Optional[int] = None
    guidance: float = 0.5
    sway: float = -1.0
    name: str = "custom"

    def __post_init__(self):
        if self.method not in STAGES:
            raise ValueError(f"unknown solver method {self.method!r}; choose one of: "
                             f"{', '.join(STAGES)}")
        if not isinstance(self.steps, int) or self.steps < 2:
            raise ValueError(f"steps must be an integer >= 2 (time points from 0 to 1, so at "
                             f"least 1 interval), got {self.steps!r}")
        if self.cfg_intervals is not None and not 0 <= self.cfg_intervals <= self.steps - 1:
            raise ValueError(f"cfg_intervals must lie in [0, {self.steps - 1}] (the intervals of "
                             f"{self.steps} time points) or be None for all; "
                             f"got {self.cfg_intervals}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance}")

    @property
    def intervals(self) -> int:
        return self.steps - 1

    def guided(self, interval: int) -> bool:
        """Whether interval i evaluates the unconditional row too."""
        if self.guidance < MIN_GUIDANCE:
            return False
        return self.cfg_intervals is None or interval < self.cfg_intervals

    @property
    def evaluations(self) -> int:
        """DiT evaluations per window (each of batch 1 or, guided, 2)."""
        return STAGES[self.method] * self.intervals

    @property
    def row_evaluations(self) -> int:
        """DiT evaluations counted per batch row: the unit of its arithmetic."""
        return STAGES[self.method] * sum(1 + self.guided(i) for i in range(self.intervals))


SOLVERS = {
    # The reference sampler: RK4 (3/8 rule) on 10 time points, guided on every evaluation.
    "reference": Solver("rk4", 10, None, name="reference"),
    # Fewer RK4 steps, all guided.
    "rk4-6": Solver("rk4", 6, None, name="rk4-6"),
    "rk4-4": Solver("rk4", 4, None, name="rk4-4"),
    # Midpoint on 6 points, all guided: <= 1.2 TFLOP per second of speech in 216-frame windows.
    "fast": Solver("midpoint", 6, None, name="fast"),
    # Midpoint on 5 points, guided on the first 2 of its 4 intervals.
    "fastest": Solver("midpoint", 5, 2, name="fastest"),
}
DEFAULT_SOLVER = "reference"


def get_solver(solver: Union[str, Solver, None] = None, steps: Optional[int] = None,
               guidance: Optional[float] = None) -> Solver:
    """A preset name or a `Solver` (None: the reference) → a `Solver`; `steps` / `guidance`
    override its own (the older keywords of `sample`)."""
    if solver is None:
        solver = DEFAULT_SOLVER
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"unknown Token2Wav solver {solver!r}; the presets are: "
                             f"{', '.join(SOLVERS)} (or pass a Solver)")
        solver = SOLVERS[solver]
    elif not isinstance(solver, Solver):
        raise TypeError(f"solver must be a preset name ({', '.join(SOLVERS)}) or a Solver, "
                        f"got {type(solver).__name__}")
    changes = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    if not changes:
        return solver
    name = solver.name if solver.name == "custom" else f"{solver.name}+"
    return replace(solver, name=name, **changes)


def time_grid(steps: int, sway: Optional[float]) -> mx.array:
    """`steps` float32 times from 0 to 1, bent towards 0 by `sway` (-1 gives 1 - cos(πt/2))."""
    t = mx.linspace(0, 1, steps, dtype=mx.float32)
    if sway is not None:
        t = t + sway * (mx.cos(math.pi / 2 * t) - 1 + t)
    return t


Rhs = Callable[[mx.array, mx.array], mx.array]  # (t, y) -> dy/dt


def increment(method: str, f: Rhs, t0: mx.array, t1: mx.array, y: mx.array) -> mx.array:
    """The change of y over one interval [t0, t1]."""
    dt = t1 - t0
    if method == "euler":
        return dt * f(t0, y)
    if method == "midpoint":
        half = dt * 0.5
        return dt * f(t0 + half, y + half * f(t0, y))
    # Runge–Kutta 3/8 rule, as the reference
    k1 = f(t0, y)
    k2 = f(t0 + dt * (1 / 3), y + dt * k1 * (1 / 3))
    k3 = f(t0 + dt * (2 / 3), y + dt * (k2 - k1 * (1 / 3)))
    k4 = f(t1, y + dt * (k1 - k2 + k3))
    return (k1 + 3 * (k2 + k3) + k4) * dt / 8


def window_frames(chunk_frames: int, past: int, future: int) -> int:
    """Frames a streaming window's DiT sees for `chunk_frames` new ones (steady state)."""
    return chunk_frames + past + future


def dit_flops_per_frame(cfg, frames: int) -> float:
    """Multiply-adds x 2 of one DiT evaluation, per frame and batch row, for a sequence of
    `frames` mel frames (attention is dense over the sequence: the block mask does not skip
    work). Counted from the config's shapes: input projection, per layer the q/k/v/out
    projections, QK^T and AV, the feed-forward; the output projection."""
    d, inner = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    width = cfg.mel_dim + cfg.enc_dim + cfg.emb_dim + cfg.enc_emb_dim
    per_layer = 2 * (3 * d * inner + inner * d)  # q, k, v, out
    per_layer += 2 * 2 * frames * inner  # scores and the weighted sum
    per_layer += 2 * 2 * d * d * cfg.ff_mult  # feed-forward in and out
    return 2 * width * d + cfg.num_hidden_layers * per_layer + 2 * d * cfg.mel_dim


def flops_per_speech_second(cfg, solver: Union[str, Solver] = DEFAULT_SOLVER,
                            chunk_frames: Optional[int] = 216, past_frames: int = 48,
                            future_frames: int = 24) -> float:
    """DiT FLOP per second of speech: each window of `chunk_frames` new frames runs the solver
    on chunk + past + future frames (the streaming split); `chunk_frames=None` counts one
    offline pass (no overlap). `cfg` is a DiTConfig; the time embedding and the modulation
    vectors (per row, not per frame) are left out (< 0.1%)."""
    solver = get_solver(solver)
    if chunk_frames is None:
        seen, frames = MEL_FRAMES_PER_SECOND, MEL_FRAMES_PER_SECOND
    else:
        if chunk_frames < 1 or chunk_frames % cfg.block_size:
            raise ValueError(f"chunk_frames must be a positive multiple of the DiT block "
                             f"({cfg.block_size} frames), got {chunk_frames}")
        frames = window_frames(chunk_frames, past_frames, future_frames)
        seen = MEL_FRAMES_PER_SECOND * frames / chunk_frames
    return solver.row_evaluations * seen * dit_flops_per_frame(cfg, frames)
