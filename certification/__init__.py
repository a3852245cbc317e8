"""Certified robustness by randomized smoothing, for classification, segmentation and landmarks,
on one sampling engine.

* :mod:`certification.sampling` — :class:`NoiseSampler`: Gaussian noise batches on the model's
  device, vote counts or outputs accumulated over batches, one seeded generator per image;
* :mod:`certification.classify` — :class:`SmoothedClassifier`: PREDICT and CERTIFY (Cohen,
  Rosenfeld & Kolter 2019);
* :mod:`certification.segment` — :class:`SmoothedSegmenter`: per-pixel certification with
  abstention and Holm / Bonferroni correction (Fischer, Baader & Vechev 2021);
* :mod:`certification.landmarks` — :class:`MedianSmoothedLandmarks`: median smoothing of decoded
  coordinates with certified boxes (Chiang et al. 2020);
* :mod:`certification.statistics` — the exact binomial bounds, tests and order statistics;
* :mod:`certification.tasks` — what each task module certifies (``task.certification``);
* :mod:`callbacks.certified_record` (in the callbacks layer: it writes records) — certify a dataset's samples into ``robustness.json``, the per-sample
  file, ``certified.png`` and ``report.md`` (``medrobust certify``).

Detection is not certified: see docs/certification.md.
"""

from certification.classify import ABSTAIN, Certificate, SmoothedClassifier
from certification.landmarks import LandmarkCertificate, MedianSmoothedLandmarks, radial_error_bound
from certification.sampling import NoiseSampler, sample_generator
from certification.segment import SegmentationCertificate, SmoothedSegmenter, certified_scores
from certification.tasks import certification_for, condition_name

__all__ = ["ABSTAIN", "Certificate", "LandmarkCertificate", "MedianSmoothedLandmarks", "NoiseSampler",
           "SegmentationCertificate", "SmoothedClassifier", "SmoothedSegmenter", "certification_for",
           "certified_scores", "condition_name", "radial_error_bound", "sample_generator"]
