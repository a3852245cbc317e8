"""Cost of randomized-smoothing certification relative to the base model's forward passes
(issue 26: certification time / (n × forward of the base model) should stay ≤ 1.1).

For each setting, on the same images, side by side in one run:

* ``forward``: the base model alone on ready-made noisy batches of the same size
  (``torch.no_grad``), ``n0 + n`` images per certified image — what any Monte-Carlo certificate
  must pay;
* ``certify``: :mod:`certification`'s CERTIFY (classification) or SegCertify (segmentation, Holm
  over pixels at three radii) on the same model, ``n0`` and ``n``: noise generation, forwards,
  vote counting and the statistics.

Times are the process's CPU time (``time.process_time``; on a GPU, wall time after a
synchronise would be the right clock: use ``--device cuda`` on an idle machine), so that other
jobs on a shared machine do not enter the ratio. Printed: both times, ``certify / forward(n0 + n)`` (the engine's overhead; target ≤ 1.1) and
``certify / forward(n)`` (the issue's ratio, which also counts the ``n0`` selection draws:
at least ``1 + n0/n`` by construction).

    python benchmarks/certify_cost.py                  # 1 thread, CPU
    python benchmarks/certify_cost.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from certification import NoiseSampler, SmoothedClassifier, SmoothedSegmenter  # noqa: E402
from lightning_modules.nets import SmallCNN, SmallUNet  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_time(model: nn.Module, x: torch.Tensor, total: int, batch: int, sigma: float, device: str) -> float:
    """Seconds of ``total`` noisy forwards of ``x`` (``[C, *spatial]``) in batches of ``batch``,
    the noisy batches made beforehand (not timed)."""
    g = torch.Generator(device=device).manual_seed(0)
    sizes = [batch] * (total // batch) + ([total % batch] if total % batch else [])
    batches = [x.unsqueeze(0) + sigma * torch.randn((b, *x.shape), generator=g, device=device) for b in sizes]
    _sync(device)
    start = time.process_time()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    _sync(device)
    return time.process_time() - start


def measure(name: str, model: nn.Module, images: torch.Tensor, task: str, n0: int, n: int, batch: int,
            sigma: float, device: str) -> dict[str, float]:
    model = model.to(device).eval()
    images = images.to(device)
    sampler = NoiseSampler(sigma, batch, seed=0)
    if task == "classification":
        smoothed = SmoothedClassifier(lambda z: model(z).argmax(1), 2, sampler)

        def certify(i: int) -> None:
            smoothed.certify(images[i], n0, n, 0.001, sample_id=i)
    else:
        seg = SmoothedSegmenter(lambda z: model(z).argmax(1), 2, sampler, "holm")

        def certify(i: int) -> None:
            seg.certify(images[i], [0.0, 0.25, 0.5], n0, n, 0.001, sample_id=i)

    # warm-up (first-call allocations, kernel selection) for both paths
    forward_time(model, images[0], batch, batch, sigma, device)
    certify(0)
    t_fwd_total = sum(forward_time(model, images[i], n0 + n, batch, sigma, device) for i in range(len(images)))
    _sync(device)
    start = time.process_time()
    for i in range(len(images)):
        certify(i)
    _sync(device)
    t_cert = time.process_time() - start
    t_fwd_n = t_fwd_total * n / (n0 + n)
    row = {"forward_s": t_fwd_total, "certify_s": t_cert, "vs_n0_plus_n": t_cert / t_fwd_total,
           "vs_n": t_cert / t_fwd_n}
    print(f"{name:<42} forward(n0+n) {t_fwd_total:7.2f} s | certify {t_cert:7.2f} s | "
          f"certify/forward(n0+n) {row['vs_n0_plus_n']:.3f} | certify/forward(n) {row['vs_n']:.3f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=4, help="certified images per setting")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, n0={args.n0}, n={args.n}, "
          f"batch={args.batch}, {args.images} images per setting")
    cls = SmallCNN(in_channels=1, num_classes=2, features=[16, 32, 64], convs_per_stage=1)
    measure("classification SmallCNN 1x28x28 (PneumoniaMNIST)", cls, torch.rand(args.images, 1, 28, 28),
            "classification", args.n0, args.n, args.batch, 0.25, args.device)
    seg = SmallUNet(in_channels=3, out_channels=2, features=[16, 32, 64, 128])
    measure("segmentation SmallUNet 3x64x64 (Holm, 3 radii)", seg, torch.rand(args.images, 3, 64, 64),
            "segmentation", args.n0 // 2, args.n // 4, args.batch // 5, 0.25, args.device)


if __name__ == "__main__":
    main()
