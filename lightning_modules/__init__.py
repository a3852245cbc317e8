"""LightningModules: one per task over a shared base, with pluggable training methods.

``TaskModule`` (base) → ``ClassificationModule``, ``SegmentationModule``; methods in
:mod:`lightning_modules.methods` (``Clean``, ``SAT``, ``AMAT``, ``Denoise``, ``TRADES``);
networks in :mod:`lightning_modules.nets`.
"""

from lightning_modules.base import Pipeline, TaskModule
from lightning_modules.classification_module import ClassificationModule
from lightning_modules.methods import AMAT, SAT, TRADES, Clean, Denoise, TrainingMethod
from lightning_modules.protocol import RobustTask
from lightning_modules.segmentation_module import SegmentationModule

__all__ = [
    "AMAT",
    "SAT",
    "TRADES",
    "ClassificationModule",
    "Clean",
    "Denoise",
    "Pipeline",
    "RobustTask",
    "SegmentationModule",
    "TaskModule",
    "TrainingMethod",
]
