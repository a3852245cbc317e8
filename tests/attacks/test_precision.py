"""Mixed precision: ``--trainer.precision bf16-mixed`` trains every task with every method, the
attacks of training methods and of the evaluation callback run the model under bf16 autocast
with float32 input gradients, and every budget holds exactly in float32. fp16 autocast warns."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from attacks import PGD, Attack, per_sample_norm
from attacks.precision import HalfPrecisionAttackWarning
from train import cli_main

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("classification", "segmentation", "landmarks", "detection")
METHODS = ("clean", "sat", "amat", "denoise", "trades")
#: a one-attack, two-sample evaluation so a run costs one batch of each kind
TINY_EVAL = [{"class_path": "callbacks.AdversarialEvaluation",
              "init_args": {"attacks": [{"name": "pgd", "norm": "linf", "steps": 2}],
                            "eps": [0.01], "subset": 2, "batch_size": 2, "every_n_epochs": 1,
                            "plot": False}}]


class AttackProbe:
    """Records, for every attack call, what the model and the gradient saw."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.grads: list[dict[str, Any]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        perturb, input_gradient = Attack.perturb, Attack.input_gradient
        probe = self

        def recording_input_gradient(self: Attack, call: Any, x_adv: torch.Tensor) -> Any:
            grad, loss, violated = input_gradient(self, call, x_adv)
            probe.grads.append({"autocast": torch.is_autocast_enabled("cpu"),
                                "autocast_dtype": torch.get_autocast_dtype("cpu"),
                                "grad_dtype": grad.dtype, "x_dtype": x_adv.dtype,
                                "finite": bool(torch.isfinite(grad).all()),
                                "nonzero": bool(grad.abs().sum() > 0)})
            return grad, loss, violated

        def recording_perturb(self: Attack, model: Any, x: torch.Tensor, *args: Any, **kw: Any) -> Any:
            res = perturb(self, model, x, *args, **kw)
            if self.eps is not None and self.norm is not None:
                eps = self.eps
                e = (eps.detach().float() if isinstance(eps, torch.Tensor)
                     else torch.full((x.shape[0],), eps, dtype=torch.float32))
                # measured in float32, as the caller measures it: no tolerance
                norm = per_sample_norm(res.x_adv.float() - x.detach().float(), self.norm)
                probe.calls.append({"attack": type(self).__name__, "norm": self.norm,
                                    "x_dtype": res.x_adv.dtype,
                                    "within": bool((norm <= e).all()),
                                    "excess": float((norm - e).max()),
                                    "in_bounds": bool((res.x_adv >= self.bounds[0]).all()
                                                      and (res.x_adv <= self.bounds[1]).all())})
            return res

        monkeypatch.setattr(Attack, "input_gradient", recording_input_gradient)
        monkeypatch.setattr(Attack, "perturb", recording_perturb)


def tiny_run_args(task: str, method: str, root: Path, precision: str = "bf16-mixed") -> list[str]:
    """Overrides that shrink a synthetic experiment config to one batch of training and one of
    evaluation (the config's own network, method and attack settings are kept)."""
    size = {"detection": "[32, 32]"}.get(task, "[16, 16]")
    return [
        "fit", "--config", str(ROOT / f"configs/experiment/{task}_synthetic_{method}.yaml"),
        "--trainer.precision", precision, "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks", json.dumps(TINY_EVAL),
        "--data.init_args.num_train", "4", "--data.init_args.num_val", "2",
        "--data.init_args.num_test", "2", "--data.init_args.batch_size", "2",
        "--data.init_args.image_size", size,
    ] + ([] if method != "amat" or task == "classification" else
         # AMAT's loss-defined violation threshold: given, so the first step already attacks
         ["--model.init_args.method.init_args.initial_threshold",
          "0.5" if task == "segmentation" else "1.0"])


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_bf16_mixed_trains_every_task_and_method(task: str, method: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    probe = AttackProbe()
    probe.install(monkeypatch)
    cli = cli_main(tiny_run_args(task, method, tmp_path))
    trainer = cli.trainer
    assert str(trainer.precision) == "bf16-mixed"
    assert trainer.state.finished and trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    record = trainer.callbacks[0].last_record["val"].to_dict()  # the evaluation callback ran
    assert record["settings"]["precision"] == "bf16-mixed"
    assert record["attacks"] and record["clean"]
    # Every input gradient: taken under bf16 autocast, float32 like its float32 input.
    assert probe.grads, "no attack ran"
    for g in probe.grads:
        assert g["autocast"] and g["autocast_dtype"] == torch.bfloat16, g
        assert g["grad_dtype"] == torch.float32 and g["x_dtype"] == torch.float32, g
        assert g["finite"], g
    assert any(g["nonzero"] for g in probe.grads)
    # Every budgeted attack (training's and evaluation's): float32, inside its ball exactly.
    assert probe.calls
    for c in probe.calls:
        assert c["x_dtype"] == torch.float32, c
        assert c["within"], c
        assert c["in_bounds"], c
    # Training methods that attack did so (the evaluation alone makes 1 call).
    if method in ("sat", "amat", "trades"):
        assert len(probe.calls) >= 2, probe.calls


def test_bf16_autocast_budgets_hold_exactly_in_float32() -> None:
    """Per-sample L2 and scalar L∞ budgets of PGD under bf16 autocast, measured in float32 with
    no tolerance, on images with large intensities (where rounding bites)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    x = torch.rand(6, 1, 8, 8) * 8 - 3  # z-scored-like range
    y = torch.arange(6) % 3
    for norm, eps in (("linf", 0.004), ("l2", torch.tensor([0.1, 0.2, 0.3, 0.05, 0.01, 0.5]))):
        atk = PGD(eps=eps, norm=norm, steps=5, bounds=(-3.0, 5.0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_adv = atk(net, x, y, generator=torch.Generator().manual_seed(0))
        assert x_adv.dtype == torch.float32
        e = eps if isinstance(eps, torch.Tensor) else torch.full((6,), eps)
        n = per_sample_norm(x_adv - x, norm)
        assert bool((n <= e).all()), (norm, (n - e).max())
        assert bool((n > 0.5 * e).all())  # the attack moved (gradients did not vanish)


def test_fp16_autocast_warns_for_attacks() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with torch.autocast("cpu", dtype=torch.float16), pytest.warns(HalfPrecisionAttackWarning,
                                                                 match="bf16-mixed"):
        PGD(eps=0.01, steps=1)(net, x, y)
    with warnings.catch_warnings():  # bf16 and float32: no warning
        warnings.simplefilter("error", HalfPrecisionAttackWarning)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            PGD(eps=0.01, steps=1)(net, x, y)
        PGD(eps=0.01, steps=1)(net, x, y)


def test_gpu_trainer_config_uses_bf16() -> None:
    """The shipped GPU trainer config must not pick the precision that warns."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs/trainer/gpu.yaml").read_text())
    assert cfg["trainer"]["precision"] == "bf16-mixed"


def test_fp16_input_gradients_underflow_where_bf16_do_not() -> None:
    """Why fp16 warns: a segmentation-style loss (per-pixel cross-entropy averaged over a
    256×256 map) spreads the gradient thin; through float16 activations part of it flushes to
    exactly zero, while bf16 (float32's exponent range) keeps (nearly) every entry, like float32."""
    import torch.nn.functional as F

    from attacks.start import input_gradient

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1))
    x, y = torch.rand(1, 1, 256, 256), torch.randint(0, 2, (1, 256, 256))

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none").mean(dim=(1, 2))

    zeros = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
        with warnings.catch_warnings(), ctx:
            warnings.simplefilter("ignore", HalfPrecisionAttackWarning)
            g, _ = input_gradient(net, x, y, loss_fn=loss)
        zeros[name] = float((g == 0).float().mean())
    # bf16 may lose a handful of entries to rounding (a ReLU flipping off, exact cancellation;
    # measured 0 here and 0.1 % on the CI machine), never to underflow at fp16's scale
    assert zeros["fp32"] == 0.0 and zeros["bf16"] < 0.005, zeros
    assert zeros["fp16"] > 0.01 and zeros["fp16"] > 5 * zeros["bf16"], zeros  # fp16: about 2 %
