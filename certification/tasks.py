"""What certification means for each task: the smoothed model, its per-sample values at each
radius, and their column names — asked of the task module (``task.certification`` names one of
these classes, ``task.hard_prediction`` is what the noise votes on), so nothing here switches on
a task's name.

Per-sample columns (``robustness_samples.csv``, :mod:`callbacks.per_sample`) for one σ, with
``<cond>`` = ``certified-s<σ>`` (:func:`condition_name`):

* every task: ``<cond>/<R>/<metric>`` — the task's per-sample metric of the smoothed model,
  certified at L2 radius ``R`` (``R = 0``: the smoothed model's own prediction, with abstentions);
  ``<cond>/<R>/abstain`` — what abstains at ``R``;
* classification: ``accuracy`` is 1 when CERTIFY returns the true class with radius ``≥ R``;
  ``abstain`` is 1 when its radius is below ``R`` (or it abstained); ``<cond>/radius`` is the
  certified radius itself (empty when abstaining);
* segmentation: ``dice`` and ``pixel_accuracy`` with abstained pixels wrong
  (:func:`certification.segment.certified_scores`); ``abstain`` is the image's fraction of
  abstained pixels;
* landmarks: ``mre`` is the certified *upper bound* on the image's mean radial error (pixels;
  ``mre_mm`` with a known spacing), from each point's certified box; ``abstain`` is the fraction
  of box sides that fell back to the image border (too few draws for ``R``).
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from certification.classify import SmoothedClassifier
from certification.landmarks import MedianSmoothedLandmarks, radial_error_bound
from certification.sampling import NoiseSampler
from certification.segment import SmoothedSegmenter, certified_scores
from certification.statistics import Correction

__all__ = ["ClassificationCertification", "LandmarkCertification", "SegmentationCertification",
           "TaskCertification", "certification_for", "condition_name"]


def condition_name(sigma: float) -> str:
    """The per-sample file's condition of certification at σ: ``certified-s0.25``."""
    return f"certified-s{float(sigma):g}"


class TaskCertification(ABC):
    """Base of the per-task certifications.

    Args:
        task: the task module (its ``hard_prediction``, ``data_info``, ``per_sample_metric``'s
            name and direction).
        model: the model to smooth, images ``[b, C, *spatial]`` → task output (the task's
            ``attack_model()``, or a denoiser in front of it: denoised smoothing).
        sampler: the noise engine.
        n0, n, alpha: selection draws, estimation draws, failure probability.
        correction: the family-wise correction of per-pixel tests (segmentation).
    """

    #: the extra metrics this task writes beside its main one
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    #: True when the task's metric is lower-is-better (the certified value is an upper bound)
    lower_is_better: ClassVar[bool] = False
    #: whether the procedure draws ``n0`` selection samples before the ``n`` estimation ones
    uses_selection: ClassVar[bool] = True
    #: whether the family-wise ``correction`` enters the certificate
    uses_correction: ClassVar[bool] = False
    #: the paper behind the certificate (written into the record)
    reference: ClassVar[str] = ""

    def __init__(self, task: Any, model: nn.Module, sampler: NoiseSampler, n0: int, n: int,
                 alpha: float, correction: Correction = "holm") -> None:
        self.task, self.model, self.sampler = task, model, sampler
        self.n0, self.n, self.alpha, self.correction = int(n0), int(n), float(alpha), correction
        self.metric = str(task.main_metric)
        self.smoothed = self.smoothed_model()

    @abstractmethod
    def smoothed_model(self) -> Any:
        """The task's smoothed model around :meth:`predict` and the sampler (built once, by
        ``__init__``; a task may set its own fields here too)."""

    def predict(self, x: Tensor) -> Tensor:
        """The base model's hard decision on a noisy batch."""
        return self.task.hard_prediction(self.model(x))

    def metrics(self) -> list[str]:
        return [self.metric, *self.extra_metrics]

    @abstractmethod
    def sample_values(self, item: Mapping[str, Any], radii: Sequence[float], sample_id: int) -> dict[str, float]:
        """Per-sample values of one item (a dataset item: ``image`` ``[C, *spatial]`` and the
        task's targets), keyed ``"<R>/<metric>"``, ``"<R>/abstain"`` (and task extras)."""

    @staticmethod
    def key(radius: float, name: str) -> str:
        return f"{float(radius):g}/{name}"


class ClassificationCertification(TaskCertification):
    """CERTIFY of Cohen et al. (:class:`certification.classify.SmoothedClassifier`)."""

    reference = "Cohen, Rosenfeld & Kolter 2019 (CERTIFY, Clopper-Pearson)"

    def smoothed_model(self) -> SmoothedClassifier:
        return SmoothedClassifier(self.predict, max(int(self.task.data_info.num_classes), 2), self.sampler)

    def sample_values(self, item: Mapping[str, Any], radii: Sequence[float], sample_id: int) -> dict[str, float]:
        x = item["image"]
        cert = self.smoothed.certify(x, self.n0, self.n, self.alpha, sample_id)
        label = int(torch.as_tensor(item["label"]).reshape(-1)[0])
        out: dict[str, float] = {"radius": cert.radius if not cert.abstained else math.nan}
        for r in radii:
            ok = (not cert.abstained) and cert.radius >= r
            out[self.key(r, self.metric)] = float(ok and cert.label == label)
            out[self.key(r, "abstain")] = float(not ok)
        return out


class SegmentationCertification(TaskCertification):
    """SegCertify of Fischer et al. (:class:`certification.segment.SmoothedSegmenter`)."""

    extra_metrics = ("pixel_accuracy",)
    uses_correction = True
    reference = "Fischer, Baader & Vechev 2021 (SegCertify, per-pixel tests)"

    def smoothed_model(self) -> SmoothedSegmenter:
        self.num_classes = int(self.task.data_info.num_classes)
        return SmoothedSegmenter(self.predict, self.num_classes, self.sampler, self.correction)

    def sample_values(self, item: Mapping[str, Any], radii: Sequence[float], sample_id: int) -> dict[str, float]:
        cert = self.smoothed.certify(item["image"], radii, self.n0, self.n, self.alpha, sample_id)
        acc, dice = certified_scores(cert.labels, torch.as_tensor(item["mask"]), self.num_classes)
        abstain = cert.abstain_rate()
        out: dict[str, float] = {}
        for i, r in enumerate(cert.radii):
            out[self.key(r, self.metric)] = float(dice[i])
            out[self.key(r, "pixel_accuracy")] = float(acc[i])
            out[self.key(r, "abstain")] = float(abstain[i])
        return out


class LandmarkCertification(TaskCertification):
    """Median smoothing of Chiang et al. (:class:`certification.landmarks.MedianSmoothedLandmarks`);
    ``n0`` is not used (no selection step)."""

    lower_is_better = True
    uses_selection = False
    reference = "Chiang et al. 2020 (median smoothing, order statistics)"

    def smoothed_model(self) -> MedianSmoothedLandmarks:
        info = self.task.data_info
        size = info.image_size
        if not size:
            raise ValueError("landmark certification needs data_info.image_size (the clip to the image)")
        self.has_mm = info.pixel_spacing_mm is not None
        if self.has_mm:
            self.extra_metrics = ("mre_mm",)
        return MedianSmoothedLandmarks(self.predict, size, self.sampler)

    def sample_values(self, item: Mapping[str, Any], radii: Sequence[float], sample_id: int) -> dict[str, float]:
        cert = self.smoothed.certify(item["image"], radii, self.n, self.alpha, sample_id)
        truth = torch.as_tensor(item["landmarks"]).float()
        visible = torch.as_tensor(item["visible"]).bool() & torch.isfinite(truth).all(dim=-1)
        bound = radial_error_bound(cert.lower, cert.upper, torch.nan_to_num(truth))  # [R, L]
        extent = torch.tensor(self.smoothed.extent)
        at_edge = ((cert.lower <= 0) & (cert.median > 0)) | ((cert.upper >= extent) & (cert.median < extent))
        spacing = float(torch.as_tensor(item.get("spacing", math.nan)).reshape(-1)[0])
        out: dict[str, float] = {}
        for i, r in enumerate(cert.radii):
            mre = float(bound[i][visible].mean()) if bool(visible.any()) else math.nan
            out[self.key(r, self.metric)] = mre
            if self.has_mm:
                out[self.key(r, "mre_mm")] = mre * spacing if math.isfinite(spacing) else math.nan
            out[self.key(r, "abstain")] = float(at_edge[i][visible].float().mean()) if bool(visible.any()) else math.nan
        return out


def certification_for(task: Any, model: nn.Module, sampler: NoiseSampler, n0: int, n: int, alpha: float,
                      correction: Correction = "holm") -> TaskCertification:
    """The certification ``task`` names in its ``certification`` class attribute, built."""
    path = getattr(task, "certification", None)
    if not path:
        raise ValueError(f"{type(task).__name__} has no randomized-smoothing certification (detection: "
                         "see docs/certification.md for why)")
    module_name, _, cls_name = str(path).rpartition(".")
    cls: Callable[..., TaskCertification] = getattr(importlib.import_module(module_name), cls_name)
    return cls(task, model, sampler, n0, n, alpha, correction)
