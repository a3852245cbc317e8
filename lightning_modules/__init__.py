"""LightningModules: one per task over a shared base, with pluggable training methods.

``TaskModule`` (base) → ``ClassificationModule``, ``SegmentationModule``, ``LandmarkModule``,
``DetectionModule``; methods in
:mod:`lightning_modules.methods` (``Clean``, ``SAT``, ``AMAT``, ``Denoise``, ``TRADES``, and the
fast single-step ``FGSMRS``, ``NFGSM``, ``GradAlign``; ``GaussianAugment`` for randomized
smoothing);
networks in :mod:`lightning_modules.nets`. A task's module is named by its task object
(:mod:`lightning_modules.tasks`: ``model_task("segmentation").module``).
"""

from lightning_modules.base import TaskModule
from lightning_modules.classification_module import ClassificationModule
from lightning_modules.detection_module import DetectionModule
from lightning_modules.landmark_module import LandmarkModule
from lightning_modules.methods import (
    AMAT,
    FGSMRS,
    NFGSM,
    SAT,
    TRADES,
    Clean,
    Denoise,
    GaussianAugment,
    GradAlign,
    TrainingMethod,
)
from lightning_modules.pipeline import Pipeline
from lightning_modules.protocol import RobustTask, TrainableTask
from lightning_modules.segmentation_module import SegmentationModule

__all__ = [
    "AMAT",
    "FGSMRS",
    "NFGSM",
    "SAT",
    "TRADES",
    "ClassificationModule",
    "Clean",
    "Denoise",
    "DetectionModule",
    "GaussianAugment",
    "GradAlign",
    "LandmarkModule",
    "Pipeline",
    "RobustTask",
    "SegmentationModule",
    "TaskModule",
    "TrainableTask",
    "TrainingMethod",
]
