"""Fine-tune chosen members of a compress run's front; write them, finetune.json and a plot.

Reads OUTDIR/front.json (its ``evaluator`` entry names the original model, the data and the
metric settings of the run), refuses training samples that are in the run's data file,
computes the teacher's outputs once with ONNX Runtime (cached in OUTDIR/finetune/), trains
each member (checkpoints in OUTDIR/finetune/ckpt/), writes OUTDIR/finetuned/*.onnx, and
measures every member before and after with the run's own evaluator (the same samples,
metric and cost model as front.json's figures).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.candidate import EvaluatorConfig
from emomc_onnx.errors import DataError, EmomcError
from emomc_onnx.evaluate.data import input_specs, load_data
from emomc_onnx.evaluate.metrics import resolve_metric
from emomc_onnx.evaluate.session import make_session, run_batched
from emomc_onnx.export.front import FRONT_JSON
from emomc_onnx.finetune.member import read_member
from emomc_onnx.finetune.overlap import check_no_overlap
from emomc_onnx.finetune.report import plot_before_after
from emomc_onnx.finetune.train import FinetuneConfig, TrainEvent, train_member
from emomc_onnx.paths import atomic_write_bytes, locked

__all__ = ["FINETUNE_DIR", "FINETUNE_JSON", "finetune_front"]

logger = logging.getLogger(__name__)

FINETUNE_DIR = "finetuned"
FINETUNE_JSON = "finetune.json"
WORK_DIR = "finetune"  # teacher cache and checkpoints


def _read_front(outdir: Path) -> dict[str, Any]:
    path = outdir / FRONT_JSON
    if not path.exists():
        raise EmomcError(f"{outdir}: no {FRONT_JSON} (run `emomc-onnx compress ... -o {outdir}` first)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmomcError(f"{path}: not readable JSON ({exc})") from None
    if not meta.get("evaluator"):
        raise EmomcError(f"{path} does not record the compress run's model and data (written by an "
                         f"older version): re-run compress to fine-tune its front")
    return meta


def _teacher(original: onnx.ModelProto, train, cache: Path) -> list[np.ndarray]:
    h = hashlib.sha256(io.model_sha256(original).encode())
    for k in sorted(train.arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(train.arrays[k]).tobytes())
    key = h.hexdigest()[:16]
    path = cache / f"teacher_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return [z[f"out{i}"] for i in range(len(z.files))]
    outs = run_batched(make_session(original, threads=2), train, 256)
    buf = __import__("io").BytesIO()
    np.savez(buf, **{f"out{i}": o for i, o in enumerate(outs)})
    atomic_write_bytes(path, buf.getvalue())
    return outs


def _figures(ev) -> dict[str, float]:
    return {"metric": float(ev.metric), "energy": float(ev.energy), "size_bits": float(ev.size_bits)}


def finetune_front(
    outdir: str | Path,
    data: str | Path,
    *,
    members: Sequence[int] | None = None,
    config: FinetuneConfig | None = None,
    progress: Callable[[int, TrainEvent | None], None] | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Fine-tune front members of ``outdir`` on ``data``; returns what finetune.json holds.

    Args:
        outdir: a compress output directory.
        data: training .npz (one array per model input, optional labels), disjoint from the
            run's data.
        members: front ranks to fine-tune (None: all).
        config: training settings; a time budget is shared evenly by the members left.
        progress: called with (rank, event) while training; (rank, None) when a member starts.
        plot: also write OUTDIR/finetune.png.
    """
    out = Path(outdir)
    meta = _read_front(out)
    config = config or FinetuneConfig()
    with locked(out):  # no compress or other finetune writes OUTDIR meanwhile
        return _finetune(out, meta, data, members, config, progress, plot)


def _finetune(out: Path, meta: dict[str, Any], data, members, config: FinetuneConfig, progress,
              plot: bool) -> dict[str, Any]:
    record = meta["evaluator"]
    entries = meta.get("members") or []
    by_rank = {int(m["rank"]): str(m["file"]) for m in entries}  # the member's ONNX file
    ranks = sorted(by_rank) if members is None else list(dict.fromkeys(members))
    bad = [r for r in ranks if r not in by_rank]
    if bad:
        raise EmomcError(f"--members {','.join(map(str, bad))}: the front of {out} has ranks "
                         f"0..{len(entries) - 1}")
    if not ranks:
        raise EmomcError(f"the front of {out} has no members to fine-tune")
    ecfg = EvaluatorConfig.from_record(record)
    loaded = io.load_model(ecfg.model, dict(ecfg.input_shapes) or None)
    original = loaded.proto()
    train = load_data(data)
    train.check(input_specs(original))
    if len(train) < 2:
        raise DataError(f"{data}: {len(train)} sample(s); fine-tuning needs more")
    checked = check_no_overlap(train, record)
    work = out / WORK_DIR
    teacher = _teacher(original, train, work)
    is_classifier = teacher[0].ndim == 2 and teacher[0].shape[1] > 1
    if not config.distill and (train.labels is None or not is_classifier):
        raise DataError(f"{data}: training without distillation needs labels and a classifier")
    metric = resolve_metric(ecfg.metric, has_labels=train.labels is not None, is_classifier=is_classifier)
    evaluator = ecfg()
    baseline = evaluator.baseline()
    results = []
    t_start = time.perf_counter()
    for i, rank in enumerate(ranks):
        source = by_rank[rank]
        cfg = config
        if config.time_budget_s is not None:
            left = config.time_budget_s - (time.perf_counter() - t_start)
            cfg = dataclasses.replace(config, time_budget_s=max(1.0, left / (len(ranks) - i)))
        if progress is not None:
            progress(rank, None)
        proto = onnx.load(str(out / source))
        member = read_member(proto)
        ckpt = work / "ckpt" / f"{Path(source).stem}.pt"
        tuned, info = train_member(member, train.arrays, teacher, train.labels, metric, cfg, ckpt,
                                   (lambda ev, r=rank: progress(r, ev)) if progress else None)
        props = {p.key: p.value for p in proto.metadata_props}
        props["emomc.finetune"] = json.dumps({"epochs": info["epochs"], "source": source,
                                              "config": dataclasses.asdict(cfg)})
        onnx.helper.set_model_props(tuned, props)
        onnx.checker.check_model(tuned)
        name = f"{FINETUNE_DIR}/{Path(source).stem}_ft.onnx"
        atomic_write_bytes(out / name, tuned.SerializeToString())
        before = evaluator.evaluate_model(proto, "test")
        after = evaluator.evaluate_model(tuned, "test")
        results.append({
            "rank": rank, "source": source, "file": name, "metric_name": after.extra.get("metric_name"),
            "before": _figures(before), "after": _figures(after),
            "energy_factor": {"before": baseline.energy / before.energy, "after": baseline.energy / after.energy},
            "size_factor": {"before": baseline.size_bits / before.size_bits,
                            "after": baseline.size_bits / after.size_bits},
            "eval_samples": len(evaluator.test), **info,
        })
    summary = {
        "version": 1, "data": str(Path(data).resolve()), "train_samples": len(train),
        "overlap_checked_against": {"data": record.get("data"), "test_data": record.get("test_data"),
                                    "samples": checked},
        "config": dataclasses.asdict(config), "baseline": _figures(baseline),
        "elapsed_s": time.perf_counter() - t_start, "members": results,
    }
    previous = _previous(out)
    merged = {m["rank"]: m for m in previous} | {m["rank"]: m for m in results}
    summary["members"] = [merged[r] for r in sorted(merged)]
    atomic_write_bytes(out / FINETUNE_JSON, json.dumps(summary, indent=2, default=float).encode())
    if plot:
        plot_before_after(summary, out / "finetune.png")
    return summary


def _previous(out: Path) -> list[dict]:
    """Members fine-tuned by an earlier run (kept unless re-tuned now)."""
    path = out / FINETUNE_JSON
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text()).get("members", []))
    except (OSError, ValueError):
        return []
