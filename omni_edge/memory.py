"""How much memory a model needs and the machine has, and the wired-memory limit around a turn."""

import os
import sys
from contextlib import contextmanager
from typing import Dict, Iterable, Optional

import mlx.core as mx
from mlx.utils import tree_reduce

GB = 1e9
# What a turn needs beyond the weights (KV cache, activations, one Token2Wav window): an upper
# estimate for a short spoken turn; benchmarks/pipeline_memory.py measures the real one.
RUNTIME_HEADROOM = 1.0 * GB
LIMIT_ENV = "OMNI_EDGE_MEMORY_LIMIT_GB"


class ModelTooLargeError(ValueError):
    """A model whose weights can't fit the memory this machine can give it."""


def machine_memory() -> tuple:
    """(bytes a model may use, what that figure is) on this machine. On Apple silicon it is
    Metal's recommended working set (about 3/4 of the RAM; beyond it macOS swaps); elsewhere
    the physical RAM. $OMNI_EDGE_MEMORY_LIMIT_GB overrides both."""
    if os.environ.get(LIMIT_ENV):
        try:
            return float(os.environ[LIMIT_ENV]) * GB, f"${LIMIT_ENV}"
        except ValueError:
            raise ValueError(f"${LIMIT_ENV} must be a number of GB, got {os.environ[LIMIT_ENV]!r}") from None
    if mx.metal.is_available():
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = mx.device_info()["max_recommended_working_set_size"]
        return limit, f"Metal's recommended working set on {ram / GB:.1f} GB of RAM"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the physical RAM"


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def check_fits(source: str, eager: Dict[str, int], on_demand: Dict[str, int],
               hint: str = "", in_use: int = 0):
    """Refuse, before reading any weight, a model whose `eager` parts (name → bytes) plus the
    runtime headroom exceed what the machine can give; `on_demand` parts are listed, not counted."""
    limit, what = machine_memory()
    need = sum(eager.values()) + RUNTIME_HEADROOM + in_use
    if need <= limit:
        return
    parts = ", ".join(f"{name} {_gb(n)}" for name, n in eager.items())
    later = ", ".join(f"{name} {_gb(n)}" for name, n in on_demand.items())
    raise ModelTooLargeError(
        f"{source} needs {_gb(need)}: weights {parts}"
        + (f", plus {_gb(in_use)} already in use" if in_use else "")
        + f", and {_gb(RUNTIME_HEADROOM)} for the turn"
        + (f" ({later} load on first use)" if later else "")
        + f"; this machine can give {_gb(limit)} ({what}). {hint}"
        "Convert with a smaller preset (omni-edge convert --preset q4-small), "
        "load(..., speech=False) to leave the Talker and Token2Wav out, or pass "
        "check_memory=False to load it anyway."
    )


def model_bytes(model) -> int:
    return tree_reduce(lambda acc, x: acc + x.nbytes if isinstance(x, mx.array) else acc,
                       model.parameters(), 0)


@contextmanager
def wired_limit(model=None, streams: Optional[Iterable] = None):
    """Around one turn: on Apple silicon, wire up to Metal's recommended working set so the
    weights are not paged out between steps (as mlx-lm's `wired_limit`), restoring the old
    limit after; everywhere, free MLX's buffer cache when the turn ends, so one turn's
    activations are not kept into the next. Pass the generation `streams` to wait for them."""
    old = None
    if mx.metal.is_available():
        limit = mx.device_info()["max_recommended_working_set_size"]
        if model is not None and model_bytes(model) > 0.9 * limit:
            print(f"[omni-edge] warning: the model's {_gb(model_bytes(model))} are close to the "
                  f"{_gb(limit)} Metal can keep resident; expect swapping. A smaller preset "
                  "(omni-edge convert --preset q4-small) fits better.", file=sys.stderr)
        old = mx.set_wired_limit(limit)
    try:
        yield
    finally:
        for s in streams or [None]:
            mx.synchronize(s) if s is not None else mx.synchronize()
        if old is not None:
            mx.set_wired_limit(old)
        mx.clear_cache()
