"""The data side of each task, and the registry of task names (:func:`task_named`).

Built-in tasks: one file each (``classification.py``, ``segmentation.py``, ``landmarks.py``,
``detection.py``); the interface is :class:`~datamodules.tasks.base.DataTask`.
"""

from datamodules.tasks.base import DataTask, register_task, task_named, task_names
from datamodules.tasks.classification import ClassificationData
from datamodules.tasks.detection import DetectionData
from datamodules.tasks.landmarks import LandmarksData
from datamodules.tasks.segmentation import SegmentationData

for builtin in (ClassificationData(), SegmentationData(), LandmarksData(), DetectionData()):
    register_task(builtin)

__all__ = ["ClassificationData", "DataTask", "DetectionData", "LandmarksData", "SegmentationData",
           "register_task", "task_named", "task_names"]
