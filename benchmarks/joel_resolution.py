"""Why Joel et al.'s small-ε collapse does or does not grow with the image size: the input
gradient of the trained joel2022 models, read from a finished ``benchmarks/run.py --suite
joel2022`` run.

To first order, an L∞ attack of size ε raises a sample's loss by ε·||∇ₓ loss||₁ (Goodfellow et
al. 2015, "Explaining and harnessing adversarial examples": the gradient's L1 norm grows with
the input dimension when the weights per input do not shrink). This prints, per model of the
suite, the number of input values, the median L1 norm of the loss gradient over the test split,
ε·that norm at the headline ε and the median logit margin (correct logit minus the best other)
that the attack must overcome.

    python benchmarks/joel_resolution.py                 # results/joel2022 of --quick
    python benchmarks/joel_resolution.py --out results   # another run.py --out
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from benchmarks.common import ROOT
from benchmarks.paper_joel import JOEL_EPS
from lightning_modules import ClassificationModule


def gradient_stats(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``x`` float ``[N, C, H, W]`` in [0, 1], ``y`` int64 ``[N]``: median ||∇ₓ CE||₁ per sample
    and median |margin| of the logits."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")  # per-sample gradients
    (grad,) = torch.autograd.grad(loss, x)
    l1 = grad.flatten(1).abs().sum(1)
    other = logits.detach().clone()
    correct = other.gather(1, y[:, None])[:, 0]
    other.scatter_(1, y[:, None], float("-inf"))
    margin = correct - other.max(1).values
    return {"grad_l1": float(l1.median()), "margin": float(margin.abs().median())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results"), help="benchmarks/run.py --out")
    args = p.parse_args()
    torch.set_num_threads(1)
    if "MEDROBUST_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["MEDROBUST_DATA"] = str((ROOT.parent / "shared" / "data").resolve())
    suite = Path(args.out) / "joel2022"
    runs = json.loads((suite / "results.json").read_text())["runs"]
    print(f"{'run':22s} {'input values':>12s} {'median ||∇x||₁':>15s} {f'ε·||∇x||₁ (ε={JOEL_EPS})':>20s} "
          f"{'median |margin|':>15s}")
    for key, entry in runs.items():
        if "error" in entry:
            continue
        model = ClassificationModule.load_from_checkpoint(ROOT / entry["ckpt"], map_location="cpu",
                                                          weights_only=False).eval()
        dm = _datamodule(ROOT / entry["derived_config"])
        ds = dm.dataset("test")
        x = torch.stack([ds[i]["image"] for i in range(len(ds))])
        y = torch.stack([ds[i]["label"] for i in range(len(ds))])
        s = gradient_stats(model, x, y)
        print(f"{key:22s} {x[0].numel():12d} {s['grad_l1']:15.2f} {JOEL_EPS * s['grad_l1']:20.3f} "
              f"{s['margin']:15.3f}", flush=True)


def _datamodule(config: Path):  # noqa: ANN202 - any BaseDataModule
    """The datamodule of a derived run config (class_path + init_args)."""
    import yaml

    from lightning_modules.nets.builder import import_object

    data = yaml.safe_load(config.read_text())["data"]
    return import_object(data["class_path"])(**(data.get("init_args") or {}))


if __name__ == "__main__":
    main()
