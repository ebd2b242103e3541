"""Energy and coded size of a model on a hardware profile.

``model_cost`` takes the compute layers (shape, stored weights or density, bit widths), a
profile, a dataflow and a coding, and returns per-layer reports (MACs, accesses and energy
per memory level and data type, coded bits per scheme) and totals. Memory energy is linear
in the bits moved; weights cross the off-chip link in their stored coding (the coded bits
per weight of the chosen scheme) except under EMOMC's dataflows, which use the paper's own
(q+1)/16 law. Non-compute ops count their activation traffic at the off-chip level or are
listed as ignored with a reason; nothing is silently zero.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from emomc_onnx.analysis.layers import Layer
from emomc_onnx.cost.coding import SCHEMES, WeightScan, coded_size_bits, estimate_size_bits
from emomc_onnx.cost.dataflows import (
    DataflowInput,
    Traffic,
    get_dataflow,
    traffic_from_mapping,
)
from emomc_onnx.cost.mapping import LayerDims, Mapping
from emomc_onnx.cost.profile import Profile
from emomc_onnx.errors import PlanError, ProfileError

__all__ = [
    "CostLayer",
    "LayerCostReport",
    "ModelCost",
    "OtherOp",
    "OtherOpReport",
    "baseline_cost",
    "compare_dataflows",
    "layer_cost",
    "model_cost",
    "to_dict",
]

logger = logging.getLogger(__name__)

_VIEW_OPS = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout",
     "QuantizeLinear", "DequantizeLinear"}
)


@dataclasses.dataclass(frozen=True, eq=False)
class CostLayer:
    """One compute layer as the cost model sees it.

    Attributes:
        layer: shapes (after pruning).
        weight: the stored weight tensor (float or integer codes; zeros exactly 0), or None
            for shape-only costing (then ``density`` is used analytically).
        wbits: weight bits (the profile's baseline bits for a float layer).
        abits: activation bits.
        bias_elems: bias elements stored (at the profile's ``bias_bits``).
        qparam_elems: quantization scales / zero points stored (``qparam_bits`` each).
        density: nonzero fraction; computed from ``weight`` when given.
    """

    layer: Layer
    weight: np.ndarray | None
    wbits: int
    abits: int
    bias_elems: int = 0
    qparam_elems: int = 0
    density: float = -1.0
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.weight is not None:
            n = int(self.weight.size)
            nnz = int(np.count_nonzero(self.weight))
            object.__setattr__(self, "density", nnz / n if n else 0.0)
        elif not 0.0 <= self.density <= 1.0:
            raise PlanError(f"layer {self.layer.name}: density {self.density} not in [0, 1]")
        if self.wbits < 1 or self.abits < 1:
            raise PlanError(f"layer {self.layer.name}: bit widths must be >= 1")

    @classmethod
    def from_shape(
        cls,
        layer: Layer,
        wbits: int,
        abits: int,
        density: float = 1.0,
        bias_elems: int | None = None,
        qparam_elems: int = 0,
    ) -> CostLayer:
        """Shape-only layer: coded sizes from ``density`` (see coding.estimate_size_bits)."""
        if bias_elems is None:
            bias_elems = layer.out_channels if layer.bias else 0
        return cls(layer, None, wbits, abits, bias_elems, qparam_elems, float(density))

    @property
    def n_weights(self) -> int:
        """Weight element count."""
        if self.weight is not None:
            return int(self.weight.size)
        return self.layer.params - (self.layer.out_channels if self.layer.bias else 0)

    def weight_bits(self, scheme: str, params: dict[str, int]) -> int:
        """Coded bits of the weights under ``scheme`` (cached)."""
        key = (scheme, tuple(sorted(params.items())))
        if key not in self._cache:
            if self.weight is None or (
                scheme in ("huffman", "deep_compression") and self.wbits > 16
                and not np.issubdtype(self.weight.dtype, np.integer)
            ):
                v = estimate_size_bits(self.n_weights, self.wbits, self.density, scheme, **params)
            else:
                scan = self._cache.get("scan")
                if scan is None:
                    scan = self._cache["scan"] = WeightScan(self.weight)
                v = coded_size_bits(scan, self.wbits, scheme, **params)
            self._cache[key] = v
        return self._cache[key]


@dataclasses.dataclass(frozen=True)
class OtherOp:
    """A non-compute op (pooling, element-wise, activation, Concat/Resize, normalisation,
    activation x activation MatMul): its activation traffic, or ignored with a reason.

    Attributes:
        in_elems, out_elems: activation elements read and written per image (None: unknown).
        bits, out_bits: their precision (None: the model's activation bits).
        macs: multiply-accumulates per image (MatMul of two activations, e.g. attention).
    """

    name: str
    op_type: str
    in_elems: int | None
    out_elems: int | None
    bits: int | None = None
    out_bits: int | None = None
    macs: int = 0


@dataclasses.dataclass(frozen=True)
class OtherOpReport:
    """Cost of one non-compute op over the batch."""

    name: str
    op_type: str
    energy: float
    bits: int
    out_bits: int
    in_elems: int
    out_elems: int
    macs: int


@dataclasses.dataclass(frozen=True)
class LayerCostReport:
    """Cost of one layer (energies in the profile's energy_unit, sizes in bits)."""

    name: str
    op_type: str
    macs: int
    wbits: int
    abits: int
    density: float
    energy: float
    energy_by_level: dict[str, float]
    energy_by_type: dict[str, float]
    reads: dict[str, dict[str, float]]
    writes: dict[str, dict[str, float]]
    network: dict[str, float]
    weight_bits_by_coding: dict[str, int]
    overhead_bits: int
    coding: str
    size_bits: int
    mapping: str | None
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Per-layer reports and totals of one model on one profile."""

    profile: str
    energy_unit: str
    dataflow: str
    coding: str
    layers: tuple[LayerCostReport, ...]
    other_energy: float
    other_ops: tuple[OtherOpReport, ...]
    ignored: tuple[tuple[str, str, str], ...]
    energy: float
    size_bits: int
    size_bits_by_coding: dict[str, int]
    energy_by_level: dict[str, float]
    energy_by_type: dict[str, float]
    macs: int

    @property
    def energy_per_mac(self) -> float:
        """Total energy divided by MACs."""
        return self.energy / self.macs if self.macs else 0.0


def _bits_for(dt: str, level_kind: str, c: CostLayer, profile: Profile, tr: Traffic,
              w_offchip_bits: float) -> float:
    if dt in tr.bits:
        return tr.bits[dt]
    if dt == "weights":
        return w_offchip_bits if level_kind == "offchip" else c.wbits
    if dt == "inputs":
        return c.abits
    return c.abits if level_kind == "offchip" else profile.mac.accumulator_bits


def _scheme_params(profile: Profile, scheme: str) -> dict[str, int]:
    """Coding parameters for ``scheme``: the shared ones, then its own section."""
    shared = {k: v for s, p in profile.coding_params.items() if s != "deep_compression"
              for k, v in p.items()}
    return {**shared, **profile.coding_params.get(scheme, {})}


def _schemes(profile: Profile, coding: str) -> list[str]:
    out = [s for s in profile.codings if s != "auto"]
    if coding not in ("auto", *out):
        out.append(coding)
    return out


def layer_cost(
    c: CostLayer,
    profile: Profile,
    dataflow: str,
    coding: str,
    mapping: Mapping | None = None,
    batch: int | None = None,
) -> LayerCostReport:
    """Cost of one layer over a batch (default: the profile's ``batch``).

    ``mapping`` forces an explicit loop nest (Eyeriss framework). Energies and MACs are per
    batch: weights are fetched once per batch where the mapping keeps them.
    """
    dims = LayerDims.from_layer(c.layer, batch or profile.batch)
    wb = {s: c.weight_bits(s, _scheme_params(profile, s)) for s in _schemes(profile, coding)}
    c._cache.pop("scan", None)  # the shared nonzero scan: only needed while coding
    if coding == "auto":
        chosen = min(wb, key=wb.__getitem__)
    else:
        chosen = coding
    overhead = c.bias_elems * profile.bias_bits + c.qparam_elems * profile.qparam_bits
    n = max(c.n_weights, 1)
    w_off_bits = wb[chosen] / n

    inp = DataflowInput(dims, c.layer.op_type, c.wbits, c.abits, c.density)
    if mapping is not None:
        tr = traffic_from_mapping(mapping, inp, profile)
    else:
        tr = get_dataflow(dataflow)(inp, profile)

    by_level: dict[str, float] = {}
    by_type = {"weights": 0.0, "inputs": 0.0, "psums": 0.0, "compute": 0.0}
    for lname in tr.reads:
        lv = profile.level(lname)
        e_level = 0.0
        for dt in ("weights", "inputs", "outputs"):
            bits = _bits_for(dt, lv.kind, c, profile, tr, w_off_bits)
            e = tr.reads[lname].get(dt, 0.0) * lv.energy_per_element(bits)
            e += tr.writes[lname].get(dt, 0.0) * lv.energy_per_element(bits, write=True)
            e_level += e
            by_type["psums" if dt == "outputs" else dt] += e
        by_level[lname] = e_level
    net = profile.network
    if net is not None:
        e_net = 0.0
        for dt, cnt in tr.network.items():
            bits = _bits_for(dt, "network", c, profile, tr, w_off_bits)
            e = cnt * net.energy_per_element(bits)
            e_net += e
            by_type["psums" if dt == "outputs" else dt] += e
        by_level[net.name] = e_net
    elif any(tr.network.values()):
        raise ProfileError(f"profile {profile.name}: mapping uses a PE array but no network level")
    factor = tr.compute_factor
    if factor is None:
        factor = c.density if profile.skip_zero_weights else 1.0
        if profile.skip_zero_activations:
            factor *= profile.activation_density
    e_mac = dims.macs * factor * profile.mac.energy(c.wbits, c.abits)
    by_level["mac"] = e_mac
    by_type["compute"] = e_mac
    return LayerCostReport(
        name=c.layer.name,
        op_type=c.layer.op_type,
        macs=dims.macs,
        wbits=c.wbits,
        abits=c.abits,
        density=c.density,
        energy=sum(by_level.values()),
        energy_by_level=by_level,
        energy_by_type=by_type,
        reads=tr.reads,
        writes=tr.writes,
        network=tr.network,
        weight_bits_by_coding=wb,
        overhead_bits=overhead,
        coding=chosen,
        size_bits=wb[chosen] + overhead,
        mapping=tr.mapping,
        notes=tr.notes,
    )


def model_cost(
    layers: Sequence[CostLayer],
    profile: Profile,
    dataflow: str | None = None,
    coding: str | None = None,
    other_ops: Sequence[OtherOp] = (),
    mappings: dict[str, Mapping] | None = None,
    batch: int | None = None,
) -> ModelCost:
    """Energy and coded size of a model.

    Args:
        layers: the compute layers.
        profile: the hardware profile.
        dataflow: one of ``profile.dataflows`` (default: the first).
        coding: one of ``profile.codings`` or any scheme in coding.SCHEMES (default: the
            profile's first); "auto" picks the smallest scheme per layer.
        other_ops: non-compute ops: their inputs read and outputs written at the off-chip
            level at their own precision, plus their MACs (activation x activation MatMul),
            per image times the batch; ops that move no data are listed as ignored.
        mappings: explicit loop nests by layer name (override the dataflow's mapping).
        batch: images per batch (default: the profile's ``batch``); energies are per batch.

    Raises:
        ProfileError: the profile does not support the dataflow or the coding.
    """
    dataflow = dataflow or profile.default_dataflow
    coding = coding or profile.default_coding
    if dataflow not in profile.dataflows:
        raise ProfileError(
            f"{profile.name}: dataflow {dataflow!r} not supported "
            f"(profile lists {', '.join(profile.dataflows)})"
        )
    if coding not in (*SCHEMES, "auto"):
        raise ProfileError(f"{profile.name}: unknown coding {coding!r}")
    mappings = mappings or {}
    reports = tuple(
        layer_cost(c, profile, dataflow, coding, mappings.get(c.layer.name), batch) for c in layers
    )
    by_level: dict[str, float] = {}
    by_type = {"weights": 0.0, "inputs": 0.0, "psums": 0.0, "compute": 0.0}
    for r in reports:
        for k, v in r.energy_by_level.items():
            by_level[k] = by_level.get(k, 0.0) + v
        for k, v in r.energy_by_type.items():
            by_type[k] += v

    act_level = profile.chain("inputs")[0]
    out_level = profile.chain("outputs")[0]
    abits = profile.baseline_activation_bits if not layers else layers[0].abits
    n_batch = batch or profile.batch
    counted: list[OtherOpReport] = []
    ignored: list[tuple[str, str, str]] = []
    other_e = 0.0
    other_mac = 0.0
    for op in other_ops:
        if not profile.count_other_ops:
            ignored.append((op.name, op.op_type, f"profile {profile.name} costs compute layers only"))
        elif op.op_type in _VIEW_OPS:
            ignored.append((op.name, op.op_type, "no data movement (view / metadata / QDQ)"))
        elif op.in_elems is None or op.out_elems is None:
            ignored.append((op.name, op.op_type, "unknown tensor sizes"))
        else:
            b_in = op.bits or abits
            b_out = op.out_bits or b_in
            e_mem = op.in_elems * act_level.energy_per_element(b_in)
            e_mem += op.out_elems * out_level.energy_per_element(b_out, write=True)
            e_mac = op.macs * profile.mac.energy(b_in, b_in)
            e = n_batch * (e_mem + e_mac)
            counted.append(OtherOpReport(op.name, op.op_type, e, b_in, b_out, op.in_elems,
                                         op.out_elems, op.macs * n_batch))
            other_e += n_batch * e_mem
            other_mac += n_batch * e_mac
    if other_e:
        by_level[act_level.name] = by_level.get(act_level.name, 0.0) + other_e
        by_type["inputs"] += other_e
    if other_mac:
        by_level["mac"] = by_level.get("mac", 0.0) + other_mac
        by_type["compute"] += other_mac
    other_e += other_mac

    size_by: dict[str, int] = {}
    for s in (*_schemes(profile, coding), "auto"):
        size_by[s] = sum(
            (min(r.weight_bits_by_coding.values()) if s == "auto" else r.weight_bits_by_coding[s])
            + r.overhead_bits
            for r in reports
        )
    return ModelCost(
        profile=profile.name,
        energy_unit=profile.energy_unit,
        dataflow=dataflow,
        coding=coding,
        layers=reports,
        other_energy=other_e,
        other_ops=tuple(counted),
        ignored=tuple(ignored),
        energy=sum(r.energy for r in reports) + other_e,
        size_bits=sum(r.size_bits for r in reports),
        size_bits_by_coding=size_by,
        energy_by_level=by_level,
        energy_by_type=by_type,
        macs=sum(r.macs for r in reports) + sum(r.macs for r in counted),
    )


def baseline_cost(
    layers: Sequence[Layer | CostLayer],
    profile: Profile,
    dataflow: str | None = None,
    coding: str = "dense",
    other_ops: Sequence[OtherOp] = (),
    batch: int | None = None,
) -> ModelCost:
    """Cost of the unmodified float model: dense, ``baseline_weight_bits`` weights.

    The denominator of the improvement factors (EMOMC: 32-bit float weights, Normal size).
    """
    base = []
    for item in layers:
        lay = item.layer if isinstance(item, CostLayer) else item
        bias = lay.out_channels if lay.bias else 0
        base.append(
            CostLayer.from_shape(
                lay, profile.baseline_weight_bits, profile.baseline_activation_bits, 1.0, bias
            )
        )
    return model_cost(base, profile, dataflow, coding, other_ops, batch=batch)


def compare_dataflows(
    layers: Sequence[CostLayer], profile: Profile, coding: str | None = None,
    batch: int | None = None,
) -> dict[str, ModelCost]:
    """model_cost under every dataflow the profile lists."""
    return {d: model_cost(layers, profile, d, coding, batch=batch) for d in profile.dataflows}


def to_dict(cost: ModelCost) -> dict:
    """JSON-ready dict of a ModelCost."""
    d = dataclasses.asdict(cost)
    d["energy_per_mac"] = cost.energy_per_mac
    d["other_ops"] = [dataclasses.asdict(r) for r in cost.other_ops]
    d["ignored"] = [dict(name=n, op_type=t, reason=r) for n, t, r in cost.ignored]
    for lay in d["layers"]:
        lay["notes"] = list(lay["notes"])
    return d
