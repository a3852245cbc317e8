"""A researcher's own data for all four tasks: one manifest file (CSV or JSON), one row a sample.

Paths in a manifest are relative to the manifest's folder (absolute paths also work). Columns
(CSV header names, or keys of the JSON objects):

* every task: ``image`` (an image file; segmentation also a NIfTI volume ``.nii`` / ``.nii.gz``)
  and an optional ``split`` (``train`` / ``val`` / ``test``; ``training`` / ``validation`` /
  ``valid`` / ``testing`` are accepted). Without a ``split`` column a seeded split is made with
  :func:`datamodules.splits.load_or_create_split` (stratified by class for single-label
  classification) and written to ``split_file``.
* classification: ``label`` — a class index or a class name; multi-label: several separated by
  ``;`` (or a JSON list), an empty cell = no class.
* segmentation: ``mask`` — an integer class map of the image's size (grey or palette PNG…, NIfTI
  for volumes). 0 = background. A mask holding only 0 and 255 is read as binary (255 = 1);
  ``mask_threshold`` binarises any other mask (JPEG masks).
* landmarks: the points as ``<name>_x`` / ``<name>_y`` column pairs, as ``x1, y1, x2, y2…``, or
  one ``points`` (or ``landmarks``) cell holding a JSON list ``[[x, y], …]``; ``(x, y)`` are
  pixel-index coordinates of the image on disk (centre of the top-left pixel = (0, 0)); an empty
  coordinate is a missing point (delivered with ``visible=False``). Optional ``spacing`` column
  (mm per pixel of the image on disk), else ``pixel_spacing_mm`` for every image.
* detection: either ``boxes`` (JSON list of ``[x1, y1, x2, y2]``) with ``labels`` (JSON list of
  class indices or names), or one row per box with ``x1, y1, x2, y2, label`` (``xmin…`` also
  accepted); a row with empty box cells is an image without boxes. Boxes use continuous pixel
  edges (a box covering columns 3..5 has ``x1 = 3, x2 = 6``).

A JSON manifest is a list of such objects, or an object whose ``train`` / ``val`` / ``test``
(or MONAI datalist's ``training`` / ``validation`` / ``test``) lists give the split.

Bad rows (missing or unreadable file, label out of range or unknown, mask of another size or with
values outside the classes, box outside the image, a point outside the image, duplicate image)
are collected while the manifest is indexed: ``on_bad_sample="error"`` raises one error listing
every bad row by number and file; ``"skip"`` leaves them out with one warning that counts them.

``data_info`` is inferred: channels from the image files (1 when every image is grey, else 3),
classes from the labels (or masks), the image size when every image has the same (else pass
``image_size``); bounds are (0, 1) (8- and 16-bit images are scaled by their type's range).

:class:`PairedFoldersDataModule` is segmentation from an ``images/`` and a ``masks/`` folder
matched by file stem, with the same checks.

Layout, one job per module: :mod:`~datamodules.manifest.rows` reads CSV / JSON rows;
:mod:`~datamodules.manifest.sample` is an indexed sample and the image / mask readers;
:mod:`~datamodules.manifest.handler` is the per-task row handler's interface, implemented in
:mod:`~datamodules.manifest.tasks` (classification, segmentation; the table of tasks) and
:mod:`~datamodules.manifest.task_geometry` (landmarks, detection), with class labels resolved in
:mod:`~datamodules.manifest.labels`; :mod:`~datamodules.manifest.dataset` is the 2-D dataset;
:mod:`~datamodules.manifest.datamodule` indexes and splits; :mod:`~datamodules.manifest.folders`
reads paired folders; :mod:`~datamodules.manifest.example` writes a synthetic example.
"""

from datamodules.manifest.datamodule import ManifestDataModule, ManifestTask
from datamodules.manifest.dataset import ManifestDataset
from datamodules.manifest.example import write_example_manifest
from datamodules.manifest.folders import FOLDER_EXTENSIONS, PairedFoldersDataModule
from datamodules.manifest.handler import RowOptions, TaskRows
from datamodules.manifest.rows import ManifestRow, is_nifti, read_manifest
from datamodules.manifest.sample import Sample, read_label_mask
from datamodules.manifest.tasks import MANIFEST_TASKS

__all__ = ["FOLDER_EXTENSIONS", "MANIFEST_TASKS", "ManifestDataModule",
           "ManifestDataset", "ManifestRow", "PairedFoldersDataModule", "RowOptions", "Sample",
           "ManifestTask", "TaskRows", "is_nifti", "read_label_mask", "read_manifest",
           "write_example_manifest"]
