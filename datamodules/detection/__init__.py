"""Object detection: Pascal VOC XML (e.g. BCCD) and COCO JSON.

Batch (see :mod:`datamodules.info`)::

    image   float32 [B, C, H, W]          in [0, 1]; every image resized to ``image_size``
    boxes   list of B float32 [N_i, 4]    (x1, y1, x2, y2) absolute pixels of the delivered
                                          image, continuous edges (a box over columns a..b
                                          inclusive has x1 = a, x2 = b + 1), x2 > x1, y2 > y1
    labels  list of B int64 [N_i]         in [0, num_classes), no background class
    index   int64 [B]                     position in the split

``N_i`` may be 0 (an image without objects is legal): its tensors are ``[0, 4]`` and ``[0]``.

Coordinates read from disk:

* VOC ``bndbox`` values are 1-based inclusive pixel indices (``xmin = 1`` is the first column,
  ``xmax = W`` the last), so ``x1 = xmin - 1, x2 = xmax`` (``one_based=False`` reads them as
  0-based continuous edges instead).
* COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixels: ``x1 = x, x2 = x + w``.

Bad boxes: a box is *degenerate* when, as written in the file, ``xmax <= xmin`` or
``ymax <= ymin`` (COCO: ``w <= 0`` or ``h <= 0``) — judged on the raw values, so a VOC box with
``xmin == xmax`` (a zero-size click, as in two BCCD files) is degenerate although the inclusive
convention could read it as one pixel wide. It is *out of image* when it crosses the image
border. ``degenerate_boxes`` decides what happens (``"drop"`` default, ``"fix"``: swap reversed
corners and clip to the image, dropping what is still empty; ``"error"``: the file is a bad
sample), always with one warning (``warnings.warn``) that counts the boxes and lists the
files; the problems found are also kept in ``datamodule.box_problems`` (``{file: [problem]}``).
No degenerate box ever reaches a batch.

Layout, one job per module: :mod:`~datamodules.detection.boxes` (bad-box policy),
:mod:`~datamodules.detection.dataset` (the indexed record and its dataset),
:mod:`~datamodules.detection.datamodule` (what VOC and COCO share),
:mod:`~datamodules.detection.voc` and :mod:`~datamodules.detection.coco` (the two formats).
"""

from datamodules.detection.boxes import BOX_POLICIES, sanitize_box
from datamodules.detection.coco import COCODetectionDataModule
from datamodules.detection.datamodule import DetectionDataModule
from datamodules.detection.dataset import DetectionDataset, DetectionRecord
from datamodules.detection.voc import VOCDetectionDataModule, parse_voc_xml

__all__ = ["BOX_POLICIES", "COCODetectionDataModule", "DetectionDataModule", "DetectionDataset",
           "DetectionRecord", "VOCDetectionDataModule", "parse_voc_xml", "sanitize_box"]
