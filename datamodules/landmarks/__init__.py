"""Cephalometric landmark detection: LabelMe JSON points and the ISBI 2015 text format.

Batch (see :mod:`datamodules.info`)::

    image      float32 [B, 1, H, W]  grey X-ray in [0, 1]
    landmarks  float32 [B, K, 2]     (x, y) pixel-index coordinates of the delivered image
                                     (resize and augmentation applied; the centre of pixel
                                     image[r, c] is (x=c, y=r))
    visible    bool    [B, K]        False for a point that is missing / ambiguous in the
                                     annotation or was moved out of the image by augmentation
    spacing    float32 [B]           mm per delivered pixel, NaN when the spacing is unknown
    index      int64   [B]           position in the split, stable across epochs and ranks

Layouts read:

* **LabelMe** (``format="labelme"``), e.g. the Hamedan University set in
  ``$MEDROBUST_DATA/cephalometric``: one folder per annotator (``annotated by Dr.mollabashi/``,
  ``annotated by Dr.farhadifar/``) holding ``NNN.json`` with ``shapes[k] = {"label": "l1".."l19",
  "points": [[x, y]], "shape_type": "point"}`` and ``imagePath`` relative to the JSON file
  (``../pictures/NNN.png``). A root that holds the JSON files itself is one annotator.
* **ISBI 2015** (``format="isbi"``): ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` and
  ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt`` (first K lines ``x,y``, then the
  classification-challenge lines, which are ignored).

Pixel spacing: the ISBI 2015 images are 0.1 mm/pixel (challenge paper), used when
``pixel_spacing_mm`` is None. The shared LabelMe copy states no spacing anywhere (its README only
says "downsampled x4"), so it is unknown (NaN) unless ``pixel_spacing_mm`` is given: the mm per
pixel of the files *on disk*. The delivered ``spacing`` is that value times the resize factor.
When the x and y resize factors differ (``image_size`` not keeping the aspect ratio) a single
number cannot be exact; we deliver ``spacing * sqrt(fx * fy)`` (the geometric mean, which keeps
areas right) and warn how anisotropic the result is when it exceeds 2 %.

Layout, one job per module: :mod:`~datamodules.landmarks.annotations` (reading LabelMe / ISBI
points), :mod:`~datamodules.landmarks.dataset` (the indexed case and its dataset),
:mod:`~datamodules.landmarks.layouts` (indexing the two folder layouts),
:mod:`~datamodules.landmarks.datamodule` (options, splits, data info).
"""

from datamodules.landmarks.annotations import (
           average_points,
           parse_isbi_points,
           parse_labelme_points,
)
from datamodules.landmarks.datamodule import (
           ISBI_PIXEL_SPACING_MM,
           CephalometricDataModule,
)
from datamodules.landmarks.dataset import (
           LandmarkCase,
           LandmarkDataset,
           delivered_spacing,
)

__all__ = ["ISBI_PIXEL_SPACING_MM", "CephalometricDataModule", "LandmarkCase", "LandmarkDataset",
           "average_points", "delivered_spacing", "parse_isbi_points", "parse_labelme_points"]
