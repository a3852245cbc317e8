"""Cost of randomized-smoothing certification relative to the base model's forward passes
(issue 26: certification time / (n × forward of the base model) should stay ≤ 1.1).

For each setting, on the same images, side by side in one run:

* ``forward``: the base network alone on ready-made noisy batches of the same size
  (``torch.no_grad``, no hard decision), ``n0 + n`` images per certified image — what any
  Monte-Carlo certificate must pay;
* ``certify``: :mod:`certification`'s CERTIFY (classification) or SegCertify (segmentation, Holm
  over the 4096 pixels at the radii 0, 0.25, 0.5, 1.0) on the same network, ``n0`` and ``n``, with
  the task module's hard decision (``ClassificationModule.hard_prediction``: argmax of the
  probabilities; ``SegmentationModule.hard_prediction``: :func:`attacks.losses.class_argmax`):
  noise generation, forwards, hard decisions, vote counting and the statistics.

Printed per setting: both times, ``certify / forward(n0 + n)`` (the engine's overhead over the
forwards it must make) and ``certify / forward(n)`` (the issue's ratio, which also pays the ``n0``
selection draws: at least ``1 + n0/n`` by construction, so the target needs ``n0 ≪ n``: Cohen et
al.'s n0 = 100, n = 100 000; n0 = n/20 here for segmentation). Then the engine's own work per
certified image, each part timed alone on the same shapes: noise, hard decision, vote counting,
the statistics (tests and correction at every radius), as a fraction of ``forward(n0 + n)``.
One segmentation row takes the hard decision as ``argmax(dim=1)`` (what this benchmark used
before): on one CPU thread an argmax over the short, strided class axis costs ~7 % of the
forwards by itself.

The two paths alternate image by image. Times are the process's CPU time (``time.process_time``; on a GPU, wall time after a
synchronise would be the right clock: use ``--device cuda`` on an idle machine), so that other
jobs on a shared machine do not enter the ratio.

    python benchmarks/certify_cost.py                  # 1 thread, CPU, 1 image per setting, fastest of 3
    python benchmarks/certify_cost.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from attacks.losses import class_argmax  # noqa: E402
from certification import NoiseSampler, SmoothedClassifier, SmoothedSegmenter  # noqa: E402
from certification.statistics import binomial_pvalue_greater, clopper_pearson_lower, reject  # noqa: E402
from lightning_modules.nets import SmallCNN, SmallUNet  # noqa: E402

RADII = [0.0, 0.25, 0.5, 1.0]
SIGMA = 0.25


class Form(ABC):
    """One kind of certificate as this benchmark runs it: the smoothed model, one image's
    certificate and the statistics alone (``k``: ``[1, m]`` vote counts of ``m`` outputs)."""

    @abstractmethod
    def smoothed(self, hard_model: Callable[[Tensor], Tensor], sampler: NoiseSampler) -> Any:
        """The smoothed model of ``hard_model`` under ``sampler``'s noise."""

    @abstractmethod
    def certify(self, smoothed: Any, x: Tensor, n0: int, n: int, sample_id: int) -> None:
        """One image's certificate (the timed unit of the benchmark)."""

    @abstractmethod
    def statistics(self, k: np.ndarray, n: int) -> None:
        """The certificate's statistics alone on vote counts ``k`` ``[1, m]`` of ``n`` draws."""


class Certify(Form):
    """CERTIFY (Cohen et al. 2019): one class per image, Clopper-Pearson lower bound."""

    def smoothed(self, hard_model: Callable[[Tensor], Tensor], sampler: NoiseSampler) -> Any:
        return SmoothedClassifier(hard_model, 2, sampler)

    def certify(self, smoothed: Any, x: Tensor, n0: int, n: int, sample_id: int) -> None:
        smoothed.certify(x, n0, n, 0.001, sample_id=sample_id)

    def statistics(self, k: np.ndarray, n: int) -> None:
        p = float(clopper_pearson_lower(int(k[0, 0]), n, 0.001))
        if p > 0.5:
            float(stats.norm.ppf(p))


class SegCertify(Form):
    """SegCertify (Fischer et al. 2021): one test per pixel at every radius of :data:`RADII`, Holm."""

    def smoothed(self, hard_model: Callable[[Tensor], Tensor], sampler: NoiseSampler) -> Any:
        return SmoothedSegmenter(hard_model, 2, sampler, "holm")

    def certify(self, smoothed: Any, x: Tensor, n0: int, n: int, sample_id: int) -> None:
        smoothed.certify(x, RADII, n0, n, 0.001, sample_id=sample_id)

    def statistics(self, k: np.ndarray, n: int) -> None:
        taus = stats.norm.cdf(np.asarray(RADII) / SIGMA)
        reject(binomial_pvalue_greater(k, n, taus[:, None]), 0.001, "holm", axis=1)


CERTIFY, SEG_CERTIFY = Certify(), SegCertify()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _sizes(total: int, batch: int) -> list[int]:
    return [batch] * (total // batch) + ([total % batch] if total % batch else [])


def _clock(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    start = time.process_time()
    fn()
    _sync(device)
    return time.process_time() - start


def forward_time(model: nn.Module, x: Tensor, total: int, batch: int, device: str) -> float:
    """CPU seconds of ``total`` noisy forwards of ``x`` (``[C, *spatial]``) in batches of
    ``batch``, the noisy batches made beforehand (not timed)."""
    g = torch.Generator(device=device).manual_seed(0)
    batches = [x.unsqueeze(0) + SIGMA * torch.randn((b, *x.shape), generator=g, device=device)
               for b in _sizes(total, batch)]

    def run() -> None:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    return _clock(run, device)


def engine_parts(model: nn.Module, x: Tensor, form: Form, n0: int, n: int, batch: int,
                 hard: Callable[[Tensor], Tensor], device: str) -> dict[str, float]:
    """CPU seconds of the engine's own work for one certified image, each part alone: drawing the
    noisy batches, the hard decision on the network's outputs, counting the votes, the statistics."""
    sampler = NoiseSampler(SIGMA, batch, seed=0)
    sizes = _sizes(n0, batch) + _sizes(n, batch)
    noise = _clock(lambda: [None for _ in sampler.noisy_batches(x, n0, sampler.generator(0, device))]
                   + [None for _ in sampler.noisy_batches(x, n, sampler.generator(1, device))], device)
    with torch.no_grad():
        outputs = [model(x.unsqueeze(0).expand(b, *x.shape)) for b in sizes]
    decide = _clock(lambda: [hard(o) for o in outputs], device)
    labels = [hard(o).long() for o in outputs]

    def count() -> None:
        counts = torch.zeros((2, *labels[0].shape[1:]), dtype=torch.long, device=device)
        for lab in labels:
            torch.aminmax(lab)
            counts.scatter_add_(0, lab, torch.ones_like(lab))
    votes = _clock(count, device)
    m = int(np.prod(labels[0].shape[1:])) if labels[0].dim() > 1 else 1
    k = np.random.default_rng(0).integers(int(0.9 * n), n + 1, size=(1, m))

    tests = _clock(lambda: form.statistics(k, n), device)
    return {"noise": noise, "hard decision": decide, "vote counting": votes, "statistics": tests}


def measure(name: str, model: nn.Module, images: Tensor, form: Form, n0: int, n: int, batch: int,
            device: str, hard: Callable[[Tensor], Tensor], parts: bool = True, repeats: int = 3) -> dict[str, float]:
    model = model.to(device).eval()
    images = images.to(device)
    smoothed = form.smoothed(lambda z: hard(model(z)), NoiseSampler(SIGMA, batch, seed=0))

    def certify(i: int) -> None:
        form.certify(smoothed, images[i], n0, n, i)

    # warm-up (first-call allocations, kernel selection) for both paths
    forward_time(model, images[0], batch, batch, device)
    certify(0)
    # interleaved image by image, so that a change of the machine's load during the run falls on
    # both paths alike; each path's time per image is its fastest of `repeats` runs (the run least
    # disturbed by other processes, as timeit takes its minimum)
    t_fwd = t_cert = 0.0
    for i in range(len(images)):
        fwd, cert = [], []
        for _ in range(repeats):
            fwd.append(forward_time(model, images[i], n0 + n, batch, device))
            cert.append(_clock(lambda i=i: certify(i), device))
        t_fwd, t_cert = t_fwd + min(fwd), t_cert + min(cert)
    t_fwd_n = t_fwd * n / (n0 + n)
    row = {"forward_s": t_fwd, "certify_s": t_cert, "vs_n0_plus_n": t_cert / t_fwd, "vs_n": t_cert / t_fwd_n}
    print(f"{name:<58} n0={n0:<4} n={n:<6} batch={batch:<4} forward(n0+n) {t_fwd:7.2f} s | certify {t_cert:7.2f} s | "
          f"certify/forward(n0+n) {row['vs_n0_plus_n']:.3f} | certify/forward(n) {row['vs_n']:.3f}", flush=True)
    if parts:
        per_image = t_fwd / len(images)
        shares = engine_parts(model, images[0], form, n0, n, batch, hard, device)
        print("    engine per image, share of forward(n0+n): " + " · ".join(
            f"{k} {100 * v / per_image:.2f} %" for k, v in shares.items())
            + f" · sum {100 * sum(shares.values()) / per_image:.2f} %", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=1, help="certified images per setting")
    p.add_argument("--repeats", type=int, default=3, help="runs of each path per image (the fastest counts)")
    p.add_argument("--cohen-n", type=int, default=100_000, help="classification's large n (Cohen et al.: 100 000)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, {args.images} image(s) per "
          f"setting, fastest of {args.repeats} runs, σ={SIGMA}, α=0.001")
    cls = SmallCNN(in_channels=1, num_classes=2, features=[16, 32, 64], convs_per_stage=1)
    x_cls = torch.rand(args.images, 1, 28, 28)

    def cls_hard(z: Tensor) -> Tensor:  # ClassificationModule.hard_prediction
        return z.softmax(dim=1).argmax(dim=1)
    name = "classification SmallCNN 1x28x28 (PneumoniaMNIST)"
    measure(name, cls, x_cls, CERTIFY, 100, 1000, 500, args.device, cls_hard, repeats=args.repeats)
    measure(name, cls, x_cls, CERTIFY, 100, args.cohen_n, 500, args.device, cls_hard, repeats=args.repeats)
    seg = SmallUNet(in_channels=3, out_channels=2, features=[16, 32, 64, 128])
    x_seg = torch.rand(args.images, 3, 64, 64)
    name = "segmentation SmallUNet 3x64x64 (Holm, 4 radii)"
    measure(name, seg, x_seg, SEG_CERTIFY, 50, 250, 50, args.device, class_argmax, repeats=args.repeats)
    measure(name, seg, x_seg, SEG_CERTIFY, 50, 1000, 100, args.device, class_argmax, repeats=args.repeats)
    measure(name + ", argmax(dim=1)", seg, x_seg, SEG_CERTIFY, 50, 1000, 100, args.device,
            lambda z: z.argmax(dim=1), parts=False, repeats=args.repeats)


if __name__ == "__main__":
    main()
