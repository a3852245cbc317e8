"""GPU speed paths side by side: fp32 vs bf16 vs bf16 + channels_last (+ torch.compile).

For a quickstart-sized CNN, a ResNet-18 classifier and a U-Net segmenter (MONAI BasicUNet) on
synthetic data, one run measures, per precision/layout configuration:

* throughput of PGD-10 attacks (L∞, images/s, ``atk(model, x, y)`` as training calls it);
* throughput of SAT training steps (PGD-10 + one optimizer step on the adversarial batch);
* peak GPU memory of the configuration (``torch.cuda.max_memory_allocated``);
* the clean and the PGD-10 robust metric on a fixed validation set (classification: accuracy,
  segmentation: mean hard Dice), and whether bf16's robust metric is within 0.5 points of
  fp32's (the check that reduced precision does not hide or create robustness).

Each model is first trained briefly with SAT in fp32 (so the robust metric is neither 0 nor
1), then copied for each configuration; every configuration sees the same weights and data.
bf16 configurations run the model under ``torch.autocast(dtype=torch.bfloat16)``: attacks
take float32 input gradients and their budgets hold in float32 (see docs/scaling.md).

    python benchmarks/gpu_speed.py                     # on a GPU: full sizes, < 5 minutes
    python benchmarks/gpu_speed.py --reduced --device cpu   # CPU smoke mode (the test runs it)
    python benchmarks/gpu_speed.py --reduced --device cpu --models quickstart_cnn --repeats 5

A time budget (``--budget-s``, default 270 s) skips what is left rather than overrun; skipped
rows say so. Results: a printed table and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attacks import PGD
from callbacks.scaling import channels_last_input, compile_network, to_channels_last
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import SAT
from lightning_modules.tasks import model_task


@dataclass
class ModelSpec:
    """One benchmarked model: its task, network and sizes (full / reduced)."""

    name: str
    task: str
    net: dict[str, Any]
    channels: int
    size: tuple[int, int]
    batch: int
    reduced_size: tuple[int, int]
    reduced_batch: int
    eps: float  # L∞ budget of the PGD-10 attacks, pixel units of [0, 1]
    reduced_net: dict[str, Any] | None = None
    #: further arguments of its synthetic datamodule (e.g. ``num_classes``)
    data: dict[str, Any] = field(default_factory=dict)


MODELS = {
    "quickstart_cnn": ModelSpec(
        "quickstart_cnn", "classification",
        {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [8, 16, 32]}},
        channels=1, size=(24, 24), batch=32, reduced_size=(24, 24), reduced_batch=8, eps=0.01,
        data={"num_classes": 2}),
    "resnet18": ModelSpec(
        "resnet18", "classification", {"class_path": "torchvision.models.resnet18"},
        channels=3, size=(224, 224), batch=64, reduced_size=(32, 32), reduced_batch=4, eps=0.004,
        data={"num_classes": 2}),
    "unet": ModelSpec(
        "unet", "segmentation",
        {"class_path": "monai.networks.nets.BasicUNet",
         "init_args": {"features": [32, 32, 64, 128, 256, 32]}},
        channels=1, size=(256, 256), batch=16, reduced_size=(32, 32), reduced_batch=2, eps=0.01,
        reduced_net={"class_path": "monai.networks.nets.BasicUNet",
                     "init_args": {"features": [8, 8, 16, 32, 64, 8]}}),
}
CONFIGS = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(spec: ModelSpec, reduced: bool, n_train: int, n_val: int, seed: int = 0) -> tuple[Any, Any]:
    """The task module (fp32, CPU) and its synthetic datamodule."""
    size = spec.reduced_size if reduced else spec.size
    kw: dict[str, Any] = {"task": spec.task, "num_train": n_train, "num_val": n_val,
                          "num_test": 2, "image_size": size, "in_channels": spec.channels,
                          "seed": seed, **spec.data}
    dm = SyntheticDataModule(**kw)
    net = spec.reduced_net if (reduced and spec.reduced_net) else spec.net
    cls = model_task(spec.task).module
    torch.manual_seed(seed)
    return cls(net=copy.deepcopy(net), data_info=dm.info, lr=1e-3), dm


def batches(dm: Any, split: str, batch: int, device: torch.device) -> list[dict[str, Any]]:
    ds = dm.dataset(split)
    items = [ds[i] for i in range(len(ds))]
    out = []
    for i in range(0, len(items), batch):
        b = collate_batch(items[i:i + batch])
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()})
    return out


def robust_metric(task: Any, out: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Per-sample score in [0, 1], the task's own (``per_sample_metric``): classification
    correct (1/0), segmentation hard Dice."""
    return task.per_sample_metric(out, batch).float()


def sat_step(task: Any, method: SAT, opt: torch.optim.Optimizer, batch: dict[str, Any],
             autocast: Any) -> torch.Tensor:
    task.train()
    with autocast():
        loss, _ = method.training_loss(task, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def measure_config(name: str, base: Any, spec: ModelSpec, train: list[dict[str, Any]],
                   val: list[dict[str, Any]], batch: int, repeats: int, device: torch.device,
                   row: dict[str, Any]) -> None:
    """Fill ``row`` with one configuration's attack / SAT throughput, memory and metrics."""
    bf16 = name.startswith("bf16")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    prep: Callable[[torch.Tensor], torch.Tensor] = (
        channels_last_input if "channels_last" in name else (lambda x: x))

    def copy_of_base() -> Any:
        """A fresh copy of the pre-trained model in this configuration's layout, compiled if
        asked (compiled modules are never deep-copied: their graph is bound to the original)."""
        task = copy.deepcopy(base)
        if "channels_last" in name:
            to_channels_last(task)
        if "compile" in name:
            compile_network(task)
        return task

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t_compile = time.perf_counter()
    task = copy_of_base()
    model = task.attack_model()
    atk = PGD(eps=spec.eps, norm="linf", steps=10, random_start=True,
              bounds=tuple(task.data_info.bounds))
    x0 = prep(val[0]["image"])

    def attack_once(x0: torch.Tensor = x0, b: dict[str, Any] = val[0]) -> torch.Tensor:
        with autocast():
            return atk(model, x0, b, loss_fn=task.per_sample_loss,
                       generator=torch.Generator(device=device).manual_seed(0))

    task.eval()
    attack_once()  # warm-up (and compilation)
    row["warmup_s"] = round(time.perf_counter() - t_compile, 3)
    t_att = timed(attack_once, repeats, device)
    row["attack_s_per_batch"] = t_att
    row["attack_img_per_s"] = batch / t_att

    # Clean and robust metric over the validation set, in this configuration.
    clean, robust = [], []
    for i, b in enumerate(val):
        x = prep(b["image"])
        with autocast():
            x_adv = atk(model, x, b, loss_fn=task.per_sample_loss,
                        generator=torch.Generator(device=device).manual_seed(i))
            with torch.no_grad():
                clean.append(robust_metric(task, model(x), b))
                robust.append(robust_metric(task, model(x_adv), b))
    row["clean"] = float(torch.cat(clean).mean())
    row["robust"] = float(torch.cat(robust).mean())
    row["n_val"] = int(sum(len(c) for c in clean))

    # SAT training steps (PGD-10, adversarial-only), on a copy so weights stay shared.
    trainee = copy_of_base()
    method = SAT(eps=spec.eps, attack={"steps": 10}, beta=1.0)
    topt = torch.optim.AdamW(trainee.parameters(), lr=1e-3)
    tb = dict(train[0])
    tb["image"] = prep(tb["image"])
    step = lambda: sat_step(trainee, method, topt, tb, autocast)  # noqa: E731
    step()  # warm-up
    t_sat = timed(step, repeats, device)
    row["sat_s_per_step"] = t_sat
    row["sat_img_per_s"] = batch / t_sat
    row["peak_mem_mib"] = (torch.cuda.max_memory_allocated(device) / 2**20
                           if device.type == "cuda" else None)


def measure(spec: ModelSpec, args: argparse.Namespace, device: torch.device,
            deadline: float) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    reduced = args.reduced
    batch = args.batch or (spec.reduced_batch if reduced else spec.batch)
    n_val = args.n_val or (2 * batch if reduced else 4 * batch)
    n_train = batch * max(args.train_steps, 1)
    base, dm = build(spec, reduced, n_train, n_val)
    base = base.to(device)  # outside a Trainer: epoch, step and rank read as 0
    train = batches(dm, "train", batch, device)
    val = batches(dm, "val", batch, device)

    # fp32 SAT pre-training: a model whose robust metric is informative.
    t0 = time.perf_counter()
    opt = torch.optim.AdamW(base.parameters(), lr=1e-3)
    pre = SAT(eps=spec.eps, attack={"steps": 3}, beta=0.5)
    for step in range(args.train_steps):
        sat_step(base, pre, opt, train[step % len(train)], nullcontext)
    pretrain_s = time.perf_counter() - t0
    base.eval()

    rows: list[dict[str, Any]] = []
    configs = [c for c in CONFIGS if "compile" not in c or args.compile]
    for name in configs:
        row: dict[str, Any] = {"model": spec.name, "config": name, "batch": batch,
                               "image": [spec.channels, *(spec.reduced_size if reduced else spec.size)],
                               "eps": spec.eps, "metric": model_task(spec.task).module.main_metric}
        if time.perf_counter() > deadline:
            row["skipped"] = "time budget"
            rows.append(row)
            continue
        measure_config(name, base, spec, train, val, batch, args.repeats, device, row)
        rows.append(row)

    # bf16 vs fp32 robust metric (same weights, same data, same seeds)
    ref = next((r for r in rows if r["config"] == "fp32" and "robust" in r), None)
    check = None
    if ref is not None:
        for r in rows:
            if r["config"] != "fp32" and "robust" in r:
                r["attack_time_vs_fp32"] = r["attack_s_per_batch"] / ref["attack_s_per_batch"]
                r["sat_time_vs_fp32"] = r["sat_s_per_step"] / ref["sat_s_per_step"]
        bf = next((r for r in rows if r["config"] == "bf16" and "robust" in r), None)
        if bf is not None:
            diff = 100 * abs(bf["robust"] - ref["robust"])
            check = {"model": spec.name, "metric": ref["metric"], "n_val": ref["n_val"],
                     "fp32_robust": ref["robust"], "bf16_robust": bf["robust"],
                     "diff_points": diff, "within_0.5": diff <= 0.5,
                     # 0 or 1 everywhere makes the comparison trivial: say so
                     "informative": 0.0 < ref["robust"] < 1.0,
                     "pretrain_s": round(pretrain_s, 2)}
    return rows, check


def fmt(v: Any, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    head = (f"{'model':<15}{'config':<28}{'PGD-10 img/s':>13}{'×fp32 t':>8}{'SAT img/s':>11}"
            f"{'×fp32 t':>8}{'peak MiB':>10}{'clean':>7}{'robust':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:<15}{r['config']:<28}  skipped ({r['skipped']})")
            continue
        print(f"{r['model']:<15}{r['config']:<28}{fmt(r['attack_img_per_s'], '13.1f')}"
              f"{fmt(r.get('attack_time_vs_fp32'), '8.2f')}{fmt(r['sat_img_per_s'], '11.1f')}"
              f"{fmt(r.get('sat_time_vs_fp32'), '8.2f')}{fmt(r['peak_mem_mib'], '10.0f')}"
              f"{r['clean']:7.3f}{r['robust']:7.3f}")
    for c in checks:
        verdict = "OK" if c["within_0.5"] else "DIFFERS"
        if not c["informative"]:
            verdict += ", trivial: robust metric is 0 or 1"
        print(f"{c['model']}: robust {c['metric']} fp32 {c['fp32_robust']:.4f} vs bf16 "
              f"{c['bf16_robust']:.4f} on {c['n_val']} samples: {c['diff_points']:.2f} points "
              f"({verdict}, limit 0.5)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--reduced", action="store_true",
                   help="small images, batches and nets (the CPU smoke mode; default off a GPU)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also bf16+channels_last+compile (default: on for cuda, off for cpu)")
    p.add_argument("--batch", type=int, default=None, help="batch size of every model")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    p.add_argument("--train-steps", type=int, default=None, help="fp32 SAT pre-training steps")
    p.add_argument("--n-val", type=int, default=None, help="validation samples for the metric")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--budget-s", type=float, default=270.0, help="skip what is left after this")
    p.add_argument("--out", default="results/gpu_speed/gpu_speed.json")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.reduced:
        print("[gpu_speed] no GPU: running the reduced mode", file=sys.stderr)
        args.reduced = True
    if args.compile is None:
        args.compile = device.type == "cuda"
    args.repeats = args.repeats or (1 if args.reduced else 10)
    args.train_steps = args.train_steps if args.train_steps is not None else (2 if args.reduced else 100)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)

    start = time.perf_counter()
    deadline = start + args.budget_s
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for name in args.models:
        r, c = measure(MODELS[name], args, device, deadline)
        rows += r
        if c is not None:
            checks.append(c)
    report = {"mode": "reduced" if args.reduced else "full", "device": device.type,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
              "compile": bool(args.compile), "wall_s": round(time.perf_counter() - start, 1),
              "rows": rows, "bf16_checks": checks}
    print_table(rows, checks)
    print(f"[gpu_speed] {report['mode']} mode on {report['device_name']}: {report['wall_s']} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"[gpu_speed] wrote {out}")
    return report


if __name__ == "__main__":
    main()
