"""Synthetic datamodule, joint transforms, seeded splits and data-path resolution."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from datamodules import (
    AugmentConfig,
    DataInfo,
    JointTransform,
    SyntheticDataModule,
    load_or_create_split,
    resolve_data_path,
    stratified_split,
)
from datamodules.base import collate_batch

TASKS = ("classification", "segmentation", "landmarks", "detection")


def small(task: str, **kw) -> SyntheticDataModule:
    args = dict(task=task, num_train=12, num_val=8, num_test=6, image_size=(32, 32),
                batch_size=4)
    args.update(kw)
    return SyntheticDataModule(**args)


# --------------------------------------------------------------------------------------------
# JointTransform
# --------------------------------------------------------------------------------------------
def _scene(h: int = 20, w: int = 30):
    """An image with one bright rectangle, its mask, two keypoints on it and its box."""
    image = np.zeros((h, w, 3), np.float32)
    image[5:9, 3:8] = 1.0
    image[5, 3] = 0.5  # marks the top-left corner pixel
    mask = np.zeros((h, w), np.int64)
    mask[5:9, 3:8] = 1
    keypoints = np.array([[3.0, 5.0], [7.0, 8.0]])  # (x, y) of the corner pixels
    boxes = np.array([[3.0, 5.0, 8.0, 9.0]])  # continuous edges around the rectangle
    return image, mask, keypoints, boxes


def test_hflip_moves_mask_points_boxes_with_image() -> None:
    image, mask, kp, boxes = _scene()
    t = JointTransform(None, AugmentConfig(hflip=1.0), train=True, has_mask=True,
                       has_keypoints=True, has_boxes=True)
    out = t(image, mask=mask, keypoints=kp, boxes=boxes, box_labels=np.array([2]))
    w = image.shape[1]
    np.testing.assert_array_equal(out["image"].numpy(), image[:, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(out["mask"].numpy(), mask[:, ::-1])
    np.testing.assert_allclose(out["keypoints"].numpy(), [[w - 1 - 3, 5], [w - 1 - 7, 8]])
    np.testing.assert_allclose(out["boxes"].numpy(), [[w - 8, 5, w - 3, 9]])
    assert out["box_labels"].tolist() == [2]
    # The marked corner pixel sits exactly under the first keypoint, inside the box.
    x, y = out["keypoints"][0].round().long().tolist()
    assert out["image"][0, y, x] == 0.5 and out["mask"][y, x] == 1
    x1, y1, x2, y2 = out["boxes"][0].tolist()
    assert (out["mask"].nonzero()[:, 1].min(), out["mask"].nonzero()[:, 1].max() + 1) == (x1, x2)
    assert (out["mask"].nonzero()[:, 0].min(), out["mask"].nonzero()[:, 0].max() + 1) == (y1, y2)


def test_vflip_and_resize_keep_alignment() -> None:
    image, mask, kp, boxes = _scene()
    t = JointTransform((40, 60), AugmentConfig(vflip=1.0), train=True, has_mask=True,
                       has_keypoints=True, has_boxes=True)
    out = t(image, mask=mask, keypoints=kp, boxes=boxes, box_labels=np.array([0]))
    assert out["image"].shape == (3, 40, 60) and out["mask"].shape == (40, 60)
    # 2x upscale then vertical flip: pixel row r covers rows 2r, 2r+1 -> 39-2r-1, 39-2r.
    expected_mask = np.repeat(np.repeat(mask, 2, 0), 2, 1)[::-1]
    np.testing.assert_array_equal(out["mask"].numpy(), expected_mask)
    np.testing.assert_allclose(out["keypoints"].numpy(), [[6.5, 39 - 10.5], [14.5, 39 - 16.5]])
    np.testing.assert_allclose(out["boxes"].numpy(), [[6, 40 - 18, 16, 40 - 10]])


def test_random_affine_keeps_points_on_their_pixels() -> None:
    image, mask, kp, boxes = _scene(40, 40)
    image = np.zeros((40, 40, 1), np.float32)
    mask = np.zeros((40, 40), np.int64)
    yy, xx = np.mgrid[:40, :40]
    disk = (yy - 14) ** 2 + (xx - 24) ** 2 <= 16
    image[disk] = 1.0
    mask[disk] = 1
    t = JointTransform(None, AugmentConfig(rotate_deg=40, scale=0.3, hflip=0.5, vflip=0.5),
                       train=True, has_mask=True, has_keypoints=True)
    for seed in range(10):
        torch.manual_seed(seed)
        out = t(image, mask=mask, keypoints=np.array([[24.0, 14.0]]))
        x, y = out["keypoints"][0].round().long().tolist()
        assert out["mask"][y, x] == 1, f"seed {seed}: keypoint left the disk"
        # Image and mask moved together: bright pixels are mask pixels.
        bright = out["image"][0] > 0.5
        agree = (bright == out["mask"].bool()).float().mean()
        assert agree > 0.97


def test_boxes_pushed_out_are_dropped_or_clipped_and_stay_valid() -> None:
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    boxes = np.array([[0.0, 0.0, 6.0, 6.0], [10, 10, 20, 20], [26, 2, 32, 30]])
    t = JointTransform(None, AugmentConfig(scale=0.6, rotate_deg=30, crop_scale=0.3),
                       train=True, has_boxes=True)
    counts = set()
    for seed in range(25):
        torch.manual_seed(seed)
        out = t(image, boxes=boxes, box_labels=np.array([0, 1, 2]))
        b = out["boxes"]
        counts.add(len(b))
        assert b.dtype == torch.float32 and out["box_labels"].dtype == torch.int64
        assert len(b) == len(out["box_labels"])
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b >= 0).all() and (b <= 32).all()
    assert min(counts) < 3  # some boxes were dropped at least once


def test_keypoints_keep_order_count_and_report_visibility() -> None:
    image = np.zeros((16, 16), np.float32)
    kp = np.array([[2.0, 3.0], [np.nan, np.nan], [20.0, 5.0], [8.0, 8.0]])
    out = JointTransform(None, None, train=False, has_keypoints=True)(image, keypoints=kp)
    assert out["keypoints"].shape == (4, 2) and out["keypoints"].dtype == torch.float32
    assert out["visible"].tolist() == [True, False, False, True]
    assert torch.isfinite(out["keypoints"]).all()
    t = JointTransform(None, AugmentConfig(scale=0.5, rotate_deg=90), train=True,
                       has_keypoints=True)
    for seed in range(5):
        torch.manual_seed(seed)
        res = t(image, keypoints=np.array([[0.0, 0.0], [15.0, 15.0], [8.0, 8.0]]))
        assert res["keypoints"].shape == (3, 2)
        inside = ((res["keypoints"] >= -0.5) & (res["keypoints"] < 15.5)).all(1)
        assert res["visible"].tolist() == inside.tolist()


def test_eval_pipeline_only_resizes_and_respects_bounds() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1.0, 2.0, (10, 12, 1)).astype(np.float32)
    aug = AugmentConfig(hflip=1.0, brightness=0.5, contrast=0.5, gamma=0.5, p_intensity=1.0)
    ev = JointTransform(None, aug, train=False, bounds=(-1.0, 2.0))
    np.testing.assert_allclose(ev(image)["image"][0].numpy(), image[..., 0], atol=1e-6)
    tr = JointTransform((20, 24), aug, train=True, bounds=(-1.0, 2.0))
    out = tr(image)["image"]
    assert out.shape == (1, 20, 24) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 2.0


def test_augmentation_is_reproducible_under_torch_seed() -> None:
    image = np.random.default_rng(1).random((24, 24, 3)).astype(np.float32)
    t = JointTransform(None, AugmentConfig(hflip=0.5, rotate_deg=30, brightness=0.2), train=True)
    torch.manual_seed(3)
    a = [t(image)["image"] for _ in range(3)]
    torch.manual_seed(3)
    b = [t(image)["image"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[1], a[2])


def test_transform_rejects_bad_inputs() -> None:
    image = np.zeros((8, 8), np.float32)
    t = JointTransform(None, None, train=False, has_mask=True, has_boxes=True)
    with pytest.raises(ValueError, match="without a mask"):
        t(image, boxes=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="does not match image shape"):
        t(image, mask=np.zeros((8, 9), int), boxes=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="degenerate"):
        t(image, mask=np.zeros((8, 8), int), boxes=np.array([[4.0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(hflip=2.0)


# --------------------------------------------------------------------------------------------
# SyntheticDataModule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_synthetic_batches_follow_the_contract(task: str) -> None:
    dm = small(task, in_channels=3 if task != "landmarks" else 1)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    info = dm.info
    c = info.in_channels
    assert batch["image"].shape == (4, c, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["index"].dtype == torch.int64
    if task == "classification":
        assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
        assert batch["label"].min() >= 0 and batch["label"].max() < info.num_classes
    elif task == "segmentation":
        assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.int64
        assert set(batch["mask"].unique().tolist()) <= set(range(info.num_classes))
        assert (batch["mask"] == 1).any()
    elif task == "landmarks":
        assert batch["landmarks"].shape == (4, 5, 2) and batch["landmarks"].dtype == torch.float32
        assert batch["visible"].dtype == torch.bool and batch["visible"].all()
        assert batch["spacing"].shape == (4,) and batch["spacing"].dtype == torch.float32
        assert (batch["landmarks"] >= 0).all() and (batch["landmarks"] <= 31).all()
    else:
        assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 4
        for boxes, labels in zip(batch["boxes"], batch["labels"]):
            assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
            assert boxes.shape == (len(labels), 4)
            if len(boxes):
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
                assert (boxes >= 0).all() and (boxes <= 32).all()
                assert labels.min() >= 0 and labels.max() < info.num_classes


def test_synthetic_info() -> None:
    cls = small("classification", in_channels=3).info
    assert isinstance(cls, DataInfo)
    assert (cls.task, cls.in_channels, cls.spatial_dims, cls.bounds) == (
        "classification", 3, 2, (0.0, 1.0))
    assert cls.num_classes == 2 and cls.class_names == ["benign", "malignant"]
    assert cls.image_size == (32, 32) and cls.num_train == 12 and not cls.multilabel
    seg = small("segmentation", num_classes=4).info
    assert seg.num_classes == 4 and seg.class_names[:2] == ["background", "lesion"]
    lm = small("landmarks", num_landmarks=7).info
    assert lm.num_landmarks == 7 and lm.num_classes == 0
    det = small("detection").info
    assert det.num_classes == 3 and det.class_names == ["rbc", "wbc", "platelet"]
    vol = small("segmentation", spatial_dims=3, image_size=(16, 16)).info
    assert vol.spatial_dims == 3 and vol.image_size == (16, 16, 16)


def test_synthetic_index_and_samples_are_stable() -> None:
    ds = small("segmentation").dataset("train")
    later = ds[7]
    for i in range(len(ds)):  # generating others in between changes nothing
        ds[i]
    again = ds[7]
    assert torch.equal(later["image"], again["image"]) and torch.equal(later["mask"], again["mask"])
    assert int(again["index"]) == 7
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_synthetic_determinism_by_seed() -> None:
    def first_batches(seed: int) -> list[dict]:
        dm = small("detection", seed=seed, augment=AugmentConfig(hflip=0.5, rotate_deg=10))
        torch.manual_seed(0)
        return [next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["index"], y["index"])
        assert all(torch.equal(p, q) for p, q in zip(x["boxes"], y["boxes"]))
    assert not torch.equal(a[1]["image"], c[1]["image"])
    # Splits differ from each other.
    dm = small("classification")
    assert not torch.equal(dm.dataset("train")[0]["image"], dm.dataset("val")[0]["image"])


def test_synthetic_detection_has_empty_and_crowded_images() -> None:
    ds = small("detection", num_train=60, image_size=(48, 48)).dataset("train")
    counts = [len(ds[i]["boxes"]) for i in range(len(ds))]
    assert min(counts) == 0 and max(counts) >= 3
    labels = torch.cat([ds[i]["labels"] for i in range(len(ds))])
    assert set(labels.tolist()) == {0, 1, 2}


def test_synthetic_segmentation_mask_marks_the_lesion() -> None:
    ds = small("segmentation", num_classes=3, image_size=(48, 48)).dataset("val")
    for i in range(4):
        item = ds[i]
        lesion = item["mask"] > 0
        # Lesion pixels are darker than the background around them.
        assert item["image"][0][lesion].mean() < item["image"][0][~lesion].mean() - 0.1


def test_synthetic_augmentation_keeps_targets_aligned() -> None:
    base = small("landmarks", image_size=(48, 48))
    flipped = small("landmarks", image_size=(48, 48), augment=AugmentConfig(hflip=1.0))
    a, b = base.dataset("val")[0], flipped.dataset("train")[0]
    plain = small("landmarks", image_size=(48, 48)).dataset("train")[0]
    assert torch.equal(a["image"], base.dataset("val")[0]["image"])  # val never augmented
    torch.testing.assert_close(b["image"], plain["image"].flip(-1))
    torch.testing.assert_close(b["landmarks"][:, 0], 47 - plain["landmarks"][:, 0])
    torch.testing.assert_close(b["landmarks"][:, 1], plain["landmarks"][:, 1])

    seg = small("segmentation", augment=AugmentConfig(vflip=1.0)).dataset("train")[3]
    seg0 = small("segmentation").dataset("train")[3]
    assert torch.equal(seg["mask"], seg0["mask"].flip(0))
    torch.testing.assert_close(seg["image"], seg0["image"].flip(-2))


def test_synthetic_3d_volumes() -> None:
    dm = small("segmentation", spatial_dims=3, image_size=(16, 16), num_classes=3,
               augment=AugmentConfig(hflip=1.0))
    item = dm.dataset("train")[0]
    plain = small("segmentation", spatial_dims=3, image_size=(16, 16),
                  num_classes=3).dataset("train")[0]
    assert item["image"].shape == (1, 16, 16, 16) and item["mask"].shape == (16, 16, 16)
    assert torch.equal(item["mask"], plain["mask"].flip(-1))
    batch = next(iter(small("classification", spatial_dims=3, image_size=(12, 12))
                      .val_dataloader()))
    assert batch["image"].shape == (4, 1, 12, 12, 12)
    with pytest.raises(ValueError, match="2-D only"):
        small("landmarks", spatial_dims=3)
    with pytest.warns(UserWarning, match="only hflip/vflip"):
        small("classification", spatial_dims=3, augment=AugmentConfig(rotate_deg=10))


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="task"):
        SyntheticDataModule(task="registration")
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDataModule(task="classification", num_classes=1)
    with pytest.raises(ValueError, match="num_val"):
        SyntheticDataModule(num_val=0)


def test_synthetic_with_two_workers_matches_in_process() -> None:
    dm = small("classification", num_train=16, num_workers=2, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(dm.val_dataloader())
    ref = collate_batch([dm.dataset("val")[i] for i in range(8)])
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(8))
    assert torch.equal(batches[0]["image"], ref["image"])
    seen = torch.cat([b["index"] for b in dm.train_dataloader()])
    assert sorted(seen.tolist()) == list(range(16))


class _Standardize(nn.Module):
    """Per-image standardisation, so the test net needs no data statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-3)


def test_synthetic_classification_is_learnable() -> None:
    """A tiny CNN learns the lesion classes in a few epochs (the cue is not one pixel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: threads only contend on shared CPUs
    try:
        torch.manual_seed(0)
        dm = SyntheticDataModule(num_train=512, num_val=128, image_size=(32, 32), seed=0)

        def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            ds = dm.dataset(split)
            batch = collate_batch([ds[i] for i in range(len(ds))])
            return batch["image"], batch["label"]

        x, y = tensors("train")
        xv, yv = tensors("val")

        def block(cin: int, cout: int) -> list[nn.Module]:
            # GroupNorm: eval equals train mode, no running-statistics lag after few steps.
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU()]

        net = nn.Sequential(_Standardize(), *block(1, 16), nn.MaxPool2d(2), *block(16, 32),
                            nn.MaxPool2d(2), *block(32, 32), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(32, 2))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(5):
            for idx in torch.randperm(len(x)).split(32):
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            accuracy = (net(xv).argmax(1) == yv).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.85, accuracy


# --------------------------------------------------------------------------------------------
# Splits and paths
# --------------------------------------------------------------------------------------------
def test_stratified_split_is_seeded_disjoint_and_stratified() -> None:
    ids = [f"case{i:03d}" for i in range(100)]
    labels = [0] * 50 + [1] * 30 + [2] * 20
    a = stratified_split(ids, labels, (0.6, 0.2, 0.2), seed=0)
    assert a == stratified_split(list(reversed(ids)), list(reversed(labels)), (0.6, 0.2, 0.2), 0)
    assert a != stratified_split(ids, labels, (0.6, 0.2, 0.2), seed=1)
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert [len(a[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    label_of = dict(zip(ids, labels))
    assert sorted(label_of[i] for i in a["val"]).count(2) == 4
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(ids, None, (0.5, 0.2, 0.2))


def test_split_file_is_written_reused_and_checked(tmp_path) -> None:
    ids = [f"c{i}" for i in range(10)]
    path = tmp_path / "sub" / "split.json"
    first = load_or_create_split(path, ids, None, (0.6, 0.2, 0.2), seed=0)
    assert json.loads(path.read_text())["train"] == first["train"]
    # A different seed does not overwrite the saved split: the file wins.
    assert load_or_create_split(path, ids, None, (0.6, 0.2, 0.2), seed=5) == first
    with pytest.raises(ValueError, match="does not match the dataset"):
        load_or_create_split(path, ids + ["c99"], None)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_or_create_split(path, ids, None)
    path.write_text(json.dumps({"train": ["c0", "c1"], "val": ["c1"], "test": []}))
    with pytest.raises(ValueError, match="in both"):
        load_or_create_split(path, ["c0", "c1"], None)


def test_resolve_data_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "ph2").mkdir()
    monkeypatch.setenv("MEDROBUST_DATA", str(tmp_path))
    assert resolve_data_path(None, "ph2", "PH2") == (tmp_path / "ph2").resolve()
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert resolve_data_path("$MY_DATA/ph2", "x", "PH2") == (tmp_path / "ph2").resolve()
    with pytest.raises(FileNotFoundError, match=r"ISIC.*isic.*MEDROBUST_DATA.*--data\.init_args\.root"):
        resolve_data_path(None, "isic", "ISIC")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data_path(str(tmp_path / "nowhere"), "isic", "ISIC")
    monkeypatch.delenv("MEDROBUST_DATA")
    with pytest.raises(FileNotFoundError, match="MEDROBUST_DATA is not set"):
        resolve_data_path(None, "isic", "ISIC")


def test_augment_given_as_a_dict_from_python_works_like_the_config_object() -> None:
    """A datamodule built in Python with ``augment={...}`` (the CLI converts the mapping itself)
    gets the same :class:`AugmentConfig`; an unknown field is named."""
    from datamodules.transforms import AugmentConfig

    as_dict = SyntheticDataModule(task="detection", augment={"hflip": 0.5, "vflip": 0.5})
    as_obj = SyntheticDataModule(task="detection", augment=AugmentConfig(hflip=0.5, vflip=0.5))
    assert as_dict.augment == as_obj.augment and as_dict.augment.enabled
    with pytest.raises(ValueError, match=r"augment: unknown field\(s\) \['flip'\]"):
        SyntheticDataModule(task="detection", augment={"flip": 0.5})
