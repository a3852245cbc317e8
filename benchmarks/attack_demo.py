"""Quickstart demo of the attack engine (``make quickstart``).

Trains a tiny CNN for a few seconds on seeded synthetic "lesion" images (a bright Gaussian blob
whose position is the class, on a noisy background), then prints clean accuracy and accuracy
under FGSM, BIM, PGD (L∞ and L2), Carlini–Wagner L2 and Gaussian noise at a couple of budgets,
each with its steps. CPU only, well under a minute.

    python benchmarks/attack_demo.py [--seed 0] [--train-steps 150]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from attacks import BIM, CW, FGSM, PGD, Attack, GaussianNoise

SIZE = 16
CENTRES = [(4.0, 4.0), (4.0, 11.0), (11.0, 7.5)]  # one blob position per class


def make_blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 1, 16, 16]`` images in [0, 1] and labels ``[n]`` in {0, 1, 2}."""
    y = torch.randint(0, len(CENTRES), (n,), generator=g)
    centres = torch.tensor(CENTRES)[y] + 1.0 * torch.randn(n, 2, generator=g)
    grid = torch.arange(SIZE, dtype=torch.float32)
    dy = grid.view(1, SIZE, 1) - centres[:, 0].view(n, 1, 1)
    dx = grid.view(1, 1, SIZE) - centres[:, 1].view(n, 1, 1)
    blob = torch.exp(-(dx**2 + dy**2) / (2 * 2.0**2))
    x = 0.3 + 0.35 * blob + 0.1 * torch.randn(n, SIZE, SIZE, generator=g)
    return x.clamp(0, 1).unsqueeze(1), y


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, len(CENTRES)),
    )


def train(model: nn.Module, g: torch.Generator, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x, y = make_blobs(64, g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for this tiny model on a busy box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = tiny_cnn()
    train(model, g, args.train_steps)
    x, y = make_blobs(args.n_test, g)
    t_train = time.perf_counter() - t0

    eps_inf = (0.03, 0.08)
    eps_l2 = (0.5, 1.0)
    grid: list[tuple[str, Attack]] = []
    for e in eps_inf:
        grid += [
            ("FGSM", FGSM(eps=e)),
            ("BIM", BIM(eps=e, steps=10)),
            ("PGD", PGD(eps=e, steps=10)),
        ]
    for e in eps_l2:
        grid.append(("PGD", PGD(eps=e, norm="l2", steps=10)))
    grid.append(("CW", CW(steps=25, binary_search_steps=3, lr=0.05)))
    grid += [("gaussian", GaussianNoise(std=s)) for s in (0.05, 0.2)]

    rows = [("clean", "-", "-", "-", "-", accuracy(model, x, y), 0.0, 0.0)]
    for label, atk in grid:
        t = time.perf_counter()
        res = atk.perturb(model, x, y, generator=torch.Generator().manual_seed(args.seed))
        d = atk.describe()
        budget = f"{d['eps']:.4g}" if d["eps"] is not None else (
            f"std={d['std']}" if "std" in d else "min-norm")
        steps = d["steps"] if label != "CW" else f"{d['binary_search_steps']}x{d['steps']}"
        rows.append((label, d["norm"] or "-", budget, str(steps), str(d["restarts"]),
                     accuracy(model, res.x_adv, y), float(res.delta_norm.mean()),
                     time.perf_counter() - t))

    title = (f"Attack demo: tiny CNN on synthetic blobs ({args.n_test} test images 1x16x16, "
             f"trained {args.train_steps} steps in {t_train:.1f}s)")
    headers = ("attack", "norm", "eps", "steps", "restarts", "accuracy", "mean ‖δ‖", "time s")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in headers:
            table.add_column(h, justify="left" if h in ("attack", "norm") else "right")
        for r in rows:
            table.add_row(r[0], r[1], r[2], r[3], r[4], f"{r[5]:.3f}", f"{r[6]:.4f}", f"{r[7]:.2f}")
        Console().print(table)
    except ImportError:  # rich is a dependency, but the demo should not die without it
        print(title)
        print(" | ".join(headers))
        for r in rows:
            print(" | ".join([*r[:5], f"{r[5]:.3f}", f"{r[6]:.4f}", f"{r[7]:.2f}"]))
    print(f"total {time.perf_counter() - t0:.1f}s; ‖δ‖ is L∞ for L∞ attacks/noise, L2 for L2/CW")


if __name__ == "__main__":
    main()
