"""What a datamodule tells the model about its data, and the batch keys every loader uses.

Batch contract (a ``dict`` per batch; every datamodule, every task):

* ``image``  float32 ``[B, C, H, W]`` or ``[B, C, D, H, W]``, values in ``DataInfo.bounds``.
* ``index``  int64 ``[B]``: the sample's position in its split; stable across epochs and DDP
  ranks (AMAT keys its per-sample margins on it).
* classification: ``label`` int64 ``[B]`` (binary / multi-class) or float32 ``[B, K]`` in {0, 1}
  (multi-label).
* segmentation: ``mask`` int64 ``[B, H, W]`` (or ``[B, D, H, W]``), class indices, 0 = background.
* landmarks: ``landmarks`` float32 ``[B, K, 2]`` as (x, y) pixel coordinates of the image as
  delivered (after resizing/augmentation); ``visible`` bool ``[B, K]`` (False when a point is
  missing or was moved out of the image by augmentation); ``spacing`` float32 ``[B]`` mm per
  pixel of the delivered image (NaN when unknown).
* detection: ``boxes`` a list of B float32 ``[N_i, 4]`` tensors (x1, y1, x2, y2, absolute pixels
  of the delivered image, x2 > x1, y2 > y1) and ``labels`` a list of B int64 ``[N_i]`` in
  ``[0, num_classes)`` (no background class; the detection module shifts labels for models that
  reserve 0). ``N_i`` may be 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataInfo:
    """Everything a model needs to be built for a dataset, so configs need not repeat it.

    Linked by ``train.py`` from ``data.info`` into ``model.init_args.data_info``.
    """

    task: str
    in_channels: int
    spatial_dims: int = 2
    bounds: tuple[float, float] = (0.0, 1.0)
    image_size: tuple[int, ...] = ()
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    multilabel: bool = False
    num_landmarks: int = 0
    pixel_spacing_mm: float | None = None
    num_train: int = 0

    def __post_init__(self) -> None:
        # Which names are tasks is the registry's (datamodules.tasks); a task of the user's own may
        # bring its own name, so only the form is checked here — the datamodules check their own.
        if not (isinstance(self.task, str) and self.task.isidentifier()):
            raise ValueError(f"DataInfo.task must be a task name such as 'classification', got {self.task!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"DataInfo.spatial_dims must be 2 or 3, got {self.spatial_dims}")
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"DataInfo.bounds must satisfy lo < hi, got {self.bounds}")
        self.bounds = (float(lo), float(hi))
        self.image_size = tuple(int(s) for s in self.image_size)
