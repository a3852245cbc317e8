"""The one-line robustness summary the medrobust CLI prints after fit / validate / test."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["print_robustness", "summarise_record"]


def print_robustness(trainer: Trainer, metric: str | None) -> None:
    """One line per split: the task's main ``metric`` clean and under each evaluated attack,
    from the ``robustness.json`` record of ``callbacks.AdversarialEvaluation`` (if used)."""
    if not trainer.is_global_zero:
        return
    for cb in trainer.callbacks:
        records = getattr(cb, "last_record", None)
        if not isinstance(records, dict):
            continue
        for split, rec in records.items():
            line = summarise_record(rec, metric)
            if line:
                print(f"[medrobust] {split}: {line}")


def summarise_record(rec: Any, metric: str | None) -> str:
    """``"epoch 9 · clean accuracy 0.91 · pgd linf eps=0.01 (10 steps) accuracy 0.55 · …"``.

    ``rec``: a :class:`callbacks.record.RobustnessRecord` or its ``robustness.json`` dict."""
    from callbacks.record import RobustnessRecord

    rec = RobustnessRecord.coerce(rec, "summary record")
    clean = rec.clean
    if not clean:
        return ""
    metric = metric if metric in clean else next(iter(clean))
    from callbacks.record import EnsembleEntry

    def ci(kind: str, eps: float | None = None, attack: str | None = None) -> str:
        # the per-sample metric's interval, or a dataset-level metric's (AUROC, mAP)
        interval = rec.interval(kind, eps, attack, metric=metric)
        if interval is None or not (math.isfinite(interval.low) and math.isfinite(interval.high)):
            return ""
        return f" [{interval.low:.3f}, {interval.high:.3f}]"

    parts = [f"epoch {rec.epoch}", f"clean {metric} {clean[metric]:.3f}{ci('clean')}"]
    for entry in [*rec.attacks, *rec.ensemble]:
        value = entry.metrics.get(metric)
        if value is None:
            continue
        bounds = ci("worst", entry.eps) if isinstance(entry, EnsembleEntry) else ci("attack", entry.eps, entry.attack)
        norm = f" {entry.norm}" if getattr(entry, "norm", None) else ""
        steps = f" ({entry.steps} steps)" if getattr(entry, "steps", None) else ""
        flags = getattr(entry, "unreliable", None)
        mark = f" ⚠ upper bound ({', '.join(flags)})" if flags else ""
        parts.append(f"{entry.attack}{norm} eps={entry.eps:g}{steps} {metric} {value:.3f}{bounds}{mark}")
    from callbacks.sanity import unreliable_summary

    warning = unreliable_summary(rec)
    if rec.incomplete:
        inc = rec.incomplete
        parts.insert(0, f"⚠ INCOMPLETE ({inc.get('reason')}: {inc.get('samples_evaluated')} of "
                        f"{inc.get('samples_planned')} samples)")
    return " · ".join(parts) + (f" · ⚠ {warning}" if warning else "")
