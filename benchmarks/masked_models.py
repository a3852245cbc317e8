"""The masked-gradient cases of the landmark and detection ``standard`` suites: tiny trained
models (a heatmap net, an FCOS), their saturated variant, and the measurements both
``benchmarks/masked_gradients_dense.py`` and ``tests/attacks/test_masked_gradients_dense.py``
make on them (task metric, PGD-10, Square alone, the suite's record) — one home, so the
benchmark's tables describe exactly the tested models (docs/attacks.md, "Masked gradients on
landmarks and detection")."""

from __future__ import annotations

import copy
import functools
import warnings
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from attacks import PGD, Square
from attacks.task_losses import ATTACK_LOSSES, make_attack_loss
from benchmarks.common import fit_plain
from callbacks.attack_loss import task_loss_tensors
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.evaluation_runner import RunResult
from callbacks.evaluation_writers import build_record
from callbacks.sanity import mark_unreliable, sanity_report
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.detection_module import DetectionModule
from lightning_modules.landmark_module import LandmarkModule
from lightning_modules.tasks import suite_specs

#: L∞ budget on [0, 1] images: above half a quantisation step (1/32), so a perturbation can
#: move a pixel across a rounding boundary
EPS = 0.1
#: an independent reference: the seed of no suite member
REFERENCE_SEED = 12345


class TinyHeatmapNet(nn.Module):
    """Four 3×3 convolutions (dilations 1, 2, 4, 1: a 17-px receptive field), ``[B, 1, H, W] ->
    [B, K, H, W]`` heatmaps: cheap enough for 5000 Square queries in a test."""

    def __init__(self, landmarks: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(width, landmarks, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ScaledClassHead(nn.Module):
    """An FCOS head whose class logits are × ``scale`` (a saturated sigmoid); box regression
    and centre-ness untouched, so the detections keep their boxes and their ranking by
    centre-ness among saturated class scores."""

    def __init__(self, head: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        self.head, self.scale = head, scale

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.head(x)
        return {**out, "cls_logits": out["cls_logits"] * self.scale}

    def compute_loss(self, *args: Any) -> dict[str, torch.Tensor]:
        return self.head.compute_loss(*args)


def frozen(module: Any) -> Any:
    """``module`` in eval mode with every parameter's gradient off."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@functools.cache
def landmark_model() -> tuple[LandmarkModule, dict[str, Any]]:
    """The tiny heatmap net trained 300 Adam steps on 16 × 16 synthetic skulls (3 landmarks,
    σ = 1 px), and 6 validation images."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dm = SyntheticDataModule(task="landmarks", num_train=512, num_val=6, num_test=4,
                                 image_size=(16, 16), num_landmarks=3, seed=0, batch_size=32)
        dm.setup("fit")
        # the normalisation it was measured with (stated: a built network gets none by default)
        module = LandmarkModule(net=TinyHeatmapNet(3), data_info=dm.info, sigma=1.0, lr=1e-2, mean=0.5, std=0.25)
        train = collate_batch([dm.dataset("train")[i] for i in range(512)])
        g = torch.Generator().manual_seed(0)
        batches = ({k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in train.items()}
                   for idx in (torch.randint(0, 512, (32,), generator=g) for _ in range(300)))
        fit_plain(module, batches, torch.optim.Adam(module.parameters(), lr=1e-2))
    return frozen(module), collate_batch([dm.dataset("val")[i] for i in range(6)])


@functools.cache
def detector() -> tuple[DetectionModule, dict[str, Any]]:
    """A tiny FCOS (one 8/16-channel backbone, no head tower) trained 200 AdamW steps on 32 × 32
    synthetic cells (2 classes, at most 3 per image), and 4 validation images."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dm = SyntheticDataModule(task="detection", num_train=480, num_val=4, num_test=4,
                                 image_size=(32, 32), in_channels=3, num_classes=2, max_objects=3,
                                 batch_size=8, seed=0)
        dm.setup("fit")
        module = DetectionModule(data_info=dm.info, net={
            "class_path": "lightning_modules.nets.detectors.tiny_fcos",
            "init_args": {"widths": [8, 16], "out_channels": 16, "head_convs": 0}})
        train = collate_batch([dm.dataset("train")[i] for i in range(480)])
        batches = ({k: [v[i] for i in idx] if isinstance(v, list) else v[idx] for k, v in train.items()}
                   for idx in ([(step * 8 + i) % 480 for i in range(8)] for step in range(200)))
        fit_plain(module, batches, torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4))
    return frozen(module), collate_batch([dm.dataset("val")[i] for i in range(4)])


def saturated(module: DetectionModule) -> DetectionModule:
    """A copy of the detector whose class logits are × 1000 (:class:`ScaledClassHead`)."""
    out = copy.deepcopy(module)
    out.net.detector.head = ScaledClassHead(out.net.detector.head)
    return frozen(out)


def task_metric(module: Any, model: Any, batch: dict[str, Any], x: torch.Tensor, name: str) -> float:
    """The task's own dataset-level metric ``name`` of ``model(x)`` (what the record reports)."""
    metrics = module.build_metrics()
    with torch.no_grad():
        module.update_metrics(metrics, model(x), batch)
    return float(metrics.compute()[name])


def square_alone(task: Any, model: Any, batch: dict[str, Any], loss: str, **args: Any) -> torch.Tensor:
    """Square, 5000 queries, L∞ ``EPS``, on the named scale-free loss alone; seed ``REFERENCE_SEED``."""
    fn = make_attack_loss(loss, None, 5000, **args)
    inputs = ATTACK_LOSSES[loss].inputs
    return Square(eps=EPS, steps=5000, bounds=tuple(task.data_info.bounds))(
        model, batch["image"], batch, loss_fn=lambda o, b: fn(*task_loss_tensors(task, o, b, inputs)),
        generator=torch.Generator().manual_seed(REFERENCE_SEED))


def pgd10(task: Any, model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """PGD-10 on the task loss, L∞ ``EPS``, seed 0."""
    return PGD(eps=EPS, steps=10, bounds=tuple(task.data_info.bounds))(
        model, batch["image"], batch, loss_fn=task.per_sample_loss, generator=torch.Generator().manual_seed(0))


def record_of(task: Any, ev: RobustnessEvaluator, specs: list[Any], monitor: str, lower: bool) -> Any:
    """The record the evaluation callback would write for ``ev``'s batches (same builder, sanity
    checks and unreliable marks)."""
    out = ev.compute()
    run = RunResult(out, list(range(out.num_samples)), out.num_samples, out.num_samples, 1, 0.0)
    trainer = SimpleNamespace(current_epoch=0, global_step=0, precision="32-true")
    record = build_record(run, task=task, trainer=trainer, split="test", suite="test",
                          suite_name="standard", specs=specs, monitor=monitor, lower=lower,
                          method="clean", requested_subset=None, settings={"seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record.sanity = sanity_report(out, monitor, lower)
    mark_unreliable(record)
    return record


def standard_suite(task: Any, batch: dict[str, Any], name: str, monitor: str, lower: bool) -> tuple[Any, list[Any]]:
    """The ``standard`` suite of task ``name`` at ``EPS`` on one batch (not sequential): its record
    and member specs. Its Square member has the 5000 queries the masked-gradient claim needs."""
    specs = suite_specs("standard", "test_attacks", name)
    square = [s for s in specs if s.label == "square"]
    if len(square) != 1 or square[0].params.get("steps") != 5000:
        raise ValueError(f"the {name} standard suite should have one Square member of 5000 queries, got {specs}")
    ev = RobustnessEvaluator(task, specs, [EPS], sequential=False, large_eps=0.25)
    ev.run_batch(0, batch)
    return record_of(task, ev, specs, monitor, lower), specs
