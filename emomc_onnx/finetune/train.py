"""Fine-tune one front member: distillation from the original model, fixed zeros, LSQ QAT.

The student is the member's float architecture run by :class:`~.convert.OnnxModule`, with
learned-step fake quantizers on every weight and activation the member quantizes (the same
tensors and readers as its Q/DQ nodes). The loss is the distillation loss on the teacher's
cached outputs (KL at temperature T, times T^2, on classifier logits; MSE on other outputs)
plus cross-entropy when the data has labels. After every optimizer step the weights'
zeros (sparsity and codes that round to zero in the member) are re-applied, so the zero
pattern, hence the sparse coded size, never grows. Checkpoints after every epoch make an
interrupted run resume where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from emomc_onnx.evaluate.metrics import Metric
from emomc_onnx.evaluate.session import to_samples_first
from emomc_onnx.finetune.convert import OnnxModule
from emomc_onnx.finetune.member import Member, export_member
from emomc_onnx.finetune.qat import ActLSQ, BiasQuant, WeightLSQ
from emomc_onnx.io import declared_dims
from emomc_onnx.paths import atomic_write_bytes

__all__ = ["FinetuneConfig", "Student", "TrainEvent", "train_member"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Training settings (one member).

    Attributes:
        epochs: passes over the training samples (None: until the time budget).
        time_budget_s: wall-clock seconds for this member (None: ``epochs`` only).
        batch_size: samples per step (a model with a fixed batch uses its own).
        lr: Adam learning rate (weights, biases and steps alike; LSQ scales the steps' gradients).
        temperature: distillation temperature on classifier logits.
        label_weight: weight of the cross-entropy on labels (when the data has them).
        distill: use the teacher's outputs (else labels only; needs labels).
        qat: learn the quantizers' steps (else the steps stay the member's; training still
            sees the fake quantization).
        heldout: share of the training file kept aside for the progress figure.
        seed: seed of the held-out split, the shuffling and torch.
        threads: torch CPU threads (1, as the search's workers: on 2 cores shared with other
            jobs, 2 threads ran a small CNN 5x slower than 1).
    """

    epochs: int | None = 3
    time_budget_s: float | None = None
    batch_size: int = 64
    lr: float = 1e-4
    temperature: float = 4.0
    label_weight: float = 1.0
    distill: bool = True
    qat: bool = True
    heldout: float = 0.1
    seed: int = 0
    threads: int = 1

    def key(self) -> str:
        """What a checkpoint must match to be resumed."""
        d = dataclasses.asdict(self)
        d.pop("epochs")
        d.pop("time_budget_s")
        d.pop("threads")
        return json.dumps(d, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class TrainEvent:
    """Progress of one member: after a step (``heldout`` None) or an epoch."""

    epoch: int
    epochs: int | None
    step: int
    steps: int
    loss: float
    heldout: float | None


class Student(nn.Module):
    """A member's float graph with its fake quantizers and fixed zero masks."""

    def __init__(self, member: Member, qat: bool = True) -> None:
        super().__init__()
        self.member = member
        self.net = OnnxModule(member.float_proto, trainable=set(member.trainable))
        tensors = self.net.onnx_tensors()
        self.wq = nn.ModuleDict()
        self.aq = nn.ModuleDict()
        self._wq_of: dict[str, str] = {}  # weight name -> quantizer key
        for i, (layer, q) in enumerate(sorted(member.weights.items())):
            mod = WeightLSQ(q.scale, q.bits, q.axis, tensors[q.weight].dim())
            mod.step.requires_grad_(qat)
            self.wq[f"w{i}"] = mod
            self._wq_of[q.weight] = f"w{i}"
            self.net.input_hooks[(layer, 1)] = mod
        self._aq_of: dict[str, str] = {}
        for i, (tensor, a) in enumerate(sorted(member.acts.items())):
            mod = ActLSQ(a.scale, a.zero_point, a.qmin, a.qmax)
            mod.step.requires_grad_(qat)
            self.aq[f"a{i}"] = mod
            self._aq_of[tensor] = f"a{i}"
            for reader in a.readers:
                self.net.input_hooks[reader] = mod
        # int32 biases: rounded at s_x * s_w in training too (up to half a step of the
        # layer's output grid otherwise: 3% of an 8-bit output's codes flipped on export)
        layer_nodes = {nd[0]: nd for nd in self.net.nodes}
        for layer in member.int32_bias:
            aq = self.net.input_hooks.get((layer, 0))
            q = member.weights.get(layer)
            if isinstance(aq, ActLSQ) and q is not None and len(layer_nodes[layer][2]) > 2:
                w = tensors[q.weight]
                self.net.input_hooks[(layer, 2)] = BiasQuant(aq, self.wq[self._wq_of[q.weight]],
                                                             lambda w=w: w)
        self._masked = sorted(member.masked & set(tensors))
        for i, name in enumerate(self._masked):
            self.register_buffer(f"mask{i}", tensors[name].detach() != 0)

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return self.net(*xs)

    @torch.no_grad()
    def constrain(self) -> None:
        """Re-apply the zero masks and keep the steps inside their bounds."""
        tensors = self.net.onnx_tensors()
        for i, name in enumerate(self._masked):
            tensors[name].mul_(getattr(self, f"mask{i}"))
        for name, key in self._wq_of.items():
            self.wq[key].project(tensors[name])
        for mod in self.aq.values():
            mod.project()

    @torch.no_grad()
    def export_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(initializer name -> value, weights on their learned grid; tensor -> learned step)."""
        out = {}
        for name, p in self.net.onnx_tensors().items():
            key = self._wq_of.get(name)
            v = self.wq[key](p) if key is not None else p
            out[name] = v.detach().cpu().numpy().astype(np.float32)
        steps = {t: float(self.aq[k].step) for t, k in self._aq_of.items()}
        return out, steps

    def export(self) -> onnx.ModelProto:
        """The fine-tuned member as QDQ ONNX at the member's bits."""
        tensors, steps = self.export_tensors()
        return export_member(self.member, tensors, steps)


def _is_classifier(t: np.ndarray) -> bool:
    return t.ndim == 2 and t.shape[1] > 1


def _loss(outs: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], labels: torch.Tensor | None,
          cfg: FinetuneConfig) -> torch.Tensor:
    total = outs[0].new_zeros(())
    if cfg.distill:
        T = cfg.temperature
        for s, t in zip(outs, teacher):
            if s.dim() == 2 and s.shape[1] > 1:
                total = total + F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1),
                                         reduction="batchmean", log_target=True) * T * T
            else:
                total = total + F.mse_loss(s, t)
    if labels is not None and outs[0].dim() == 2 and outs[0].shape[1] > 1:
        total = total + cfg.label_weight * F.cross_entropy(outs[0], labels)
    return total


def _fixed_batch(proto: onnx.ModelProto) -> int | None:
    inits = {t.name for t in proto.graph.initializer}
    for v in proto.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def _save(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_member(
    member: Member,
    inputs: dict[str, np.ndarray],
    teacher: list[np.ndarray],
    labels: np.ndarray | None,
    metric: Metric,
    cfg: FinetuneConfig,
    checkpoint: Path | None = None,
    progress: Callable[[TrainEvent], None] | None = None,
    device: str | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Train a member; returns its QDQ model and a history (held-out figure per epoch).

    Args:
        member: the member taken apart (:func:`~.member.read_member`).
        inputs: model input name -> training samples (axis 0), model dtypes.
        teacher: the original model's outputs on those samples.
        labels: class indices, or None.
        metric: the held-out figure (the compress run's metric).
        cfg: settings.
        checkpoint: file to resume from and write after every epoch.
        progress: called after every step and epoch.
        device: torch device (default: cuda when torch sees one, else cpu).
    """
    if cfg.epochs is None and cfg.time_budget_s is None:
        raise ValueError("give epochs or a time budget")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    n = len(next(iter(inputs.values())))
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_hold = int(round(cfg.heldout * n)) if n >= 10 else 0
    hold, train = np.sort(perm[:n_hold]), perm[n_hold:]
    names = list(inputs)
    student = Student(member, qat=cfg.qat).to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    fixed = _fixed_batch(member.float_proto)
    bs = fixed or cfg.batch_size
    steps = max(1, len(train) // bs) if fixed else max(1, -(-len(train) // bs))
    ckey = hashlib.sha256((cfg.key() + member.float_proto.SerializeToString().hex()[:4096]).encode()
                          ).hexdigest()[:16]
    history: list[dict] = []
    epoch, elapsed = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("key") == ckey:
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["opt"])
            epoch, elapsed, history = state["epoch"], state["elapsed"], state["history"]
            logger.info("resumed %s at epoch %d", checkpoint, epoch)
    x_all = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    t_all = [torch.from_numpy(np.ascontiguousarray(t, np.float32)) for t in teacher]
    y_all = torch.from_numpy(labels) if labels is not None else None

    declared = [declared_dims(o.type.tensor_type) if o.type.tensor_type.HasField("shape") else None
                for o in member.float_proto.graph.output]

    def forward(b: np.ndarray) -> list[torch.Tensor]:
        """The student's outputs on samples ``b``, samples on axis 0 like the teacher's (a
        sequence-first [T, B, C] output moved to [B, T, C], as ``run_batched`` gives them)."""
        return to_samples_first(student(*[x_all[k][b].to(device) for k in names]), len(b), bool(fixed), declared)

    def batches(idx: np.ndarray, size: int, drop: bool):
        for i in range(0, len(idx), size):
            b = idx[i:i + size]
            if drop and len(b) < size:
                break
            yield b

    def heldout() -> float | None:
        if n_hold == 0 or (fixed and n_hold < fixed):
            return None
        student.eval()
        outs: list[list[np.ndarray]] = [[] for _ in teacher]
        with torch.no_grad():
            for b in batches(hold, fixed or 256, bool(fixed)):
                res = forward(b)
                for acc, r in zip(outs, res):
                    acc.append(r.cpu().numpy())
        used = hold[:len(np.concatenate(outs[0]))]
        return float(metric([np.concatenate(o) for o in outs], [t[used] for t in teacher],
                            None if labels is None else labels[used]))

    if epoch == 0 and not history:
        history.append({"epoch": 0, "loss": None, "heldout": heldout(), "elapsed_s": 0.0})
    t0 = time.perf_counter() - elapsed

    def over_budget() -> bool:
        return cfg.time_budget_s is not None and time.perf_counter() - t0 >= cfg.time_budget_s

    while (cfg.epochs is None or epoch < cfg.epochs) and not over_budget():
        student.train()
        order = np.random.default_rng(cfg.seed + 1 + epoch).permutation(train)
        losses = []
        for step, b in enumerate(batches(order, bs, bool(fixed))):
            outs = forward(b)
            loss = _loss(outs, [t[b].to(device) for t in t_all],
                         None if y_all is None else y_all[b].to(device), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            student.constrain()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(TrainEvent(epoch + 1, cfg.epochs, step + 1, steps, float(np.mean(losses)), None))
            if over_budget():
                break
        epoch += 1
        h = heldout()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else None, "heldout": h,
                        "elapsed_s": time.perf_counter() - t0})
        if progress is not None:
            progress(TrainEvent(epoch, cfg.epochs, steps, steps, history[-1]["loss"] or 0.0, h))
        if checkpoint is not None:
            _save(checkpoint, {"key": ckey, "student": student.state_dict(), "opt": opt.state_dict(),
                               "epoch": epoch, "elapsed": time.perf_counter() - t0, "history": history})
    student.eval()
    return student.cpu().export(), {"history": history, "epochs": epoch, "train_samples": len(train),
                                    "heldout_samples": int(n_hold), "device": device,
                                    "elapsed_s": time.perf_counter() - t0}
