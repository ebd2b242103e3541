"""Load and save ONNX models: the proto <-> onnx_ir boundary, checks and normalisation.

``load_model`` reads a file (with external data beside it), checks it, converts opsets
older than 11, fixes dynamic input dimensions the user gave, and normalises the graph so
the analysis sees a clean one: Constants lifted to initializers, constants folded,
BatchNormalization folded into the preceding Conv/Gemm, Identity nodes removed, every node
named uniquely, shapes inferred. The file on disk is never modified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

import google.protobuf.message
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from emomc_onnx.errors import ModelError

__all__ = [
    "MIN_OPSET",
    "LoadedModel",
    "load_model",
    "normalize",
    "parse_input_shapes",
    "save_model",
    "to_proto",
    "from_proto",
    "model_sha256",
    "infer_shapes",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 11


@dataclasses.dataclass
class LoadedModel:
    """A normalised model and where it came from.

    Attributes:
        model: the normalised onnx_ir model (callers clone before mutating).
        sha256: hash of the original model content (graph + weights).
        path: the file it was read from, if any.
    """

    model: ir.Model
    sha256: str
    path: pathlib.Path | None = None

    def proto(self) -> onnx.ModelProto:
        """The normalised model as a ModelProto (a copy)."""
        return to_proto(self.model)


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME:1,3,224,224`` strings into a mapping.

    Raises:
        ModelError: for a malformed spec.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name or not dims:
            raise ModelError(f"--input-shape {spec!r}: expected NAME:D0,D1,... e.g. input:1,3,224,224")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ModelError(f"--input-shape {spec!r}: dimensions must be integers") from None
        if any(d <= 0 for d in shape):
            raise ModelError(f"--input-shape {spec!r}: dimensions must be positive")
        shapes[name] = shape
    return shapes


def model_sha256(proto: onnx.ModelProto) -> str:
    """A content hash of a model (graph and weights, deterministic serialisation)."""
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _read_proto(path: pathlib.Path) -> tuple[onnx.ModelProto, str]:
    """The model (external data loaded) and the sha256 of the file's bytes."""
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX file")
    try:
        data = path.read_bytes()
        proto = onnx.load_from_string(data)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(f"{path}: not a valid ONNX model (truncated or not ONNX: {_first_line(exc)})") from None
    except Exception as exc:  # protobuf raises a variety of errors for junk input
        raise ModelError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path}: not a valid ONNX model (empty graph; truncated or not ONNX)")
    _load_external(proto, path)
    return proto, hashlib.sha256(data).hexdigest()


def _load_external(proto: onnx.ModelProto, path: pathlib.Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = path.parent
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            location = info.get("location", "")
            if not (base / location).exists():
                raise ModelError(
                    f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing"
                )
    try:
        onnx.load_external_data_for_model(proto, str(base))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read external data ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _convert_opset(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    opset = _default_opset(proto)
    if opset >= MIN_OPSET:
        return proto
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(proto, 13)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ModelError(
            f"{where}: opset {opset} is older than {MIN_OPSET} and could not be converted "
            f"({_first_line(exc)}); re-export with opset >= {MIN_OPSET}"
        ) from None
    logger.info("%s: converted opset %d to 13", where, opset)
    return converted


def _check(proto: onnx.ModelProto, where: str) -> None:
    try:
        try:
            onnx.checker.check_model(proto)
        except ValueError:  # over 2 GB: the checker needs a path
            with tempfile.TemporaryDirectory() as tmp:
                p = os.path.join(tmp, "m.onnx")
                onnx.save(proto, p, save_as_external_data=True)
                onnx.checker.check_model(p)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{where}: invalid ONNX model: {_first_line(exc)}") from None


def _fix_input_shapes(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], where: str) -> None:
    inputs = {i.name: i for i in proto.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise ModelError(f"{where}: --input-shape names {name!r}, not a model input (inputs: {known})")
        tshape = inputs[name].type.tensor_type.shape
        if len(tshape.dim) != len(dims):
            raise ModelError(
                f"{where}: --input-shape {name}: rank {len(dims)} but the input has rank {len(tshape.dim)}"
            )
        for dim, value in zip(tshape.dim, dims):
            if dim.HasField("dim_value") and dim.dim_value != value:
                raise ModelError(
                    f"{where}: --input-shape {name}: dimension {dim.dim_value} is static and differs from {value}"
                )
        for dim, value in zip(tshape.dim, dims):
            dim.Clear()
            dim.dim_value = value


def load_model(
    path: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> LoadedModel:
    """Load, check and normalise an ONNX model file.

    Args:
        path: the .onnx file (external data is read from beside it).
        input_shapes: fixed shapes for inputs with dynamic dimensions (batch may stay dynamic
            otherwise; spatial dimensions must be static for analysis and costing).

    Returns:
        The normalised model with the original content hash.

    Raises:
        ModelError: a one-line explanation naming the file.
    """
    p = pathlib.Path(path)
    proto, sha = _read_proto(p)
    return load_proto(proto, where=str(p), input_shapes=input_shapes, path=p, sha256=sha)


def load_proto(
    proto: onnx.ModelProto,
    *,
    where: str = "<model>",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    path: pathlib.Path | None = None,
    sha256: str | None = None,
) -> LoadedModel:
    """Check and normalise an in-memory ModelProto (not modified)."""
    proto_copy = onnx.ModelProto()
    proto_copy.CopyFrom(proto)
    sha = sha256 or model_sha256(proto_copy)
    _check(proto_copy, where)
    proto_copy = _convert_opset(proto_copy, where)
    if input_shapes:
        _fix_input_shapes(proto_copy, input_shapes, where)
    try:
        model = ir.from_proto(proto_copy)
    except Exception as exc:
        raise ModelError(f"{where}: cannot read model: {_first_line(exc)}") from None
    try:
        normalize(model)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{where}: normalisation failed: {_first_line(exc)}") from None
    return LoadedModel(model=model, sha256=sha, path=path)


def normalize(model: ir.Model) -> None:
    """Normalise a model in place (see the module docstring)."""
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.RemoveInitializersFromInputsPass()(model)
    infer_shapes(model)
    _fold_constants(model)
    common_passes.IdentityEliminationPass()(model)
    _fold_batchnorm(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)
    _name_nodes(model)
    infer_shapes(model)


def _fold_constants(model: ir.Model) -> None:
    import onnxscript.optimizer as optimizer

    optimizer.fold_constants_ir(model, onnx_shape_inference=False, input_size_limit=1 << 20,
                                output_size_limit=1 << 24)
    common_passes.RemoveUnusedNodesPass()(model)


def _fold_batchnorm(model: ir.Model) -> None:
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    rules = rewriter.RewriteRuleSet(
        [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
         fuse_batchnorm_into_gemm_rule]
    )
    # the rewrite replaces each Conv/Gemm with a new, generated-name node: keep the exporter's name
    names: dict[str, str] = {}
    for node in model.graph:
        if node.op_type == "BatchNormalization" and node.inputs and node.inputs[0] is not None:
            prod = node.inputs[0].producer()
            if prod is not None and prod.op_type in ("Conv", "ConvTranspose", "Gemm") and prod.name:
                names[node.outputs[0].name] = prod.name
    rewriter.rewrite(model, pattern_rewrite_rules=rules)
    for node in model.graph:
        if node.op_type != "BatchNormalization" and node.outputs and node.outputs[0].name in names:
            node.name = names[node.outputs[0].name]


def _name_nodes(model: ir.Model) -> None:
    """Give every node a unique, stable name (exporters often leave them empty)."""
    seen: set[str] = set()
    counters: dict[str, int] = {}
    for node in model.graph:
        name = node.name or ""
        if not name or name in seen:
            base = node.op_type
            while True:
                counters[base] = counters.get(base, -1) + 1
                candidate = f"{base}_{counters[base]}"
                if candidate not in seen:
                    break
            name = candidate
        node.name = name
        seen.add(name)


def infer_shapes(model: ir.Model) -> None:
    """Run ONNX shape inference (with data propagation) and store the shapes on values."""
    try:
        common_passes.ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    except Exception as exc:  # shape inference is advisory; analysis reports what is missing
        logger.warning("shape inference failed: %s", _first_line(exc))


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise an onnx_ir model to a ModelProto."""
    return ir.to_proto(model)


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Deserialise a ModelProto into a fresh onnx_ir model."""
    return ir.from_proto(proto)


def clone(model: ir.Model) -> ir.Model:
    """A deep copy of an onnx_ir model (the search never mutates the imported one)."""
    return ir.from_proto(ir.to_proto(model))


def save_model(model: ir.Model | onnx.ModelProto, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a model atomically (temporary file + rename); external data beyond 2 GB."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    large = proto.ByteSize() > 2**31 - 1 if proto.ByteSize() < 2**31 - 1 else True
    if large:
        onnx.save(proto, str(tmp), save_as_external_data=True, location=p.name + ".data")
    else:
        tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, p)
    return p
