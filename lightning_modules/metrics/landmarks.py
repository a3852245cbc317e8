"""Landmark metrics as torchmetrics ``Metric``s: mean radial error and success detection rate.

Both accumulate per-landmark sums and counts (``dist_reduce_fx="sum"``), so they are exact under
DDP: summing the states of every rank gives the same numbers as one process over all samples.
Only visible landmarks (``visible`` true and finite coordinates) count; in ``"mm"`` units, only
samples whose pixel spacing is known (finite) count, so a dataset without spacing yields NaN in
mm — use pixel units there (the landmark module picks them from ``DataInfo``).

Inputs of ``update`` (the batch contract, :mod:`datamodules.info`):
``preds``/``target`` ``[B, K, 2]`` ``(x, y)`` pixels; ``visible`` Bool ``[B, K]`` (optional);
``spacing`` ``[B]`` mm per pixel, NaN when unknown (needed for ``unit="mm"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MeanRadialError", "SuccessDetectionRate", "radial_errors", "radius_name"]

#: the unit of a radial error
Unit = Literal["px", "mm"]
UNITS: tuple[str, ...] = get_args(Unit)


def radius_name(radius: float, unit: str) -> str:
    """Metric key of an SDR radius: ``2 -> "sdr_2mm"``, ``2.5 -> "sdr_2_5mm"`` (no dots, so
    the key is a valid module / logger name)."""
    return f"sdr_{f'{radius:g}'.replace('.', '_')}{unit}"


def radial_errors(
    preds: Tensor,
    target: Tensor,
    visible: Tensor | None = None,
    spacing: Tensor | None = None,
    unit: Unit = "px",
) -> tuple[Tensor, Tensor]:
    """Radial error per landmark and which of them count.

    Returns:
        ``errors`` ``[B, K]`` float (pixels, or mm when ``unit="mm"``; 0 where not valid) and
        ``valid`` Bool ``[B, K]``.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if preds.shape != target.shape or preds.ndim != 3 or preds.shape[-1] != 2:
        raise ValueError(
            f"preds and target must both be [B, K, 2], got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )
    preds, target = preds.detach().float(), target.detach().float()
    valid = torch.isfinite(target).all(dim=-1) & torch.isfinite(preds).all(dim=-1)
    if visible is not None:
        valid = valid & visible.to(torch.bool)
    err = torch.linalg.vector_norm(preds - target, dim=-1)
    if unit == "mm":
        if spacing is None:
            raise ValueError("unit='mm' needs the batch's pixel spacing ([B], NaN when unknown)")
        sp = spacing.detach().float().reshape(-1, 1).to(err.device)
        valid = valid & torch.isfinite(sp)
        err = err * sp
    return torch.where(valid, err, torch.zeros_like(err)), valid


class _RadialMetric(Metric):
    """Shared argument handling of the two metrics."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, num_landmarks: int, unit: Unit = "px", per_landmark: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.num_landmarks = num_landmarks
        self.unit = unit
        self.per_landmark = per_landmark
        self.add_state("count", default=torch.zeros(num_landmarks), dist_reduce_fx="sum")

    def _errors(self, preds: Tensor, target: Tensor, visible: Tensor | None,
                spacing: Tensor | None) -> tuple[Tensor, Tensor]:
        if preds.shape[1] != self.num_landmarks:
            raise ValueError(f"expected {self.num_landmarks} landmarks, got {preds.shape[1]}")
        err, valid = radial_errors(preds, target, visible, spacing, self.unit)
        self.count += valid.sum(dim=0).to(self.count.dtype)
        return err, valid


class MeanRadialError(_RadialMetric):
    """Mean radial error ``‖pred − target‖`` over all visible landmarks (pixels or mm).

    ``compute()`` returns ``{"mre": overall}`` (``"mre_mm"`` in mm) and, with
    ``per_landmark=True``, also ``"mre_l1"`` … ``"mre_lK"`` (``mre_mm_l1`` …).
    :meth:`per_landmark_values` gives the ``[K]`` tensor. NaN where nothing was counted.
    """

    higher_is_better = False  # an error in pixels / mm

    def __init__(self, num_landmarks: int, unit: Unit = "px", per_landmark: bool = False,
                 **kwargs) -> None:
        super().__init__(num_landmarks=num_landmarks, unit=unit, per_landmark=per_landmark, **kwargs)
        self.add_state("error_sum", default=torch.zeros(num_landmarks), dist_reduce_fx="sum")

    @property
    def key(self) -> str:
        return "mre" if self.unit == "px" else "mre_mm"

    def update(self, preds: Tensor, target: Tensor, visible: Tensor | None = None,
               spacing: Tensor | None = None) -> None:
        err, _ = self._errors(preds, target, visible, spacing)
        self.error_sum += err.sum(dim=0).to(self.error_sum.dtype)

    def per_landmark_values(self) -> Tensor:
        """``[K]`` mean radial error of each landmark (NaN for one never visible)."""
        return self.error_sum / self.count.where(self.count > 0, torch.nan)

    def compute(self) -> dict[str, Tensor]:
        total = self.count.sum()
        out = {self.key: self.error_sum.sum() / total.where(total > 0, torch.nan)}
        if self.per_landmark:
            for k, v in enumerate(self.per_landmark_values(), start=1):
                out[f"{self.key}_l{k}"] = v
        return out


class SuccessDetectionRate(_RadialMetric):
    """Fraction of visible landmarks whose radial error is ``<= radius``, for several radii.

    ``compute()`` returns ``{"sdr_2mm": …, "sdr_2_5mm": …}`` (``sdr_2px`` … in pixels) in
    ``[0, 1]`` and, with ``per_landmark=True``, ``"sdr_2mm_l1"`` …. :meth:`per_landmark_values`
    gives ``[R, K]``.

    Args:
        radii: success radii in ``unit`` (the ISBI 2015 challenge uses 2, 2.5, 3 and 4 mm).
    """

    higher_is_better = True  # a success rate

    def __init__(self, num_landmarks: int, radii: Sequence[float] = (2.0, 2.5, 3.0, 4.0),
                 unit: Unit = "mm", per_landmark: bool = False, **kwargs) -> None:
        super().__init__(num_landmarks=num_landmarks, unit=unit, per_landmark=per_landmark, **kwargs)
        radii = [float(r) for r in radii]
        if not radii or min(radii) < 0:
            raise ValueError(f"radii must be a non-empty list of non-negative numbers, got {radii}")
        self.radii = radii
        self.add_state("hits", default=torch.zeros(len(radii), num_landmarks),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, visible: Tensor | None = None,
               spacing: Tensor | None = None) -> None:
        err, valid = self._errors(preds, target, visible, spacing)
        radii = torch.tensor(self.radii, device=err.device, dtype=err.dtype)
        hit = (err[None] <= radii[:, None, None]) & valid[None]  # [R, B, K]
        self.hits += hit.sum(dim=1).to(self.hits.dtype)

    def per_landmark_values(self) -> Tensor:
        """``[R, K]`` success rate per radius and landmark (NaN for one never visible)."""
        return self.hits / self.count.where(self.count > 0, torch.nan)[None]

    def compute(self) -> dict[str, Tensor]:
        total = self.count.sum()
        rates = self.hits.sum(dim=1) / total.where(total > 0, torch.nan)
        out = {radius_name(r, self.unit): rates[i] for i, r in enumerate(self.radii)}
        if self.per_landmark:
            per = self.per_landmark_values()
            for i, r in enumerate(self.radii):
                for k in range(self.num_landmarks):
                    out[f"{radius_name(r, self.unit)}_l{k + 1}"] = per[i, k]
        return out
