"""A researcher's own data: manifest datamodules for the four tasks, paired image/mask folders,
bad rows named by row and file, label ranges checked at load (manifest, MedMNIST, PH2), and
two epochs of train.py on a tiny manifest per task."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datamodules.manifest import (
    MANIFEST_TASKS,
    ManifestDataModule,
    PairedFoldersDataModule,
    write_example_manifest,
)
from datamodules.medmnist import MedMNISTDataModule
from datamodules.ph2 import PH2DataModule
from datamodules.samples import BadSampleError
from tests.conftest import PROJECT_ROOT


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _all(dm: ManifestDataModule, split: str) -> list[dict]:
    return [dm.dataset(split)[i] for i in range(len(dm.dataset(split)))]


# ------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("task", MANIFEST_TASKS)
def test_each_task_loads_with_inferred_info(task: str, fmt: str, tmp_path: Path) -> None:
    path = write_example_manifest(tmp_path, task, n=10, image_size=(24, 20), fmt=fmt)
    dm = ManifestDataModule(str(path), task=task, batch_size=4)
    info = dm.info
    assert info.task == task and info.image_size == (24, 20) and info.bounds == (0.0, 1.0)
    assert info.in_channels == (3 if task == "detection" else 1)
    if task == "classification":
        assert info.class_names == ["blob", "plain"] and info.num_classes == 2
    elif task == "segmentation":
        assert info.num_classes == 2  # 0/255 masks read as binary
    elif task == "landmarks":
        assert info.num_landmarks == 3 and info.class_names == ["nose", "left_eye", "right_eye"]
        assert info.pixel_spacing_mm == pytest.approx(0.1)
    else:
        assert info.class_names == ["large", "small"]
    split = json.loads((tmp_path / "manifest.split.json").read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == [f"images/{i:03d}.png" for i in range(10)]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (info.in_channels, 24, 20)
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    items = _all(dm, "train")
    src = {r["image"]: r for r in (_rows(path) if fmt == "csv" else json.loads(path.read_text()))}
    ids = [s.id for s in dm.index()["splits"]["train"]]
    for item, sid in zip(items, ids):  # targets as written in the manifest
        row = src[sid]
        if task == "classification":
            assert item["label"].item() == info.class_names.index(row["label"])
        elif task == "segmentation":
            mask = np.asarray(Image.open(tmp_path / row["mask"])) > 0
            assert torch.equal(item["mask"], torch.from_numpy(mask.astype(np.int64)))
        elif task == "landmarks":
            assert item["landmarks"][0].tolist() == pytest.approx([float(row["nose_x"]),
                                                                   float(row["nose_y"])])
            assert item["visible"].all() and item["spacing"].item() == pytest.approx(0.1)
        elif fmt == "json":
            assert item["boxes"].tolist() == [[float(v) for v in b] for b in row["boxes"]]


def test_split_column_multilabel_and_augmentation(tmp_path: Path) -> None:
    """A split column is used as given; ';' makes multi-label float targets; training
    augmentation flips image and mask together."""
    write_example_manifest(tmp_path, "segmentation", n=6, image_size=(16, 16))
    rows = _rows(tmp_path / "manifest.csv")
    for i, r in enumerate(rows):
        r["split"] = ["train", "validation", "test"][i % 3]
        r["label"] = ["a;b", "b", ""][i % 3]
    _write_rows(tmp_path / "m.csv", rows)
    cls = ManifestDataModule(str(tmp_path / "m.csv"), task="classification", split_file=None)
    assert cls.info.multilabel and cls.info.class_names == ["a", "b"]
    assert [len(cls.dataset(s)) for s in ("train", "val", "test")] == [2, 2, 2]
    assert cls.dataset("train")[0]["label"].tolist() == [1.0, 1.0]
    assert cls.dataset("val")[0]["label"].tolist() == [0.0, 1.0]
    assert cls.dataset("test")[0]["label"].tolist() == [0.0, 0.0]
    from datamodules.transforms import AugmentConfig

    seg = ManifestDataModule(str(tmp_path / "m.csv"), task="segmentation", split_file=None,
                             augment=AugmentConfig(hflip=1.0))
    item = seg.dataset("train")[0]
    plain = ManifestDataModule(str(tmp_path / "m.csv"), task="segmentation", split_file=None)
    ref = plain.dataset("train")[0]
    assert torch.equal(item["mask"], ref["mask"].flip(-1))
    assert torch.allclose(item["image"], ref["image"].flip(-1))
    # the image is bright exactly where the mask is
    assert item["image"][0][item["mask"] == 1].min() > 0.8 > item["image"][0][item["mask"] == 0].max()


def test_nifti_volume_manifest(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    rows = []
    for i in range(5):
        vol = np.random.default_rng(i).uniform(0, 100, (12, 10, 8)).astype(np.float32)
        lab = np.zeros((12, 10, 8), np.uint8)
        lab[2:6, 2:6, 2:5] = 1 + i % 2
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / f"l{i}.nii.gz")
        rows.append({"image": f"v{i}.nii.gz", "mask": f"l{i}.nii.gz",
                     "split": ["train", "train", "train", "val", "test"][i]})
    (tmp_path / "vols.json").write_text(json.dumps(rows))
    dm = ManifestDataModule(str(tmp_path / "vols.json"), task="segmentation", patch_size=(8, 8, 8))
    info = dm.info
    assert info.spatial_dims == 3 and info.num_classes == 3 and info.image_size == (8, 8, 8)
    item = dm.dataset("train")[0]
    assert item["image"].shape == (1, 8, 8, 8) and item["mask"].shape == (8, 8, 8)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2}


# ------------------------------------------------------------------------------ bad rows
def _break(task: str, tmp_path: Path) -> tuple[Path, int, str, str]:
    """An example manifest with one bad row: returns (manifest, bad row number, file, reason)."""
    path = write_example_manifest(tmp_path, task, n=9, image_size=(16, 16))
    rows = _rows(path)
    kwargs_reason = {
        "classification": ("label", "7", "out of range"),
        "segmentation": ("mask", None, "is 8x8 but image"),
        "landmarks": ("nose_x", "40", "outside the 16x16 image"),
        "detection": ("x2", "30", "crosses the 16x16 image border"),
    }
    col, value, reason = kwargs_reason[task]
    n = 3  # 1-based data row
    if task == "segmentation":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / rows[n - 1]["mask"])
    else:
        rows[n - 1][col] = value  # type: ignore[assignment]
    _write_rows(path, rows)
    return path, n, rows[n - 1]["image"], reason


@pytest.mark.parametrize("task", MANIFEST_TASKS)
def test_bad_row_named_or_skipped_with_a_count(task: str, tmp_path: Path) -> None:
    path, n, image, reason = _break(task, tmp_path)
    extra = {"num_classes": 2} if task == "classification" else {}
    if task == "classification":  # indices, so that 7 is out of range of 2 classes
        rows = _rows(path)
        for r in rows:
            r["label"] = {"blob": "1", "plain": "0"}.get(r["label"], r["label"])
        _write_rows(path, rows)
    with pytest.raises(BadSampleError) as exc:
        _ = ManifestDataModule(str(path), task=task, split_file=None, **extra).info
    msg = str(exc.value)
    assert f"row {n} ({image})" in msg and reason in msg and str(path) in msg
    with pytest.warns(UserWarning, match=r"skipping 1 bad sample") as rec:
        dm = ManifestDataModule(str(path), task=task, split_file=None, on_bad_sample="skip", **extra)
        total = sum(len(v) for v in dm.index()["splits"].values())
    assert f"row {n} ({image})" in str(rec[0].message)
    n_images = len({r["image"] for r in _rows(path)})
    assert total == n_images - 1


def test_missing_file_unknown_label_duplicate_and_bad_split(tmp_path: Path) -> None:
    path = write_example_manifest(tmp_path, "classification", n=8, image_size=(16, 16))
    rows = _rows(path)
    rows[0]["image"] = "images/nope.png"
    rows[1]["label"] = "tumour"
    rows.append(dict(rows[2]))
    _write_rows(path, rows)
    with pytest.raises(BadSampleError) as exc:
        _ = ManifestDataModule(str(path), class_names=["blob", "plain"], split_file=None).info
    msg = str(exc.value)
    assert "3 bad sample(s)" in msg
    assert "row 1 (images/nope.png): missing file" in msg and "nope.png" in msg
    assert "row 2 (images/001.png): unknown label 'tumour'" in msg
    assert "row 9 (images/002.png): image listed again (first at row 3)" in msg
    rows = rows[2:8]
    rows[0]["split"] = "holdout"
    _write_rows(path, rows)
    with pytest.raises(BadSampleError, match=r"row 1 \(images/002.png\): split 'holdout'"):
        _ = ManifestDataModule(str(path), split_file=None).info


def test_non_contiguous_integer_labels_name_the_rows(tmp_path: Path) -> None:
    """Labels {0, 1, 5} with no declared classes would make a 6-class model with 3 empty
    classes: an error naming the rows beyond the gap; declaring the classes accepts them."""
    path = write_example_manifest(tmp_path, "classification", n=8, image_size=(16, 16))
    rows = _rows(path)
    for i, r in enumerate(rows):
        r["label"] = str(i % 2)
    rows[3]["label"] = "5"
    rows[6]["label"] = "5"
    _write_rows(path, rows)
    with pytest.raises(ValueError, match=r"skip \[2, 3, 4\](.|\n)*row 4 \(label 5\), row 7 \(label 5\)"):
        _ = ManifestDataModule(str(path), split_file=None).info
    assert ManifestDataModule(str(path), num_classes=6, split_file=None).info.num_classes == 6
    rows[3]["label"] = rows[6]["label"] = "2"  # contiguous again
    _write_rows(path, rows)
    assert ManifestDataModule(str(path), split_file=None).info.num_classes == 3


def test_segmentation_mask_values_outside_classes(tmp_path: Path) -> None:
    path = write_example_manifest(tmp_path, "segmentation", n=6, image_size=(16, 16))
    rows = _rows(path)
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(tmp_path / rows[4]["mask"])
    with pytest.raises(BadSampleError, match=r"row 5 \(images/004.png\): mask .*004.png holds "
                                             r"values \[3\] outside the classes 0..1"):
        _ = ManifestDataModule(str(path), task="segmentation", num_classes=2, split_file=None).info
    # without num_classes the classes are inferred from the masks: 0..3
    assert ManifestDataModule(str(path), task="segmentation", split_file=None).info.num_classes == 4


def test_detection_degenerate_boxes_policy(tmp_path: Path) -> None:
    path = write_example_manifest(tmp_path, "detection", n=6, image_size=(16, 16))
    rows = _rows(path)
    rows[0]["x1"], rows[0]["x2"] = rows[0]["x2"], rows[0]["x1"]  # swapped corners
    _write_rows(path, rows)
    with pytest.raises(BadSampleError, match=r"row 1 \(images/000.png\).*degenerate"):
        _ = ManifestDataModule(str(path), task="detection", split_file=None).info
    with pytest.warns(UserWarning, match=r"1 row\(s\) with degenerate .*'fix'"):
        dm = ManifestDataModule(str(path), task="detection", split_file=None, degenerate_boxes="fix")
        rec = next(s for v in dm.index()["splits"].values() for s in v if s.id == "images/000.png")
    x1, x2 = sorted((float(rows[0]["x1"]), float(rows[0]["x2"])))
    assert rec.boxes[0, [0, 2]].tolist() == [x1, x2]


def test_detection_label_error_names_the_box_row(tmp_path: Path) -> None:
    """One row per box: an unknown or out-of-range label names the row of that box, not the
    image's first row; the whole image is left out with skip (its other boxes would be wrong
    negatives otherwise)."""
    path = write_example_manifest(tmp_path, "detection", n=6, image_size=(16, 16))
    rows = _rows(path)
    assert rows[1]["image"] == rows[2]["image"] == "images/001.png"  # image 1 has two boxes
    rows[2]["label"] = "platelet"
    _write_rows(path, rows)
    with pytest.raises(BadSampleError, match=r"row 3 \(images/001.png\): unknown label 'platelet'"):
        _ = ManifestDataModule(str(path), task="detection", class_names=["large", "small"],
                               split_file=None).info
    with pytest.warns(UserWarning, match="skipping 1 bad sample"):
        dm = ManifestDataModule(str(path), task="detection", class_names=["large", "small"],
                                split_file=None, on_bad_sample="skip")
        ids = {s.id for v in dm.index()["splits"].values() for s in v}
    assert "images/001.png" not in ids and len(ids) == 5


# ------------------------------------------------------------------------------ paired folders
def _pairs(root: Path, stems: list[str], masks: list[str], suffix: str = "_mask") -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, s in enumerate(stems):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (12, 14), np.uint8)).save(
            root / "images" / f"{s}.png")
    for s in masks:
        m = np.zeros((12, 14), np.uint8)
        m[3:7, 4:9] = 255
        Image.fromarray(m).save(root / "masks" / f"{s}{suffix}.gif")
    (root / "images" / "Thumbs.db").write_text("not an image")


def test_paired_folders_match_by_stem_and_name_every_unmatched_file(tmp_path: Path) -> None:
    stems = [f"case{i}" for i in range(6)]
    _pairs(tmp_path, stems + ["lonely_image"], stems + ["lonely_mask"])
    args = {"images_dir": str(tmp_path / "images"), "masks_dir": str(tmp_path / "masks"),
            "mask_suffix": "_mask", "split_fractions": (0.5, 0.25, 0.25)}
    with pytest.raises(BadSampleError) as exc:
        _ = PairedFoldersDataModule(**args).info
    msg = str(exc.value)
    assert "2 unmatched file(s)" in msg
    assert "lonely_image.png: image without a mask" in msg
    assert "lonely_mask_mask.gif: mask without an image" in msg
    with pytest.warns(UserWarning, match=r"2 unmatched file\(s\)") as rec:
        dm = PairedFoldersDataModule(on_bad_sample="skip", **args)
        info = dm.info
    assert "lonely_image.png" in str(rec[0].message) and "lonely_mask_mask.gif" in str(rec[0].message)
    assert info.num_classes == 2 and info.image_size == (12, 14)
    ids = sorted(s.id for v in dm.index()["splits"].values() for s in v)
    assert ids == [f"{s}.png" for s in stems]
    item = dm.dataset("train")[0]
    assert item["mask"].sum().item() == 4 * 5  # the 0/255 GIF read as binary
    assert (tmp_path / "images.split.json").is_file()


# ------------------------------------------------------------------------------ labels at load
def test_medmnist_label_out_of_range_caught_at_load(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), np.uint8)
    good = np.array([[0], [1], [0], [1]], np.uint8)
    bad = np.array([[0], [1], [5], [1]], np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=images, train_labels=good,
             val_images=images, val_labels=good, test_images=images, test_labels=bad)
    dm = MedMNISTDataModule(root=str(tmp_path / "pneumoniamnist.npz"))
    assert dm.info.num_classes == 2
    with pytest.raises(ValueError, match=r"pneumoniamnist.npz: 1 of 4 rows of test_labels .*row 2: \[5\]"):
        dm.setup("test")


def test_medmnist_unknown_flag_names_classes_missing_from_train(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), np.uint8)
    np.savez(tmp_path / "mydata.npz", train_images=images, train_labels=np.array([[0], [1], [0]], np.uint8),
             val_images=images, val_labels=np.array([[0], [1], [1]], np.uint8),
             test_images=images, test_labels=np.array([[0], [3], [1]], np.uint8))
    with pytest.warns(UserWarning, match=r"mydata.npz: 1 rows of test_labels hold classes no training "
                                         r"row has \(\[3\], rows \[1\]\)"):
        info = MedMNISTDataModule(root=str(tmp_path / "mydata.npz"), flag="mydata").info
    assert info.num_classes == 4


def test_medmnist_plus_size_by_file_name(tmp_path: Path) -> None:
    images = np.zeros((2, 64, 64), np.uint8)
    labels = np.array([[0], [1]], np.uint8)
    np.savez(tmp_path / "pneumoniamnist_64.npz", **{f"{s}_{k}": v for s in ("train", "val", "test")
                                                   for k, v in (("images", images), ("labels", labels))})
    dm = MedMNISTDataModule(root=str(tmp_path), flag="pneumoniamnist", size=64)
    assert dm.info.image_size == (64, 64) and dm.file.name == "pneumoniamnist_64.npz"
    with pytest.raises(ValueError, match=r"size must be one of \(28, 64, 128, 224\).*got 96"):
        MedMNISTDataModule(root=str(tmp_path), flag="pneumoniamnist", size=96)
    with pytest.raises(FileNotFoundError, match="pneumoniamnist_128.npz"):
        _ = MedMNISTDataModule(root=str(tmp_path), flag="pneumoniamnist", size=128).info


def test_ph2_label_out_of_range_caught_at_load(tmp_path: Path) -> None:
    from tests.datamodules.test_datamodules_classification import _ph2

    _ph2(tmp_path, n=6, legend=False)
    table = tmp_path / "PH2_dataset.csv"
    lines = table.read_text().splitlines()
    lines[4] = lines[4].replace(",0,0", ",3,0").replace(",1,0", ",3,0").replace(",2,0", ",3,0")
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"PH2_dataset.csv, line 5 \(IMD004\): diagnosis must be 0, 1 or 2"):
        _ = PH2DataModule(root=str(tmp_path), image_size=(16, 16)).info


def test_ph2_at_224(shared_data: Path) -> None:
    dm = PH2DataModule(root=str(shared_data / "ph2"), image_size=(224, 224))
    assert dm.info.image_size == (224, 224)
    assert dm.dataset("test")[0]["image"].shape == (3, 224, 224)


# ------------------------------------------------------------------------------ train.py
@pytest.mark.slow
@pytest.mark.parametrize("task", [*MANIFEST_TASKS, "segmentation_folders"])
def test_train_two_epochs_on_a_manifest(task: str, tmp_path: Path) -> None:
    """The shipped configs/manifest/<task>.yaml trains two epochs through train.py on a tiny
    synthetic manifest (or image/mask folders) written into tmp, and its test writes a
    robustness record."""
    from train import cli_main

    path = write_example_manifest(tmp_path / "data", task.split("_")[0], n=12, image_size=(16, 16))
    cfg = yaml.safe_load((PROJECT_ROOT / "configs" / "manifest" / f"{task}.yaml").read_text())
    data = cfg["data"]["init_args"]
    if task == "segmentation_folders":
        data.update(images_dir=str(tmp_path / "data" / "images"), masks_dir=str(tmp_path / "data" / "masks"))
    else:
        data.update(manifest=str(path))
    data.update(image_size=None, batch_size=4)
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("AdversarialEvaluation"):
            cb["init_args"].update(subset=4, plot=False, report=False,
                                   attacks=[{"name": "pgd", "norm": "linf", "steps": 2}])
    small = tmp_path / f"{task}.yaml"
    small.write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's few-batches / num_workers hints
        cli = cli_main(["fit", "--config", str(small), "--trainer.default_root_dir", str(tmp_path / "runs"),
                        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
                        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu"])
        assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 2 * 2  # 7 train / 4
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="last", verbose=False)
    log_dir = Path(cli.trainer.log_dir)
    record = json.loads((log_dir / "robustness.json").read_text())
    assert record["split"] == "test" and record["subset"]["size"] >= 1
    assert all(np.isfinite(v) for v in record["clean"].values() if isinstance(v, float))


def test_readme_names_the_shipped_manifest_configs() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Use your own data", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"configs/manifest/([\w]+)\.yaml", section))
    shipped = {p.stem for p in (PROJECT_ROOT / "configs" / "manifest").glob("*.yaml")}
    assert named == shipped and {"classification", "segmentation", "landmarks", "detection"} <= shipped
