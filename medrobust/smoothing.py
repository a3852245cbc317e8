"""Certified and empirical robustness of one model on the same samples, in one call::

    import medrobust
    record = medrobust.certify("runs/noise/version_0/checkpoints/last.ckpt", "configs/data/pneumoniamnist.yaml",
                               task="classification", sigmas=[0.25], radii=[0.25, 0.5, 1.0],
                               n0=100, n=500, alpha=0.001, subset=200, out="results/noise")

1. the empirical L2 robustness of the (base) model: :func:`medrobust.evaluation.evaluate` with
   the attack ``suite`` at ``ε = radii`` (L2), which writes ``robustness.json``,
   ``robustness_samples.csv``, ``robustness.png`` and ``report.md`` into ``out`` and fixes the
   samples (seeded subset of the split);
2. for every σ, randomized smoothing of the same model on those samples
   (:func:`certification.tasks.certification_for`: CERTIFY, SegCertify or median smoothing), added
   to the same record (``certified``), per-sample file (``certified-s<σ>/…`` columns),
   ``certified.png`` (certified curves beside the empirical one) and ``report.md``.

Denoised smoothing (Salman et al. 2020): ``denoiser=`` a checkpoint trained with the Denoise
method; its auto-encoder goes in front of the model's network (``normalize → denoiser → net``),
for the empirical evaluation and the certification alike.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certification.statistics import Correction
from medrobust.options import Split, When

__all__ = ["certify", "denoised_model"]


def denoised_model(module: Any, denoiser_checkpoint: str | Path) -> nn.Module:
    """``normalize → denoiser → net``: the Denoise method's auto-encoder from
    ``denoiser_checkpoint`` in front of ``module``'s network (Salman et al. 2020's denoised
    smoothing with Xue et al. 2019's denoiser). Both must normalise their input the same way
    (the denoiser was trained on its own model's normalised images)."""
    from lightning_modules import Pipeline
    from medrobust.model_loading import load_model

    _, den = load_model(str(denoiser_checkpoint))
    if den is None or getattr(den.method, "embedded_module", lambda: None)() is None:
        raise ValueError(f"certify: {str(denoiser_checkpoint)!r} is not a checkpoint of a model trained with "
                         "the Denoise method (no embedded denoiser)")
    a, b = module.normalizer, den.normalizer
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(not torch.allclose(sa[k].float(), sb[k].float()) for k in sa):
        raise ValueError("certify: the denoiser's model normalises its input differently from the model "
                         f"({sb} vs {sa}); denoised smoothing needs the same normalisation")
    if den.task != module.task:
        raise ValueError(f"certify: the denoiser comes from a {den.task!r} model, the model is {module.task!r}")
    return Pipeline(module.normalizer, den.method.embedded_module(), module.net).eval()


def certify(
    model: str | Path,
    data: Any,
    task: str,
    sigmas: Sequence[float],
    radii: Sequence[float] = (0.25, 0.5, 1.0),
    n0: int = 100,
    n: int = 500,
    alpha: float = 0.001,
    batch: int = 250,
    out: str | Path = "results/certify",
    *,
    denoiser: str | Path | None = None,
    suite: str | list[dict[str, Any]] = "standard",
    correction: Correction = "holm",
    split: Split = "test",
    subset: int | None = None,
    seed: int = 0,
    sanity: When = "test",
    device: str = "cpu",
    progress: bool = True,
    certificates_from: str | Path | None = None,
) -> Any:
    """Empirical L2 robustness and randomized-smoothing certificates of a medrobust checkpoint
    ``model`` on the same samples (module docstring); returns the
    :class:`callbacks.record.RobustnessRecord` with its ``certified`` entries.

    Args:
        model: a medrobust checkpoint (classification, segmentation or landmarks).
        data: a datamodule, a datamodule / run config path (as :func:`medrobust.evaluate`), or
            tensors ``(x, y)`` described by the checkpoint's ``data_info``.
        task: the task (checked against the checkpoint).
        sigmas: noise levels σ to certify at (input units).
        radii: L2 radii of the certified curve, and the budgets of the empirical L2 suite.
        n0, n, alpha, batch: CERTIFY's selection draws, estimation draws, failure probability,
            and noisy copies per forward pass.
        denoiser: a Denoise-method checkpoint whose auto-encoder goes in front (denoised smoothing).
        suite: the empirical attack suite (named, or a list; ``standard`` by default).
        correction: segmentation's family-wise correction (``holm``, ``bonferroni``, ``none``).
        split, subset, seed: the samples (as :func:`medrobust.evaluate`); ``seed`` also seeds the noise.
        sanity: the empirical evaluation's gradient-masking checks (``test`` or ``never``).
        device: where the model and the noise live (``cpu``, ``cuda``).
        certificates_from: an earlier certify output folder of the same model, samples and
            certification settings: its certificates are copied (checked field by field,
            :func:`callbacks.certified_record.reuse_certification`) instead of recomputed, and only the
            empirical suite runs — e.g. a stronger suite beside existing certificates.
    """
    from callbacks.certified_record import add_certification, certify_samples, reuse_certification
    from callbacks.record import RobustnessRecord
    from certification.sampling import NoiseSampler
    from certification.tasks import certification_for
    from medrobust.evaluation import evaluate
    from medrobust.evaluation_data import as_datamodule
    from medrobust.model_loading import load_model

    if not sigmas:
        raise ValueError("certify: give at least one noise level sigma")
    if any(float(r) <= 0 for r in radii):
        raise ValueError(f"certify: radii must be > 0 (the radius 0 row is always added), got {list(radii)}")
    _, module = load_model(str(model))
    if module is None:
        raise ValueError(f"certify: {str(model)!r} is not a medrobust checkpoint")
    if module.task != task:
        raise ValueError(f"certify: the checkpoint is a {module.task!r} model, not {task!r}")
    module.eval()
    smoothed_model = denoised_model(module, denoiser) if denoiser is not None else module.attack_model()
    if certificates_from is not None:  # refuse a mismatch before the (long) evaluation
        from callbacks.certified_record import certificates_source

        for sigma in sigmas:
            probe = certification_for(module, smoothed_model, NoiseSampler(float(sigma), batch, seed),  # type: ignore[arg-type]
                                      n0, n, alpha, correction)
            certificates_source(certificates_from, probe, [0.0, *sorted(float(r) for r in radii)], task, split)
    out = Path(out)
    if isinstance(data, (tuple, list)) and len(data) == 2:  # tensors (x, y), described by the checkpoint
        from datamodules.tasks import task_named
        from medrobust.evaluation_data import TensorDataModule

        x, y = task_named(task, "evaluate").check_tensors(data[0], data[1], "evaluate")
        dm = TensorDataModule(x, y, task, module.data_info, batch)
    else:
        dm = as_datamodule(data, task)
    if denoiser is None:
        record = evaluate(str(model), dm, task=task, suite=suite, eps=list(radii), norm="l2", out=out,
                          split=split, subset=subset, seed=seed, sanity=sanity, progress=progress)
    else:  # the composite, its normalisation inside it
        record = evaluate(smoothed_model, dm, task=task, suite=suite, eps=list(radii), norm="l2",
                          normalization="none", out=out, split=split, subset=subset, seed=seed,
                          sanity=sanity, progress=progress, module_options=_options(module))
    indices = list(record.subset.indices) if record.subset is not None and record.subset.indices is not None else None
    dm.setup("test" if split == "test" else "validate")
    dataset = dm.dataset(split)
    if indices is None:
        indices = list(range(len(dataset)))
    smoothed_model = smoothed_model.to(device).eval()
    grid = [0.0, *sorted(float(r) for r in radii)]
    for sigma in sigmas:
        sampler = NoiseSampler(float(sigma), batch, seed)
        cert = certification_for(module, smoothed_model, sampler, n0, n, alpha, correction)  # type: ignore[arg-type]
        if certificates_from is not None:
            reuse_certification(out, certificates_from, cert, grid)
            continue

        def report(done: int, total: int, s: float = float(sigma)) -> None:
            if progress and (done == total or done % max(1, total // 10) == 0):
                print(f"[certify] σ={s:g}: {done}/{total} samples", file=sys.stderr, flush=True)

        ids, columns, seconds = certify_samples(cert, dataset, indices, grid, device, report)
        add_certification(out, cert, ids, columns, grid, seconds)
    return RobustnessRecord.load(out / "robustness.json")


def _options(module: Any) -> dict[str, Any]:
    """Task-module options the wrapped composite must keep (a binary single logit)."""
    return {"binary_single_logit": True} if getattr(module, "single_logit", False) else {}
