"""Procedurally generated medical-looking data for every task: the no-download default.

Every sample is drawn from its own generator seeded by ``(seed, split, index)``, so a sample is
the same whichever worker or DDP rank makes it, and whether or not other samples were made.
Images lie in [0, 1] and are composed like stained / pigmented tissue: a bright background
minus per-structure "absorption" (one value per channel, so 1 and 3 channels both look right).

* classification: one lesion per image. The class is a malignancy level ``t = k / (K - 1)``
  carried by the whole lesion — border irregularity (high-frequency harmonics and spicules),
  edge blur and internal texture — never by a single pixel; position, size, elongation,
  contrast, background and noise are random for every class.
* segmentation: the same lesions (random ``t``) with a mask: 1 lesion, 2 a darker core inside
  it, 3… small satellite structures elsewhere, each class with its own look.
* landmarks: a skull-like outline (bone ring, orbit, jaw) under random rotation, scale and shift,
  with ``K`` anatomically fixed points (vertex, nasion, occiput, orbit, menton, then points on the
  outline).
* detection: blood-smear-like cells — red cells with a pale centre, white cells with a dark lobed
  nucleus, tiny platelets, then size variants — 0 to ``max_objects`` per image (some images
  have none) with their boxes.

3-D (``spatial_dims=3``) volumes of ``D = H = W = image_size[0]`` exist for classification and
segmentation; the same shape functions work in any number of dimensions.

Layout, one job per module: :mod:`~datamodules.synthetic.draw` (shapes, noise, background),
:mod:`~datamodules.synthetic.samples` (one generator per task),
:mod:`~datamodules.synthetic.datamodule` (the dataset and the datamodule).
"""

from datamodules.synthetic.datamodule import SyntheticDataModule, SyntheticDataset

__all__ = ["SyntheticDataModule", "SyntheticDataset"]
