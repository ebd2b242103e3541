"""Hardware profiles: YAML files loaded into validated, frozen dataclasses.

A profile describes the memory hierarchy (outermost first), the PE array, the MAC energy
law, the dataflows and codings the device supports and the bit widths it runs. Every
validation error is a one-line :class:`ProfileError` naming the file and the field path,
e.g. ``eyeriss.yaml: memory.dram.energy_pj: must be >= 0``. See
``hardware_profiles/README.md`` for the schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import logging
import os
from collections.abc import Mapping
from typing import Any

import yaml

from emomc_onnx.cost.coding import SCHEMES
from emomc_onnx.cost.dataflows import available_dataflows
from emomc_onnx.errors import ProfileError

__all__ = [
    "DATA_TYPES",
    "LEVEL_KINDS",
    "MAC_SCALINGS",
    "MacSpec",
    "MemoryLevel",
    "Profile",
    "list_profiles",
    "load_profile",
    "parse_profile",
]

logger = logging.getLogger(__name__)

DATA_TYPES = ("weights", "inputs", "outputs")
LEVEL_KINDS = ("offchip", "buffer", "network", "rf")
MAC_SCALINGS = ("product", "linear", "weight_plus_one")
_CODINGS = (*SCHEMES, "auto")  # what a profile's codings may name


@dataclasses.dataclass(frozen=True)
class MemoryLevel:
    """One memory level (or the on-array network) of the hierarchy.

    Attributes:
        name: the level's key in the profile.
        kind: "offchip", "buffer", "network" or "rf".
        energy_pj: energy of one read of a ``word_bits`` word (profile's energy_unit).
        write_energy_pj: energy of one write (defaults to ``energy_pj``).
        word_bits: reference word width the energies are given for.
        capacity_bytes: capacity (per PE for kind "rf"); None is unbounded.
        holds: data types stored at this level (ignored for "network").
    """

    name: str
    kind: str
    energy_pj: float
    write_energy_pj: float
    word_bits: int
    capacity_bytes: int | None
    holds: tuple[str, ...]

    def energy_per_element(self, bits: float, write: bool = False) -> float:
        """Energy to move one element of ``bits`` bits (memory energy is linear in bits)."""
        e = self.write_energy_pj if write else self.energy_pj
        return e * bits / self.word_bits

    def capacity_words(self, bits: int) -> float:
        """How many ``bits``-bit elements fit (inf when unbounded)."""
        if self.capacity_bytes is None:
            return float("inf")
        return self.capacity_bytes * 8 // max(bits, 1)


@dataclasses.dataclass(frozen=True)
class MacSpec:
    """MAC energy law.

    ``product``: E = energy_pj * (bw*ba)/(ref_w*ref_a) + add_energy_pj * acc_bits/ref_acc;
    ``linear``: E = energy_pj * (bw+ba)/(ref_w+ref_a) + add part;
    ``weight_plus_one``: E = energy_pj * (bw+1) (EMOMC: a q-bit x fp16 multiply ~ q+1 units).
    """

    energy_pj: float
    add_energy_pj: float
    ref_weight_bits: int
    ref_activation_bits: int
    accumulator_bits: int
    scaling: str

    def energy(self, wbits: int, abits: int) -> float:
        """Energy of one MAC at the given operand widths."""
        if self.scaling == "weight_plus_one":
            return self.energy_pj * (wbits + 1)
        if self.scaling == "product":
            mul = self.energy_pj * (wbits * abits) / (self.ref_weight_bits * self.ref_activation_bits)
        else:
            mul = self.energy_pj * (wbits + abits) / (self.ref_weight_bits + self.ref_activation_bits)
        return mul + self.add_energy_pj


@dataclasses.dataclass(frozen=True)
class Profile:
    """A validated hardware profile (see hardware_profiles/README.md for every field)."""

    name: str
    description: str
    source: str
    energy_unit: str
    pe_rows: int
    pe_cols: int
    memory: tuple[MemoryLevel, ...]
    mac: MacSpec
    dataflows: tuple[str, ...]
    skip_zero_weights: bool
    skip_zero_activations: bool
    activation_density: float
    channel_multiple: int
    weight_bits: tuple[int, ...]
    activation_bits: tuple[int, ...]
    baseline_weight_bits: int
    baseline_activation_bits: int
    bias_bits: int
    qparam_bits: int
    codings: tuple[str, ...]
    coding_params: Mapping[str, Mapping[str, int]]
    path: str
    sha256: str
    batch: int = 1
    count_other_ops: bool = True

    @property
    def default_dataflow(self) -> str:
        """The first dataflow listed."""
        return self.dataflows[0]

    @property
    def default_coding(self) -> str:
        """The first coding listed."""
        return self.codings[0]

    def level(self, name: str) -> MemoryLevel:
        """The memory level called ``name``."""
        for lvl in self.memory:
            if lvl.name == name:
                return lvl
        raise KeyError(name)

    @property
    def storage_levels(self) -> tuple[MemoryLevel, ...]:
        """Memory levels that store data (every kind but "network"), outermost first."""
        return tuple(m for m in self.memory if m.kind != "network")

    @property
    def network(self) -> MemoryLevel | None:
        """The on-array network level, if any."""
        for m in self.memory:
            if m.kind == "network":
                return m
        return None

    def chain(self, data_type: str) -> tuple[MemoryLevel, ...]:
        """Storage levels holding ``data_type``, outermost first."""
        return tuple(m for m in self.storage_levels if data_type in m.holds)


# --------------------------------------------------------------------------- validation


class _Ctx:
    """Carries the file name so every error message names it."""

    def __init__(self, fname: str) -> None:
        self.fname = fname

    def fail(self, path: str, msg: str) -> ProfileError:
        where = f"{self.fname}: {path}: " if path else f"{self.fname}: "
        return ProfileError(where + msg)

    def mapping(self, obj: Any, path: str, required: set[str], optional: set[str]) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(path, f"must be a mapping, got {type(obj).__name__}")
        for key in obj:
            if key not in required | optional:
                sub = f"{path}.{key}" if path else str(key)
                raise self.fail(sub, "unknown key")
        for key in sorted(required):
            if key not in obj:
                sub = f"{path}.{key}" if path else key
                raise self.fail(sub, "missing required field")
        return obj

    def num(self, obj: Any, path: str, minimum: float | None = 0.0, integer: bool = False) -> Any:
        ok = isinstance(obj, int) if integer else isinstance(obj, (int, float))
        if isinstance(obj, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise self.fail(path, f"must be {kind}, got {type(obj).__name__} {obj!r}")
        if obj != obj or obj in (float("inf"), float("-inf")):  # .nan / .inf in YAML
            raise self.fail(path, f"must be a finite number, got {obj!r}")
        if minimum is not None and obj < minimum:
            raise self.fail(path, f"must be >= {minimum:g}")
        return obj

    def string(self, obj: Any, path: str) -> str:
        if not isinstance(obj, str):
            raise self.fail(path, f"must be a string, got {type(obj).__name__}")
        return obj

    def boolean(self, obj: Any, path: str) -> bool:
        if not isinstance(obj, bool):
            raise self.fail(path, f"must be true or false, got {obj!r}")
        return obj

    def choice(self, obj: Any, path: str, allowed: tuple[str, ...]) -> str:
        self.string(obj, path)
        if obj not in allowed:
            raise self.fail(path, f"unknown value {obj!r} (expected one of {', '.join(allowed)})")
        return obj

    def int_list(self, obj: Any, path: str, minimum: int = 1) -> tuple[int, ...]:
        if not isinstance(obj, list) or not obj:
            raise self.fail(path, "must be a non-empty list of integers")
        return tuple(self.num(v, f"{path}[{i}]", minimum, integer=True) for i, v in enumerate(obj))

    def str_list(self, obj: Any, path: str) -> tuple[str, ...]:
        if not isinstance(obj, list) or not obj:
            raise self.fail(path, "must be a non-empty list of strings")
        return tuple(self.string(v, f"{path}[{i}]") for i, v in enumerate(obj))


_TOP_REQUIRED = {
    "name",
    "energy_unit",
    "pe_array",
    "memory",
    "mac",
    "dataflows",
    "channel_multiple",
    "weight_bits",
    "activation_bits",
    "baseline_weight_bits",
    "baseline_activation_bits",
    "codings",
}
_TOP_OPTIONAL = {
    "description",
    "source",
    "skip_zero_weights",
    "skip_zero_activations",
    "activation_density",
    "bias_bits",
    "qparam_bits",
    "coding_params",
    "batch",
    "count_other_ops",
}


def _parse_level(ctx: _Ctx, name: str, obj: Any) -> MemoryLevel:
    path = f"memory.{name}"
    ctx.mapping(
        obj, path, {"kind", "energy_pj", "word_bits"}, {"write_energy_pj", "capacity_bytes", "holds"}
    )
    kind = ctx.choice(obj["kind"], f"{path}.kind", LEVEL_KINDS)
    energy = float(ctx.num(obj["energy_pj"], f"{path}.energy_pj"))
    write = float(ctx.num(obj.get("write_energy_pj", energy), f"{path}.write_energy_pj"))
    word = ctx.num(obj["word_bits"], f"{path}.word_bits", 1, integer=True)
    cap = obj.get("capacity_bytes")
    if cap is not None:
        cap = ctx.num(cap, f"{path}.capacity_bytes", 1, integer=True)
    holds = DATA_TYPES
    if "holds" in obj:
        holds = ctx.str_list(obj["holds"], f"{path}.holds")
        for i, h in enumerate(holds):
            ctx.choice(h, f"{path}.holds[{i}]", DATA_TYPES)
    return MemoryLevel(name, kind, energy, write, word, cap, tuple(holds))


def parse_profile(text: str, fname: str = "<profile>", path: str = "") -> Profile:
    """Parse and validate profile YAML text.

    Args:
        text: the YAML document.
        fname: file name used in error messages.
        path: where it came from (kept on the profile).

    Raises:
        ProfileError: with a one-line message naming the file and the field path.
    """
    ctx = _Ctx(fname)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ctx.fail("", f"not valid YAML{where}: {problem}") from None
    if raw is None:
        raise ctx.fail("", "empty file (expected a YAML mapping)")
    ctx.mapping(raw, "", _TOP_REQUIRED, _TOP_OPTIONAL)

    name = ctx.string(raw["name"], "name")
    pe = ctx.mapping(raw["pe_array"], "pe_array", {"rows", "cols"}, set())
    rows = ctx.num(pe["rows"], "pe_array.rows", 1, integer=True)
    cols = ctx.num(pe["cols"], "pe_array.cols", 1, integer=True)

    mem = raw["memory"]
    if not isinstance(mem, dict) or not mem:
        raise ctx.fail("memory", "must be a non-empty mapping of level name -> level")
    levels = tuple(_parse_level(ctx, str(k), v) for k, v in mem.items())
    for dt in DATA_TYPES:
        chain = [m for m in levels if m.kind != "network" and dt in m.holds]
        if not chain or chain[0].kind != "offchip":
            raise ctx.fail("memory", f"{dt} need an outermost level of kind offchip holding them")
    if sum(m.kind == "network" for m in levels) > 1:
        raise ctx.fail("memory", "at most one level of kind network")

    mac_raw = ctx.mapping(
        raw["mac"],
        "mac",
        {"energy_pj", "scaling"},
        {"add_energy_pj", "ref_weight_bits", "ref_activation_bits", "accumulator_bits"},
    )
    mac = MacSpec(
        energy_pj=float(ctx.num(mac_raw["energy_pj"], "mac.energy_pj")),
        add_energy_pj=float(ctx.num(mac_raw.get("add_energy_pj", 0.0), "mac.add_energy_pj")),
        ref_weight_bits=ctx.num(mac_raw.get("ref_weight_bits", 16), "mac.ref_weight_bits", 1, True),
        ref_activation_bits=ctx.num(
            mac_raw.get("ref_activation_bits", 16), "mac.ref_activation_bits", 1, True
        ),
        accumulator_bits=ctx.num(
            mac_raw.get("accumulator_bits", 32), "mac.accumulator_bits", 1, True
        ),
        scaling=ctx.choice(mac_raw["scaling"], "mac.scaling", MAC_SCALINGS),
    )

    known = tuple(available_dataflows())
    dataflows = ctx.str_list(raw["dataflows"], "dataflows")
    for i, d in enumerate(dataflows):
        ctx.choice(d, f"dataflows[{i}]", known)

    codings = ctx.str_list(raw["codings"], "codings")
    for i, c in enumerate(codings):
        ctx.choice(c, f"codings[{i}]", _CODINGS)
    if "auto" not in codings:
        codings = (*codings, "auto")

    params: dict[str, dict[str, int]] = {}
    cp = raw.get("coding_params", {}) or {}
    allowed = {"relative_index": {"index_bits"}, "run_length": {"run_bits"},
               "huffman": {"length_bits"}, "deep_compression": {"index_bits", "codebook_bits"},
               "csr": {"paper_formulas"}, "coo": {"paper_formulas"}}
    ctx.mapping(cp, "coding_params", set(), set(allowed))
    for scheme, spec in cp.items():
        ctx.mapping(spec, f"coding_params.{scheme}", set(), allowed[scheme])
        params[scheme] = {
            k: ctx.num(v, f"coding_params.{scheme}.{k}", 1, integer=True) for k, v in spec.items()
        }

    dens = float(ctx.num(raw.get("activation_density", 1.0), "activation_density"))
    if dens > 1.0:
        raise ctx.fail("activation_density", "must be <= 1")

    return Profile(
        name=name,
        description=ctx.string(raw.get("description", ""), "description"),
        source=ctx.string(raw.get("source", ""), "source"),
        energy_unit=ctx.string(raw["energy_unit"], "energy_unit"),
        pe_rows=rows,
        pe_cols=cols,
        memory=levels,
        mac=mac,
        dataflows=dataflows,
        skip_zero_weights=ctx.boolean(raw.get("skip_zero_weights", False), "skip_zero_weights"),
        skip_zero_activations=ctx.boolean(
            raw.get("skip_zero_activations", False), "skip_zero_activations"
        ),
        activation_density=dens,
        channel_multiple=ctx.num(raw["channel_multiple"], "channel_multiple", 1, integer=True),
        weight_bits=ctx.int_list(raw["weight_bits"], "weight_bits"),
        activation_bits=ctx.int_list(raw["activation_bits"], "activation_bits"),
        baseline_weight_bits=ctx.num(raw["baseline_weight_bits"], "baseline_weight_bits", 1, True),
        baseline_activation_bits=ctx.num(
            raw["baseline_activation_bits"], "baseline_activation_bits", 1, True
        ),
        bias_bits=ctx.num(raw.get("bias_bits", 32), "bias_bits", 1, integer=True),
        qparam_bits=ctx.num(raw.get("qparam_bits", 32), "qparam_bits", 1, integer=True),
        codings=codings,
        coding_params=params,
        path=path,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        batch=ctx.num(raw.get("batch", 1), "batch", 1, integer=True),
        count_other_ops=ctx.boolean(raw.get("count_other_ops", True), "count_other_ops"),
    )


def _shipped_dir() -> Any:
    return importlib.resources.files("emomc_onnx") / "hardware_profiles"


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the package, sorted."""
    return sorted(
        p.name[: -len(".yaml")] for p in _shipped_dir().iterdir() if p.name.endswith(".yaml")
    )


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name (``eyeriss``) or a YAML file by path.

    Raises:
        ProfileError: unknown name, unreadable file, or invalid content.
    """
    is_path = os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    if is_path or os.path.isfile(name_or_path):
        try:
            with open(name_or_path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ProfileError(f"{name_or_path}: cannot read profile ({exc.strerror})") from None
        return parse_profile(text, os.path.basename(name_or_path), os.path.abspath(name_or_path))
    res = _shipped_dir() / f"{name_or_path}.yaml"
    if not res.is_file():
        raise ProfileError(
            f"unknown profile {name_or_path!r} (shipped: {', '.join(list_profiles())}; "
            "or give a path to a .yaml file)"
        )
    text = res.read_text(encoding="utf-8")
    logger.debug("loading shipped profile %s", name_or_path)
    return parse_profile(text, f"{name_or_path}.yaml", str(res))
