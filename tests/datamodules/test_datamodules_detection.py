"""VOC / COCO detection datamodules: tiny layouts written here, and the shared BCCD set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.detection import COCODetectionDataModule, VOCDetectionDataModule, sanitize_box
from datamodules.samples import BadSampleError
from datamodules.transforms import AugmentConfig

H, W = 24, 32

# VOC boxes as written (1-based inclusive) per image; None = image without objects.
VOC_OBJECTS = {
    "img_0": [("RBC", (3, 4, 10, 12)), (" WBC ", (15, 2, 30, 20))],  # stray whitespace
    "img_1": [("Platelets", (1, 1, 8, 8))],
    "img_2": [],
    "img_3": [("RBC", (20, 10, 32, 24))],
    "img_4": [("WBC", (5, 5, 12, 15)), ("RBC", (2, 14, 9, 22))],
    "img_5": [("RBC", (10, 3, 18, 9))],
}



def bad_boxes(dm: VOCDetectionDataModule | COCODetectionDataModule) -> int:
    """How many boxes were degenerate or crossed the image border (fixed or dropped)."""
    return sum(len(problems) for problems in dm.box_problems.values())

def warned(record) -> str:
    """All warning messages caught by ``pytest.warns``, joined."""
    return "\n".join(str(w.message) for w in record)


def _image(seed: int, boxes=()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:  # paint each 1-based inclusive box white
        img[int(y1) - 1:int(y2), int(x1) - 1:int(x2)] = 255
    return img


def _xml(stem: str, objects, size=(W, H)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><folder>JPEGImages</folder><filename>{stem}.png</filename>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"{objs}</annotation>")


def write_voc(root: Path, image_sets: bool = True) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, (stem, objects) in enumerate(VOC_OBJECTS.items()):
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(stem, objects))
        # PNG keeps pixels exact (JPEG would blur the painted boxes).
        image = _image(i, [b for _, b in objects])
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.png")
    if image_sets:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for name, stems in {"train": ["img_0", "img_1", "img_2"], "val": ["img_3", "img_4"],
                            "test": ["img_5"]}.items():
            (main / f"{name}.txt").write_text("\n".join(stems) + "\n")
    return root


def voc(root: Path, **kw) -> VOCDetectionDataModule:
    kw.setdefault("batch_size", 3)
    return VOCDetectionDataModule(root=str(root), **kw)


def _expected(stem: str) -> torch.Tensor:
    """0-based continuous xyxy of a VOC_OBJECTS entry."""
    boxes = [(b[0] - 1, b[1] - 1, b[2], b[3]) for _, b in VOC_OBJECTS[stem]]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


# --- contract --------------------------------------------------------------------------------
def test_voc_batch_contract(tmp_path: Path) -> None:
    dm = voc(write_voc(tmp_path / "VOC"))
    info = dm.info
    assert info.class_names == ["Platelets", "RBC", "WBC"]  # scanned, stripped, sorted
    assert (info.task, info.num_classes, info.in_channels, info.image_size) == (
        "detection", 3, 3, (H, W))
    assert info.num_train == 3
    dm.setup()
    batch = next(iter(dm._loader("train", shuffle=False)))
    assert batch["image"].shape == (3, 3, H, W) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["boxes"], list) and isinstance(batch["labels"], list)
    for boxes, labels, stem in zip(batch["boxes"], batch["labels"], ["img_0", "img_1", "img_2"]):
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert torch.equal(boxes, _expected(stem))
    assert batch["labels"][0].tolist() == [1, 2] and batch["labels"][1].tolist() == [0]
    # The image without objects: [0, 4] and [0].
    assert batch["boxes"][2].shape == (0, 4) and batch["labels"][2].shape == (0,)


def test_voc_resize_scales_boxes_and_seeded_split(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC", image_sets=False)
    dm = voc(root, image_size=(12, 64), split_fractions=(0.5, 0.25, 0.25))
    ds = dm.build_split("train")
    assert len(ds) == 3 and dm.info.image_size == (12, 64)
    rec = ds.records[0]
    item = ds[0]
    assert item["image"].shape == (3, 12, 64)
    scale = torch.tensor([2.0, 0.5, 2.0, 0.5])
    assert torch.allclose(item["boxes"], _expected(rec.image_id) * scale)


def test_hflip_moves_boxes_with_pixels(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC")
    plain = voc(root).build_split("val")
    flipped = voc(root, augment=AugmentConfig(hflip=1.0)).build_split("train")
    train_plain = voc(root).build_split("train")
    for i in range(len(train_plain)):
        a, b = train_plain[i], flipped[i]
        assert torch.equal(b["image"], a["image"].flip(-1))
        # Continuous edges: [x1, x2) -> [W - x2, W - x1).
        expect = a["boxes"].clone()
        expect[:, 0], expect[:, 2] = W - a["boxes"][:, 2], W - a["boxes"][:, 0]
        assert torch.allclose(b["boxes"], expect) and torch.equal(b["labels"], a["labels"])
        for x1, y1, x2, y2 in b["boxes"].long().tolist():  # painted pixels moved with the box
            assert (b["image"][:, y1:y2, x1:x2] == 1.0).all()
    assert len(plain) == 2  # val is untouched by augment


def test_augmentation_deterministic_under_seed(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC")
    aug = AugmentConfig(hflip=0.5, vflip=0.5, rotate_deg=10, scale=0.1, contrast=0.2)
    ds = voc(root, augment=aug).build_split("train")

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [ds[i]["boxes"] for i in range(len(ds))] + [ds[0]["image"]]

    first, again, other = draw(3), draw(3), draw(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))
    for boxes in first[:-1]:
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# --- bad boxes and bad files ------------------------------------------------------------------
def test_sanitize_box_rules() -> None:
    hw = (H, W)
    assert sanitize_box((1, 1, 32, 24), hw, "drop", one_based=True) == ([0, 0, 32, 24], None)
    box, problem = sanitize_box((5, 5, 5, 9), hw, "fix", one_based=True)
    assert box is None and "degenerate" in problem and "cannot be fixed" in problem
    box, problem = sanitize_box((10, 5, 4, 9), hw, "fix", one_based=True)
    assert box == [3.0, 4.0, 10.0, 9.0] and problem.endswith("(fixed)")
    box, problem = sanitize_box((20, 5, 40, 9), hw, "drop", one_based=True)
    assert box is None and "crosses the 32x24 image border" in problem
    assert sanitize_box((20, 5, 40, 9), hw, "fix", one_based=True)[0] == [19.0, 4.0, 32.0, 9.0]
    assert sanitize_box((40, 5, 50, 9), hw, "fix", one_based=True)[0] is None  # all outside
    # COCO rounding just past the border is not a problem.
    assert sanitize_box((0, 0, 32.0000001, 24), hw, "drop", one_based=False)[1] is None


def test_degenerate_and_out_of_image_boxes(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC")
    bad = [("RBC", (3, 4, 10, 12)), ("RBC", (9, 9, 9, 9)), ("WBC", (12, 3, 6, 8)),
           ("RBC", (25, 2, 40, 10))]
    (root / "Annotations" / "img_1.xml").write_text(_xml("img_1", bad))
    with pytest.warns(UserWarning) as caught:
        dm = voc(root)
        ds = dm.build_split("train")
    assert bad_boxes(dm) == 3
    assert "3 degenerate or out-of-image box(es) in 1 file(s): 3 dropped, 0 fixed" in warned(caught)
    assert "img_1.xml" in warned(caught)
    assert torch.equal(ds[1]["boxes"], torch.tensor([[2.0, 3.0, 10.0, 12.0]]))
    with pytest.warns(UserWarning, match="1 dropped, 2 fixed"):
        fixed = voc(root, degenerate_boxes="fix")
        boxes = fixed.build_split("train")[1]["boxes"]
    assert bad_boxes(fixed) == 3
    assert torch.equal(boxes, torch.tensor([[2.0, 3.0, 10.0, 12.0], [5.0, 2.0, 12.0, 8.0],
                                            [24.0, 1.0, 32.0, 10.0]]))
    with pytest.raises(ValueError, match=r"img_1\.xml: object 1: box \[9, 9, 9, 9\] is degenerate"):
        voc(root, degenerate_boxes="error").setup()


def test_unknown_class_truncated_image_and_missing_files(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC")
    with pytest.raises(ValueError, match=r"img_0\.xml: unknown class name\(s\) \['WBC'\]"):
        voc(root, class_names=["RBC", "Platelets"]).setup()
    png = root / "JPEGImages" / "img_4.png"
    png.write_bytes(png.read_bytes()[:60])
    ds = voc(root).build_split("val")
    with pytest.raises(BadSampleError, match=r"img_4\.png"):
        ds[1]
    # ... also from inside a DataLoader worker process
    dm = voc(root, num_workers=1)
    dm.setup("validate")
    with pytest.raises(BadSampleError, match=r"(?s)worker process.*sample 1 \(image img_4, "
                                             r"\S*img_4\.png\): cannot read image"):
        list(dm.val_dataloader())
    with pytest.warns(UserWarning) as caught:
        ds = voc(root, on_bad_sample="skip").build_split("val")
    assert [r.image_id for r in ds.records] == ["img_3"]
    assert "skipping 1 bad sample(s)" in warned(caught) and "img_4" in warned(caught)
    (root / "ImageSets" / "Main" / "test.txt").write_text("img_5\nimg_9\n")
    with pytest.raises(ValueError, match=r"img_9: listed in ImageSets/Main but .*img_9\.xml"):
        voc(root, on_bad_sample="error").setup("test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        voc(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no single Annotations"):
        voc(tmp_path / "empty")


# --- COCO ------------------------------------------------------------------------------------
def write_coco(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cats = [{"id": 7, "name": "wbc"}, {"id": 3, "name": "rbc"}]
    split_images = {"train": [0, 1, 2, 3, 4, 5], "test": [6, 7]}
    boxes = {0: [(3, [2.0, 3.0, 8.0, 9.0]), (7, [10.0, 1.0, 12.5, 20.0])],
             1: [(3, [0.0, 0.0, 32.0, 24.0])], 2: [], 3: [(7, [4.0, 4.0, 6.0, 6.0])],
             4: [(3, [1.0, 1.0, 5.0, 5.0])], 5: [(3, [20.0, 10.0, 5.0, 5.0])],
             6: [(7, [5.0, 6.0, 7.0, 8.0])], 7: []}
    ann_id = 1
    for split, ids in split_images.items():
        images, anns = [], []
        for i in ids:
            name = f"{split}_{i}.png"
            Image.fromarray(_image(i)).save(root / "images" / name)
            images.append({"id": 100 + i, "file_name": name, "width": W, "height": H})
            for cid, bbox in boxes[i]:
                anns.append({"id": ann_id, "image_id": 100 + i, "category_id": cid,
                             "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
                ann_id += 1
        if split == "train":  # a crowd region: not an object
            anns.append({"id": 999, "image_id": 101, "category_id": 3,
                         "bbox": [0.0, 0.0, 10.0, 10.0], "iscrowd": 1})
        (root / "annotations" / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def coco(root: Path, **kw) -> COCODetectionDataModule:
    kw.setdefault("annotation_files", {"train": "annotations/train.json",
                                       "test": "annotations/test.json"})
    kw.setdefault("split_fractions", (0.5, 0.5, 0.0))
    return COCODetectionDataModule(root=str(root), batch_size=2, **kw)


def test_coco_layout(tmp_path: Path) -> None:
    dm = coco(write_coco(tmp_path / "coco"))
    assert dm.info.class_names == ["rbc", "wbc"]  # category ids 3, 7 -> labels 0, 1
    dm.setup()
    train, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    assert len(train) + len(val) == 6 and len(val) == 3 and len(test) == 2
    where = {r.image_id: (ds, i) for ds in (train, val) for i, r in enumerate(ds.records)}
    assert len(where) == 6

    def item(image_id: int) -> dict:
        ds, i = where[str(image_id)]
        return ds[i]

    first = item(100)
    assert torch.equal(first["boxes"], torch.tensor([[2.0, 3.0, 10.0, 12.0],
                                                     [10.0, 1.0, 22.5, 21.0]]))
    assert first["labels"].tolist() == [0, 1]
    assert item(101)["boxes"].tolist() == [[0.0, 0.0, 32.0, 24.0]]  # crowd left out
    assert item(102)["boxes"].shape == (0, 4) and item(102)["labels"].shape == (0,)
    assert test[1]["boxes"].shape == (0, 4)
    # Box 5 (x + w = 25 <= 32, y + h = 15) is inside; nothing was dropped.
    assert bad_boxes(dm) == 0


def test_coco_bad_inputs(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "test.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["category_id"] = 42
    doc["annotations"].append({"id": 77, "image_id": 107, "category_id": 3,
                               "bbox": [5.0, 5.0, 0.0, 4.0], "iscrowd": 0})
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as err, pytest.warns(UserWarning, match="1 dropped"):
        coco(root).setup()
    msg = str(err.value)
    assert "test.json:test_6.png: annotation" in msg and "unknown category_id 42" in msg
    assert "test.json:test_7.png" not in msg  # degenerate box is dropped (default), not an error
    with pytest.raises(ValueError, match=r"test_7\.png: object 0: box \[5, 5, 5, 9\] is degen"):
        coco(root, degenerate_boxes="error", annotation_files={
            "train": "annotations/train.json", "val": "annotations/test.json"}).setup()
    with pytest.raises(ValueError, match="needs annotation_files"):
        COCODetectionDataModule(root=str(root))
    with pytest.raises(FileNotFoundError, match="val annotation file"):
        coco(root, annotation_files={"train": "annotations/train.json", "val": "nope.json"})


# --- the shared real data --------------------------------------------------------------------
@pytest.mark.realdata
def test_real_bccd_loads_completely(shared_data: Path) -> None:
    with pytest.warns(UserWarning) as caught:
        dm = VOCDetectionDataModule(root=str(shared_data / "bccd"), image_size=(240, 320))
        info = dm.info
    assert info.class_names == ["Platelets", "RBC", "WBC"] and info.num_classes == 3
    assert {r.image_hw for v in dm.splits().values() for r in v} == {(480, 640)}
    # The README's two degenerate boxes: zero-size clicks in 00338 and 00343.
    assert bad_boxes(dm) == 2
    assert sorted(Path(f).name for f in dm.box_problems) == ["BloodImage_00338.xml",
                                                              "BloodImage_00343.xml"]
    assert "2 degenerate or out-of-image box(es) in 2 file(s): 2 dropped" in warned(caught)
    dm.setup()
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 205, "val": 87, "test": 72}  # ImageSets/Main, 364 in all
    n_images = n_boxes = 0
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        for i in range(len(ds)):  # every image decoded; items checked without collating
            item = ds[i]
            boxes, labels = item["boxes"], item["labels"]
            assert item["image"].shape == (3, 240, 320)
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 320).all()
            assert (boxes[:, [1, 3]] <= 240).all()
            assert ((labels >= 0) & (labels < 3)).all()
            n_boxes += len(boxes)
            n_images += 1
    assert n_images == 364 and n_boxes == 4888 - 2
