"""``callbacks.Certification``: randomized-smoothing certificates after ``train.py test``, on the
samples the :class:`callbacks.AdversarialEvaluation` of the same run has just attacked.

List it *after* that callback (checked at setup)::

    trainer:
      callbacks:
        - class_path: callbacks.AdversarialEvaluation
          init_args: {test_attacks: standard, test_eps: [0.25, 0.5, 1.0], …}   # norm l2 for the side-by-side
        - class_path: callbacks.Certification
          init_args: {sigmas: [0.25], radii: [0.25, 0.5, 1.0], n0: 100, n: 500}

At the end of ``test`` it certifies the tested model (the task module's ``attack_model()``) by the
task's certification (:mod:`certification.tasks`) at every σ, and adds the ``certified`` entries,
the per-sample columns, ``certified.png`` and the ``report.md`` section to that evaluation's files
(:func:`callbacks.certified_record.add_certification`). Rank 0 certifies (the certificates of a few hundred
samples; the other ranks wait at the end of ``test``). The same work from the command line, on
any checkpoint: ``medrobust certify`` (docs/certification.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

__all__ = ["Certification"]


class Certification(pl.Callback):
    """Randomized-smoothing certification of the tested model (module docstring).

    Args:
        sigmas: noise levels σ (input units).
        radii: L2 radii of the certified curve (the radius 0 row is added).
        n0, n, alpha, batch: selection draws, estimation draws, failure probability, noisy copies
            per forward pass.
        correction: segmentation's family-wise correction (``holm``, ``bonferroni``, ``none``).
        seed: the noise seed (with each sample's id).
        prefix: the ``prefix`` of the AdversarialEvaluation whose files receive the certificates.
    """

    def __init__(self, sigmas: Sequence[float], radii: Sequence[float] = (0.25, 0.5, 1.0), n0: int = 100,
                 n: int = 500, alpha: float = 0.001, batch: int = 250, correction: str = "holm", seed: int = 0,
                 prefix: str = "adv") -> None:
        super().__init__()
        if not sigmas or any(float(s) <= 0 for s in sigmas):
            raise ValueError(f"Certification.sigmas must be positive numbers, got {list(sigmas)}")
        if not radii or any(float(r) <= 0 for r in radii):
            raise ValueError(f"Certification.radii must be positive numbers, got {list(radii)}")
        if correction not in ("holm", "bonferroni", "none"):
            raise ValueError(f"Certification.correction must be 'holm', 'bonferroni' or 'none', got {correction!r}")
        self.sigmas = [float(s) for s in sigmas]
        self.radii = sorted(float(r) for r in radii)
        self.n0, self.n, self.alpha, self.batch = int(n0), int(n), float(alpha), int(batch)
        self.correction, self.seed, self.prefix = correction, int(seed), prefix

    def _evaluation(self, trainer: pl.Trainer) -> Any:
        from callbacks.adversarial_evaluation import AdversarialEvaluation

        callbacks = list(trainer.callbacks)
        mine = callbacks.index(self)
        for i, cb in enumerate(callbacks):
            if isinstance(cb, AdversarialEvaluation) and cb.prefix == self.prefix:
                if i > mine:
                    raise ValueError("Certification must be listed after the AdversarialEvaluation "
                                     f"(prefix {self.prefix!r}) whose samples it certifies")
                return cb
        raise ValueError(f"Certification needs an AdversarialEvaluation with prefix {self.prefix!r} in "
                         "the trainer's callbacks (it certifies that evaluation's samples)")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._evaluation(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        evaluation = self._evaluation(trainer)
        if "test" not in evaluation.last_record or not trainer.is_global_zero:
            return
        from callbacks.certified_record import add_certification, certify_samples
        from certification.sampling import NoiseSampler
        from certification.tasks import certification_for

        out = Path(trainer.log_dir or trainer.default_root_dir)
        record = evaluation.last_record["test"]
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if datamodule is None or not hasattr(datamodule, "dataset"):
            raise ValueError("Certification needs a medrobust datamodule (its dataset('test') items)")
        dataset = datamodule.dataset("test")
        indices = list(record.subset.indices) if record.subset and record.subset.indices is not None \
            else list(range(len(dataset)))
        model = pl_module.attack_model().eval()  # type: ignore[operator]
        grid = [0.0, *self.radii]
        stem = evaluation.file_name("robustness.json").rsplit(".", 1)[0]
        for sigma in self.sigmas:
            sampler = NoiseSampler(sigma, self.batch, self.seed)
            cert = certification_for(pl_module, model, sampler, self.n0, self.n, self.alpha,
                                     self.correction)  # type: ignore[arg-type]
            ids, columns, seconds = certify_samples(cert, dataset, indices, grid, pl_module.device)
            add_certification(out, cert, ids, columns, grid, seconds, file_stem=stem)
