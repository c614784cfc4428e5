"""What each graph of one spoken turn costs: FLOPs, bytes moved and kernel launches, counted from
the real model graphs at the published 3B/7B sizes without materializing a single weight.

The graphs come from `omni_edge.turn_graphs`: models built from the published config, quantized
as the converter does, with every parameter a zero-stride view of one scalar. Each graph (a
Thinker decode step, a DiT evaluation, a BigVGAN window, ...) is traced with `mx.export_function`, which lists every primitive with its input and output shapes; FLOPs and
bytes are summed per primitive, kernels are the primitives that launch work. The fused fast ops
(RMSNorm, LayerNorm, RoPE, attention) are one kernel on Metal and CUDA but expand into their
fallbacks on the CPU, so while tracing they are stood in for by one node each (`fused_fast_ops`).
Inside what the runtime compiles (the DiT evaluation as a whole; BigVGAN's filters, swiglu and
mlx.nn's activations, fenced while tracing by `compiled_regions`) each connected group of
elementwise primitives is one kernel whose intermediates never reach memory; everything else
runs eagerly, one kernel per primitive. Views (reshape, transpose, slice, broadcast) are free
unless a reshape must copy a transposed array.

The same builders run on materialized weights for timing (`benchmarks/apple_projection.py
--measure`), so measured and counted graphs are the same graphs.
"""

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import mlx.core as mx
from mlx.utils import tree_map

from .turn_graphs import FLOAT_DTYPES, SIZES, build, graph  # noqa: F401  (the counting API)

# Primitives that make no kernel: views of their input, or graph bookkeeping.
VIEWS = {"Reshape", "Flatten", "Unflatten", "Transpose", "Broadcast", "BroadcastAxes", "Slice",
         "ExpandDims", "Squeeze", "AsStrided", "StopGradient", "Split", "Depends", "NumberOfElements"}
# Not elementwise: they keep their own kernel when the graph is compiled.
OPAQUE = {"Matmul", "AddMM", "QuantizedMatmul", "GatherMM", "GatherQMM", "Convolution", "Reduce",
          "ArgReduce", "Scan", "Softmax", "LogSumExp", "Gather", "GatherAxis", "Scatter",
          "ScatterAxis", "SliceUpdate", "Concatenate", "Pad", "Copy", "Sort", "ArgSort",
          "Partition", "ArgPartition", "RandomBits", "Fused", "Arange", "Full"}
# Compiled functions of the model code fence their inputs and outputs while a graph is traced,
# with a dependency on a constant of one of these shapes (no model array has them).
ENTRY, EXIT = (3, 1, 7), (3, 1, 8)
COMPILED = type(mx.compile(lambda x: x))
SCANNED_MODULES = ("omni_edge.", "mlx.nn", "mlx_lm.models")
NO_FLOPS = {"Gather", "GatherAxis", "Scatter", "ScatterAxis", "SliceUpdate", "Concatenate", "Pad",
            "Copy", "Arange", "Full", "AsType", "RandomBits"}


@dataclass
class Cost:
    """One graph: FLOPs (by compute dtype), bytes read + written, kernels launched."""

    flops: Dict[str, float] = field(default_factory=dict)
    bytes: float = 0.0
    kernels: int = 0
    weight_bytes: float = 0.0  # distinct constants read (weights, caches)

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    def to_dict(self) -> dict:
        return {"flops": self.total_flops, "flops_by_dtype": dict(self.flops), "bytes": self.bytes,
                "kernels": self.kernels, "weight_bytes": self.weight_bytes}


class _FastOps:
    """While tracing, each fused fast op is one node (an `mx.depends` on its inputs) whose cost is
    recorded here, keyed by the shapes of the node's inputs and output."""

    def __init__(self):
        self.costs = {}

    def node(self, kind: str, out_like: mx.array, inputs: list, flops: float) -> mx.array:
        arrays = [a for a in inputs if isinstance(a, mx.array)]
        out = mx.depends([out_like], arrays)[0]
        key = tuple(tuple(a.shape) for a in [out_like] + arrays)
        self.costs[key] = (kind, flops)
        return out

    def rms_norm(self, x, weight, eps, **kw):
        return self.node("RMSNorm", x, [weight], 4.0 * x.size)

    def layer_norm(self, x, weight, bias, eps, **kw):
        return self.node("LayerNorm", x, [weight, bias], 8.0 * x.size)

    def rope(self, x, dims, *args, **kw):
        return self.node("RoPE", x, [kw.get("freqs")], 3.0 * x.size)

    def scaled_dot_product_attention(self, q, k, v, *args, scale=None, mask=None, **kw):
        B, H, L, D = q.shape
        S = k.shape[2]
        return self.node("ScaledDotProductAttention", q, [k, v, mask], B * H * L * S * (4.0 * D + 5))


@contextlib.contextmanager
def fused_fast_ops():
    stand_in, saved = _FastOps(), {}
    for name in ("rms_norm", "layer_norm", "rope", "scaled_dot_product_attention"):
        saved[name] = getattr(mx.fast, name)
        setattr(mx.fast, name, getattr(stand_in, name))
    try:
        yield stand_in
    finally:
        for name, fn in saved.items():
            setattr(mx.fast, name, fn)


def _fenced(fn, entry: mx.array, exit: mx.array, depth: list):
    """`fn` with its inputs and outputs fenced; a call inside another fenced call is inlined, as
    the compiler inlines it."""

    def fence(tree, anchor):
        return tree_map(lambda a: mx.depends([a], [anchor])[0] if isinstance(a, mx.array) else a, tree)

    def call(*args, **kwargs):
        if depth[0]:
            return fn(*args, **kwargs)
        depth[0] += 1
        try:
            args, kwargs = fence((args, kwargs), entry)
            return fence(fn(*args, **kwargs), exit)
        finally:
            depth[0] -= 1

    return call


@contextlib.contextmanager
def compiled_regions():
    """While tracing, every `mx.compile`d function at module level in omni_edge, mlx.nn and
    mlx_lm.models fences its inputs and outputs, so `count` fuses what the compiler fuses and
    nothing else. Yields the names it fenced. Not thread-safe: it patches those modules."""
    entry, exit = mx.zeros(ENTRY), mx.zeros(EXIT)
    mx.eval(entry, exit)
    patched, depth = [], [0]
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(SCANNED_MODULES):
            continue
        for attr, value in list(vars(module).items()):
            if type(value) is COMPILED:
                patched.append((module, attr, value))
                setattr(module, attr, _fenced(value, entry, exit, depth))
    try:
        yield [f"{m.__name__}.{attr}" for m, attr, _ in patched]
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


def trace(fn: Callable[[], object]) -> List[dict]:
    """The primitives of `fn()`'s graph, in order, as `mx.export_function` lists them; plus one
    entry with the constants (weights, caches) and one with the outputs."""
    records = []

    def keep(record):
        if record["type"] in ("primitive", "constants", "outputs"):
            records.append(record)

    mx.disable_compile()  # compiled functions run as their primitives; `count` fuses them itself
    try:
        mx.export_function(keep, lambda: fn())
    finally:
        mx.enable_compile()
    return records


def count(fn: Callable[[], object], compiled: bool = False) -> Cost:
    """The Cost of the graph `fn()` builds (no argument; closes over the model and inputs);
    `compiled` when the runtime compiles `fn` as a whole."""
    # a graph compiled as a whole is one region: its inner compiled functions need no fences
    with fused_fast_ops() as fast, contextlib.nullcontext() if compiled else compiled_regions():
        records = trace(fn)
    return _tally(records, fast.costs, compiled)


def _nbytes(entry) -> float:
    _, shape, dtype = entry
    n = 1
    for s in shape:
        n *= s
    return float(n * dtype.size)


def _tally(records: List[dict], fast: dict, compiled: bool) -> Cost:
    cost = Cost()
    constants = {name: float(a.nbytes) for r in records if r["type"] == "constants"
                 for name, a in r["constants"]}
    anchors = {name: tuple(a.shape) for r in records if r["type"] == "constants"
               for name, a in r["constants"] if tuple(a.shape) in (ENTRY, EXIT)}
    outputs = {name for r in records if r["type"] == "outputs" for name, _, _ in r["outputs"]}
    prims = [r for r in records if r["type"] == "primitive"]
    region = _compiled_primitives(prims, anchors) if not compiled else [True] * len(prims)
    producer, consumers, strided = {}, {}, set()
    for i, p in enumerate(prims):
        for name, _, _ in p["outputs"]:
            producer[name] = i
        for name, _, _ in p["inputs"]:
            consumers.setdefault(name, set()).add(i)
    group = list(range(len(prims)))  # union-find over fused elementwise primitives

    def root(i):
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    def see_through(i):  # views, not the fused fast ops or the fences of compiled functions
        return prims[i]["name"] in VIEWS - {"Depends"}

    def source(name):  # the primitive that made `name`, looking through views
        i = producer.get(name)
        while i is not None and see_through(i):
            i = producer.get(prims[i]["inputs"][0][0])
        return i

    def base(name):  # the array `name` views: a constant, or a kernel's output
        i = producer.get(name)
        while i is not None and see_through(i):
            name = prims[i]["inputs"][0][0]
            i = producer.get(name)
        return name

    def elementwise(i):
        return prims[i]["name"] not in VIEWS and prims[i]["name"] not in OPAQUE

    read = set()
    for i, p in enumerate(prims):
        name, ins, outs = p["name"], p["inputs"], p["outputs"]
        if name == "Transpose" or (name in VIEWS and ins and ins[0][0] in strided):
            if name != "Transpose" or _moves_data(ins[0][1], p["arguments"]):
                strided.update(o[0] for o in outs)
        copy = name in ("Reshape", "Flatten") and ins[0][0] in strided
        if name == "Depends" and ins:
            kind, flops = fast.get(tuple(tuple(e[1]) for e in outs[:1] + ins[1:]), ("", 0.0))
            if kind:
                _add(cost.flops, outs[0][2], flops)
                cost.kernels += 1
                cost.bytes += sum(_nbytes(e) for e in ins) + _nbytes(outs[0])
            continue
        if name in VIEWS and not copy:
            continue
        _add(cost.flops, outs[0][2], _flops(name, ins, outs))
        if name not in ("Gather", "GatherAxis"):  # a gather reads rows, not its whole table
            read.update(b for b in map(base, (e[0] for e in ins)) if b in constants)
        if region[i] and elementwise(i):
            for e in ins:
                j = source(e[0])
                if j is not None and region[j] and elementwise(j):
                    group[root(i)] = root(j)
            continue
        cost.kernels += 1
        cost.bytes += _io_bytes(name, ins, outs)
    members = {}  # each fused group: one kernel reading its outside inputs, writing what leaves it
    for i in range(len(prims)):
        if region[i] and elementwise(i):
            members.setdefault(root(i), []).append(i)
    for g, idx in members.items():
        cost.kernels += 1
        inside = set(idx)
        ins = {}  # keyed by the array each input views: 12 slices of one array read it once
        for e in (e for i in idx for e in prims[i]["inputs"]):
            j = source(e[0])
            if j is None or root(j) != g:
                b = base(e[0])
                ins[b] = (constants[b] if b in constants else
                          _nbytes(e if j is None else prims[j]["outputs"][0]))
        outs = [e for i in idx for e in prims[i]["outputs"]
                if e[0] in outputs or consumers.get(e[0], set()) - inside]
        cost.bytes += sum(ins.values()) + sum(_nbytes(e) for e in outs)
    cost.weight_bytes = sum(constants[n] for n in read)
    return cost


def _compiled_primitives(prims: List[dict], anchors: dict) -> List[bool]:
    """Which primitives lie inside a fenced compiled function: downstream of an entry fence,
    upstream of an exit fence (the list is in topological order)."""
    inside, marked = [False] * len(prims), set()
    for i, p in enumerate(prims):
        ins = p["inputs"]
        if p["name"] == "Depends" and len(ins) == 2 and ins[1][0] in anchors:
            if anchors[ins[1][0]] == ENTRY:
                marked.update(o[0] for o in p["outputs"])
            continue
        if any(e[0] in marked for e in ins):
            inside[i] = True
            marked.update(o[0] for o in p["outputs"])
    return inside


def _moves_data(shape, arguments) -> bool:
    """A transpose that moves an axis longer than 1 past another leaves the data strided."""
    perm = [a for a in arguments[0] if shape[a] > 1]
    return perm != sorted(perm)


def _add(flops: Dict[str, float], dtype, n: float):
    if n:
        key = str(dtype).replace("mlx.core.", "")
        flops[key] = flops.get(key, 0.0) + n


def _size(entry) -> float:
    n = 1.0
    for s in entry[1]:
        n *= s
    return n


def _flops(name: str, ins, outs) -> float:
    out = _size(outs[0])
    if name in ("Matmul", "QuantizedMatmul", "GatherMM", "GatherQMM"):
        return 2.0 * out * ins[0][1][-1]
    if name == "AddMM":  # inputs a, b, c: c + a @ b
        return 2.0 * out * ins[0][1][-1] + out
    if name == "Convolution":  # weight [C_out, *kernel, C_in / groups]
        w = ins[1][1]
        return 2.0 * out * _size((None, w[1:]))
    if name in ("Reduce", "ArgReduce", "Scan", "Softmax", "LogSumExp"):
        return _size(ins[0]) * (5 if name in ("Softmax", "LogSumExp") else 1)
    if name in NO_FLOPS:
        return 0.0
    return out * len(outs)


def _io_bytes(name: str, ins, outs) -> float:
    if name == "SliceUpdate":  # in place on a donated buffer: the update is read and written
        return 2 * _nbytes(ins[1])
    if name in ("Gather", "GatherAxis"):  # rows read = rows written, plus the indices
        return 2 * sum(_nbytes(e) for e in outs) + sum(_nbytes(e) for e in ins[1:])
    return sum(_nbytes(e) for e in ins) + sum(_nbytes(e) for e in outs)


def graph_cost(model, name: str, **shape) -> Cost:
    fn, compiled = graph(model, name, **shape)
    return count(fn, compiled)
