"""3-D segmentation volumes in the Medical Segmentation Decathlon layout, read through MONAI.

Layout (one task folder, e.g. ``Task04_Hippocampus``)::

    dataset.json   {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": ...},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                    "test": ["./imagesTs/y.nii.gz"]}
    imagesTr/*.nii.gz   3-D (one modality) or 4-D (X, Y, Z, modality) NIfTI
    labelsTr/*.nii.gz   3-D integer label maps, same voxel grid as the image

Only the ``training`` cases carry labels, so train / val / test are a seeded split of them
(``split_fractions``, ``seed``, saved to ``split_file``); the Decathlon ``test`` images are not
used.

Batch::

    mode="3d":        image float32 [B, C, D, H, W] in [0, 1], mask int64 [B, D, H, W]
    mode="2d_slices": image float32 [B, C, H, W]    in [0, 1], mask int64 [B, H, W]
    index int64 [B]   3d: the volume's position in its split; 2d_slices: the slice's position
                      in the split's flattened (volume, slice) list — volumes in split order,
                      slices in increasing depth — so it is stable across epochs and ranks.

Axes: volumes are reoriented to ``orientation`` (RAS by default, MONAI ``Orientationd``) and the
array ``[C, X, Y, Z]`` is transposed to ``[C, D, H, W] = [C, Z, Y, X]``: D is the superior axis,
so ``2d_slices`` are axial slices and ``volume[:, d]`` is slice ``d``.

Intensity (``bounds`` are always (0, 1), clipped): by default each volume and channel is mapped
linearly from its ``percentiles`` (0.5th, 99.5th) to [0, 1] (robust to MRI's arbitrary scale);
for CT give ``intensity_range=(a_min, a_max)`` in HU to use one fixed window for all volumes.

Spatial size: ``mode="3d"`` delivers ``patch_size`` (D, H, W): ``spatial_mode="resize"`` resizes
the whole volume (image trilinear, mask nearest); ``"crop"`` zero-pads up to the patch and
crops it — at random for training, centred for val / test (so "crop" evaluation sees only the
centre patch of each volume; whole-volume sliding-window evaluation is not provided here).
``mode="2d_slices"`` resizes every slice to ``image_size`` (H, W).

Layout, one job per module: :mod:`~datamodules.volumes.nifti` (headers and the load pipeline),
:mod:`~datamodules.volumes.datasets` (volume and slice datasets, the 3-D augmentations),
:mod:`~datamodules.volumes.decathlon` (``dataset.json``, splits, the datamodule).
"""

from datamodules.volumes.datasets import (
           DecathlonSliceDataset,
           DecathlonVolumeDataset,
           build_3d_pipeline,
)
from datamodules.volumes.decathlon import DecathlonDataModule, parse_decathlon_labels
from datamodules.volumes.nifti import VolumeCase, VolumeLoader, header_shape_dhw

__all__ = ["DecathlonDataModule", "DecathlonSliceDataset", "DecathlonVolumeDataset", "VolumeCase",
           "VolumeLoader", "build_3d_pipeline", "header_shape_dhw", "parse_decathlon_labels"]
