"""Core ML export (`omni-edge convert-coreml`): one .mlpackage per component plus manifest.json.

Needs the `coreml` extra (coremltools 9, torch and transformers) at export time only; importing
this package does not import them, so the CLI can say what to install. The entry point is
`omni_edge.convert.coreml.export.export`."""

import importlib.util
import re

INSTALL_HINT = 'pip install "omni-edge[coreml]"'
REQUIRED = ("torch", "coremltools", "transformers")
NUMPY_LIMIT = (2, 4)  # coremltools 9.0 does not support numpy 2.4


def check_backends() -> None:
    """Raise ImportError naming what is missing and the install command."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"Core ML export needs {', '.join(missing)} (export time only); install the "
                          f"extra with: {INSTALL_HINT}")
    import numpy

    version = tuple(int(re.match(r"\d*", p).group() or 0) for p in numpy.__version__.split(".")[:2])
    if version >= NUMPY_LIMIT:
        raise ImportError(f"coremltools 9.0 needs numpy < {'.'.join(map(str, NUMPY_LIMIT))}, found "
                          f"numpy {numpy.__version__}; install with: {INSTALL_HINT} (it pins numpy)")

