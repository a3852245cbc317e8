"""Compute accounting (callbacks/accounting.py): the evaluator's counts are the model's own."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from attacks import parse_attack_specs
from callbacks.accounting import ComputeAccounting, ComputeMeter, CountingModel
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.record import RobustnessRecord
from tests.support.attack_models import trained


class _CountBackward(torch.autograd.Function):
    """Identity whose backward adds the batch rows to the model's own backward count."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, model: Instrumented) -> torch.Tensor:
        ctx.model = model
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.model.backwards += grad.shape[0]
        return grad, None


class Instrumented(nn.Module):
    """A model that counts its own sample forwards and sample backwards (the ground truth)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.forwards += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            x = _CountBackward.apply(x, self)
        return self.model(x)


class Task:
    """A trained classification module whose attack model is instrumented."""

    def __init__(self, module: Any) -> None:
        self._module, self.model = module, Instrumented(module.attack_model()).eval()

    def attack_model(self) -> nn.Module:
        return self.model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


EPS = [0.02, 0.05]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def test_counts_match_the_models_own_counts_with_a_gradient_free_member_and_skips() -> None:
    module, batch = trained("classification")
    task = Task(module)
    # sequential: PGD, then Square (gradient-free) on the samples PGD did not break
    specs = parse_attack_specs([{"name": "pgd", "steps": 4}, {"name": "square", "steps": 20}], "t")
    ev = RobustnessEvaluator(task, specs, EPS, sequential=True, large_eps=0.25)
    torch.manual_seed(0)
    halves = [{k: v[:16] for k, v in batch.items()}, {k: v[16:] for k, v in batch.items()}]
    ev.run_batch(0, halves[0])
    ev.run_batch(1, halves[1])
    spent = (task.model.forwards, task.model.backwards)
    ev.run_batch(1, halves[1], counted=False)  # a DDP padding copy: computed, never charged
    assert task.model.forwards > spent[0]
    out = ev.compute()
    acc = out.compute
    assert isinstance(acc, ComputeAccounting)
    total = acc.total()
    n = batch["image"].shape[0]
    assert (total["forward"], total["backward"]) == spent
    assert total["backward"] > 0 and acc.samples == n
    square = [m for m in acc.members if m.attack == "square"]
    pgd = [m for m in acc.members if m.attack == "pgd"]
    assert all(m.backward == 0 and m.forward > 0 for m in square), "Square takes no gradient"
    # PGD-4 on the samples it attacked (clean-correct ones: sequential; it stops once all are
    # violated): one forward per backward, at most 4 each, plus the forward scoring the batch
    for m in pgd:
        k = out.gradients[(m.attack, m.eps)]["attacked"]
        assert 0 < k <= n and 0 < m.backward <= 4 * k and m.backward % k == 0
        assert m.forward == m.backward + n
    # the sequential skip: Square attacked only the samples PGD left unviolated
    for m in square:
        assert m.samples_attacked == out.gradients[(m.attack, m.eps)]["attacked"] < n
        assert m.samples_skipped == n - m.samples_attacked
    partly = [m for m in square if 0 < m.samples_attacked < n]
    assert partly, "the test needs a member that skipped some samples and attacked others"
    for m in partly:  # estimate: its attack passes per attacked sample × n, + the scoring forward
        k = m.samples_attacked
        assert m.forward_if_all == pytest.approx((m.forward - n) * n / k + n) and m.forward_if_all > m.forward
    assert acc.saved_by_skipping()["forward"] > 0
    parts = {p.part: p for p in acc.parts}
    assert parts["clean"].forward == 2 * n  # clean + the randomness check
    assert parts["sanity"].backward > 0  # the large-ε APGD
    assert total["seconds"] > 0


def test_counting_model_counts_one_backward_per_forward_graph() -> None:
    """Two forwards of one tensor differentiated together are two backward passes."""
    meter = ComputeMeter()
    inner = Instrumented(nn.Linear(3, 2))
    model = CountingModel(inner, meter)
    x = torch.randn(5, 3, requires_grad=True)
    meter.begin(True, "a")
    loss = model(x).sum() + model(x).sum()
    with torch.no_grad():
        model(x[:2])
    meter.switch("b")  # the backward belongs to the part that built the graph
    torch.autograd.grad(loss, x)
    meter.end()
    t = meter.totals()
    assert t["a"]["forward"] == inner.forwards == 12
    assert t["a"]["backward"] == inner.backwards == 10
    assert t["b"]["forward"] == t["b"]["backward"] == 0
    model(x)  # after end(): not charged
    assert meter.totals()["a"]["forward"] == 12


@pytest.mark.parametrize("sequential", [False, True])
def test_accounting_round_trips_through_the_record(sequential: bool) -> None:
    acc = ComputeAccounting.build(
        {("pgd", 0.1): {"forward": 40, "backward": 30, "seconds": 0.5},
         ("square", 0.1): {"forward": 20, "backward": 0, "seconds": 0.25},
         "clean": {"forward": 10, "backward": 0, "seconds": 0.01}},
        samples=10, attacked={("pgd", 0.1): 10, ("square", 0.1): 4}, sequential=sequential,
        member_keys=[("pgd", 0.1), ("square", 0.1)])
    rec = RobustnessRecord(task="classification", method="clean", epoch=0, split="val",
                           clean={"accuracy": 1.0}, attacks=[], compute=acc)
    back = RobustnessRecord.from_json(rec.to_json())
    assert back.compute is not None and back.compute.to_dict() == acc.to_dict()
    d = back.to_dict()["compute"]
    assert d["total"]["forward"] == 70 and d["total"]["forward_per_sample"] == 7.0
    if sequential:
        sq = d["members"][1]
        assert (sq["samples_skipped"], sq["forward_if_all"]) == (6, 35.0)
        assert d["saved_by_skipping"]["forward"] == 15
    else:
        assert "saved_by_skipping" not in d
    assert "| square | 0.1 | 20 |" in acc.markdown()


def test_eps_stacking_gives_the_same_numbers_and_passes() -> None:
    """One PGD call over the batch repeated per ε equals one call per ε (CPU: bit for bit)."""
    module, batch = trained("classification")
    specs = parse_attack_specs([{"name": "pgd", "steps": 3, "random_start": False}, {"name": "fgsm"}], "t")
    outs, models = [], []
    for stack in (False, True):
        task = Task(module)
        ev = RobustnessEvaluator(task, specs, EPS, stack_eps=stack, check_randomness=False)
        ev.run_batch(0, batch)
        outs.append(ev.compute())
        models.append(task.model)
    plain, stacked = outs
    assert stacked.attacks == plain.attacks and stacked.ensemble == plain.ensemble
    assert stacked.gradients == plain.gradients
    def passes(out: Any) -> list[tuple[Any, ...]]:
        return [(m.attack, m.eps, m.forward, m.backward) for m in out.compute.members]

    assert passes(stacked) == passes(plain)
    # the same sample passes, counted by the model itself, in fewer calls
    assert (models[1].forwards, models[1].backwards) == (models[0].forwards, models[0].backwards)
    assert models[1].calls < models[0].calls
    assert stacked.compute.total()["forward"] == models[1].forwards


def test_speedups_change_no_number_and_the_files_carry_the_accounting(tmp_path: Any) -> None:
    """Two evaluations in one fit, one with every reuse of Speedups that changes no number (all
    but early_exit: tests/callbacks/test_early_exit.py), one with none: the same records at every epoch,
    and passes that differ by exactly the shared first gradient; robustness.json and report.md
    carry the compute accounting."""
    import json

    import lightning as L

    from callbacks import AdversarialEvaluation
    from callbacks.speedups import Speedups
    from tests.support.callback_models import make_datamodule, make_module

    fast = {"attacks": [{"name": "fgsm"}, {"name": "pgd", "norm": "linf", "steps": 2, "random_start": False}],
            "eps": [0.01, 0.03], "subset": 9, "batch_size": 4, "plot": False}
    new, old = AdversarialEvaluation(**fast), AdversarialEvaluation(**fast, prefix="old")
    old.runner.speedups = Speedups.none()
    new.runner.speedups = Speedups(early_exit=False)
    seen: list[tuple[Any, Any]] = []

    class Compare(L.Callback):
        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            a, b = new.last_record["val"], old.last_record["val"]
            seen.append((a, b))
            assert a.to_dict()["attacks"] == b.to_dict()["attacks"] and a.clean == b.clean
            assert a.to_dict()["ensemble"] == b.to_dict()["ensemble"]
            # share_start: each member × ε (both start at x) skips its first forward + backward
            # on each of the 9 samples; the one pass at x is the clean part's (+1 backward each)
            n = 9
            passes = [(m.attack, m.eps, m.forward, m.backward) for m in a.compute.members]
            assert passes == [(m.attack, m.eps, m.forward - n, m.backward - n) for m in b.compute.members]
            clean = {p.part: (p.forward, p.backward) for p in a.compute.parts}["clean"]
            assert clean == (n, n) and {p.part: p.backward for p in b.compute.parts}["clean"] == 0
            members = len(b.compute.members)
            # (and `before` runs the randomness check's second clean forward: n more)
            assert a.compute.total()["forward"] == b.compute.total()["forward"] - members * n - n
            assert a.compute.total()["backward"] == b.compute.total()["backward"] - members * n + n

    dm = make_datamodule()
    tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                   limit_train_batches=1, num_sanity_val_steps=0, callbacks=[new, old, Compare()])
    model = make_module(dm)
    tr.fit(model, dm)
    assert len(seen) == 2
    data = json.loads((tmp_path / "robustness.json").read_text())
    assert data["compute"]["samples"] == 9 and data["compute"]["total"]["backward"] > 0
    # the reuse: one clean forward per sample (no randomness check without the sanity checks)
    assert {p["part"]: p["forward"] for p in data["compute"]["parts"]}["clean"] == 9
    tr.test(model, dm, verbose=False)
    assert "## Compute" in (tmp_path / "report.md").read_text()


def test_stacked_and_shared_start_attacks_equal_one_call_per_eps_bit_for_bit() -> None:
    """ε-stacking with the shared gradient at x gives each ε exactly its own call's x_adv."""
    from attacks import start_gradient

    module, batch = trained("classification")
    specs = parse_attack_specs([{"name": "pgd", "steps": 3, "random_start": False},
                                {"name": "pgd", "label": "pgd_l2", "norm": "l2", "steps": 2,
                                 "random_start": False, "rel_step_size": 0.3}, {"name": "fgsm"}], "t")
    eps = [0.01, 0.03, 0.05]  # the L2 member's budgets are small, but it moves
    ev = RobustnessEvaluator(Task(module), specs, eps, stack_eps=True, share_start=True)
    x, size = batch["image"], batch["image"].shape[0]

    def loss_fn(output: Any, target: Any) -> torch.Tensor:
        return module.per_sample_loss(output, target)

    start, out = start_gradient(ev.model, x, batch, loss_fn)
    with torch.no_grad():
        assert torch.equal(out, ev.model(x))
    for shared in (None, start):
        pre = ev._stack_members(0, batch, x, size, loss_fn, shared)
        assert set(pre) == set(ev.attacks)
        for key, p in pre.items():
            want = ev.attacks[key](ev.model, x, batch, loss_fn=loss_fn)
            assert torch.equal(p.x_adv, want), key
            assert not torch.equal(want, x), key


def test_shared_start_gives_the_same_numbers_with_one_pass_less() -> None:
    """share_start (with and without ε-stacking): the same metrics and gradient health; by the
    model's own counts each starting-at-x member × ε spends one forward + backward per sample
    less, and the clean forward gains one backward per sample."""
    module, batch = trained("classification")
    specs = parse_attack_specs([{"name": "pgd", "steps": 3, "random_start": False}, {"name": "fgsm"},
                                {"name": "pgd", "label": "pgd_rs", "steps": 2}], "t")  # the last starts at random
    n, k = batch["image"].shape[0], len(EPS)
    runs = {}
    for stack in (False, True):
        for share in (False, True):
            task = Task(module)
            ev = RobustnessEvaluator(task, specs, EPS, stack_eps=stack, share_start=share, check_randomness=False)
            ev.run_batch(0, batch)
            runs[stack, share] = (ev.compute(), task.model.forwards, task.model.backwards)
    plain, fwd0, bwd0 = runs[False, False]
    for (stack, share), (out, fwd, bwd) in runs.items():
        assert out.attacks == plain.attacks and out.ensemble == plain.ensemble and out.clean == plain.clean
        assert out.gradients == plain.gradients
        saved = 2 * k * n if share else 0  # pgd and fgsm at each ε
        assert (fwd, bwd) == (fwd0 - saved, bwd0 - saved + (n if share else 0)), (stack, share)
        assert (out.compute.total()["forward"], out.compute.total()["backward"]) == (fwd, bwd)
        members = {(m.attack, m.eps): (m.forward, m.backward) for m in out.compute.members}
        before = {(m.attack, m.eps): (m.forward, m.backward) for m in plain.compute.members}
        for (label, e), (f, b) in members.items():
            cut = n if share and label != "pgd_rs" else 0
            assert (f, b) == (before[label, e][0] - cut, before[label, e][1] - cut)


def test_aliased_ensemble_reports_the_same_numbers_also_when_a_later_batch_differs() -> None:
    """alias_ensemble: while one member wins every sample, the ensemble's updates are that
    member's (deferred); at the first batch where the clean input wins a sample they are
    replayed. The outcome equals the one with every update made."""
    from attacks import FGSM

    module, batch = trained("classification")
    eps = 0.3  # large: FGSM overshoots, and on some samples the clean input stays the worst
    x, y = batch["image"], batch["label"]
    x_adv = FGSM(eps=eps, bounds=tuple(module.data_info.bounds))(module.attack_model(), x, batch,
                                                                 loss_fn=module.per_sample_loss)
    with torch.no_grad():
        worse = module.per_sample_loss(module.attack_model()(x_adv), batch) > module.per_sample_loss(
            module.attack_model()(x), batch)
    assert 0 < int(worse.sum()) < len(y)  # both kinds of sample exist
    first = {k: v[worse] for k, v in batch.items()}  # FGSM wins every sample here
    mixed = {k: v[~worse] for k, v in batch.items()}
    specs = parse_attack_specs([{"name": "fgsm"}], "t")
    for order in ([first, first, mixed], [mixed, first], [first]):
        outs = []
        for alias in (False, True):
            ev = RobustnessEvaluator(Task(module), specs, [eps], alias_ensemble=alias)
            for i, b in enumerate(order):
                ev.run_batch(i, b)
                if alias and i == 0:  # deferred exactly when FGSM won every sample of the batch
                    assert bool(ev.feed.aliases[eps]) == (b is first)
            outs.append(ev.compute())
        plain, aliased = outs
        assert aliased.ensemble == plain.ensemble and aliased.attacks == plain.attacks
        assert aliased.clean == plain.clean


def test_metric_directions_are_asked_in_the_first_evaluation_only(tmp_path: Any) -> None:
    """``cache_directions``: the runner keeps the main metric's direction its first evaluation
    learnt and the callback keeps each metric's (asking builds the task's whole metric
    collection), so epochs 2 and 3 ask nothing; without it, every epoch asks as often as the
    first."""
    import lightning as L

    from callbacks import AdversarialEvaluation
    from callbacks.speedups import Speedups
    from tests.support.callback_models import make_datamodule, make_module

    per_epoch: dict[str, list[int]] = {}
    for name, speedups in (("fast", Speedups()), ("none", Speedups.none())):
        ev = AdversarialEvaluation(attacks=[{"name": "fgsm"}], eps=[0.01], subset=4, batch_size=4,
                                   plot=False, write_json=False, report=False)
        ev.runner.speedups = speedups
        dm = make_datamodule()
        model = make_module(dm)
        asked: list[Any] = []
        original = model.metric_higher_is_better

        def counting(metric: str | None = None, _orig: Any = original, _asked: list = asked) -> bool:
            _asked.append(metric)
            return _orig(metric)

        model.metric_higher_is_better = counting  # type: ignore[method-assign]
        seen: list[int] = []

        class Count(L.Callback):
            def on_validation_epoch_end(self, trainer: Any, pl_module: Any, _seen: list = seen,
                                        _asked: list = asked) -> None:
                _seen.append(len(_asked) - sum(_seen))

        tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                       limit_train_batches=1, num_sanity_val_steps=0, callbacks=[ev, Count()])
        tr.fit(model, dm)
        per_epoch[name] = seen
    assert per_epoch["fast"][0] >= 2 and per_epoch["fast"][1:] == [0, 0]
    # without the cache the first epoch asks the same as with it (the runner once, the callback
    # once per metric) and so does every later one
    assert per_epoch["none"] == [per_epoch["fast"][0]] * 3
