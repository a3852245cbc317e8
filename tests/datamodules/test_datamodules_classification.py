"""Real-data classification / segmentation loaders: MedMNIST, PH2, ISIC, chest X-ray folders.

Layouts not in ``../shared/data`` (ISIC, chest X-ray folders, broken files) are written by the
tests into ``tmp_path``; the real sets load completely when ``shared_data`` is present.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (
    AugmentConfig,
    BadSampleError,
    ChestXrayFolderDataModule,
    ISICDataModule,
    MedMNISTDataModule,
    PH2DataModule,
)


def _rgb(path: Path, w: int = 12, h: int = 10, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _mask(path: Path, w: int = 12, h: int = 10, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((h, w), np.uint8)
    arr[2:6, 1 + seed % 4:7] = 255
    Image.fromarray(arr).save(path)
    return arr


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _all_items(dm, split: str) -> list[dict]:
    return [b for b in dm._loader(split, shuffle=False)]


# --------------------------------------------------------------------------------------------
# MedMNIST
# --------------------------------------------------------------------------------------------
def _npz(path: Path, shape: tuple[int, ...], labels_width: int = 1, num_classes: int = 2,
         sizes=(10, 4, 6)) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        if labels_width == 1:
            arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
        else:
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, labels_width), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def test_medmnist_grey_rgb_multilabel_and_3d(tmp_path: Path) -> None:
    _npz(tmp_path / "pneumoniamnist.npz", (28, 28))
    _npz(tmp_path / "dermamnist_64.npz", (64, 64, 3), num_classes=7)
    _npz(tmp_path / "chestmnist.npz", (28, 28), labels_width=14)
    _npz(tmp_path / "organmnist3d.npz", (28, 28, 28), num_classes=11)

    dm = MedMNISTDataModule(root=str(tmp_path), flag="pneumoniamnist", batch_size=4)
    info = dm.info
    assert (info.in_channels, info.spatial_dims, info.num_classes) == (1, 2, 2)
    assert info.class_names == ["normal", "pneumonia"] and info.num_train == 10
    batches = _all_items(dm, "train")
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(10))
    b = batches[0]
    assert b["image"].shape == (4, 1, 28, 28) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.int64 and b["label"].tolist() == [0, 1, 0, 1]
    raw = np.load(tmp_path / "pneumoniamnist.npz")["train_images"][0]
    torch.testing.assert_close(b["image"][0, 0], torch.from_numpy(raw / 255.0).float())

    rgb = MedMNISTDataModule(root=str(tmp_path), flag="dermamnist", size=64, image_size=(32, 32),
                             batch_size=3)
    assert rgb.info.in_channels == 3 and rgb.info.num_classes == 7
    assert rgb.info.class_names[4] == "melanoma" and rgb.info.image_size == (32, 32)
    assert next(iter(rgb.val_dataloader()))["image"].shape == (3, 3, 32, 32)

    ml = MedMNISTDataModule(root=str(tmp_path / "chestmnist.npz"), batch_size=5)
    assert ml.info.multilabel and ml.info.num_classes == 14
    lb = next(iter(ml.train_dataloader()))["label"]
    assert lb.shape == (5, 14) and lb.dtype == torch.float32

    vol = MedMNISTDataModule(root=str(tmp_path), flag="organmnist3d", batch_size=2,
                             augment=AugmentConfig(hflip=1.0))
    assert vol.info.spatial_dims == 3 and vol.info.image_size == (28, 28, 28)
    item = vol.dataset("train")[0]
    raw = np.load(tmp_path / "organmnist3d.npz")["train_images"][0]
    assert item["image"].shape == (1, 28, 28, 28)
    torch.testing.assert_close(item["image"][0], torch.from_numpy(raw[:, :, ::-1] / 255.0).float())


def test_medmnist_augmentation_flips_image(tmp_path: Path) -> None:
    _npz(tmp_path / "breastmnist.npz", (28, 28))
    plain = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist").dataset("train")[2]
    flip = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist",
                              augment=AugmentConfig(hflip=1.0)).dataset("train")[2]
    torch.testing.assert_close(flip["image"], plain["image"].flip(-1))
    assert flip["label"] == plain["label"]


def test_medmnist_bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="MEDROBUST_DATA"):
        _ = MedMNISTDataModule().info
    with pytest.raises(FileNotFoundError, match="bloodmnist.npz"):
        _npz(tmp_path / "pneumoniamnist.npz", (28, 28))
        _ = MedMNISTDataModule(root=str(tmp_path), flag="bloodmnist").info
    # Labels out of range: error names file, key and rows; skip warns with the count.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    bad = np.array([[0], [1], [5], [0], [1], [0]], np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=images, train_labels=bad,
             val_images=images, val_labels=bad % 2, test_images=images[:0],
             test_labels=bad[:0])
    dm = MedMNISTDataModule(root=str(tmp_path))
    with pytest.raises(ValueError, match=r"pneumoniamnist.npz: 1 of 6 rows of train_labels.*row 2"):
        dm.dataset("train")
    skip = MedMNISTDataModule(root=str(tmp_path), on_bad_sample="skip")
    with pytest.warns(UserWarning, match="1 of 6 rows"):
        assert len(skip.dataset("train")) == 5
    with pytest.raises(ValueError, match="'test' split is empty"):
        skip.dataset("test")
    # Missing key and wrong shape name the file and key.
    np.savez(tmp_path / "broken.npz", train_images=images, val_images=images,
             val_labels=bad, test_images=images, test_labels=bad)
    with pytest.raises(KeyError, match="broken.npz.*train_labels"):
        _ = MedMNISTDataModule(root=str(tmp_path), flag="broken").info
    np.savez(tmp_path / "shapes.npz", train_images=images, train_labels=bad % 2,
             val_images=images[:, :20], val_labels=bad % 2, test_images=images,
             test_labels=bad % 2)
    with pytest.raises(ValueError, match="shapes.npz: val_images has shape"):
        MedMNISTDataModule(root=str(tmp_path), flag="shapes").dataset("val")


@pytest.mark.realdata
def test_real_pneumoniamnist_loads_completely(shared_data: Path) -> None:
    dm = MedMNISTDataModule(root=str(shared_data / "medmnist"), batch_size=1024)
    assert dm.info.class_names == ["normal", "pneumonia"] and dm.info.num_train == 4708
    total = 0
    for split, n in (("train", 4708), ("val", 524), ("test", 624)):
        batches = _all_items(dm, split)
        labels = torch.cat([b["label"] for b in batches])
        images = torch.cat([b["image"] for b in batches])
        assert len(labels) == n and images.shape == (n, 1, 28, 28)
        assert torch.cat([b["index"] for b in batches]).tolist() == list(range(n))
        assert images.min() >= 0 and images.max() <= 1 and set(labels.tolist()) == {0, 1}
        total += n
    assert total == 5856


# --------------------------------------------------------------------------------------------
# PH2
# --------------------------------------------------------------------------------------------
def _ph2(root: Path, n: int = 9, legend: bool = True) -> dict[str, int]:
    labels = {}
    lines = ["\ufeffName,Clinical Diagnosis,Asymmetry"]
    for i in range(n):
        case = f"IMD{i + 1:03d}"
        folder = root / "PH2 Dataset images" / case
        _rgb(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp", seed=i)
        _mask(folder / f"{case}_lesion" / f"{case}_lesion.bmp", seed=i)
        labels[case] = i % 3
        lines.append(f"{case},{i % 3},0")
    if legend:
        lines += [",,", "Legends f,,", "0 - Common Nevus,,"]
    (root / "PH2_dataset.csv").write_text("\r\n".join(lines) + "\r\n")
    return labels


def test_ph2_classification_and_segmentation(tmp_path: Path) -> None:
    labels = _ph2(tmp_path)
    split_file = tmp_path / "split.json"
    cls = PH2DataModule(root=str(tmp_path), image_size=(16, 20), split_fractions=(1 / 3,) * 3,
                        split_file=str(split_file), batch_size=8)
    info = cls.info
    assert info.num_classes == 3 and info.class_names[2] == "melanoma" and info.in_channels == 3
    ids = cls.split_ids()
    assert sorted(sum(ids.values(), [])) == sorted(labels) and split_file.exists()
    for split in ("train", "val", "test"):  # stratified: one case per class in each split
        assert sorted(labels[c] for c in ids[split]) == [0, 1, 2]
        batch = _all_items(cls, split)[0]
        assert batch["image"].shape == (3, 3, 16, 20) and batch["label"].dtype == torch.int64
        assert batch["label"].tolist() == [labels[c] for c in ids[split]]
        assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    seg = PH2DataModule(root=str(tmp_path), task="segmentation", image_size=(10, 12),
                        split_fractions=(1 / 3,) * 3, split_file=str(split_file))
    assert seg.split_ids() == ids and seg.info.num_classes == 2
    item = seg.dataset("val")[1]
    case = ids["val"][1]
    raw_mask = np.array(Image.open(tmp_path / "PH2 Dataset images" / case / f"{case}_lesion"
                                   / f"{case}_lesion.bmp"))
    assert item["mask"].dtype == torch.int64 and torch.equal(item["mask"],
                                                             torch.from_numpy(raw_mask // 255).long())
    assert int(item["index"]) == 1


def test_ph2_flip_keeps_mask_aligned(tmp_path: Path) -> None:
    _ph2(tmp_path, n=6)
    kw = dict(root=str(tmp_path), task="segmentation", image_size=(10, 12),
              split_fractions=(0.5, 0.5, 0.0))
    plain = PH2DataModule(**kw).dataset("train")[0]
    flipped = PH2DataModule(**kw, augment=AugmentConfig(hflip=1.0)).dataset("train")[0]
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))


def test_ph2_split_file_mismatch_is_an_error(tmp_path: Path) -> None:
    _ph2(tmp_path, n=6)
    split_file = tmp_path / "split.json"
    PH2DataModule(root=str(tmp_path), split_file=str(split_file)).split_ids()
    _rgb(tmp_path / "PH2 Dataset images" / "IMD099" / "IMD099_Dermoscopic_Image" / "IMD099.bmp")
    with pytest.raises(ValueError, match="does not match the dataset.*IMD099"):
        PH2DataModule(root=str(tmp_path), split_file=str(split_file),
                      task="segmentation").split_ids()


def test_ph2_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="PH2 Dataset images"):
        _ = PH2DataModule(root=str(tmp_path)).info
    _ph2(tmp_path, n=6)
    imgs = tmp_path / "PH2 Dataset images"
    _truncate(imgs / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.bmp")
    _mask(imgs / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp", w=9)
    (imgs / "IMD004" / "IMD004_Dermoscopic_Image" / "IMD004.bmp").unlink()
    kw = dict(root=str(tmp_path), task="segmentation", split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(BadSampleError, match="IMD003.*9x10.*12x10"):
        PH2DataModule(**kw).dataset("train")
    # Truncated files pass the header check in "error" mode and fail when read, naming the file.
    bad_read = PH2DataModule(root=str(tmp_path), split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(BadSampleError, match="IMD004.bmp"):
        bad_read.dataset("train")
    skip = PH2DataModule(**kw, on_bad_sample="skip")
    with pytest.warns(UserWarning, match=r"(?s)skipped 3 of 6.*IMD002.*IMD003.*IMD004"):
        ds = skip.dataset("train")
    assert [r.id for r in ds.records] == ["IMD001", "IMD005", "IMD006"]
    (tmp_path / "PH2_dataset.csv").write_text("Name,Clinical Diagnosis\nIMD001,3\n")
    with pytest.raises(ValueError, match=r"PH2_dataset.csv, line 2 \(IMD001\).*0, 1 or 2"):
        _ = PH2DataModule(root=str(tmp_path)).info


def test_ph2_truncated_image_error_names_the_file(tmp_path: Path) -> None:
    _ph2(tmp_path, n=3)
    _truncate(tmp_path / "PH2 Dataset images" / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.bmp")
    ds = PH2DataModule(root=str(tmp_path), split_fractions=(1.0, 0.0, 0.0)).dataset("train")
    ds[0]
    with pytest.raises(BadSampleError, match=r"sample 1 \(IMD002.*IMD002.bmp"):
        ds[1]


def test_ph2_release_txt_with_x_marks(tmp_path: Path) -> None:
    _ph2(tmp_path, n=3)
    (tmp_path / "PH2_dataset.csv").unlink()
    (tmp_path / "PH2_dataset.txt").write_text(
        "|| Name || Histological Diagnosis || Common Nevus || Atypical Nevus || Melanoma ||\n"
        "|| IMD001 || || X || || ||\n|| IMD002 || || || X || ||\n"
        "|| IMD003 || Melanoma || || || X ||\n")
    dm = PH2DataModule(root=str(tmp_path))
    assert {c: r.label for c, r in dm.cases().items()} == {"IMD001": 0, "IMD002": 1, "IMD003": 2}


@pytest.mark.realdata
def test_real_ph2_loads_completely(shared_data: Path) -> None:
    for task in ("classification", "segmentation"):
        dm = PH2DataModule(root=str(shared_data / "ph2"), task=task, image_size=(64, 64),
                           batch_size=50)
        seen = 0
        for split in ("train", "val", "test"):
            for batch in _all_items(dm, split):
                seen += len(batch["index"])
                assert batch["image"].shape[1:] == (3, 64, 64)
                if task == "segmentation":
                    assert set(batch["mask"].unique().tolist()) == {0, 1}
        assert seen == 200
    counts = torch.bincount(torch.tensor([r.label for r in dm.cases().values()]))
    assert counts.tolist() == [80, 80, 40]


# --------------------------------------------------------------------------------------------
# ISIC
# --------------------------------------------------------------------------------------------
def _isic2017(root: Path, split_word: str, ids: list[int], truth: list[tuple[int, int]]) -> None:
    images = root / f"ISIC-2017_{split_word}_Data"
    masks = root / f"ISIC-2017_{split_word}_Part1_GroundTruth"
    rows = ["image_id,melanoma,seborrheic_keratosis"]
    for i, (mel, sk) in zip(ids, truth):
        name = f"ISIC_{i:07d}"
        _rgb(images / f"{name}.jpg", seed=i)
        _mask(masks / f"{name}_segmentation.png", seed=i)
        rows.append(f"{name},{float(mel)},{float(sk)}")
    _rgb(images / f"ISIC_{ids[0]:07d}_superpixels.png")  # ships with 2017 data; not a sample
    (root / f"ISIC-2017_{split_word}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")


def test_isic2017_official_layout(tmp_path: Path) -> None:
    _isic2017(tmp_path, "Training", [0, 1, 2, 3], [(0, 0), (1, 0), (0, 1), (0, 0)])
    _isic2017(tmp_path, "Validation", [10, 11], [(1, 0), (0, 0)])
    _isic2017(tmp_path, "Test_v2", [20, 21, 22], [(0, 1), (0, 0), (1, 0)])
    dm = ISICDataModule(root=str(tmp_path), image_size=(8, 8), batch_size=8)
    assert dm.info.class_names == ["nevus", "melanoma", "seborrheic_keratosis"]
    assert dm.info.num_train == 4
    assert _all_items(dm, "train")[0]["label"].tolist() == [0, 1, 2, 0]
    test = _all_items(dm, "test")[0]
    assert test["label"].tolist() == [2, 0, 1] and test["image"].shape == (3, 3, 8, 8)
    seg = ISICDataModule(root=str(tmp_path), task="segmentation", image_size=(10, 12))
    item = seg.dataset("val")[0]
    raw = np.array(Image.open(tmp_path / "ISIC-2017_Validation_Part1_GroundTruth"
                              / "ISIC_0000010_segmentation.png"))
    assert torch.equal(item["mask"], torch.from_numpy(raw // 255).long())
    assert len(seg.dataset("train")) == 4  # the superpixel file is not a sample


def test_isic2018_layout_and_seeded_split(tmp_path: Path) -> None:
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth"
    gt.mkdir()
    classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    rows = ["image," + ",".join(classes)]
    for i in range(14):
        _rgb(tmp_path / "ISIC2018_Task3_Training_Input" / f"ISIC_{i:07d}.jpg", seed=i)
        onehot = ["0.0"] * 7
        onehot[i % 7] = "1.0"
        rows.append(f"ISIC_{i:07d}," + ",".join(onehot))
    (gt / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    dm = ISICDataModule(root=str(tmp_path), edition="2018", splits="seeded",
                        split_fractions=(0.5, 0.0, 0.5), image_size=(8, 8),
                        split_file=str(tmp_path / "split.json"))
    assert dm.info.class_names == classes and dm.info.num_classes == 7
    train = [dm.dataset("train")[i]["label"].item() for i in range(len(dm.dataset("train")))]
    test = [dm.dataset("test")[i]["label"].item() for i in range(len(dm.dataset("test")))]
    assert sorted(train) == sorted(test) == list(range(7))  # stratified
    # A row that is not one-hot is an error naming file and line.
    rows[3] = "ISIC_0000002,1.0,1.0,0,0,0,0,0"
    (gt / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"GroundTruth.csv, line 4 \(ISIC_0000002\)"):
        _ = ISICDataModule(root=str(tmp_path), edition="2018", splits="seeded").info


def test_isic_bad_inputs(tmp_path: Path) -> None:
    _isic2017(tmp_path, "Training", [0, 1, 2, 3], [(0, 0), (1, 0), (0, 1), (0, 0)])
    with pytest.raises(FileNotFoundError, match="ISIC-2017_Validation_Data"):
        ISICDataModule(root=str(tmp_path)).dataset("val")
    (tmp_path / "ISIC-2017_Training_Data" / "ISIC_0000001.jpg").unlink()
    _truncate(tmp_path / "ISIC-2017_Training_Data" / "ISIC_0000002.jpg")
    _mask(tmp_path / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000003_segmentation.png",
          w=5)
    with pytest.raises(BadSampleError, match="ISIC_0000001.jpg"):
        ISICDataModule(root=str(tmp_path)).dataset("train")
    seg = ISICDataModule(root=str(tmp_path), task="segmentation", on_bad_sample="skip")
    with pytest.warns(UserWarning, match=r"(?s)skipped 3 of 4 .*ISIC_0000001.*ISIC_0000002.*ISIC_0000003"):
        assert len(seg.dataset("train")) == 1


# --------------------------------------------------------------------------------------------
# Chest X-ray folders
# --------------------------------------------------------------------------------------------
def _kermany(root: Path, counts: dict[str, dict[str, int]]) -> None:
    for split, per_class in counts.items():
        for name, n in per_class.items():
            for i in range(n):
                path = root / split / name / f"{name.lower()}_{i}.jpeg"
                _rgb(path, w=14, h=11, seed=i)
    (root / "train" / "NORMAL" / ".DS_Store").write_text("not an image")


def test_chest_xray_folders(tmp_path: Path) -> None:
    _kermany(tmp_path, {"train": {"PNEUMONIA": 4, "NORMAL": 3}, "val": {"NORMAL": 1,
                                                                        "PNEUMONIA": 1},
                        "test": {"NORMAL": 2, "PNEUMONIA": 2}})
    dm = ChestXrayFolderDataModule(root=str(tmp_path), image_size=(16, 16), batch_size=8)
    info = dm.info
    assert info.class_names == ["NORMAL", "PNEUMONIA"] and info.in_channels == 1
    assert info.num_train == 7
    batch = _all_items(dm, "train")[0]
    assert batch["image"].shape == (7, 1, 16, 16) and batch["label"].tolist() == [0] * 3 + [1] * 4
    assert batch["index"].tolist() == list(range(7))
    # Grey values: PIL luminance of the RGB file, resized.
    carved = ChestXrayFolderDataModule(root=str(tmp_path), val_fraction=0.3, image_size=(8, 8))
    train_ids = {r.id for r in carved.dataset("train").records}
    val_ids = {r.id for r in carved.dataset("val").records}
    assert len(val_ids) == 2 and not train_ids & val_ids
    assert {r.label for r in carved.dataset("val").records} == {0, 1}


def test_chest_xray_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="training folder"):
        _ = ChestXrayFolderDataModule(root=str(tmp_path)).info
    _kermany(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}, "test": {"COVID": 1}})
    dm = ChestXrayFolderDataModule(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'val' folder"):
        dm.dataset("val")
    with pytest.raises(ValueError, match="COVID"):
        dm.dataset("test")
    (tmp_path / "val" / "NORMAL").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ChestXrayFolderDataModule(root=str(tmp_path)).dataset("val")
    bad = tmp_path / "train" / "PNEUMONIA" / "pneumonia_1.jpeg"
    _truncate(bad)
    skip = ChestXrayFolderDataModule(root=str(tmp_path), on_bad_sample="skip")
    with pytest.warns(UserWarning, match=r"(?s)skipped 1 of 4.*pneumonia_1.jpeg"):
        assert len(skip.dataset("train")) == 3


def test_chest_xray_worker_error_names_the_file(tmp_path: Path) -> None:
    _kermany(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    _truncate(tmp_path / "train" / "NORMAL" / "normal_1.jpeg")
    dm = ChestXrayFolderDataModule(root=str(tmp_path), image_size=(8, 8), num_workers=1,
                                   batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadSampleError, match="normal_1.jpeg"):
            list(dm._loader("train", shuffle=False))


def test_sixteen_bit_grey_images_keep_their_range(tmp_path: Path) -> None:
    for name, value in (("NORMAL", 1000), ("PNEUMONIA", 60000)):
        path = tmp_path / "train" / name / "x.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((6, 5), value, np.uint16)).save(path)
    ds = ChestXrayFolderDataModule(root=str(tmp_path), image_size=(6, 5)).dataset("train")
    torch.testing.assert_close(ds[0]["image"], torch.full((1, 6, 5), 1000 / 65535))
    torch.testing.assert_close(ds[1]["image"], torch.full((1, 6, 5), 60000 / 65535))
