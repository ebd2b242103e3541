"""Load and save ONNX models: the proto <-> onnx_ir boundary, checks and normalisation.

``load_model`` reads a file (with external data beside it), checks it, reads dimensions
stored as ``dim_value`` -1 or 0 as dynamic (older exporters), upgrades opsets older than 13
with onnx's version converter (and checks the outputs stay equal), and normalises the graph
so the analysis sees a clean one: Constants lifted to initializers, constants folded (onnxscript
never folds a Quantize/DequantizeLinear: a peer's QDQ weights stay readable), BatchNormalization folded
into the preceding Conv/Gemm, Identity nodes removed, every node named uniquely, shapes
inferred. Normalisation runs on the model's own (dynamic) signature; ``--input-shape``
values are set afterwards for shape inference only, so nothing shape-dependent is folded
into constants and every model written from it keeps the original's inputs and outputs
(``LoadedModel.proto`` / ``LoadedModel.restore_signature``). The file is never modified.
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
import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnx import version_converter
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from emomc_onnx.errors import ModelError
from emomc_onnx.paths import atomic_write_bytes, output_error

__all__ = [
    "MIN_OPSET",
    "LoadedModel",
    "from_proto",
    "infer_shapes",
    "load_model",
    "model_sha256",
    "normalize",
    "parse_input_shapes",
    "random_inputs",
    "refresh_shapes",
    "save_model",
    "to_proto",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 13  # per-axis DequantizeLinear; older models are upgraded to it on import


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
    inputs: tuple[onnx.ValueInfoProto, ...] = ()
    outputs: tuple[onnx.ValueInfoProto, ...] = ()
    shapes_fixed: bool = False

    def proto(self) -> onnx.ModelProto:
        """The normalised model as a ModelProto (a copy) with the original's input and output
        signature: what ONNX Runtime runs and what every written model is made from."""
        return self.restore_signature(to_proto(self.model))

    def restore_signature(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """Give ``proto`` (built from ``model``) the original graph input/output types, in place.

        ``--input-shape`` fixes dimensions for analysis and costing only: the shapes inferred
        with them are dropped (``value_info``), and inputs and outputs get back their dynamic
        dimensions (batch, width), so a written model takes what the original took.
        """
        if not self.shapes_fixed:
            return proto
        for values, originals in ((proto.graph.input, self.inputs), (proto.graph.output, self.outputs)):
            by_name = {v.name: v for v in originals}
            for v in values:
                orig = by_name.get(v.name)
                if orig is not None:
                    v.type.CopyFrom(orig.type)
        del proto.graph.value_info[:]
        return proto


def declared_dims(tt: onnx.TypeProto.Tensor) -> tuple[int | str | None, ...]:
    """A tensor type's declared dims: the size, the symbolic name, or None (unknown) per axis."""
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


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


def _dynamic_dims(proto: onnx.ModelProto) -> int:
    """Dimensions stored as ``dim_value`` <= 0 (older Paddle and TF exports) become symbolic.

    ONNX has no -1 dimension: exporters write it (or 0) for "unknown". Returns the count changed.
    """
    changed = 0
    for kind, values in (("in", proto.graph.input), ("out", proto.graph.output),
                         ("vi", proto.graph.value_info)):
        for v in values:
            if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
                continue
            for i, dim in enumerate(v.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value <= 0:
                    dim.Clear()
                    dim.dim_param = f"{v.name}_dim{i}" if kind != "vi" else ""
                    changed += 1
    return changed


def random_inputs(proto: onnx.ModelProto, n: int | None, seed: int = 0,
                  shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of a model's shapes: float standard normal, integer uniform in [0, 8),
    bool fair coins, drawn input by input from one generator.

    Axis 0 becomes ``n`` (None: the model's own, 1 where dynamic); the other dimensions come
    from ``shapes`` (name -> full shape) or the model.

    Raises:
        ValueError: an input without a numpy type, a scalar, or a dynamic dimension left.
    """
    rng = np.random.default_rng(seed)
    inits = {t.name for t in proto.graph.initializer}
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        model_dims = declared_dims(tt)
        dims = list(shapes[inp.name]) if shapes and inp.name in shapes else list(model_dims)
        if not dims:
            raise ValueError(f"input {inp.name!r} is a scalar; synthetic data needs a batch axis")
        if n is not None:
            dims[0] = n
        elif not isinstance(dims[0], int) or dims[0] <= 0:
            dims[0] = 1
        if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            raise ValueError(f"input {inp.name!r} has dynamic dims {model_dims}: give --input-shape or --data")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"input {inp.name!r} has element type {tt.elem_type}, which has no numpy "
                             "equivalent") from None
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = rng.random(dims) < 0.5
        else:  # integer inputs (ids, indices): small non-negative values
            feeds[inp.name] = rng.integers(0, 8, size=dims).astype(dtype)
    return feeds


def _probe_feeds(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> dict | None:
    """Random inputs for an equality check (None when a dimension is unknown)."""
    try:
        return random_inputs(proto, None, 0, shapes)
    except ValueError:
        return None


def _outputs_equal(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> str | None:
    """None if ORT gives both models the same outputs on ``feeds`` (else what differs)."""
    # ONNX Runtime loads only to check an opset upgrade: analyze and profile do not run models
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        ra = ort.InferenceSession(a.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:  # noqa: BLE001 - ORT cannot run the original: nothing to compare against
        logger.info("opset check skipped: ONNX Runtime cannot run the original model")
        return None
    rb = ort.InferenceSession(b.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    for out, x, y in zip(a.graph.output, ra, rb):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return f"output {out.name}: shape {x.shape} became {y.shape}"
        if np.issubdtype(x.dtype, np.floating):
            tol = 1e-4 * max(float(np.abs(x).max(initial=0.0)), 1.0)
            if not np.allclose(x, y, rtol=1e-4, atol=tol, equal_nan=True):
                return f"output {out.name}: values differ by up to {float(np.abs(x - y).max()):.3g}"
        elif not np.array_equal(x, y):
            return f"output {out.name}: values differ"
    return None


def _convert_opset(proto: onnx.ModelProto, where: str,
                   shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """Upgrade a model older than ``MIN_OPSET`` with onnx's version converter.

    The converted model must give the same outputs as the original on random inputs (checked
    with ONNX Runtime whenever every input dimension is known)."""
    opset = _default_opset(proto)
    if opset >= MIN_OPSET:
        return proto
    try:
        converted = version_converter.convert_version(proto, MIN_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise ModelError(
            f"{where}: opset {opset} could not be upgraded to {MIN_OPSET} "
            f"({_first_line(exc)}); re-export with opset >= {MIN_OPSET}"
        ) from None
    feeds = _probe_feeds(proto, shapes or {})
    why = _outputs_equal(proto, converted, feeds) if feeds is not None else None
    if why is not None:
        raise ModelError(f"{where}: upgrading opset {opset} to {MIN_OPSET} changed the model ({why}); "
                         f"re-export with opset >= {MIN_OPSET}")
    logger.info("%s: upgraded opset %d to %d%s", where, opset, MIN_OPSET,
                "" if feeds is not None else " (outputs not compared: give --input-shape)")
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


def _check_input_shapes(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], where: str) -> None:
    """``--input-shape`` must name a model input, match its rank and agree with static dims."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in inits}
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


def _set_input_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> None:
    """Fix input dimensions on the normalised model and infer every intermediate shape."""
    for value in model.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape([int(d) for d in shapes[value.name]])
    refresh_shapes(model)


def refresh_shapes(model: ir.Model) -> None:
    """Infer every intermediate shape from the graph inputs' shapes, in place.

    Shapes are inferred on a copy whose shape computations (Shape -> Slice -> Concat ->
    Reshape chains, as Paddle and tf2onnx export them) are folded with the inputs' fixed
    dimensions, then copied by name onto ``model``, whose graph keeps computing them at run
    time (so it still takes any batch and width)."""
    probe = clone(model)
    _fold_to_fixpoint(probe)
    known = {v.name: v.shape for node in probe.graph for v in node.outputs if v.shape is not None}
    graph_io = {v.name for v in model.graph.inputs}
    for node in model.graph:
        for v in node.outputs:
            if v.name not in graph_io:
                v.shape = known.get(v.name)


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
    if _dynamic_dims(proto_copy):
        logger.info("%s: dimensions stored as -1 or 0 read as dynamic", where)
    if input_shapes:
        _check_input_shapes(proto_copy, input_shapes, where)
    proto_copy = _convert_opset(proto_copy, where, input_shapes)
    inits = {t.name for t in proto_copy.graph.initializer}
    inputs = tuple(_copy(v) for v in proto_copy.graph.input if v.name not in inits)
    outputs = tuple(_copy(v) for v in proto_copy.graph.output)
    try:
        model = ir.from_proto(proto_copy)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # what onnx_ir raises on odd protos
        raise ModelError(f"{where}: cannot read model: {_first_line(exc)}") from None
    try:
        normalize(model)
    except ModelError:
        raise
    except Exception as exc:
        logger.debug("normalisation of %s failed", where, exc_info=True)
        raise ModelError(f"{where}: normalisation failed ({type(exc).__name__}: {_first_line(exc)}); "
                         "this is a bug of emomc-onnx or a library, -vv shows the traceback") from None
    if input_shapes:
        _set_input_shapes(model, input_shapes)
    return LoadedModel(model=model, sha256=sha, path=path, inputs=inputs, outputs=outputs,
                       shapes_fixed=bool(input_shapes))


def _copy(v: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(v)
    return out


def normalize(model: ir.Model) -> None:
    """Normalise a model in place (see the module docstring)."""
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.RemoveInitializersFromInputsPass()(model)
    _fold_to_fixpoint(model)
    common_passes.IdentityEliminationPass()(model)
    _fold_batchnorm(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)
    _name_nodes(model)
    infer_shapes(model)


def _fold_to_fixpoint(model: ir.Model, rounds: int = 6) -> None:
    """Infer shapes and fold constants until nothing more folds: a Shape only folds once the
    shape of its input is known, which may need an earlier fold (PaddleOCR's SVTR: 4 rounds)."""
    for _ in range(rounds):
        infer_shapes(model)
        if not _fold_constants(model):
            break
    infer_shapes(model)


def _fold_constants(model: ir.Model) -> bool:
    """Fold constants (onnxscript keeps Quantize/DequantizeLinear); True if anything changed."""
    # onnxscript (slow to import) loads on the first model normalised, not for select or --help
    from onnxscript import optimizer

    result = optimizer.fold_constants_ir(model, onnx_shape_inference=False, input_size_limit=1 << 20,
                                         output_size_limit=1 << 24)
    common_passes.RemoveUnusedNodesPass()(model)
    return bool(result.modified)


def _fold_batchnorm(model: ir.Model) -> None:
    # onnxscript: see _fold_constants
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
    except Exception as exc:
        logger.warning("shape inference failed (%s: %s); layers without shapes are reported by the analysis",
                       type(exc).__name__, _first_line(exc))
        logger.debug("shape inference traceback", exc_info=True)


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
    if proto.ByteSize() < 2**31 - 1:
        atomic_write_bytes(p, proto.SerializeToString(deterministic=True))
        return p
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")  # over 2 GB: weights beside it, as onnx writes them
    try:
        onnx.save(proto, str(tmp), save_as_external_data=True, location=p.name + ".data")
        os.replace(tmp, p)
    except OSError as exc:  # a directory at p, a full disk, an unwritable place: no temp file left
        tmp.unlink(missing_ok=True)
        raise output_error(p, exc) from None
    return p
