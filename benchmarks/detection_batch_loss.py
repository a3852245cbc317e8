"""Detection's training loss: torchvision's batch normalisation vs the mean of per-image losses.

torchvision's detectors return, in train mode, one loss for the whole batch; FCOS divides its
summed focal, GIoU and centre-ness terms by the number of foreground locations of the *batch*,
Faster R-CNN averages over the anchors and proposals sampled in the batch. The mean of the
exact per-image losses (``DetectionModule.per_sample_loss(...).mean()``, which methods trained
on before) weighs every image alike instead. This script measures, on batches of synthetic
blood-smear images with uneven object counts (0 to 6 per image), for the tiny FCOS and the
tiny Faster R-CNN:

* the loss value of torchvision (the detector called in train mode), of
  ``DetectionModule.batch_loss`` (what methods train on now) and of the per-image mean;
* the parameter gradient of each against torchvision's: relative L2 difference
  ``‖g − g_tv‖ / ‖g_tv‖`` and cosine similarity.

BatchNorm is frozen and the proposal sampling seeded identically for all three, so
``batch_loss`` must equal torchvision's up to float rounding.

    python benchmarks/detection_batch_loss.py --batches 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import DetectionModule

DETECTORS = {"tiny_fcos": "lightning_modules.nets.detectors.tiny_fcos",
             "tiny_fasterrcnn": "lightning_modules.nets.detectors.tiny_fasterrcnn"}


def torchvision_loss(module: DetectionModule, batch: dict[str, Any], seed: int = 0) -> Tensor:
    """``[]``: the detector's own train-mode loss of the batch (sum of its terms), BatchNorm
    frozen, no random size choice, proposal sampling seeded with ``seed``."""
    wrapper = module.net
    det = wrapper.detector
    z = wrapper.prepare(module.normalizer(batch["image"]))
    targets = wrapper.family.to_detector_targets(batch["boxes"], batch["labels"], z.device)
    was = det.training
    det.train()
    det.transform.eval()  # (its random min-size choice would consume random numbers)
    for m in det.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            losses = det(list(z), targets)
    finally:
        det.train(was)
    return torch.stack([v.reshape(()) for v in losses.values()]).sum()


def module_losses(module: DetectionModule, batch: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    """``{"batch": batch_loss, "mean": per_sample_loss mean}`` of the module (eval mode:
    BatchNorm frozen; the wrapper seeds its sampling with ``seed``)."""
    module.eval()
    module.net.sampling_seed = seed
    out = module(batch["image"])
    return {"batch": module.batch_loss(out, batch),
            "mean": module.per_sample_loss(out, batch).mean()}


def compare(module: DetectionModule, batch: dict[str, Any]) -> dict[str, float]:
    """Values and gradient differences of ``batch`` / ``mean`` against torchvision's loss."""
    params = [p for p in module.parameters() if p.requires_grad]

    def grad(loss: Tensor) -> Tensor:
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                          for g, p in zip(gs, params)])

    ref = torchvision_loss(module, batch)
    g_ref = grad(ref)
    row: dict[str, float] = {"torchvision": float(ref.detach())}
    for name in ("batch", "mean"):
        loss = module_losses(module, batch)[name]
        g = grad(loss)
        row[name] = float(loss.detach())
        row[f"{name}_grad_rel_diff"] = float((g - g_ref).norm() / g_ref.norm().clamp_min(1e-12))
        row[f"{name}_grad_cos"] = float(torch.nn.functional.cosine_similarity(g, g_ref, dim=0))
    row["objects"] = [int(b.shape[0]) for b in batch["boxes"]]  # type: ignore[assignment]
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.batches * args.batch_size
    dm = SyntheticDataModule(task="detection", num_train=n, num_val=4, num_test=4,
                             image_size=(args.image_size, args.image_size), in_channels=3,
                             max_objects=6, seed=0)
    dm.setup("fit")
    data = dm.dataset("train")
    results: dict[str, Any] = {"settings": vars(args), "detectors": {}}
    for name, path in DETECTORS.items():
        torch.manual_seed(0)
        module = DetectionModule(data_info=dm.info, net={"class_path": path})
        rows = [compare(module, collate_batch([data[i] for i in range(j, j + args.batch_size)]))
                for j in range(0, n, args.batch_size)]
        summary = {k: statistics.median(r[k] for r in rows)
                   for k in rows[0] if k != "objects"}
        summary["mean_value_rel_diff_median"] = statistics.median(
            abs(r["mean"] - r["torchvision"]) / r["torchvision"] for r in rows)
        summary["batch_value_rel_diff_max"] = max(
            abs(r["batch"] - r["torchvision"]) / r["torchvision"] for r in rows)
        summary["mean_grad_rel_diff_range"] = [min(r["mean_grad_rel_diff"] for r in rows),
                                               max(r["mean_grad_rel_diff"] for r in rows)]
        summary["batch_grad_rel_diff_max"] = max(r["batch_grad_rel_diff"] for r in rows)
        results["detectors"][name] = {"summary": summary, "rows": rows}
        print(f"{name}: {json.dumps(summary)}", flush=True)
    print(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"{s['batches']} batches of {s['batch_size']} synthetic {s['image_size']} px images "
             "(0–6 objects each), medians over batches; gradients w.r.t. all parameters, "
             "against torchvision's",
             "", "| detector | loss: torchvision | `batch_loss` | per-image mean | value diff of "
             "the mean | grad rel. diff: `batch_loss` (max) | grad rel. diff: mean (median, "
             "range) | grad cosine: mean |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in results["detectors"].items():
        m = d["summary"]
        lo, hi = m["mean_grad_rel_diff_range"]
        lines.append(f"| {name} | {m['torchvision']:.4f} | {m['batch']:.4f} | {m['mean']:.4f} | "
                     f"{100 * m['mean_value_rel_diff_median']:.1f} % | "
                     f"{m['batch_grad_rel_diff_max']:.1e} | {m['mean_grad_rel_diff']:.3f} "
                     f"({lo:.3f}–{hi:.3f}) | {m['mean_grad_cos']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
