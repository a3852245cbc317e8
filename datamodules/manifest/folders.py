"""Segmentation from an images folder and a masks folder matched by file stem (DRIVE, ISIC…):
the rows come from the folders instead of a manifest file; the rest is
:class:`~datamodules.manifest.datamodule.ManifestDataModule`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from datamodules.imagefiles import IMAGE_EXTENSIONS, require_dir
from datamodules.manifest.datamodule import ManifestDataModule
from datamodules.manifest.rows import NIFTI_SUFFIXES, ManifestRow, file_stem
from datamodules.samples import BadSampleError, BadSamples, format_listing

__all__ = ["FOLDER_EXTENSIONS", "PairedFoldersDataModule"]

#: files a paired-folders set may hold (GIF: DRIVE's ``1st_manual`` masks)
FOLDER_EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif", *NIFTI_SUFFIXES)


class PairedFoldersDataModule(ManifestDataModule):
    """Segmentation from an images folder and a masks folder, matched by file stem.

    ``images_dir/21_training.tif`` pairs with ``masks_dir/21_manual1.gif`` when
    ``image_suffix="_training"`` and ``mask_suffix="_manual1"`` (both default to ``""``: same
    stem). Every image without a mask and every mask without an image is reported by name —
    an error, or with ``on_bad_sample="skip"`` a warning listing them; none is dropped silently.
    Files whose extension is not an image (or NIfTI) extension are not samples and are ignored.
    ``options``: the arguments of :class:`ManifestDataModule` that segmentation folders use
    (``mask_threshold``, ``image_size``, ``patch_size``, ``channels``, ``class_names``,
    ``num_classes``, ``augment``, the split and loader options; ``split_file="auto"`` writes
    ``<images_dir>.split.json`` beside the images folder).
    """

    def __init__(
        self,
        images_dir: str | None = None,
        masks_dir: str | None = None,
        image_suffix: str = "",
        mask_suffix: str = "",
        **options: Any,
    ) -> None:
        # The other options are ManifestDataModule's (LightningCLI reads them from there); the
        # ones that do not apply to segmentation folders are fixed here, so the CLI leaves them out.
        super().__init__(manifest=None, task="segmentation", multilabel=None,
                         pixel_spacing_mm=None, degenerate_boxes="error", **options)
        if not images_dir or not masks_dir:
            raise ValueError("PairedFoldersDataModule needs images_dir and masks_dir")
        self.images_dir = Path(os.path.expandvars(os.path.expanduser(images_dir))).resolve()
        self.masks_dir = Path(os.path.expandvars(os.path.expanduser(masks_dir))).resolve()
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix

    @property
    def manifest_path(self) -> Path:  # the split file and messages hang off the images folder
        return self.images_dir

    @property
    def what(self) -> str:
        return f"paired folders {self.images_dir} + {self.masks_dir}"

    def base_dir(self) -> Path:
        return self.images_dir

    def _split_file(self) -> Path | None:
        if self.split_file == "auto":
            return self.images_dir.with_name(f"{self.images_dir.name}.split.json")
        return super()._split_file()

    def _files(self, folder: Path, suffix: str, what: str) -> dict[str, Path]:
        require_dir(folder, what)
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if not p.is_file() or not p.name.lower().endswith(FOLDER_EXTENSIONS):
                continue
            stem = file_stem(p)
            key = stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem
            if key in out:
                raise ValueError(f"{self.what}: {out[key].name} and {p.name} in {folder} both "
                                 f"match the stem {key!r}")
            out[key] = p
        return out

    def rows(self, bad: BadSamples) -> list[ManifestRow]:
        images = self._files(self.images_dir, self.image_suffix, "images folder")
        masks = self._files(self.masks_dir, self.mask_suffix, "masks folder")
        problems: dict[str, str] = {}
        for key in sorted(images.keys() - masks.keys()):
            problems[str(images[key])] = (f"image without a mask (looked for {key}"
                                          f"{self.mask_suffix}.* in {self.masks_dir})")
        for key in sorted(masks.keys() - images.keys()):
            problems[str(masks[key])] = (f"mask without an image (looked for {key}"
                                         f"{self.image_suffix}.* in {self.images_dir})")
        if problems:
            msg = (f"{self.what}: {len(problems)} unmatched file(s) (matched by stem; "
                   f"image_suffix={self.image_suffix!r}, mask_suffix={self.mask_suffix!r}):\n"
                   f"{format_listing(problems)}")
            if self.on_bad_sample == "error":
                raise BadSampleError(msg + "\nPass on_bad_sample='skip' to leave them out with "
                                     "a warning.")
            warnings.warn(msg + "\nLeft out (on_bad_sample='skip').", stacklevel=3)
        common = sorted(images.keys() & masks.keys())
        if not common:
            raise ValueError(f"{self.what}: no image has a mask")
        return [ManifestRow(i + 1, {"image": images[k].name, "mask": str(masks[k])})
                for i, k in enumerate(common)]
