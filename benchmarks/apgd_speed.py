"""APGD's overhead over the model's own cost, measured as benchmarks/attack_speed.py does.

Times APGD-k (default k = 100) on the same small CNN (batch 64, CPU) against the floor it
cannot beat: k × (forward + per-sample CE + input-gradient backward) of the bare model,
interleaved in one run (warm-up, then min / median over repeats, wall and process CPU time).
Target: ratio ≤ 1.10. Square (k queries, no gradient) is reported beside it for reference.

    python benchmarks/apgd_speed.py                  # 1 thread, 1x28x28, k=100
    python benchmarks/apgd_speed.py --steps 100 --repeats 7 --threads 1
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from attacks import APGD, Square
from benchmarks.attack_speed import floor_fn, small_cnn, speed_parser


def main() -> None:
    args = speed_parser(__doc__.split("\n\n")[0], steps=100, repeats=7).parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    c, h, w = args.shape
    model = small_cnn(c).eval()
    x = torch.rand(args.batch, c, h, w)
    y = torch.randint(0, 10, (args.batch,))
    k = args.steps
    gen = torch.Generator().manual_seed(0)
    cases: dict[str, Callable[[], object]] = {f"floor: {k} x (fwd + grad)": floor_fn(model, x, y, k)}
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        atk = APGD(eps=eps, norm=norm, steps=k)
        cases[f"apgd-{k} {norm} atk(...)"] = lambda a=atk: a(model, x, y, generator=gen)
    cases[f"square-{k} linf (fwd only)"] = lambda: Square(eps=8 / 255, steps=k)(model, x, y, generator=gen)

    wall: dict[str, list[float]] = {n: [] for n in cases}
    cpu: dict[str, list[float]] = {n: [] for n in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base = next(iter(cases))
    print(f"threads={torch.get_num_threads()} batch={args.batch} input={c}x{h}x{w} k={k} "
          f"repeats={args.repeats} torch={torch.__version__}")
    print(f"{'case':<30} {'wall min ms':>11} {'wall med ms':>11} {'cpu min ms':>10} "
          f"{'ratio wall min':>14} {'ratio wall med':>14} {'ratio cpu min':>13}")
    for name in cases:
        print(f"{name:<30} {min(wall[name]) * 1e3:11.1f} {statistics.median(wall[name]) * 1e3:11.1f} "
              f"{min(cpu[name]) * 1e3:10.1f} {min(wall[name]) / min(wall[base]):14.3f} "
              f"{statistics.median(wall[name]) / statistics.median(wall[base]):14.3f} "
              f"{min(cpu[name]) / min(cpu[base]):13.3f}")


if __name__ == "__main__":
    main()
