"""Write the Pareto front: one ONNX file per member, front.json, front.csv and plots.

Every file is written atomically (temporary file in the same directory, then
``os.replace``), so an interrupted export never leaves a half-written front behind.
Each ONNX file carries its plan in ``metadata_props`` (``emomc.plan``) for provenance.

Every figure written is on the *test* split (samples the search never saw), with its 95%
interval and the paired difference to the original model on the same samples; the search
split's figure is kept next to it (``metric_search``) to show the selection gap.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from emomc_onnx.errors import OutputError
from emomc_onnx.paths import atomic_write_bytes
from emomc_onnx.search.driver import SearchResult
from emomc_onnx.search.evaluator import Evaluation, Evaluator, to_jsonable

__all__ = [
    "FRONT_CSV",
    "FRONT_DIR",
    "FRONT_JSON",
    "FrontEntry",
    "atomic_write_bytes",
    "canonical_bytes",
    "check_front_owner",
    "export_front",
    "front_csv",
    "run_metadata",
]

logger = logging.getLogger(__name__)

FRONT_JSON = "front.json"
FRONT_CSV = "front.csv"
FRONT_DIR = "front"
_RANK_FILE = re.compile(r"^rank\d+_.*\.onnx$")


@dataclasses.dataclass(frozen=True)
class FrontEntry:
    """One exported front member (a row of front.json / front.csv).

    Attributes:
        rank: position in the front, most accurate first.
        file: path of the ONNX file relative to the output directory.
        key: plan key.
        metric_search: metric on the search split (what the front was chosen on).
        metric_test: metric on the test split (what ``accuracy`` reports).
        accuracy: ``metric_test``.
        accuracy_ci95: 95% interval of ``accuracy`` (Wilson, or bootstrap), or None.
        error: the metric's error on the test split (``Evaluation.error``).
        diff: ``metric_test`` minus the original model's, on the same test samples.
        diff_ci95: 95% interval of ``diff``, or None.
        p_value: of "no difference to the original" (McNemar's exact test for hit/miss
            metrics, paired bootstrap otherwise), or None.
        diff_search: the same difference on the search split.
        gap_flag: the test drop is significantly larger than the search drop (z > 1.96).
        within_max_drop: the test drop respects ``--max-accuracy-drop`` (None: no limit);
            members outside it are reported but ``select`` never offers them.
        n_search: search-split samples.
        n_test: test-split samples.
        energy: energy per sample (profile units).
        size_bits: coded size in bits.
        energy_factor: baseline energy / energy (x smaller).
        size_factor: baseline size / size.
        macs: MACs per sample.
        params: stored parameters.
        keep: group id (str) -> channels kept.
        density: layer -> weight density.
        wbits: layer -> weight bits (None = float).
        abits: layer -> activation bits (None = float).
        file_bytes: size of the ONNX file on disk (next to ``size_bits``, the coded size).
    """

    rank: int
    file: str
    key: str
    metric_search: float
    metric_test: float
    accuracy: float
    accuracy_ci95: list[float] | None
    error: float
    diff: float | None
    diff_ci95: list[float] | None
    p_value: float | None
    diff_search: float | None
    gap_flag: bool
    within_max_drop: bool | None
    n_search: int
    n_test: int
    energy: float
    size_bits: float
    energy_factor: float
    size_factor: float
    macs: int
    params: int
    keep: dict[str, int]
    density: dict[str, float]
    wbits: dict[str, int | None]
    abits: dict[str, int | None]
    file_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrontEntry:
        """Inverse of :meth:`to_dict` (raises KeyError/TypeError/ValueError if malformed)."""
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING]
        if missing:
            raise KeyError(f"missing fields {missing}")
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})

    def path(self, outdir: str | os.PathLike[str]) -> Path:
        """Absolute path of the member's ONNX file."""
        return Path(outdir) / self.file


def _file_name(rank: int, acc: float, ef: float, sf: float) -> str:
    return f"rank{rank:02d}_acc{100 * acc:.2f}_e{ef:.2f}x_s{sf:.2f}x.onnx"


def export_front(
    result: SearchResult,
    evaluator: Evaluator,
    outdir: str | os.PathLike[str],
    *,
    extra_points: Mapping[str, Evaluation] | None = None,
    plots: bool = True,
    splits: Mapping[str, Any] | None = None,
) -> list[FrontEntry]:
    """Write the front of ``result`` into ``outdir``.

    Writes ``front/rank{i:02d}_acc.._e..x_s..x.onnx`` (built by ``evaluator.build``),
    ``front.json`` (run metadata + members), ``front.csv`` and, with ``plots``,
    ``pareto.png`` and ``convergence.png``. Stale ``rank*.onnx`` files of an earlier
    export are removed.

    Args:
        result: what :func:`~emomc_onnx.search.driver.run_search` returned.
        evaluator: builds each member's model.
        outdir: output directory (created).
        extra_points: labelled reference points (e.g. ``{"ORT int8": evaluation}``) for
            front.json and the Pareto plot (measure them on the test split).
        splits: sizes and sources of the data splits (``Splits.summary()``) for front.json.
        plots: also write the PNG plots.

    Returns:
        The entries, most accurate first.
    """
    out = Path(outdir)
    fdir = out / FRONT_DIR
    fdir.mkdir(parents=True, exist_ok=True)
    base = result.baseline
    entries: list[FrontEntry] = []
    members = sorted(result.front, key=lambda m: (-m.test.metric, m.test.energy,
                                                  m.test.size_bits, m.key))
    limit = result.config.max_accuracy_drop
    for rank, m in enumerate(members):
        ev = m.test
        st = (ev.extra or {}).get("stats") or {}
        ss = (m.search.extra or {}).get("stats") or {}
        ef = base.energy / ev.energy if ev.energy > 0 else float("inf")
        sf = base.size_bits / ev.size_bits if ev.size_bits > 0 else float("inf")
        name = _file_name(rank, ev.metric, ef, sf)
        model = evaluator.build(m.plan)
        props = {p.key: p.value for p in model.metadata_props}
        props.update({"emomc.plan": m.plan.to_json(), "emomc.plan_key": m.key,
                      "emomc.metric_test": repr(float(ev.metric)),
                      "emomc.fingerprint": result.fingerprint})
        onnx.helper.set_model_props(model, props)
        blob = canonical_bytes(model)
        atomic_write_bytes(fdir / name, blob)
        pd = m.plan.to_dict()
        entries.append(FrontEntry(
            rank=rank, file=f"{FRONT_DIR}/{name}", key=m.key,
            metric_search=float(m.search.metric), metric_test=float(ev.metric),
            accuracy=float(ev.metric), accuracy_ci95=st.get("ci95"), error=ev.error,
            diff=st.get("diff"), diff_ci95=st.get("diff_ci95"), p_value=st.get("p_value"),
            diff_search=ss.get("diff"), gap_flag=bool(m.gap and m.gap.get("flag")),
            within_max_drop=None if limit is None else m.violation is None,
            n_search=int(ss.get("n") or 0), n_test=int(st.get("n") or 0),
            energy=float(ev.energy), size_bits=float(ev.size_bits),
            energy_factor=float(ef), size_factor=float(sf),
            macs=int(ev.macs), params=int(ev.params),
            keep=pd["keep"], density=pd["density"], wbits=pd["wbits"], abits=pd["abits"],
            file_bytes=len(blob),
        ))
    keep_files = {Path(e.file).name for e in entries}
    for f in fdir.iterdir():
        if _RANK_FILE.match(f.name) and f.name not in keep_files:
            f.unlink()

    meta = {
        "version": 2,
        "fingerprint": result.fingerprint,
        "seed": result.seed,
        **run_metadata(evaluator, base),
        "config": result.config.to_dict(),
        "evaluator": _evaluator_record(evaluator),
        "space": {"kind": result.space.kind, "groups": len(result.space.groups),
                  "layers": len(result.space.layers)},
        "baseline": {"search": result.baseline_search.to_dict(), "test": base.to_dict()},
        "metric": (base.extra or {}).get("metric_name"),
        "figures": ("accuracy/metric_test: test split (never seen by the search or by the choice of "
                    "the front), 95% interval and paired difference to the original on the same "
                    "samples; metric_search: the search split the front was chosen on"),
        "splits": splits or {},
        "extra_points": {k: v.to_dict() for k, v in (extra_points or {}).items()},
        "hypervolume": {
            "reference": [1.1] * len(result.config.objectives),
            "objectives": list(result.config.objectives),
            "history": [dataclasses.asdict(h) for h in result.history],
            "stage": {str(k): v for k, v in result.stage_hv.items()},
            "front": result.front_hv,
        },
        "n_evaluations": result.n_evaluations,
        "n_probes": result.n_probes,
        "screens": list(result.screens),
        "n_raced_out": result.n_raced_out,
        "interrupted": result.interrupted,
        "stop_reasons": {str(k): v for k, v in result.stop_reasons.items()},
        "failures": result.failures(),
        "elapsed_s": result.elapsed_s,
        "members": [e.to_dict() for e in entries],
    }
    atomic_write_bytes(out / FRONT_JSON,
                       json.dumps(to_jsonable(meta), indent=2).encode())
    atomic_write_bytes(out / FRONT_CSV, front_csv(entries).encode())
    if plots:
        # matplotlib loads only to draw: `select` reads fronts through this module
        from emomc_onnx.export.plots import plot_convergence, plot_pareto

        plot_pareto(entries, base, out / "pareto.png", extra_points=extra_points,
                    window_points=result.config.max_accuracy_drop)
        plot_convergence(result.history, out / "convergence.png")
    logger.info("exported %d front members to %s", len(entries), out)
    return entries


def canonical_bytes(model: onnx.ModelProto) -> bytes:
    """The model's bytes with every order-free list sorted: same model, same bytes.

    Initializers, value_info and metadata_props are sets to ONNX Runtime; builds that reach
    the same model through different cache or dict orders thus give identical files.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = sorted(g.initializer, key=lambda t: t.name)
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = sorted(g.value_info, key=lambda v: v.name)
    del g.value_info[:]
    g.value_info.extend(vis)
    props = sorted(m.metadata_props, key=lambda p: p.key)
    del m.metadata_props[:]
    m.metadata_props.extend(props)
    return m.SerializeToString(deterministic=True)


def run_metadata(evaluator: Any, baseline: Evaluation | None = None) -> dict[str, Any]:
    """What produced a front (model, data, profile, dataflow, coding, metric) and its units.

    ``units.energy`` is the unit of every ``energy`` figure (``select --max-energy``),
    ``units.size_bits`` of every size; recorded so front.json is read without the profile.
    """
    cfg = getattr(evaluator, "config", None)
    prof = getattr(evaluator, "profile", None)
    loaded = getattr(evaluator, "loaded", None)
    extra = dict(getattr(baseline, "extra", None) or {})
    metric = getattr(getattr(evaluator, "metric", None), "name", None)
    run = {
        "model": getattr(cfg, "model", None),
        "model_sha256": getattr(loaded, "sha256", None),
        "data": getattr(cfg, "data", None),
        "profile": getattr(prof, "name", getattr(cfg, "profile", None)),
        "profile_path": getattr(prof, "path", None),
        "profile_sha256": getattr(prof, "sha256", None),
        "dataflow": extra.get("dataflow") or getattr(cfg, "dataflow", None),
        "coding": extra.get("coding") or getattr(cfg, "coding", None),
        "metric": metric or getattr(cfg, "metric", None),
        "eval_samples": getattr(cfg, "eval_samples", None),
        "calib_samples": getattr(cfg, "calib_samples", None),
        "recovery": getattr(cfg, "recovery", None),
    }
    unit = getattr(prof, "energy_unit", None)
    units = {"energy": f"{unit} per sample" if unit else None, "size_bits": "bits (coded size)",
             "file_bytes": "bytes (the ONNX file)",
             "macs": "multiply-accumulates per sample"}
    return {"run": run, "units": units}


_OWNER_FIELDS = ("model_sha256", "profile", "profile_sha256", "dataflow", "coding", "metric", "eval_samples",
                 "calib_samples", "recovery", "seed", "data", "model")


def check_front_owner(outdir: str | os.PathLike[str], evaluator: Any, *, overwrite: bool) -> None:
    """Refuse to replace a front another run wrote (other model, data, profile or settings).

    Same fingerprint: the same run, which resumes. Another one: an OutputError naming what
    differs, unless ``overwrite``.
    """
    path = Path(outdir) / FRONT_JSON
    if overwrite or not path.is_file():
        return
    fp = str(evaluator.fingerprint())
    try:
        old = json.loads(path.read_text())
        old_fp = old["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"{path}: unreadable ({type(exc).__name__}); give --overwrite to replace "
                          "this front, or another -o") from None
    if old_fp == fp:
        return
    was = old.get("run") if isinstance(old.get("run"), dict) else {}
    now = run_metadata(evaluator)["run"]
    now["seed"] = getattr(getattr(evaluator, "config", None), "seed", None)
    was = {**was, "seed": old.get("seed")}
    names = {"model_sha256": "model", "profile_sha256": "profile file", "model": "model path",
             "data": "data path"}
    diffs = []
    for k in _OWNER_FIELDS:
        a, b = was.get(k), now.get(k)
        if a is None or b is None or a == b:
            continue
        if k == "model_sha256":
            a, b = Path(str(was.get("model"))).name, Path(str(now.get("model"))).name
            a, b = (a, b) if a != b else (f"{a} (other content)", b)
        elif k == "profile_sha256" and was.get("profile") != now.get("profile"):
            continue
        diffs.append(f"{names.get(k, k)} {a!s:.60} -> {b!s:.60}")
    what = "; ".join(diffs[:3]) if diffs else "other settings or seed"
    raise OutputError(f"{outdir} holds the front of another run ({what}): give --overwrite to replace "
                      "it, or another -o")


def _evaluator_record(evaluator: Evaluator) -> dict[str, Any] | None:
    """The evaluator's full config and data file hash (``run`` above is its human summary): what
    ``finetune`` needs to rebuild the teacher, the metric and the split, and to refuse
    training on the run's samples."""
    config = getattr(evaluator, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return None
    rec = dataclasses.asdict(config)
    for key in ("data", "test_data"):
        path = rec.get(key)
        rec[f"{key}_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    return rec


def front_csv(entries: list[FrontEntry]) -> str:
    scalar = ["rank", "file", "key", "accuracy", "accuracy_ci95_lo", "accuracy_ci95_hi", "diff",
              "diff_ci95_lo", "diff_ci95_hi", "p_value", "metric_search", "metric_test", "diff_search",
              "gap_flag", "within_max_drop", "n_search", "n_test", "error",
              "energy", "size_bits", "file_bytes", "energy_factor", "size_factor", "macs", "params"]
    per: list[tuple[str, str]] = []
    if entries:
        e0 = entries[0]
        per = ([("keep", k) for k in e0.keep] + [("density", k) for k in e0.density]
               + [("wbits", k) for k in e0.wbits] + [("abits", k) for k in e0.abits])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(scalar + [f"{f}[{k}]" for f, k in per])
    for e in entries:
        row: list[Any] = [_csv_value(e, s) for s in scalar]
        for f, k in per:
            v = getattr(e, f).get(k)
            row.append("" if v is None else v)
        w.writerow(row)
    return buf.getvalue()


def _csv_value(e: FrontEntry, name: str) -> Any:
    """A scalar column of front.csv (interval bounds split into two columns; None -> empty)."""
    for field in ("accuracy_ci95", "diff_ci95"):
        for i, end in enumerate(("_lo", "_hi")):
            if name == field + end:
                ci = getattr(e, field)
                return "" if not ci else ci[i]
    v = getattr(e, name)
    return "" if v is None else v
