"""DecathlonDataModule on tiny NIfTI volumes written here in the exact MSD layout."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.samples import BadSampleError
from datamodules.transforms import AugmentConfig
from datamodules.volumes import DecathlonDataModule, header_shape_dhw

N_CASES = 6


def warned(record) -> str:
    """All warning messages caught by ``pytest.warns``, joined."""
    return "\n".join(str(w.message) for w in record)


def _volume(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (X, Y, Z) with structure, and a label map with classes 1 and 2 at known places."""
    shape = (12 + i, 10, 6 + (i % 2))
    rng = np.random.default_rng(i)
    image = rng.normal(300.0, 50.0, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:5, 1:4, 1:3] = 1   # near x = 0: on the left of each axial slice
    label[8:11, 5:9, 2:5] = 2
    image[label == 1] += 400.0
    return image, label


def _affine(i: int) -> np.ndarray:
    if i == 1:  # stored with permuted axes (X, Y, Z) = (A, S, R): reoriented on load
        return np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1.0]])
    return np.diag([1.0, 1.0, 2.0, 1.0])


def write_msd(root: Path, n: int = N_CASES) -> Path:
    task = root / "Task04_Hippocampus"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "imagesTs").mkdir()
    training = []
    for i in range(n):
        image, label = _volume(i)
        affine = _affine(i)
        name = f"hippocampus_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), task / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
             task / "imagesTs" / "hippocampus_900.nii.gz")
    meta = {"name": "Hippocampus", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": n, "numTest": 1, "training": training,
            "test": ["./imagesTs/hippocampus_900.nii.gz"]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return write_msd(tmp_path_factory.mktemp("msd"))


def make(root: Path, **kw) -> DecathlonDataModule:
    kw.setdefault("split_fractions", (0.5, 0.25, 0.25))
    kw.setdefault("batch_size", 2)
    return DecathlonDataModule(root=str(root), **kw)


def test_3d_batch_contract(msd: Path) -> None:
    dm = make(msd, patch_size=(8, 8, 8))
    info = dm.info
    assert (info.task, info.spatial_dims, info.in_channels, info.num_classes) == (
        "segmentation", 3, 1, 3)
    assert info.class_names == ["background", "Anterior", "Posterior"]
    assert info.image_size == (8, 8, 8) and info.bounds == (0.0, 1.0) and info.num_train == 3
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [3, 2, 1]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 1, 8, 8, 8) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (2, 8, 8, 8) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    assert batch["index"].tolist() == [0, 1]


def test_orientation_and_axes(msd: Path) -> None:
    """Every case comes out as [C, D, H, W] = [C, Z, Y, X] of its RAS-reoriented voxels."""
    dm = make(msd, split_fractions=(1.0, 0.0, 0.0))
    cases = {c.case_id: c for c in dm.splits()["train"]}
    for i in range(N_CASES):
        image, label = _volume(i)
        case = cases[f"hippocampus_{i:03d}"]
        loaded_image, mask = dm.loader(case)
        if i == 1:  # file axes (A, S, R) -> RAS = (file 2, file 0, file 1)
            label = label.transpose(2, 0, 1)
        assert case.shape_dhw == label.shape[::-1]
        assert torch.equal(mask, torch.from_numpy(label.transpose(2, 1, 0).astype(np.int64)))
        assert loaded_image.shape == (1, *label.shape[::-1])
        assert loaded_image.min() >= 0 and loaded_image.max() <= 1
    assert header_shape_dhw(cases["hippocampus_001"].image_path, None)[0] == (6 + 1, 10, 13)


def test_2d_slices(msd: Path) -> None:
    dm = make(msd, mode="2d_slices", image_size=(16, 16))
    info = dm.info
    assert info.spatial_dims == 2 and info.image_size == (16, 16)
    dm.setup()
    val = dm.dataset("val")
    depths = [c.shape_dhw[0] for c in val.cases]
    assert len(val) == sum(depths) and info.num_train == sum(
        c.shape_dhw[0] for c in dm.splits()["train"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16) and batch["mask"].shape == (2, 16, 16)
    assert batch["mask"].dtype == torch.int64 and batch["index"].tolist() == [0, 1]
    # index = position in the flattened (volume, slice) list: item k of volume 1 is slice k.
    first = val.cases[0]
    native = make(msd, mode="2d_slices", image_size=first.shape_dhw[1:]).build_split("val")
    image, mask = native.loader(first)
    for d in range(first.shape_dhw[0]):
        item = native[d]
        assert torch.equal(item["mask"], mask[d]) and torch.allclose(item["image"], image[:, d])
        assert item["index"].item() == d
    cached = make(msd, mode="2d_slices", image_size=first.shape_dhw[1:], cache=True)
    cached_val = cached.build_split("val")
    assert len(cached_val._cache) == len(cached_val.cases)  # loaded at setup
    assert torch.equal(cached_val[3]["image"], native[3]["image"])
    second = native[first.shape_dhw[0]]
    assert torch.equal(second["mask"][:0], mask[0][:0]) and second["index"].item() == len(mask)


def test_3d_hflip_and_determinism(msd: Path) -> None:
    kw = {"patch_size": (8, 10, 16), "split_fractions": (1.0, 0.0, 0.0)}
    plain = make(msd, **kw).build_split("train")
    flipped = make(msd, augment=AugmentConfig(hflip=1.0), **kw).build_split("train")
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        assert torch.equal(b["mask"], a["mask"].flip(-1))  # W axis, with the image
        assert torch.allclose(b["image"], a["image"].flip(-1))
    aug = AugmentConfig(hflip=0.5, rotate_deg=20, scale=0.1, brightness=0.1, gamma=0.2)
    ds = make(msd, augment=aug, spatial_mode="crop", **kw).build_split("train")

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([ds[i]["image"] for i in range(2)])

    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))
    assert draw(7).shape == (2, 1, 8, 10, 16)


def test_2d_hflip_alignment(msd: Path) -> None:
    kw = {"mode": "2d_slices", "image_size": (10, 12), "split_fractions": (1.0, 0.0, 0.0)}
    plain = make(msd, **kw).build_split("train")
    flipped = make(msd, augment=AugmentConfig(hflip=1.0), **kw).build_split("train")
    for i in range(0, len(plain), 5):
        assert torch.equal(flipped[i]["mask"], plain[i]["mask"].flip(-1))


def test_bad_volumes(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", n=4)
    task = root / "Task04_Hippocampus"
    # label on another grid
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)),
             task / "labelsTr" / "hippocampus_001.nii.gz")
    # label value outside the 3 classes (found when loaded)
    image, label = _volume(2)
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(label, _affine(2)), task / "labelsTr" / "hippocampus_002.nii.gz")
    with pytest.raises(ValueError, match=r"(?s)1 bad sample.*labelsTr/hippocampus_001\.nii\.gz "
                                         r"is \(5, 5, 5\).*voxel grid"):
        make(root).setup()
    # skip: the grid mismatch and (full read at setup) the bad label value, with one warning
    with pytest.warns(UserWarning) as caught:
        dm = make(root, on_bad_sample="skip", split_fractions=(1.0, 0.0, 0.0))
        ids = [c.case_id for c in dm.splits()["train"]]
    assert ids == ["hippocampus_000", "hippocampus_003"]
    assert "skipping 2 bad sample(s)" in warned(caught) and "values [7.0]" in warned(caught)
    # error mode: the bad value is found when that case is read, naming the file
    (task / "labelsTr" / "hippocampus_001.nii.gz").unlink()
    nib.save(nib.Nifti1Image(_volume(1)[1], _affine(1)),
             task / "labelsTr" / "hippocampus_001.nii.gz")
    ds = make(root, split_fractions=(1.0, 0.0, 0.0)).build_split("train")
    with pytest.raises(BadSampleError, match=r"hippocampus_002\.nii\.gz holds values \[7\.0\]"):
        ds[2]
    # truncated gzip: header readable, data not -> found on reading, naming the file ...
    path = task / "imagesTr" / "hippocampus_003.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = make(root, split_fractions=(1.0, 0.0, 0.0), patch_size=(4, 4, 4)).build_split("train")
    with pytest.raises(BadSampleError,
                       match=r"hippocampus_003: cannot load .*imagesTr/hippocampus_003\.nii\.gz: "
                             r"EOFError"):
        ds[3]
    # ... or at indexing when even the header is cut
    path.write_bytes(data[:100])
    with pytest.raises(ValueError, match=r"cannot read NIfTI header of .*hippocampus_003"):
        make(root).setup()
    # missing file and missing folder
    (task / "imagesTr" / "hippocampus_000.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"imagesTr/hippocampus_000\.nii\.gz does not exist"):
        make(root).setup()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        make(root, task_dir="Task09_Spleen")


def test_multimodal_4d_images(tmp_path: Path) -> None:
    """4-D (X, Y, Z, modality) images: channels first, each scaled to [0, 1] on its own."""
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    training = []
    for i in range(3):
        image = np.random.default_rng(i).random((8, 9, 5, 2)).astype(np.float32)
        image[..., 1] *= 1000.0  # a modality on a very different scale
        label = np.zeros((8, 9, 5), np.uint8)
        label[1:3, 2:4, 1:3] = 3
        nib.save(nib.Nifti1Image(image, np.eye(4)), task / "imagesTr" / f"b{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / f"b{i}.nii.gz")
        training.append({"image": f"./imagesTr/b{i}.nii.gz", "label": f"./labelsTr/b{i}.nii.gz"})
    labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    (task / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": labels, "training": training}))
    dm = DecathlonDataModule(root=str(task), task_dir=None, patch_size=(4, 8, 8),
                             split_fractions=(1 / 3, 1 / 3, 1 / 3))
    assert (dm.info.in_channels, dm.info.num_classes) == (2, 4)
    item = dm.build_split("train")[0]
    assert item["image"].shape == (2, 4, 8, 8) and item["mask"].shape == (4, 8, 8)
    assert (item["image"].amax(dim=(1, 2, 3)) > 0.8).all()  # both channels use [0, 1]
    assert set(item["mask"].unique().tolist()) <= {0, 3}
