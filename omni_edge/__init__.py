"""omni-edge: Qwen2.5-Omni on MLX."""

from .generate import GenerationResult, generate, stream
from .loading import load

__version__ = "0.1.0"
__all__ = ["load", "generate", "stream", "GenerationResult", "__version__"]
