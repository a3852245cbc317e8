"""Anatomical landmark detection by heatmap regression, with sub-pixel decoding.

Batch (the contract in :mod:`datamodules.info`): ``image`` ``[B, C, H, W]`` in
``data_info.bounds``; ``landmarks`` float32 ``[B, K, 2]`` ``(x, y)`` pixels; ``visible`` bool
``[B, K]``; ``spacing`` float32 ``[B]`` mm per pixel (NaN when unknown).

Network output: heatmaps ``[B, K, h, w]`` (one channel per landmark; any U-Net-like network by
``class_path``, at the image resolution or a fixed fraction of it), or, with
``regression_head=True``, ``{"heatmaps": [B, K, h, w], "coords": [B, K, 2]}``.

Everything a training method or an attack needs is loss-defined, so clean, SAT, AMAT, denoise
and TRADES train landmarks without knowing the task:

* ``per_sample_loss`` = masked heatmap MSE against Gaussian targets (+ optional integral
  coordinate loss on the decoded points, + optional loss of the regression head);
* ``violation_statistic`` = that per-sample loss, ``violation_direction = "above"``: AMAT's
  violation test for landmarks (Ma & Liang) is "loss above a threshold computed from the clean
  model's training losses" — AMAT computes it; ``is_violated`` without a threshold uses
  ``violation_threshold`` or, by default, the loss of a perfect Gaussian displaced by
  ``violation_radius`` pixels (an error radius, in the loss's own units);
* ``output_divergence`` (TRADES) = heatmap MSE between adversarial and clean outputs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from attacks.options import check_choice
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule
from lightning_modules.fault_tolerance import NonFiniteMode
from lightning_modules.methods.base import TrainingMethod
from lightning_modules.metrics.landmarks import MeanRadialError, SuccessDetectionRate
from lightning_modules.nets.builder import build_net
from lightning_modules.nets.heatmap import (
    CoordinateRegressionHead,
    coordinate_loss,
    decode_heatmaps,
    default_beta,
    default_window,
    gaussian_heatmaps,
    masked_heatmap_loss,
)
from lightning_modules.optimization import OptimizerName, SchedulerName
from lightning_modules.panels import PointsPanel
from lightning_modules.protocol import Batch

Decoder = Literal["local_soft_argmax", "soft_argmax", "argmax"]
DECODERS: tuple[str, ...] = get_args(Decoder)
PredictFrom = Literal["heatmap", "regression"]


class HeatmapWithRegression(nn.Module):
    """A heatmap network plus a :class:`CoordinateRegressionHead` reading its heatmaps.

    Output: ``{"heatmaps": [B, K, h, w], "coords": [B, K, 2]}`` (``coords`` in the heatmap's
    pixel frame; the landmark module rescales when the heatmaps are smaller than the image).
    """

    def __init__(self, net: nn.Module, num_landmarks: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = net
        self.head = CoordinateRegressionHead(num_landmarks, hidden=hidden)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        heatmaps = self.net(x)
        return {"heatmaps": heatmaps, "coords": self.head(heatmaps)}


class LandmarkModule(TaskModule):
    """Heatmap-based landmark detection.

    Args:
        net, data_info, method, optimizer, lr, weight_decay, momentum, scheduler, mean, std,
        nonfinite, max_nonfinite_skips, corruption_augment:
            see :class:`lightning_modules.base.TaskModule`. ``net`` is any 2-D network mapping
            ``[B, C, H, W]`` to ``[B, K, h, w]`` (``out_channels`` is filled with ``K``): the
            default ``SmallUNet``, MONAI ``BasicUNet`` / ``UNet`` / ``AttentionUnet``…
        sigma: standard deviation (image pixels) of the Gaussian target heatmaps.
        decode: ``"local_soft_argmax"`` (default), ``"soft_argmax"`` or ``"argmax"`` (see
            :func:`lightning_modules.nets.heatmap.decode_heatmaps`).
        decode_beta: soft-argmax inverse temperature (targets have peak 1); ``None`` =
            ``max(8, 2.5·σ²)`` (σ in heatmap pixels, see
            :func:`lightning_modules.nets.heatmap.default_beta`).
        decode_window: local soft-argmax radius in heatmap pixels; ``None`` =
            ``max(3, ceil(1.5·σ))``.
        coord_loss_weight: weight of an integral-regression loss (mean distance of the decoded
            points to the truth, in units of the image side) added to the heatmap loss;
            0 = heatmap loss only.
        regression_head: add a direct coordinate-regression head on the heatmaps (the output
            becomes a dict; the denoise method then needs ``feature_layer: net``, the heatmap
            network inside the wrapper).
        regression_loss_weight: weight of the head's loss (same units as above).
        predict_from: ``"heatmap"`` (decoded heatmaps, default) or ``"regression"`` (the head).
        violation_threshold: default loss threshold of :meth:`is_violated` (``None``: derived
            from ``violation_radius``).
        violation_radius: pixels; see the module docstring.
        sdr_radii: success radii, in mm when the data knows its pixel spacing
            (``data_info.pixel_spacing_mm``), else in pixels.
        per_landmark_metrics: also report ``mre_l1`` … and ``sdr_*_l1`` … per landmark.
    """

    task = "landmarks"
    default_net = "lightning_modules.nets.SmallUNet"
    violation_direction = "above"
    main_metric: ClassVar[str] = "mre"
    panel = PointsPanel()

    def __init__(
        self,
        net: dict | None = None,
        data_info: DataInfo | None = None,
        method: TrainingMethod | None = None,
        sigma: float = 2.0,
        decode: Decoder = "local_soft_argmax",
        decode_beta: float | None = None,
        decode_window: int | None = None,
        coord_loss_weight: float = 0.0,
        regression_head: bool = False,
        regression_loss_weight: float = 1.0,
        predict_from: PredictFrom = "heatmap",
        violation_threshold: float | None = None,
        violation_radius: float = 4.0,
        sdr_radii: list[float] | None = None,
        per_landmark_metrics: bool = False,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: SchedulerName = "none",
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        nonfinite: NonFiniteMode = "error",
        max_nonfinite_skips: int | None = None,
        corruption_augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net=net, data_info=data_info, method=method, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, momentum=momentum, scheduler=scheduler,
                         mean=mean, std=std,
                         nonfinite=nonfinite, max_nonfinite_skips=max_nonfinite_skips,
                         corruption_augment=corruption_augment)
        owner = type(self).__name__
        info = self.data_info
        if info.num_landmarks < 1:
            raise ValueError(f"{owner} needs data_info.num_landmarks >= 1, got {info.num_landmarks}")
        if info.spatial_dims != 2:
            raise ValueError(f"{owner} handles 2-D images; data_info.spatial_dims={info.spatial_dims}")
        if sigma <= 0:
            raise ValueError(f"{owner}.sigma must be > 0, got {sigma}")
        check_choice(f"{owner}.decode", decode, DECODERS)
        if predict_from not in get_args(PredictFrom):
            raise ValueError(f"{owner}.predict_from must be 'heatmap' or 'regression', got {predict_from!r}")
        if predict_from == "regression" and not regression_head:
            raise ValueError(f"{owner}.predict_from='regression' needs regression_head=True")
        if min(coord_loss_weight, regression_loss_weight) < 0 or violation_radius < 0:
            raise ValueError(f"{owner}: loss weights and violation_radius must be >= 0")
        self.num_landmarks = info.num_landmarks
        self.sigma = float(sigma)
        self.decode = decode
        self.decode_beta = None if decode_beta is None else float(decode_beta)
        self.decode_window = decode_window
        self.coord_loss_weight = float(coord_loss_weight)
        self.regression_head = bool(regression_head)
        self.regression_loss_weight = float(regression_loss_weight)
        self.predict_from = predict_from
        self.violation_radius = float(violation_radius)
        self._violation_threshold = violation_threshold
        self.metric_unit = "mm" if info.pixel_spacing_mm is not None else "px"
        self.sdr_radii = [float(r) for r in (sdr_radii or [2.0, 2.5, 3.0, 4.0])]
        self.per_landmark_metrics = bool(per_landmark_metrics)
        self.build()

    # ------------------------------------------------------------------ construction
    def output_channels(self) -> int:
        return self.num_landmarks

    def build_network(self, spec: dict | None) -> nn.Module:
        net = build_net(spec, self.data_info, self.output_channels(), self.default_net)
        return HeatmapWithRegression(net, self.num_landmarks) if self.regression_head else net

    # ------------------------------------------------------------------ output helpers
    def _parts(self, output: Any) -> tuple[Tensor, Tensor | None]:
        """``(heatmaps [B, K, h, w], coords [B, K, 2] in image pixels or None)``."""
        if isinstance(output, dict):
            heat, coords = output["heatmaps"], output.get("coords")
        else:
            heat, coords = output, None
        if not isinstance(heat, Tensor) or heat.ndim != 4 or heat.shape[1] != self.num_landmarks:
            got = tuple(heat.shape) if isinstance(heat, Tensor) else type(heat).__name__
            raise ValueError(
                f"landmarks expect heatmaps [B, {self.num_landmarks}, h, w] from the net, got {got}"
            )
        if coords is not None:
            coords = self._to_image(coords, heat)
        return heat, coords

    def _scale(self, heat: Tensor) -> tuple[float, float]:
        """Image pixels per heatmap pixel along x and y (1 at full resolution)."""
        size = self.data_info.image_size
        if len(size) != 2:
            return 1.0, 1.0
        return size[1] / heat.shape[3], size[0] / heat.shape[2]

    def _to_heatmap(self, points: Tensor, heat: Tensor) -> Tensor:
        sx, sy = self._scale(heat)
        if sx == sy == 1.0:
            return points
        s = points.new_tensor([sx, sy])
        return (points + 0.5) / s - 0.5  # pixel-centre convention, like the resize transform

    def _to_image(self, points: Tensor, heat: Tensor) -> Tensor:
        sx, sy = self._scale(heat)
        if sx == sy == 1.0:
            return points
        s = points.new_tensor([sx, sy])
        return (points + 0.5) * s - 0.5

    def _window(self, heat: Tensor) -> int:
        if self.decode_window is not None:
            return int(self.decode_window)
        sx, sy = self._scale(heat)
        return default_window(self.sigma / max(sx, sy))

    def _beta(self, heat: Tensor) -> float:
        if self.decode_beta is not None:
            return self.decode_beta
        sx, sy = self._scale(heat)
        return default_beta(self.sigma / max(sx, sy))

    def target_heatmaps(self, heat: Tensor, batch: Batch) -> Tensor:
        """Gaussian targets ``[B, K, h, w]`` for the batch, in the heatmaps' frame."""
        pts = self._to_heatmap(batch["landmarks"].to(heat.device, torch.float32), heat)
        sx, sy = self._scale(heat)
        return gaussian_heatmaps(pts, heat.shape[2:], self.sigma / max(sx, sy),
                                 batch["visible"].to(heat.device))

    def attack_loss_inputs(self, output: Any, batch: Batch) -> tuple[Tensor, Tensor]:
        """Heatmaps ``[B, L, h, w]`` and ``[B, L, 3]``: the true ``(x, y)`` in the heatmap
        frame and the visibility (1/0)."""
        heat, _ = self._parts(output)
        pts = self._to_heatmap(batch["landmarks"].to(heat.device, torch.float32), heat)
        vis = batch["visible"].to(heat.device, torch.float32)
        return heat, torch.cat([pts, vis[..., None]], dim=-1)

    def decode_points(self, output: Any) -> Tensor:
        """``[B, K, 2]`` ``(x, y)`` image pixels, decoded with sub-pixel precision (or from the
        regression head when ``predict_from="regression"``)."""
        heat, coords = self._parts(output)
        if self.predict_from == "regression" and coords is not None:
            return coords
        pts = decode_heatmaps(heat, self.decode, self._beta(heat), self._window(heat))
        return self._to_image(pts, heat)

    # ------------------------------------------------------------------ protocol
    def per_sample_loss(self, output: Any, batch: Batch) -> Tensor:
        """``[B]``: heatmap MSE over visible landmarks (+ weighted coordinate losses)."""
        heat, coords = self._parts(output)
        visible = batch["visible"].to(heat.device)
        loss = masked_heatmap_loss(heat.float(), self.target_heatmaps(heat, batch), visible)
        if self.coord_loss_weight > 0 or (coords is not None and self.regression_loss_weight > 0):
            truth = batch["landmarks"].to(heat.device, torch.float32)
            side = float(max(self.data_info.image_size or heat.shape[2:]))
            if self.coord_loss_weight > 0:
                pts = self._to_image(
                    decode_heatmaps(heat, "soft_argmax" if self.decode == "argmax" else self.decode,
                                    self._beta(heat), self._window(heat)), heat)
                loss = loss + self.coord_loss_weight * coordinate_loss(pts, truth, visible, side)
            if coords is not None and self.regression_loss_weight > 0:
                loss = loss + self.regression_loss_weight * coordinate_loss(
                    coords.float(), truth, visible, side)
        return loss

    def default_violation_threshold(self) -> float:
        """The loss of a perfect Gaussian prediction displaced by ``violation_radius`` pixels
        (computed on the image grid, so it is exact for the heatmap loss used here)."""
        if self._violation_threshold is not None:
            return float(self._violation_threshold)
        size = self.data_info.image_size or (64, 64)
        h, w = int(size[0]), int(size[1])
        centre = torch.tensor([[[(w - 1) / 2, (h - 1) / 2]]])
        moved = centre + torch.tensor([self.violation_radius, 0.0])
        ok = torch.ones(1, 1, dtype=torch.bool)
        t = gaussian_heatmaps(centre, (h, w), self.sigma, ok)
        p = gaussian_heatmaps(moved, (h, w), self.sigma, ok)
        return float(masked_heatmap_loss(p, t, ok))

    def violation_statistic(self, output: Any, batch: Batch) -> Tensor:
        """The per-sample loss ``[B]`` (violated when *above* the threshold)."""
        return self.per_sample_loss(output, batch).detach()

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> Tensor:
        thr = self.default_violation_threshold() if threshold is None else float(threshold)
        return self.violation_statistic(output, batch) > thr

    def per_sample_metric(self, output: Any, batch: Batch) -> Tensor:
        """``[B]`` mean radial error of each image, image pixels, over its visible landmarks
        (the points of :meth:`decode_points`, as ``mre`` measures them; NaN when none is
        visible). Lower is better."""
        with torch.no_grad():
            pred = self.decode_points(output).detach().float()
            truth = batch["landmarks"].to(pred.device, torch.float32)
            vis = batch["visible"].to(pred.device).bool() & torch.isfinite(truth).all(dim=-1)
            err = (pred - torch.nan_to_num(truth)).norm(dim=-1) * vis
            n = vis.sum(dim=1)
            return torch.where(n > 0, err.sum(dim=1) / n.clamp_min(1), torch.full_like(err[:, 0], float("nan")))

    def output_divergence(self, out_adv: Any, out_clean: Any) -> Tensor:
        """``[B]``: MSE between the two outputs' heatmaps (plus the regression head's
        coordinate MSE in units of the image side, when present)."""
        ha, ca = self._parts(out_adv)
        hc, cc = self._parts(out_clean)
        d = ((ha.float() - hc.float()) ** 2).reshape(ha.shape[0], -1).mean(dim=1)
        if ca is not None and cc is not None:
            side = float(max(self.data_info.image_size or ha.shape[2:]))
            d = d + (((ca - cc) / side) ** 2).reshape(ca.shape[0], -1).mean(dim=1)
        return d

    def build_metrics(self) -> MetricCollection:
        k, unit, per = self.num_landmarks, self.metric_unit, self.per_landmark_metrics
        metrics: dict[str, Any] = {"mre": MeanRadialError(k, "px", per_landmark=per)}
        if unit == "mm":
            metrics["mre_mm"] = MeanRadialError(k, "mm", per_landmark=per)
        metrics["sdr"] = SuccessDetectionRate(k, self.sdr_radii, unit, per_landmark=per)
        return MetricCollection(metrics, compute_groups=False)

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        pred = self.decode_points(output).detach()
        truth, visible = batch["landmarks"], batch["visible"]
        spacing = batch.get("spacing")
        if spacing is None:
            spacing = torch.full((truth.shape[0],), float("nan"), device=truth.device)
        for name in metrics.keys(keep_base=True):
            metrics[name].update(pred, truth, visible, spacing)

    certification: ClassVar[str | None] = "certification.tasks.LandmarkCertification"

    def hard_prediction(self, output: Any) -> Tensor:
        """``[B, L, 2]`` ``(x, y)`` image pixels: the decoded points (:meth:`decode_points`)."""
        return self.decode_points(output)

    def predict_for_display(self, output: Any) -> dict[str, Tensor]:
        """``points`` ``[B, K, 2]`` ``(x, y)`` image pixels and ``confidence`` ``[B, K]`` (the
        heatmap peak value, ~1 for a confident, well-formed peak)."""
        heat, _ = self._parts(output)
        points = self.decode_points(output).detach()
        conf = heat.detach().float().flatten(2).amax(dim=2)
        return {"points": points, "confidence": conf}
