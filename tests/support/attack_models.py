"""Tiny trained models for the attack / suite / sanity tests (plain torch loops: seconds)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from benchmarks.common import fit_plain
from benchmarks.masking import Quantised, Scaled  # noqa: F401 - the maskings' one home, used by the tests
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import ClassificationModule, SegmentationModule
from lightning_modules.landmark_module import LandmarkModule

NETS = {
    "classification": {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [8, 16]}},
    "segmentation": {"class_path": "lightning_modules.nets.SmallUNet", "init_args": {"features": [8, 16]}},
    "landmarks": {"class_path": "lightning_modules.nets.SmallUNet", "init_args": {"features": [8, 16]}},
}


def _batches(dm: SyntheticDataModule, split: str, n: int) -> dict[str, Any]:
    ds = dm.dataset(split)
    return collate_batch([ds[i] for i in range(min(n, len(ds)))])


@functools.cache
def trained(task: str, num_classes: int = 4, steps: int = 150, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """``(module in eval mode, a validation batch of 32)`` for ``task``, trained clean."""
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"num_classes": num_classes} if task == "classification" else {}
    if task == "landmarks":
        kw["num_landmarks"] = 3
    size = (24, 24) if task == "landmarks" else (16, 16)
    dm = SyntheticDataModule(task=task, num_train=256, num_val=32, num_test=8, image_size=size,
                             seed=seed, batch_size=32, **kw)
    dm.setup("fit")
    cls = {"classification": ClassificationModule, "segmentation": SegmentationModule,
           "landmarks": LandmarkModule}[task]
    module = cls(net=NETS[task], data_info=dm.info, lr=3e-3)
    train = _batches(dm, "train", 256)
    g = torch.Generator().manual_seed(seed)
    batches = ({k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in train.items()}
               for idx in (torch.randint(0, train["image"].shape[0], (32,), generator=g) for _ in range(steps)))
    fit_plain(module, batches, torch.optim.Adam(module.parameters(), lr=3e-3))
    for p in module.parameters():
        p.requires_grad_(False)
    return module, _batches(dm, "val", 32)


class Saturated(Scaled):
    """Gradient masking by a saturated softmax: logits scaled by 1e4, so the softmax is
    one-hot in float32 and the cross-entropy gradient underflows to exactly zero."""

    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__(model=model, scale=scale)


class Noisy(nn.Module):
    """A randomised model: Gaussian noise on the input even in eval mode."""

    def __init__(self, model: nn.Module, std: float = 0.05) -> None:
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.std * torch.randn_like(x))
