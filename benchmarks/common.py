"""Plumbing the benchmark scripts share: the repository root, the runs of a suite's
``results.json`` (their seeds and typed records), a mean over finite values, a checkpoint of a
shipped config trained once in a subprocess, and a plain training loop for the small models of
the attack benchmarks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def seed_entries(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-seed entries of one run of ``results.json`` (``--seeds N``: ``entry["seeds"]``;
    one seed: the entry itself; no entry: one empty entry)."""
    entry = entry or {}
    return list(entry.get("seeds") or [entry])


def typed_record(data: Any, what: str = "results.json record") -> Any:
    """A robustness record kept in ``results.json`` (its JSON dict) as a
    :class:`callbacks.record.RobustnessRecord`; ``None`` stays ``None``; errors name ``what``."""
    from callbacks.record import RobustnessRecord

    return None if data is None else RobustnessRecord.coerce(data, what)


def finite_mean(values: Iterable[float]) -> float:
    """The mean of the finite values (``nan`` when there is none)."""
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def trained_checkpoint(config: Path, epochs: int, out: Path) -> Path:
    """The newest ``last.ckpt`` under ``out``; when there is none, ``train.py fit`` of ``config``
    for ``epochs`` epochs on the CPU into ``out`` (a subprocess) first."""
    ckpts = sorted(out.rglob("last.ckpt"))
    if not ckpts:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
                        "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu",
                        "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"],
                       check=True, env=env, cwd=ROOT)
        ckpts = sorted(out.rglob("last.ckpt"))
    return ckpts[-1]


def fit_plain(module: Any, batches: Iterable[dict[str, Any]], optimizer: Any,
              adversary: Callable[[Any, dict[str, Any]], Any] | None = None) -> Any:
    """Train ``module`` with a plain loop: per batch, the mean of its per-sample loss on the
    batch's images (or on ``adversary(model, batch)``, e.g. PGD training) and one ``optimizer``
    step; then eval mode. Returns ``module``."""
    model = module.attack_model()
    module.train()
    for batch in batches:
        x = batch["image"] if adversary is None else adversary(model, batch)
        loss = module.per_sample_loss(model(x), batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    return module
