"""Read one component's tensors from a Hugging Face Qwen2.5-Omni checkpoint, lazily, as numpy.

The published shards are bf16, which numpy can't hold, so tensors go through torch (an export-time
dependency anyway) and come out float32. Both the published (4.x) and the transformers 5 names are
accepted.
"""

from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np
import torch
from safetensors import safe_open

from ..hub import CheckpointError, weight_shards

# Component -> on-disk prefixes, published first.
PREFIXES = {
    "thinker": ("thinker.model.", "thinker.model.language_model."),
    "thinker.lm_head": ("thinker.",),
    "talker": ("talker.model.",),
    "talker.top": ("talker.",),
    "audio": ("thinker.audio_tower.", "thinker.model.audio_tower."),
    "vision": ("thinker.visual.", "thinker.model.visual."),
    "dit": ("token2wav.code2wav_dit_model.",),
    "bigvgan": ("token2wav.code2wav_bigvgan_model.",),
}


class CheckpointReader:
    """Tensor lookup over the shards of `model_dir` (headers checked once, data read on demand)."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.where: Dict[str, Path] = {}
        for path, names in weight_shards(self.model_dir):
            for name in names:
                self.where[name] = path

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise CheckpointError(f"{self.model_dir} lacks tensor {name}; the checkpoint is incomplete "
                                  "or not a Qwen2.5-Omni model")
        with safe_open(str(self.where[name]), framework="pt") as f:
            return f.get_tensor(name)

    def array(self, name: str, dtype=torch.float32) -> np.ndarray:
        return self.tensor(name).to(dtype).numpy()

    def resolve(self, component: str, name: str) -> str:
        """The on-disk name of `name` inside `component` (first prefix that holds it)."""
        for prefix in PREFIXES[component]:
            if prefix + name in self.where:
                return prefix + name
        return PREFIXES[component][0] + name

    def component(self, component: str, names: Iterable[str], dtype=torch.float32) -> Dict[str, np.ndarray]:
        """Read in the dtype the graph is built in, so a 3B decoder is held once, at 2 bytes a weight."""
        return {n: self.array(self.resolve(component, n), dtype) for n in names}

    def state_dict(self, component: str) -> Dict[str, torch.Tensor]:
        """Every tensor under the component's prefix, names relative to it, float32."""
        for prefix in PREFIXES[component]:
            names: List[str] = [n for n in self.where if n.startswith(prefix)]
            if names:
                return {n[len(prefix):]: self.tensor(n).to(torch.float32) for n in names}
        raise CheckpointError(
            f"{self.model_dir} holds no {component} weights (no tensor under "
            f"{' or '.join(PREFIXES[component])}); pass a full Qwen2.5-Omni checkpoint or leave "
            f"{component} out of --components")
