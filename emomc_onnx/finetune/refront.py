"""Rebuild a compress run's front from its members and their fine-tuned versions (torch-free).

After :func:`~emomc_onnx.finetune.run.finetune_front`, every member of the search's front
and every fine-tuned file of OUTDIR/finetune.json is measured again with the run's own
evaluator (:meth:`evaluate_model`: the same samples, metric and cost model, the cost read
from the file's own QDQ graph, so both kinds are costed alike). The new front is the
non-dominated set on the *search* split (feasible under the run's ``--max-accuracy-drop``),
and only its members are then measured on the *test* split, as the search does: the test
split still chooses nothing. front.json, front.csv and pareto.png are rewritten with it;
the search's own front stays in front.json under ``search_front``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from emomc_onnx.candidate import EvaluatorConfig
from emomc_onnx.errors import EmomcError
from emomc_onnx.evaluate.stats import drop_gap
from emomc_onnx.export.front import FRONT_CSV, FRONT_JSON, FrontEntry, front_csv
from emomc_onnx.paths import atomic_write_bytes, locked
from emomc_onnx.search.evaluator import Evaluation, to_jsonable
from emomc_onnx.search.hypervolume import non_dominated
from emomc_onnx.search.problem import Objectives

__all__ = ["SEARCH_FRONT", "merge_front"]

logger = logging.getLogger(__name__)

SEARCH_FRONT = "search_front"  # front.json key: the search's own members, before the merge
TUNED_SUFFIX = "+ft"  # plan key of a fine-tuned member: its source's key + this


@dataclasses.dataclass
class _Candidate:
    entry: dict[str, Any]  # a front.json member (for a tuned file: its source's, file and key changed)
    proto: onnx.ModelProto
    tuned: bool
    search: Evaluation | None = None
    test: Evaluation | None = None


def _candidates(out: Path, meta: dict[str, Any]) -> list[_Candidate]:
    """The search's front members and every fine-tuned file whose source is one of them."""
    search_members = (meta.get(SEARCH_FRONT) or {}).get("members") or meta.get("members") or []
    by_file = {m["file"]: m for m in search_members}
    cands = [_Candidate(dict(m), onnx.load(str(out / m["file"])), False) for m in search_members]
    ft_path = out / "finetune.json"
    tuned = json.loads(ft_path.read_text()).get("members", []) if ft_path.exists() else []
    seen = set()
    for t in tuned:
        src = by_file.get(t.get("source"))
        if src is None or t["file"] in seen or not (out / t["file"]).exists():
            continue  # fine-tuned from a member of another front (an earlier merge or run)
        seen.add(t["file"])
        entry = dict(src, file=t["file"], key=src["key"] + TUNED_SUFFIX)
        cands.append(_Candidate(entry, onnx.load(str(out / t["file"])), True))
    return cands


def merge_front(outdir: str | Path, *, progress: Callable[[str], None] | None = None,
                plot: bool = True) -> dict[str, Any]:
    """Re-choose OUTDIR's front among its members and their fine-tuned versions.

    Returns a summary: candidates measured, how many of each kind made the new front, and
    the new front.json members.
    """
    out = Path(outdir)
    path = out / FRONT_JSON
    if not path.exists():
        raise EmomcError(f"{out}: no {FRONT_JSON} (run `emomc-onnx compress ... -o {out}` first)")
    with locked(out):
        return _merge(out, json.loads(path.read_text()), progress, plot)


def _merge(out: Path, meta: dict[str, Any], progress, plot: bool) -> dict[str, Any]:
    evaluator = EvaluatorConfig.from_record(meta["evaluator"])()
    base_test = evaluator.baseline()
    base_search = Evaluation.from_dict(meta["baseline"]["search"])
    cfg = meta.get("config") or {}
    names = tuple(cfg.get("objectives") or ("error", "energy", "size"))
    limit = cfg.get("max_accuracy_drop")
    obj_search = Objectives(names, base_search, limit, noise_z=float(cfg.get("drop_noise_z") or 0.0))
    obj_test = Objectives(names, base_test, limit)
    cands = _candidates(out, meta)
    for c in cands:  # the search split chooses
        if progress is not None:
            progress(f"search split: {c.entry['file']}")
        c.search = evaluator.evaluate_model(c.proto, "search")
    feas = [c for c in cands if obj_search.violation(c.search) is None]
    chosen: list[_Candidate] = []
    if feas:
        F = np.array([obj_search.f(c.search) for c in feas])
        nd = sorted((feas[i] for i in non_dominated(F)),
                    key=lambda c: (tuple(obj_search.f(c.search)), c.tuned, c.entry["key"]))
        for c in nd:  # identical figures: keep one (the untuned member, then the smallest key)
            if not chosen or not np.array_equal(obj_search.f(chosen[-1].search), obj_search.f(c.search)):
                chosen.append(c)
    for c in chosen:  # then the test split reports
        if progress is not None:
            progress(f"test split: {c.entry['file']}")
        c.test = evaluator.evaluate_model(c.proto, "test")
    chosen.sort(key=lambda c: (-c.test.metric, c.test.energy, c.test.size_bits, c.entry["key"]))
    entries = [_entry(rank, c, base_test, obj_test, limit, drop_gap, out) for rank, c in enumerate(chosen)]
    search_front = meta.get(SEARCH_FRONT) or {"members": meta.get("members", [])}
    meta = {**meta, SEARCH_FRONT: search_front, "members": [e.to_dict() for e in entries],
            "finetune_merge": {
                "candidates": len(cands), "tuned_candidates": sum(c.tuned for c in cands),
                "front": len(entries), "tuned_in_front": sum(c.tuned for c in chosen),
                "how": ("non-dominated on the search split among the search's front members and their "
                        "fine-tuned versions, all re-measured with evaluate_model; figures on the test split"),
            }}
    atomic_write_bytes(out / FRONT_JSON, json.dumps(to_jsonable(meta), indent=2).encode())
    atomic_write_bytes(out / FRONT_CSV, front_csv(entries).encode())
    if plot:
        # matplotlib loads only to draw (plot=False in tests and benchmarks)
        from emomc_onnx.export.plots import plot_pareto

        plot_pareto(entries, base_test, out / "pareto.png", window_points=limit)
    logger.info("merged front: %d members (%d fine-tuned) from %d candidates", len(entries),
                meta["finetune_merge"]["tuned_in_front"], len(cands))
    return {**meta["finetune_merge"], "members": meta["members"]}


def _entry(rank: int, c: _Candidate, base: Evaluation, obj_test, limit, drop_gap, out: Path) -> FrontEntry:
    ev, es = c.test, c.search
    st = (ev.extra or {}).get("stats") or {}
    ss = (es.extra or {}).get("stats") or {}
    gap = drop_gap(ss, st)
    e = c.entry
    return FrontEntry(
        rank=rank, file=e["file"], key=e["key"], metric_search=float(es.metric), metric_test=float(ev.metric),
        accuracy=float(ev.metric), accuracy_ci95=st.get("ci95"), error=ev.error, diff=st.get("diff"),
        diff_ci95=st.get("diff_ci95"), p_value=st.get("p_value"), diff_search=ss.get("diff"),
        gap_flag=bool(gap and gap.get("flag")),
        within_max_drop=None if limit is None else obj_test.violation(ev) is None,
        n_search=int(ss.get("n") or 0), n_test=int(st.get("n") or 0),
        energy=float(ev.energy), size_bits=float(ev.size_bits),
        energy_factor=base.energy / ev.energy if ev.energy > 0 else float("inf"),
        size_factor=base.size_bits / ev.size_bits if ev.size_bits > 0 else float("inf"),
        macs=int(ev.macs), params=int(ev.params), keep=e["keep"], density=e["density"], wbits=e["wbits"],
        abits=e["abits"], file_bytes=(out / e["file"]).stat().st_size,
    )
