"""Task metrics (torchmetrics ``Metric`` subclasses) that torchmetrics itself lacks."""

from lightning_modules.metrics.detection import DetectionMAP
from lightning_modules.metrics.landmarks import (
    MeanRadialError,
    SuccessDetectionRate,
    radial_errors,
    radius_name,
)

__all__ = ["DetectionMAP", "MeanRadialError", "SuccessDetectionRate", "radial_errors",
           "radius_name"]
