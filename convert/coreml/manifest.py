"""Describe saved `.mlpackage`s from their specs: functions, inputs, outputs, states, shapes, dtypes."""

from pathlib import Path
from typing import Dict, List

from coremltools.models.utils import load_spec
from coremltools.proto import FeatureTypes_pb2

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
ARRAY_DTYPES = {
    FeatureTypes_pb2.ArrayFeatureType.FLOAT16: "float16",
    FeatureTypes_pb2.ArrayFeatureType.FLOAT32: "float32",
    FeatureTypes_pb2.ArrayFeatureType.DOUBLE: "float64",
    FeatureTypes_pb2.ArrayFeatureType.INT32: "int32",
}


def _array(feature_type) -> dict:
    array = feature_type.multiArrayType
    entry = {"shape": list(array.shape), "dtype": ARRAY_DTYPES.get(array.dataType, str(array.dataType))}
    enumerated = [list(s.shape) for s in array.enumeratedShapes.shapes]
    if enumerated:
        entry["enumerated_shapes"] = enumerated
    return entry


def _features(features) -> List[dict]:
    return [{"name": f.name, **_array(f.type)} for f in features]


def _states(states) -> List[dict]:
    out = []
    for s in states:
        array = s.type.stateType.arrayType
        out.append({"name": s.name, "shape": list(array.shape),
                    "dtype": ARRAY_DTYPES.get(array.dataType, str(array.dataType))})
    return out


def describe_package(path) -> Dict[str, dict]:
    """{function name: {inputs, outputs, states}}; a single-function package has "main"."""
    spec = load_spec(str(path))
    desc = spec.description
    if len(desc.functions):
        return {f.name: {"inputs": _features(f.input), "outputs": _features(f.output),
                         "states": _states(f.state)} for f in desc.functions}
    return {"main": {"inputs": _features(desc.input), "outputs": _features(desc.output),
                     "states": _states(desc.state)}}


def default_function(path) -> str:
    spec = load_spec(str(path))
    return spec.description.defaultFunctionName or "main"


def package_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
