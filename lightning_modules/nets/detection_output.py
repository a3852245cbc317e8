"""What :class:`~lightning_modules.nets.detectors.DetectorWrapper` returns: plain data.

A :class:`DetectionOutput` holds the batch's detector input, the shared backbone features and
the caches the heads fill lazily; it has no reference to the wrapper and computes nothing
itself. Each reading (per-image losses, the batch loss, detections, the DAG inputs, dense head
outputs) is asked of the **detector family** that made it
(:mod:`lightning_modules.nets.detector_families`), recorded in :attr:`DetectionOutput.family`,
so a consumer holding the output alone (an attack's ``loss_fn``, a task's metric update) asks
``out.family.loss(out, boxes, labels)``, ``out.family.detections(out)``…
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torchvision.models.detection.image_list import ImageList

if TYPE_CHECKING:
    from lightning_modules.nets.detector_family import DetectorFamily

Targets = list[dict[str, Tensor]]


@dataclass(eq=False, repr=False)
class DetectionOutput:
    """The batch seen by a detector, before (and, once asked, after) its heads.

    Attributes:
        family: the strategy of the detector that made this output; it reads the fields
            below (see :class:`~lightning_modules.nets.detector_families.DetectorFamily`).
        z: ``[B, C', H, W]`` the detector's input (after our normalization).
        image_list: torchvision's transformed batch (``None`` for a generic detector, which
            is called whole, image by image).
        features: the backbone's feature maps ``{name: [B, C_l, H_l, W_l]}`` (``None`` for a
            generic detector).
        sampling_seed: seed of the loss path's random sampling; ``None`` = the global RNG.
        original_sizes: ``(H, W)`` of each delivered image (default: ``z``'s size).
        heads: cache of a single-stage detector's dense head outputs
            (``{"cls_logits": [B, L, C], "bbox_regression": [B, L, 4], …}``), filled by
            the family's ``head_outputs``.
        cached_detections: cache of the eval-mode detections, filled by the family's
            ``detections``.
        loss_cache: ``(boxes, labels, {name: [B]})`` of the last per-image losses computed
            with gradients (a later no-grad request for the same targets reuses it detached).
    """

    family: DetectorFamily
    z: Tensor
    image_list: ImageList | None = None
    features: OrderedDict[str, Tensor] | None = None
    sampling_seed: int | None = None
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    heads: dict[str, Tensor] | None = None
    cached_detections: Targets | None = None
    loss_cache: tuple[Any, Any, dict[str, Tensor]] | None = None

    def __post_init__(self) -> None:
        if not self.original_sizes:
            self.original_sizes = [(int(self.z.shape[-2]), int(self.z.shape[-1]))] * self.z.shape[0]

    def __len__(self) -> int:
        return self.z.shape[0]

    def __repr__(self) -> str:  # not the tensors: an output can hold a batch's feature maps
        return f"DetectionOutput({self.family}, {len(self)} images)"

    def split_batch(self, sizes: Sequence[int]) -> list[DetectionOutput]:
        """Split along the batch into outputs of ``sizes`` images (views of the shared
        features and head outputs, so a joint clean + adversarial forward costs one backbone
        pass)."""
        if sum(sizes) != len(self):
            raise ValueError(f"cannot split a batch of {len(self)} into {list(sizes)}")
        parts: list[DetectionOutput] = []
        start = 0
        for n in sizes:
            sl = slice(start, start + n)
            il = None
            if self.image_list is not None:
                il = ImageList(self.image_list.tensors[sl], self.image_list.image_sizes[sl])
            feats = None
            if self.features is not None:
                feats = OrderedDict((k, v[sl]) for k, v in self.features.items())
            heads = None if self.heads is None else {k: v[sl] for k, v in self.heads.items()}
            parts.append(DetectionOutput(self.family, self.z[sl], il, feats, self.sampling_seed,
                                         self.original_sizes[sl], heads))
            start += n
        return parts
