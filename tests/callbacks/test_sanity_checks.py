"""Gradient-masking sanity flags (callbacks/sanity.py): each fires on a model built to mask
gradients, and all stay quiet on an ordinary trained model."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from attacks import APGD
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.outcome import EvalOutcome
from callbacks.sanity import sanity_report
from lightning_modules.tasks import suite_specs
from tests.support.attack_models import Noisy, Quantised, Saturated, trained

EPS = [0.006, 0.02, 0.05]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


class Wrapped:
    """The trained task with its attack model replaced (everything else delegated)."""

    def __init__(self, module: Any, wrap: Any) -> None:
        self._module, self._model = module, wrap(module.attack_model())

    def attack_model(self) -> Any:
        return self._model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def evaluate(wrap: Any = None) -> tuple[dict[str, dict[str, Any]], EvalOutcome]:
    module, batch = trained("classification")
    task = Wrapped(module, wrap) if wrap is not None else module
    specs = suite_specs("quick", "t", "classification", 4)
    ev = RobustnessEvaluator(task, specs, EPS, sequential=True, large_eps=0.25)
    torch.manual_seed(0)
    ev.run_batch(0, batch)
    out = ev.compute()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = sanity_report(out, "accuracy", lower_is_better=False)
    fired = {n for n, e in report.items() if e["flag"]}
    assert {str(w.message).split("'")[1] for w in caught} == fired, "one warning per fired flag"
    return report, out


def flags(report: dict[str, dict[str, Any]]) -> set[str]:
    return {n for n, e in report.items() if e["flag"]}


def test_quiet_on_an_ordinary_model() -> None:
    report, out = evaluate()
    assert flags(report) == set(), report
    assert report["large_eps"]["value"] >= 0.9
    assert set(report) == {"gradient", "monotone", "large_eps", "black_box", "randomness"}
    # a passed check does not read like a failure ("broke only 100.0 %")
    assert "only" not in report["large_eps"]["message"] and "expected at least" in report["large_eps"]["message"]
    assert "failing" not in report["monotone"]["message"]
    assert "masking" not in report["black_box"].get("message", "")


def test_quantised_first_layer_fires_gradient_large_eps_and_black_box() -> None:
    report, _ = evaluate(lambda m: Quantised(m, levels=8))  # 4 levels: chance accuracy
    assert {"gradient", "large_eps", "black_box"} <= flags(report), report
    assert report["gradient"]["value"] == 1.0  # round() has a zero gradient everywhere
    assert "broke only" in report["large_eps"]["message"]
    assert "masking" in report["black_box"]["message"]


def test_saturated_softmax_fires_gradient() -> None:
    report, _ = evaluate(lambda m: Saturated(m))
    assert "gradient" in flags(report), report


def test_randomised_model_fires_randomness() -> None:
    report, _ = evaluate(lambda m: Noisy(m, std=0.05))
    assert "randomness" in flags(report) and report["randomness"]["value"] > 0.5


def test_nonfinite_gradients_are_counted_not_hidden() -> None:
    def model(x: torch.Tensor) -> torch.Tensor:
        # sqrt at 0 has an infinite derivative: sample 0 (all zeros) gets a non-finite gradient
        return torch.stack([x.flatten(1).sqrt().sum(1), -x.flatten(1).sum(1)], dim=1)

    x = torch.rand(3, 1, 4, 4)
    x[0] = 0.0
    res = APGD(eps=0.1, steps=3).perturb(model, x, torch.zeros(3, dtype=torch.long),
                                         generator=torch.Generator().manual_seed(0))
    assert res.gradients is not None and res.gradients.evaluations == 3
    assert res.gradients.nonfinite.tolist()[0] is True
    assert bool(torch.isfinite(res.x_adv).all())


def test_monotone_rule() -> None:
    """A curve that improves with ε fires; a decreasing one (and lower-is-better mirrored) not."""
    def outcome(curve: dict[float, float], clean: float) -> EvalOutcome:
        return EvalOutcome(clean={"m": clean}, attacks={}, ensemble={e: {"m": v} for e, v in curve.items()},
                           descriptions={}, ensemble_rule="loss", num_samples=10)

    up = sanity_report(outcome({0.1: 0.5, 0.2: 0.7}, 0.9), "m", False, warn=False)
    assert up["monotone"]["flag"] and up["monotone"]["value"] == pytest.approx(0.2)
    down = sanity_report(outcome({0.1: 0.5, 0.2: 0.3}, 0.9), "m", False, warn=False)
    assert not down["monotone"]["flag"]
    err = sanity_report(outcome({0.1: 5.0, 0.2: 3.0}, 1.0), "m", True, warn=False)  # error falls
    assert err["monotone"]["flag"]
