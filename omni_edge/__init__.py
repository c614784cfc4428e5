"""omni-edge: Qwen2.5-Omni on MLX."""

import importlib.util
import sys
from pathlib import Path

# Installed, the top-level convert/ folder ships as omni_edge.convert (pyproject package-dir).
# Run from a source checkout (PYTHONPATH=., python -m pytest), it sits beside this package:
# register it under the same name so both layouts import alike.
_CHECKOUT_CONVERT = Path(__file__).resolve().parent.parent / "convert"
if not (Path(__file__).parent / "convert").is_dir() and (_CHECKOUT_CONVERT / "mlx.py").is_file():
    _spec = importlib.util.spec_from_file_location(
        f"{__name__}.convert", _CHECKOUT_CONVERT / "__init__.py",
        submodule_search_locations=[str(_CHECKOUT_CONVERT)],
    )
    sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_spec.name])

from .chat import ChatSession  # noqa: E402
from .generate import GenerationResult, generate, stream  # noqa: E402
from .loading import load  # noqa: E402
from .options import GenerationOptions, SpeechOptions  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "generate", "stream", "ChatSession", "GenerationResult", "GenerationOptions",
           "SpeechOptions", "__version__"]
