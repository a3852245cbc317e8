"""Lightning callbacks that measure and show robustness while a model trains.

* :class:`AdversarialEvaluation` — attacks × ε on a fixed subset every N epochs and at
  validate/test: logged scalars (``adv/…``), ``robustness.json``, curves, ``report.md``.
  It is a trigger (when) over a runner (:mod:`callbacks.evaluation_runner`: subset, DDP
  shards, the attack × ε loop of :mod:`callbacks.evaluation_loop`) and writers
  (:mod:`callbacks.evaluation_writers`).
* :class:`RobustnessRecord` — ``robustness.json`` as one typed object (:mod:`callbacks.record`),
  the only reader and writer of the file.
* :class:`AdversarialExamples` — clean / perturbation / adversarial panels with predictions.
* :class:`MarginMonitor` — histogram and quantiles of AMAT's per-sample margins.
* :class:`ModelCheckpoint` — Lightning's, with a ``last.ckpt`` that is always the latest state
  and a top-k record that survives a resume; :class:`AtomicCheckpointIO` — the crash-safe
  checkpoint writer for ``Trainer(plugins=[...])`` (:mod:`callbacks.checkpoint`).
* :class:`CatastrophicOverfittingWatchdog` — single-step vs multi-step robustness on a training
  subset; warns, stops or restores the pre-collapse weights when single-step training
  overfits catastrophically.

Callbacks talk to a task module only through :class:`lightning_modules.protocol.RobustTask`;
a LightningModule of one's own gets there through :class:`RobustTaskAdapter` (a model, a
per-sample loss and metrics; see :mod:`callbacks.adapter`).
"""

from callbacks.adapter import RobustTaskAdapter
from callbacks.adversarial_evaluation import (
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    AdversarialEvaluation,
    robust_area,
)
from callbacks.adversarial_examples import AdversarialExamples
from callbacks.certification import Certification
from callbacks.checkpoint import AtomicCheckpointIO, ModelCheckpoint
from callbacks.co_watchdog import CatastrophicOverfittingWatchdog
from callbacks.margin_monitor import MarginMonitor
from callbacks.minimal_eps import MinimalEpsConfig, minimal_eps_batch
from callbacks.record import RecordError, RobustnessRecord
from callbacks.report import write_report

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS",
    "AdversarialEvaluation",
    "AdversarialExamples",
    "AtomicCheckpointIO",
    "CatastrophicOverfittingWatchdog",
    "Certification",
    "MarginMonitor",
    "MinimalEpsConfig",
    "ModelCheckpoint",
    "RecordError",
    "RobustTaskAdapter",
    "RobustnessRecord",
    "minimal_eps_batch",
    "robust_area",
    "write_report",
]
