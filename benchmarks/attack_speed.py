"""Overhead of the attack engine over the model's own cost.

Times PGD-k on a small CNN (batch 64, CPU by default) against the floor it cannot beat:
k × (forward + per-sample cross-entropy + input-gradient backward via ``torch.autograd.grad``)
of the bare model. Both are measured side by side, interleaved, in one run (warm-up first,
then the minimum and median over repeats, of wall-clock and of process CPU time — the latter
is robust to other load on a shared machine with one thread), and the ratio attack / floor is
printed; the target is ≤ 1.10.

    python benchmarks/attack_speed.py                 # 1 thread, 1x28x28, k=10
    python benchmarks/attack_speed.py --threads 2 --shape 3 32 32 --repeats 15

Rows: ``pgd(...)`` is ``atk(model, x, y)`` (what training uses: no final evaluation forward);
``pgd.perturb`` also evaluates the final loss (one more no-grad forward), reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attacks import BIM, MIFGSM, PGD


def small_cnn(in_ch: int, n_classes: int = 10) -> nn.Module:
    """3 conv layers + linear, the size of an MNIST/CIFAR baseline."""
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes),
    )


def floor_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> Callable[[], None]:
    """k × (forward + per-sample CE + autograd.grad wrt the input) — nothing else."""

    def run() -> None:
        for _ in range(k):
            xv = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xv), y, reduction="none")
            torch.autograd.grad(loss.sum(), xv)

    return run


def speed_parser(description: str, steps: int, repeats: int) -> argparse.ArgumentParser:
    """The options of the attack speed benchmarks: batch, image shape, steps, repeats, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shape", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"))
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main() -> None:
    parser = speed_parser(__doc__.split("\n\n")[0], steps=10, repeats=11)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    c, h, w = args.shape
    model = small_cnn(c).to(dev).eval()
    x = torch.rand(args.batch, c, h, w, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    k = args.steps
    gen = torch.Generator(device=dev).manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cases: dict[str, Callable[[], object]] = {
        f"floor: {k} x (fwd + grad)": floor_fn(model, x, y, k),
    }
    for norm in ("linf", "l2"):
        pgd = PGD(eps=8 / 255 if norm == "linf" else 0.5, norm=norm, steps=k)
        cases[f"pgd-{k} {norm}  atk(...)"] = (
            lambda a=pgd: a(model, x, y, generator=gen)
        )
        cases[f"pgd-{k} {norm}  .perturb"] = (
            lambda a=pgd: a.perturb(model, x, y, generator=gen)
        )
    cases[f"bim-{k} linf atk(...)"] = lambda: BIM(eps=8 / 255, steps=k)(model, x, y)
    cases[f"mifgsm-{k} linf"] = lambda: MIFGSM(eps=8 / 255, steps=k)(model, x, y)

    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(2):  # warm-up (allocator, kernels)
        for fn in cases.values():
            fn()
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
        for name, fn in cases.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    base = next(iter(cases))
    w_min, w_med, c_min = min(wall[base]), statistics.median(wall[base]), min(cpu[base])
    print(
        f"device={dev} threads={torch.get_num_threads()} batch={args.batch} "
        f"input={c}x{h}x{w} k={k} repeats={args.repeats} torch={torch.__version__}"
    )
    # CPU time of this process is what the attack costs; wall time also counts other load.
    print(f"{'case':<28} {'wall min ms':>11} {'wall med ms':>11} {'cpu min ms':>10} "
          f"{'ratio wall min':>14} {'ratio wall med':>14} {'ratio cpu min':>13}")
    for name in cases:
        print(
            f"{name:<28} {min(wall[name]) * 1e3:11.1f} {statistics.median(wall[name]) * 1e3:11.1f} "
            f"{min(cpu[name]) * 1e3:10.1f} {min(wall[name]) / w_min:14.3f} "
            f"{statistics.median(wall[name]) / w_med:14.3f} {min(cpu[name]) / c_min:13.3f}"
        )
    print("target: pgd atk(...) ratio <= 1.10")


if __name__ == "__main__":
    main()
