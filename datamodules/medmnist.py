"""MedMNIST v2 / MedMNIST+ from the official ``.npz`` files (no ``medmnist`` package, no download).

A file holds ``{train,val,test}_images`` (uint8 ``[N, S, S]`` grey, ``[N, S, S, 3]`` RGB or
``[N, S, S, S]`` for the 3-D sets) and ``{train,val,test}_labels`` (``[N, 1]`` class index, or
``[N, K]`` 0/1 for multi-label ChestMNIST). The official splits are used as they are.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import OnBadSample, check_on_bad_sample
from datamodules.splits import Split
from datamodules.transforms import (
    AugmentConfig,
    JointTransform,
    flip_volume,
    volume_augment_warning,
)

_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen"]
# Class names of the official MedMNIST v2 sets (their ``INFO[flag]["label"]``).
CLASS_NAMES: dict[str, list[str]] = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma",
                  "colorectal adenocarcinoma epithelium"],
    "chestmnist": ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                   "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema",
                   "fibrosis", "pleural", "hernia"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                   "melanocytic nevi", "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                   "lymphocyte", "monocyte", "neutrophil", "platelet"],
    "organamnist": _ORGANS,
    "organcmnist": _ORGANS,
    "organsmnist": _ORGANS,
    "organmnist3d": _ORGANS,
    "nodulemnist3d": ["benign", "malignant"],
    "adrenalmnist3d": ["normal", "hyperplasia"],
    "fracturemnist3d": ["buckle rib fracture", "nondisplaced rib fracture",
                        "displaced rib fracture"],
    "vesselmnist3d": ["vessel", "aneurysm"],
    "synapsemnist3d": ["inhibitory synapse", "excitatory synapse"],
}
MedMNISTSize = Literal[28, 64, 128, 224]
#: image sides of the official files: MedMNIST v2 (28) and MedMNIST+ (64, 128, 224)
MEDMNIST_SIZES: tuple[MedMNISTSize, ...] = (28, 64, 128, 224)


def base_flag(name: str) -> str:
    """``"pneumoniamnist_64.npz"`` -> ``"pneumoniamnist"``."""
    stem = name[:-4] if name.endswith(".npz") else name
    return re.sub(r"_\d+$", "", stem).lower()


def npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of array ``key`` in an ``.npz`` from its header, without decompressing the data."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    except KeyError as err:
        raise KeyError(f"MedMNIST file {path} has no array {key!r}") from err
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"cannot read MedMNIST file {path} (key {key!r}): {err}") from err
    return tuple(int(s) for s in shape)


def load_npz_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of ``path``; errors name the file and the key."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise KeyError(f"MedMNIST file {path} has no array {key!r} (has {data.files})")
            return data[key]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as err:
        raise ValueError(f"cannot read MedMNIST file {path} (key {key!r}): {err}") from err


class ArrayDataset(Dataset):
    """Samples held in memory: ``images`` uint8 ``[N, *spatial(, 3)]`` and their labels.

    Items: ``image`` float32 ``[C, H, W]`` / ``[1, D, H, W]`` in [0, 1]; ``label`` int64 scalar
    (or float32 ``[K]`` multi-label); ``index`` int64 scalar.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, multilabel: bool, spatial_dims: int,
                 transform: JointTransform | None, augment3d: AugmentConfig | None,
                 positions: np.ndarray | None = None) -> None:
        self.images = images
        self.labels = labels
        self.multilabel = multilabel
        self.spatial_dims = spatial_dims
        self.transform = transform
        self.augment3d = augment3d
        # Rows of the original arrays kept after screening (for error messages).
        self.positions = positions if positions is not None else np.arange(len(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pixels = self.images[index].astype(np.float32) / 255.0
        if self.spatial_dims == 3:
            image, _ = flip_volume(torch.from_numpy(pixels[None].copy()), None, self.augment3d)
        else:
            assert self.transform is not None
            image = self.transform(pixels)["image"]
        row = self.labels[index]
        label = (torch.from_numpy(row.astype(np.float32)) if self.multilabel
                 else torch.tensor(int(row[0]), dtype=torch.int64))
        return {"image": image.contiguous(), "label": label,
                "index": torch.tensor(index, dtype=torch.int64)}


class MedMNISTDataModule(BaseDataModule):
    """Any MedMNIST v2 / MedMNIST+ dataset from its official ``.npz`` file.

    Args:
        root: the ``.npz`` file, or the folder holding ``<flag>.npz``; ``None`` =
            ``$MEDROBUST_DATA/medmnist``.
        flag: dataset name as in the file name, e.g. ``pneumoniamnist``, ``chestmnist``,
            ``organmnist3d`` or ``dermamnist_224`` (a trailing ``.npz`` is allowed).
        size: MedMNIST+ resolution (64, 128, 224): reads ``<flag>_<size>.npz``; ``None`` = 28.
        image_size: resize 2-D images to ``(H, W)``; ``None`` keeps the file's size. 3-D volumes
            are never resized.
        augment: training augmentations (3-D: flips only).
        on_bad_sample: ``"error"`` (default) or ``"skip"``: what to do with a sample whose label
            is out of range (skipping warns with the count and rows).
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        flag: str = "pneumoniamnist",
        size: MedMNISTSize | None = None,
        image_size: tuple[int, int] | None = None,
        augment: AugmentConfig | None = None,
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 128,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.root = root
        self.flag = flag
        if size is not None and size not in MEDMNIST_SIZES:
            raise ValueError(f"MedMNIST size must be one of {MEDMNIST_SIZES} (MedMNIST+ files "
                             f"<flag>_<size>.npz; 28 = <flag>.npz), got {size}")
        self.size = size
        self.image_size = tuple(image_size) if image_size is not None else None
        self._file: Path | None = None
        self._meta: dict[str, Any] | None = None

    # --- locating and describing the file ----------------------------------------------------
    @property
    def file(self) -> Path:
        """The ``.npz`` file (resolved on first use; raises if it does not exist)."""
        if self._file is None:
            name = self.flag if self.flag.endswith(".npz") else f"{self.flag}.npz"
            if self.size is not None and self.size != 28:
                name = f"{name[:-4]}_{self.size}.npz"
            path = resolve_data_path(self.root, f"medmnist/{name}", f"MedMNIST {self.flag!r}")
            if path.is_dir():
                path = path / name
                if not path.is_file():
                    raise FileNotFoundError(
                        f"MedMNIST {self.flag!r}: {path} does not exist; the folder "
                        f"{path.parent} holds {sorted(p.name for p in path.parent.glob('*.npz'))}")
            self._file = path
        return self._file

    def _metadata(self) -> dict[str, Any]:
        """Shapes, dims, channels, classes; reads only array headers and the label arrays."""
        if self._meta is not None:
            return self._meta
        path = self.file
        shape = npz_shape(path, "train_images")
        flag = base_flag(path.name)
        if flag.endswith("3d") or (len(shape) == 4 and shape[-1] not in (1, 3)):
            spatial_dims, channels, spatial = 3, 1, shape[1:]
            if len(shape) != 4:
                raise ValueError(f"{path}: train_images of a 3-D set must be [N, D, H, W], "
                                 f"got {shape}")
        elif len(shape) == 3:
            spatial_dims, channels, spatial = 2, 1, shape[1:]
        elif len(shape) == 4:
            spatial_dims, channels, spatial = 2, shape[-1], shape[1:3]
        else:
            raise ValueError(f"{path}: train_images must be [N, H, W], [N, H, W, 3] or "
                             f"[N, D, H, W], got {shape}")
        labels = {s: load_npz_array(path, f"{s}_labels") for s in ("train", "val", "test")}
        widths = {s: lab.shape[1] if lab.ndim == 2 else -1 for s, lab in labels.items()}
        if len(set(widths.values())) != 1 or -1 in widths.values():
            raise ValueError(f"{path}: *_labels must be [N, 1] or [N, K] with the same K in "
                             f"every split, got shapes "
                             f"{ {s: lab.shape for s, lab in labels.items()} }")
        width = widths["train"]
        multilabel = width > 1
        names = CLASS_NAMES.get(flag)
        if multilabel:
            num_classes = width
        elif names is not None:
            num_classes = len(names)
        else:
            num_classes = max(2, int(max(lab.max() for lab in labels.values() if lab.size)) + 1)
            # Unknown flag: classes are inferred from every split; a class that only val/test
            # hold is legal but untrainable, so it is named rather than passed on silently.
            seen = set(labels["train"][:, 0].tolist())
            for s in ("val", "test"):
                rows = np.flatnonzero(~np.isin(labels[s][:, 0], list(seen)))
                if rows.size:
                    warnings.warn(f"{path}: {rows.size} rows of {s}_labels hold classes no "
                                  f"training row has ({sorted(set(labels[s][rows, 0].tolist()))}, "
                                  f"rows {rows[:10].tolist()}); classes are inferred as "
                                  f"0..{num_classes - 1} for the unknown flag {flag!r}",
                                  stacklevel=2)
        if names is None or len(names) != num_classes:
            names = [f"class_{i}" for i in range(num_classes)]
        self._meta = {"spatial_dims": spatial_dims, "channels": channels,
                      "spatial": tuple(spatial), "multilabel": multilabel,
                      "num_classes": num_classes, "class_names": names,
                      "num_train": len(labels["train"])}
        if spatial_dims == 3 and self.image_size is not None:
            raise ValueError(f"{path}: image_size cannot resize 3-D MedMNIST volumes; "
                             "leave it unset (use size=64 for the 64^3 files)")
        return self._meta

    def build_info(self) -> DataInfo:
        meta = self._metadata()
        return DataInfo(
            task="classification",
            in_channels=meta["channels"],
            spatial_dims=meta["spatial_dims"],
            image_size=self.image_size or meta["spatial"],
            num_classes=meta["num_classes"],
            class_names=list(meta["class_names"]),
            multilabel=meta["multilabel"],
            num_train=meta["num_train"],
        )

    # --- loading a split ---------------------------------------------------------------------
    def build_split(self, split: Split) -> ArrayDataset:
        meta = self._metadata()
        path = self.file
        images = load_npz_array(path, f"{split}_images")
        labels = load_npz_array(path, f"{split}_labels")
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: {split}_images must be uint8, got {images.dtype}")
        expected_tail = (meta["spatial"] if meta["channels"] == 1
                         else (*meta["spatial"], meta["channels"]))
        if tuple(images.shape[1:]) != tuple(expected_tail):
            raise ValueError(f"{path}: {split}_images has shape {images.shape}, expected "
                             f"[N, {', '.join(map(str, expected_tail))}] like train_images")
        if len(labels) != len(images):
            raise ValueError(f"{path}: {split}_labels has {len(labels)} rows but "
                             f"{split}_images has {len(images)}")
        if len(images) == 0:
            raise ValueError(f"{path}: the {split!r} split is empty ({split}_images has 0 rows)")
        k = meta["num_classes"]
        if meta["multilabel"]:
            ok = np.isin(labels, (0, 1)).all(axis=1)
            expected = "0/1 values"
        else:
            ok = (labels[:, 0] >= 0) & (labels[:, 0] < k)
            expected = f"a class index in [0, {k})"
        positions = np.arange(len(images))
        if not ok.all():
            bad = np.flatnonzero(~ok)
            detail = ", ".join(f"row {i}: {labels[i].tolist()}" for i in bad[:20])
            message = (f"{path}: {len(bad)} of {len(labels)} rows of {split}_labels are not "
                       f"{expected}: {detail}{' …' if len(bad) > 20 else ''}")
            if self.on_bad_sample == "error":
                raise ValueError(message + " (pass on_bad_sample='skip' to leave them out)")
            warnings.warn(f"skipped bad samples — {message}", stacklevel=2)
            images, labels, positions = images[ok], labels[ok], positions[ok]
        transform = None
        augment3d = None
        if meta["spatial_dims"] == 2:
            transform = JointTransform(self.image_size, self.augment, train=split == "train")
        else:
            message = volume_augment_warning(self.augment)
            if message:
                warnings.warn(f"MedMNISTDataModule: {message}", stacklevel=2)
            augment3d = self.augment if split == "train" else None
        return ArrayDataset(images, labels, meta["multilabel"], meta["spatial_dims"], transform,
                            augment3d, positions)
