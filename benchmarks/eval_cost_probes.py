"""What :mod:`benchmarks.eval_cost` measures with: the per-epoch timer of the training batches,
the validation loop and each evaluation variant (:class:`EpochTimer`), the check that every
variant's record equals the first's (:class:`SameRecords`), the variants of
:class:`callbacks.evaluation_runner.Speedups`, and the untimed-epoch probes (each variant's runner
repeated, the evaluation's logging, the model's passes alone)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks import AdversarialEvaluation
from callbacks.speedups import Speedups


class EpochTimer(Callback):
    """Wall and CPU time of the training batches, Lightning's validation loop and the
    robustness evaluation, per epoch.

    Put one instance first and ``after`` (see :meth:`after_evaluation`) last in the callback
    list: Lightning calls ``on_validation_epoch_end`` in list order, so the evaluation runs
    between the two marks.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._mark = (0.0, 0.0)
        self._row: dict[str, float] = {}

    @staticmethod
    def _now() -> tuple[float, float]:
        # process_time: CPU seconds of all this process's threads — robust to other load
        return time.perf_counter(), time.process_time()

    def _lap(self, name: str) -> None:
        wall, cpu = self._now()
        self._row[f"{name}_wall_s"] = wall - self._mark[0]
        self._row[f"{name}_cpu_s"] = cpu - self._mark[1]
        self._mark = (wall, cpu)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._row = {}
        self._mark = self._now()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._lap("train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._lap("val_loop")
            _ = trainer.callback_metrics  # untimed: see after_evaluation
            self._mark = self._now()

    def after_evaluation(self, name: str = "eval", last: bool = True) -> Callback:
        """A callback that laps ``name`` (put it right after the evaluation it times); the
        ``last`` one closes the epoch's row."""
        timer = self

        class _After(Callback):
            def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                if not trainer.sanity_checking:
                    timer._lap(name)
                    if last:
                        timer.rows.append(dict(timer._row))
                    else:
                        # Untimed: Lightning's epoch values of what was logged so far (cached
                        # until the next update of each key). Lightning computes them right after
                        # the hook in any run; reading trainer.callback_metrics (direct_logging)
                        # computes them early, which would charge the next variant with the
                        # compute of every scalar the variants before it logged.
                        _ = trainer.callback_metrics
                        timer._mark = timer._now()

        return _After()


class SameRecords(Callback):
    """After every evaluation epoch: does each variant's record have the first variant's clean,
    per-attack (metrics and gradient health) and ensemble entries? (Put it last.)

    A variant with ``early_exit`` (the one reuse that changes numbers) is checked for what it
    promises instead: the same clean entry, and at every attack × ε and ensemble ε the main
    metric (the robust area's) the same or worse; its answer is ``"main ≤"`` then."""

    def __init__(self, evaluations: dict[str, AdversarialEvaluation]) -> None:
        self.evaluations = evaluations
        self.same: dict[str, list[bool | str]] = {name: [] for name in evaluations}

    @staticmethod
    def _key(record: Any) -> Any:
        d = record.to_dict()
        return d["clean"], d["attacks"], d["ensemble"]

    @staticmethod
    def _no_better(record: Any, first: Any) -> bool:
        """Clean equal; the main metric of every attack × ε and ensemble ε no better than ``first``'s."""
        area = first.robust_area
        if area is None or record.to_dict()["clean"] != first.to_dict()["clean"]:
            return False
        metric, lower = area.metric, area.metric_lower_is_better

        def values(rec: Any) -> list[float]:
            d = rec.to_dict()
            return ([a["metrics"][metric] for a in d["attacks"]]
                    + [e["metrics"][metric] for e in d["ensemble"]])

        return all((v >= w) if lower else (v <= w) for v, w in zip(values(record), values(first), strict=True))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        records = {name: ev.last_record["val"] for name, ev in self.evaluations.items()}
        first_record = next(iter(records.values()))
        first = self._key(first_record)
        for name, record in records.items():
            if self._key(record) == first:
                self.same[name].append(True)
            elif record.settings.get("early_exit") and self._no_better(record, first_record):
                self.same[name].append("main ≤")
            else:
                self.same[name].append(False)


def variant_summary(per_epoch: list[bool | str]) -> bool | str:
    """A variant's check over all epochs: ``False`` if any epoch failed, ``"main ≤"`` if any
    passed only that way (early exit), else ``True``."""
    if not per_epoch or False in per_epoch:
        return False
    return "main ≤" if "main ≤" in per_epoch else True


def same_text(same: bool | str) -> str:
    return same if isinstance(same, str) else ("yes" if same else "NO")


def variants(ablate: bool = False) -> dict[str, Speedups]:
    """``before`` (no reuse), ``+<one>`` for each reuse alone, (with ``ablate``) ``-<one>``: all
    but that one — what it adds on top of the others —, and ``after`` (all: the default)."""
    names = list(Speedups.__dataclass_fields__)
    out = {"before": Speedups.none()}
    for name in names:
        out[f"+{name}"] = Speedups(**{k: k == name for k in names})
    if ablate:
        for name in names:
            out[f"-{name}"] = Speedups(**{k: k != name for k in names})
    out["after"] = Speedups()
    return out


def repeat_runs(trainer: L.Trainer, model: Any, evaluations: dict[str, AdversarialEvaluation],
                 repeats: int) -> dict[str, float]:
    """Median CPU seconds of each variant's runner (subset, attacks, metrics; no logging) on the
    trained model, ``repeats`` rounds with the variants interleaved in each round."""
    from callbacks.common import check_robust_task

    if repeats <= 0:
        return {}
    task = check_robust_task(model, "eval_cost")
    times: dict[str, list[float]] = {name: [] for name in evaluations}
    for _ in range(repeats):
        for name, ev in evaluations.items():
            t0 = time.process_time()
            ev.runner.run(trainer, model, task, "val", ev.suites.specs, ev.eps, ev.subset, label=ev.prefix)
            # what evaluate() asks besides the run: the monitor's and each metric's direction
            ev._direction(task, task.main_metric)
            for m in ev.last_record["val"].metric_names():
                ev._direction(task, m, None)
            times[name].append(time.process_time() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


@contextmanager
def timed_logging(prefix: str) -> Iterator[list[tuple[int, float]]]:
    """``[(scalars, CPU seconds)]`` of each Lightning logging call of the evaluation with
    ``prefix`` (:func:`callbacks.evaluation_writers.log_scalars`, as the callback calls it)."""
    import callbacks.adversarial_evaluation as ae
    from callbacks.evaluation_writers import scalar_values

    original, times = ae.log_scalars, []

    def timed(pl_module: Any, record: Any, log_prefix: str, *args: Any, **kwargs: Any) -> None:
        t0 = time.process_time()
        original(pl_module, record, log_prefix, *args, **kwargs)
        if log_prefix == prefix:
            times.append((len(scalar_values(record, log_prefix, *args)), time.process_time() - t0))

    ae.log_scalars = timed
    try:
        yield times
    finally:
        ae.log_scalars = original


def passes_alone(trainer: L.Trainer, model: Any, ev: AdversarialEvaluation, repeats: int) -> float | None:
    """Median CPU seconds of the model's passes alone: per subset batch (as the evaluation cut
    it), as many forward + input-gradient backward passes of the task loss as the evaluation
    spent backward passes per sample, and the remaining forwards without gradients — the
    floor of an evaluation with those passes at that batch size (nothing but the model)."""
    import torch

    from callbacks.common import check_robust_task, guarded_model, set_eval_mode

    record = ev.last_record.get("val")
    batches = next(iter(ev.runner._device_cache.values()), None)
    if repeats <= 0 or record is None or record.compute is None or not batches:
        return None
    total = record.compute.to_dict()["total"]
    bwd = round(total["backward_per_sample"])
    fwd = round(total["forward_per_sample"]) - bwd
    task = check_robust_task(model, "eval_cost")
    net = task.attack_model()
    times = []
    with guarded_model(model, net), torch.inference_mode(False), torch.enable_grad():
        set_eval_mode(model, net)
        for _ in range(repeats):
            t0 = time.process_time()
            for batch in batches:
                x = batch["image"]
                for _ in range(bwd):
                    xv = x.detach().clone().requires_grad_(True)
                    torch.autograd.grad(task.per_sample_loss(net(xv), batch).sum(), xv)
                with torch.no_grad():
                    for _ in range(fwd):
                        net(x)
            times.append(time.process_time() - t0)
    return statistics.median(times)
