"""How fast do the datamodules deliver training batches, and does the loader keep up?

Measures samples/s of the *training* loader (augmentation on: hflip, rotation, brightness /
contrast, gamma) for PH2 at 224x224, for a manifest (:class:`ManifestDataModule`) over the very
same PH2 files (so the two rows differ only in the loader), and for synthetic classification
data, with the same worker count, and beside it the samples/s of one forward + backward + optimizer step of the default
small CNN on batches of the same shape. If the loader delivers more samples/s than the model
consumes, training does not wait on data.

    python benchmarks/data_speed.py                      # PH2 from $MEDROBUST_DATA/ph2
    python benchmarks/data_speed.py --ph2-root ../shared/data/ph2 --workers 2 --samples 480

The first batch (worker start-up, first file reads) is timed separately and excluded from the
rate. "CPU ms/sample" is the CPU time one worker spends per sample (read + decode + resize +
augment, or generate), measured in-process: unlike samples/s it does not depend on how busy the
machine is, and 1000 / it is the rate one free core sustains. Without PH2 on disk its rows are
skipped with the reason.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from datamodules import AugmentConfig, BaseDataModule, PH2DataModule, SyntheticDataModule
from datamodules.manifest import ManifestDataModule
from datamodules.tasks import task_named

AUGMENT = AugmentConfig(hflip=0.5, rotate_deg=15.0, brightness=0.1, contrast=0.1, gamma=0.1,
                        p_intensity=0.5)


def default_net(in_channels: int, num_classes: int) -> nn.Module:
    """The project's SmallCNN if available, else an equivalent stand-in (3 conv-BN-ReLU stages)."""
    try:
        from lightning_modules.nets.cnn import SmallCNN

        return SmallCNN(spatial_dims=2, in_channels=in_channels, num_classes=num_classes)
    except ImportError:
        layers: list[nn.Module] = []
        ch = in_channels
        for width in (16, 32, 64):
            layers += [nn.Conv2d(ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            ch = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(ch, num_classes))


def ph2_manifest(ph2_root: str | None, folder: Path) -> Path:
    """A manifest CSV over PH2's own files (absolute paths): ``image, mask, label``, the split
    of the PH2 loader as a ``split`` column — the same samples the PH2 rows read."""
    ph2 = PH2DataModule(root=ph2_root)
    cases, ids = ph2.cases(), ph2.split_ids()
    path = folder / "ph2_manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask", "label", "split"])
        for split, members in ids.items():
            for c in members:
                writer.writerow([cases[c].image, cases[c].mask, cases[c].label, split])
    return path


def loader_rate(dm: BaseDataModule, samples: int) -> tuple[float, float, int]:
    """(samples/s after the first batch, seconds to the first batch, samples timed)."""
    loader = dm.train_dataloader()  # one loader, as in training: workers persist across epochs
    start = time.perf_counter()
    seen, first, timed_from = 0, None, 0.0
    while seen < samples:
        for batch in loader:
            if first is None:
                first = time.perf_counter() - start
                timed_from = time.perf_counter()
                continue
            seen += len(batch["index"])
            if seen >= samples:
                break
    elapsed = time.perf_counter() - timed_from
    return seen / elapsed, float(first or 0.0), seen


def cpu_ms_per_sample(dm: BaseDataModule, n: int = 64) -> float:
    """CPU milliseconds to produce one training sample in this process (load-independent)."""
    ds = dm.dataset("train")
    n = min(n, len(ds))
    start = time.process_time()
    for i in range(n):
        ds[i]
    return 1000.0 * (time.process_time() - start) / n


def model_rate(make_batch: Callable[[], dict], in_channels: int, num_classes: int,
               device: torch.device, steps: int) -> float:
    """Samples/s of forward + backward + SGD step of the default net on such batches."""
    net = default_net(in_channels, num_classes).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    batch = make_batch()
    x, y = batch["image"].to(device), batch["label"].to(device)

    def step() -> None:
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ph2-root", default=None,
                        help="PH2 folder (default: $MEDROBUST_DATA/ph2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=480, help="samples timed per loader")
    parser.add_argument("--model-steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, augment=AUGMENT)
    tmp = Path(tempfile.mkdtemp(prefix="data_speed_"))

    def manifest(task: str) -> BaseDataModule:
        return ManifestDataModule(str(ph2_manifest(args.ph2_root, tmp)), task=task,
                                  image_size=(224, 224), channels=3, **common)

    candidates: list[tuple[str, Callable[[], BaseDataModule]]] = [
        ("PH2 classification 224x224 RGB",
         lambda: PH2DataModule(root=args.ph2_root, image_size=(224, 224), **common)),
        ("PH2 segmentation 224x224 RGB",
         lambda: PH2DataModule(root=args.ph2_root, task="segmentation", image_size=(224, 224),
                               **common)),
        ("manifest (PH2 files) classif. 224 RGB", lambda: manifest("classification")),
        ("manifest (PH2 files) segment. 224 RGB", lambda: manifest("segmentation")),
        ("synthetic classification 64x64 grey",
         lambda: SyntheticDataModule(image_size=(64, 64), num_train=512, **common)),
        ("synthetic classification 224x224 grey",
         lambda: SyntheticDataModule(image_size=(224, 224), num_train=512, **common)),
        ("synthetic classification 224x224 RGB",
         lambda: SyntheticDataModule(image_size=(224, 224), num_train=512, in_channels=3,
                                     **common)),
    ]
    print(f"workers={args.workers} batch_size={args.batch_size} timed samples={args.samples} "
          f"model device={device} torch threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()}")
    print(f"augment: {AUGMENT}\n")
    header = (f"{'data':38s} {'CPU ms/sample':>13s} {'loader samples/s':>17s} "
              f"{'1st batch s':>11s} {'model f+b samples/s':>19s}  loader keeps up?")
    print(header)
    print("-" * len(header))
    for name, make in candidates:
        try:
            dm = make()
            dm.setup("fit")
        except FileNotFoundError as err:
            print(f"{name:38s} skipped: {err}")
            continue
        cpu_ms = cpu_ms_per_sample(dm)
        rate, first, _ = loader_rate(dm, args.samples)
        info = dm.info
        model = float("nan")
        if task_named(info.task).target_keys == ("label",):  # one class label per image: the CNN's step
            ds = dm.dataset("train")
            model = model_rate(
                lambda ds=ds: {"image": torch.stack([ds[i]["image"] for i in range(args.batch_size)]),
                               "label": torch.stack([ds[i]["label"] for i in range(args.batch_size)])},
                info.in_channels, info.num_classes, device, args.model_steps)
        verdict = "n/a" if model != model else ("yes" if rate >= model else
                                               f"no ({model / rate:.1f}x short)")
        model_text = "-" if model != model else f"{model:.0f}"
        print(f"{name:38s} {cpu_ms:13.1f} {rate:17.0f} {first:11.2f} {model_text:>19s}  {verdict}",
              flush=True)
        del dm


if __name__ == "__main__":
    main()
