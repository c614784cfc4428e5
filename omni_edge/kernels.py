"""Kernel counts of MLX graphs, for the benchmarks and the cost model: the primitives an
unevaluated graph will run, read from `mx.export_to_dot`, less the ones that only make a view.

A compiled function's graph holds its fused element-wise kernels as single `Compiled...` nodes,
so the count is the launches after fusion. A view-like node may still copy (a reshape of a
transposed array), so the count is a lower bound on launches; it is exact for comparing the same
graph eager and compiled.
"""

import io
import re
from collections import Counter
from typing import Dict

import mlx.core as mx

# Primitives that make a view of their input (no kernel) in MLX's Metal and CPU backends.
VIEWS = frozenset({"Broadcast", "BroadcastAxes", "Reshape", "Transpose", "Slice", "ExpandDims",
                   "Squeeze", "StopGradient", "Depends", "Split", "AsStrided", "Flatten",
                   "Unflatten"})
_NODE = re.compile(r'\[label ="([^"]+)", shape=rectangle\]')


def primitives(*outputs: mx.array) -> Dict[str, int]:
    """How often each primitive occurs in the graph that computes `outputs` (evaluate the
    inputs first: the graph reaches back to the last evaluated arrays)."""
    buf = io.StringIO()
    mx.export_to_dot(buf, *outputs)
    return dict(Counter(_NODE.findall(buf.getvalue())))


def count_kernels(*outputs: mx.array) -> int:
    """The kernels the graph of `outputs` launches (view-only primitives left out)."""
    return sum(n for name, n in primitives(*outputs).items() if name not in VIEWS)
