"""CephalometricDataModule: LabelMe and ISBI 2015 layouts written here, and the shared real set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.landmarks import CephalometricDataModule, average_points
from datamodules.samples import BadSampleError
from datamodules.transforms import AugmentConfig

K = 5
H, W = 40, 32
NAMES = [f"l{k}" for k in range(1, K + 1)]


def warned(record) -> str:
    """All warning messages caught by ``pytest.warns``, joined."""
    return "\n".join(str(w.message) for w in record)


def _points(case: int, annotator: int = 0) -> np.ndarray:
    """Known integer points inside the image, different per case and annotator."""
    base = np.array([[3, 4], [10, 20], [20, 7], [15, 28], [22, 30]], dtype=np.float64)
    return base + case + 2 * annotator


def _image(case: int, points: np.ndarray | None = None) -> np.ndarray:
    img = (np.arange(H * W).reshape(H, W) * 7 + case * 13) % 200
    img = img.astype(np.uint8)
    if points is not None:  # a bright dot on each landmark, to check alignment
        for x, y in points.astype(int):
            img[y, x] = 255
    return img


def write_labelme(root: Path, n_cases: int = 6, annotators: tuple[str, ...] = (
        "annotated by Dr.alpha", "annotated by Dr.beta"), dots: bool = False) -> Path:
    (root / "pictures").mkdir(parents=True)
    for a, folder in enumerate(annotators):
        (root / folder).mkdir()
        for c in range(n_cases):
            pts = _points(c, a)
            shapes = [{"label": n, "points": [[float(x), float(y)]], "group_id": None,
                       "shape_type": "point", "flags": {}} for n, (x, y) in zip(NAMES, pts)]
            doc = {"version": "5.0.1", "flags": {}, "shapes": shapes,
                   "imagePath": f"../pictures/{c:03d}.png", "imageData": None,
                   "imageHeight": H, "imageWidth": W}
            (root / folder / f"{c:03d}.json").write_text(json.dumps(doc))
    for c in range(n_cases):
        Image.fromarray(_image(c, _points(c) if dots else None)).save(
            root / "pictures" / f"{c:03d}.png")
    return root


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def make(root: Path, **kw) -> CephalometricDataModule:
    kw.setdefault("num_landmarks", K)
    kw.setdefault("image_size", None)
    kw.setdefault("split_fractions", (0.5, 0.25, 0.25))
    kw.setdefault("batch_size", 2)
    return CephalometricDataModule(root=str(root), **kw)


# --- contract --------------------------------------------------------------------------------
def test_labelme_batch_contract(tmp_path: Path) -> None:
    dm = make(write_labelme(tmp_path / "ceph"), image_size=(20, 16), pixel_spacing_mm=0.4)
    info = dm.info
    assert (info.task, info.in_channels, info.num_landmarks) == ("landmarks", 1, K)
    assert info.image_size == (20, 16) and info.bounds == (0.0, 1.0)
    assert info.pixel_spacing_mm == pytest.approx(0.8)
    dm.setup()
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 1} and info.num_train == 3
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 1, 20, 16) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["landmarks"].shape == (2, K, 2) and batch["landmarks"].dtype == torch.float32
    assert batch["visible"].shape == (2, K) and batch["visible"].dtype == torch.bool
    assert batch["visible"].all()
    assert batch["spacing"].shape == (2,) and batch["spacing"].dtype == torch.float32
    assert torch.allclose(batch["spacing"], torch.tensor([0.8, 0.8]))  # 0.4 mm x 2 (downsampled)
    assert batch["index"].tolist() == [0, 1]


def test_points_ordered_resized_and_averaged(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "ceph")
    # Shuffle the shape order in one file: output order must follow l1..lK, not the file.
    edit_json(root / "annotated by Dr.alpha" / "000.json", lambda d: d["shapes"].reverse())
    dm = make(root, image_size=(20, 16), split_fractions=(1.0, 0.0, 0.0))
    ds = dm.build_split("train")
    case = ds.case_ids.index("000")
    expected = (_points(0, 0) + _points(0, 1)) / 2
    # pixel-index convention of JointTransform: x -> (x + 0.5) * s - 0.5
    expected = (expected + 0.5) * 0.5 - 0.5
    assert np.allclose(ds[case]["landmarks"].numpy(), expected, atol=1e-5)
    single = make(root, annotator="beta", split_fractions=(1.0, 0.0, 0.0)).build_split("train")
    assert np.allclose(single[case]["landmarks"].numpy(), _points(0, 1))
    assert torch.isnan(single[case]["spacing"])  # LabelMe states no spacing


def test_average_points_ignores_nan() -> None:
    a = np.array([[1.0, 2.0], [np.nan, np.nan], [np.nan, np.nan]])
    b = np.array([[3.0, 4.0], [5.0, 6.0], [np.nan, np.nan]])
    out = average_points([a, b])
    assert np.allclose(out[:2], [[2.0, 3.0], [5.0, 6.0]]) and np.isnan(out[2]).all()


# --- augmentation ----------------------------------------------------------------------------
def test_hflip_moves_points_with_pixels(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "ceph", annotators=("only",), dots=True)
    dm = make(root, split_fractions=(1.0, 0.0, 0.0), augment=AugmentConfig(hflip=1.0))
    plain = make(root, split_fractions=(1.0, 0.0, 0.0)).build_split("train")
    flipped = dm.build_split("train")
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        # albumentations flips keypoints as x -> (W - 1) - x (pixel-index convention).
        assert torch.allclose(b["landmarks"][:, 0], (W - 1) - a["landmarks"][:, 0])
        assert torch.equal(b["landmarks"][:, 1], a["landmarks"][:, 1])
        assert b["visible"].all()
        for x, y in b["landmarks"].round().long().tolist():
            assert b["image"][0, y, x] == 1.0  # the dot is still under its landmark
        assert torch.equal(b["image"], a["image"].flip(-1))


def test_augmentation_deterministic_under_seed(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "ceph")
    aug = AugmentConfig(hflip=0.5, rotate_deg=15, scale=0.1, brightness=0.2)
    ds = make(root, split_fractions=(1.0, 0.0, 0.0), augment=aug).build_split("train")

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([ds[i]["landmarks"] for i in range(len(ds))])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


# --- bad inputs ------------------------------------------------------------------------------
def test_missing_and_duplicated_landmarks(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "ceph")
    edit_json(root / "annotated by Dr.alpha" / "001.json", lambda d: d["shapes"].pop(2))
    edit_json(root / "annotated by Dr.beta" / "002.json",
              lambda d: d["shapes"].append(dict(d["shapes"][0], points=[[9.0, 9.0]])))
    with pytest.raises(ValueError, match=r"(?s)001\.json: l3 missing.*002\.json: l1 given 2"):
        make(root, bad_landmarks="error").setup()
    # Default: warn, and deliver the point from the other annotator (average) ...
    with pytest.warns(UserWarning) as caught:
        dm = make(root, split_fractions=(1.0, 0.0, 0.0))
        ds = dm.build_split("train")
    assert "2 landmark problem(s) in 2 file(s)" in warned(caught) and "l3 missing" in warned(caught)
    item = ds[ds.case_ids.index("001")]
    assert item["visible"].all()
    assert np.allclose(item["landmarks"][2].numpy(), _points(1, 1)[2])
    # ... or invisible when that annotator is used alone.
    with pytest.warns(UserWarning, match="1 landmark problem"):
        ds = make(root, annotator="alpha", split_fractions=(1.0, 0.0, 0.0)).build_split("train")
    item = ds[ds.case_ids.index("001")]
    assert item["visible"].tolist() == [True, True, False, True, True]
    # With skip + error policy the two cases are left out, with a warning naming them.
    with pytest.warns(UserWarning) as caught:
        dm = make(root, bad_landmarks="error", on_bad_sample="skip",
                  split_fractions=(1.0, 0.0, 0.0))
        ids = dm.build_split("train").case_ids
    assert ids == ["000", "003", "004", "005"]
    assert "skipping 2 bad sample(s)" in warned(caught) and "001" in warned(caught)


def test_unknown_label_and_missing_annotator_file(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "ceph")
    edit_json(root / "annotated by Dr.alpha" / "003.json",
              lambda d: d["shapes"][0].update(label="nose"))
    (root / "annotated by Dr.beta" / "004.json").unlink()
    with pytest.raises(ValueError) as err:
        make(root).setup()
    msg = str(err.value)
    assert "2 bad sample(s)" in msg
    assert "003.json: unknown landmark label 'nose'" in msg
    assert "004" in msg and "annotated by Dr.beta/004.json" in msg
    # One annotator alone still has both files 003 (bad label) and 004 (fine).
    with pytest.raises(ValueError, match="nose"):
        make(root, annotator="alpha").setup()
    make(root, annotator="beta").setup()


def test_truncated_image_and_size_mismatch(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "ceph")
    png = root / "pictures" / "002.png"
    png.write_bytes(png.read_bytes()[:80])  # header intact, pixel data cut
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(root / "pictures" / "005.png")
    # Default ("error"): the size mismatch is found at indexing ...
    with pytest.raises(ValueError, match=r"005.*declares image size \(H, W\) \[\(40, 32\)\]"):
        make(root).setup()
    # ... the truncated file (readable header) when the sample is read, naming the file.
    (root / "pictures" / "005.png").unlink()
    Image.fromarray(_image(5)).save(root / "pictures" / "005.png")
    ds = make(root, split_fractions=(1.0, 0.0, 0.0)).build_split("train")
    with pytest.raises(BadSampleError, match=r"002\.png"):
        ds[ds.case_ids.index("002")]
    # skip decodes every image at setup and leaves the truncated one out, with a warning.
    with pytest.warns(UserWarning) as caught:
        ds = make(root, on_bad_sample="skip", split_fractions=(1.0, 0.0, 0.0)).build_split("train")
    assert "002" not in ds.case_ids and len(ds) == 5
    assert "skipping 1 bad sample(s)" in warned(caught) and "002.png" in warned(caught)


def test_missing_folder_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no LabelMe JSON"):
        make(tmp_path / "empty").setup()
    root = write_labelme(tmp_path / "ceph")
    with pytest.raises(ValueError, match="annotator 'gamma' matches 0"):
        make(root, annotator="gamma").setup()
    with pytest.raises(ValueError, match="on_bad_sample"):
        make(root, on_bad_sample="ignore")


# --- ISBI 2015 -------------------------------------------------------------------------------
def write_isbi(root: Path) -> Path:
    folders = {"TrainingData": range(1, 5), "Test1Data": range(5, 7), "Test2Data": range(7, 8)}
    for name, ids in folders.items():
        (root / "RawImage" / name).mkdir(parents=True)
        for i in ids:
            Image.fromarray(_image(i)).save(root / "RawImage" / name / f"{i:03d}.bmp")
    for a, md in enumerate(("400_senior", "400_junior")):
        (root / "AnnotationsByMD" / md).mkdir(parents=True)
        for i in range(1, 8):
            lines = [f"{int(x)},{int(y)}" for x, y in _points(i, a)] + ["1", "3", "2"]
            (root / "AnnotationsByMD" / md / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_isbi_layout(tmp_path: Path) -> None:
    root = write_isbi(tmp_path / "isbi")
    dm = make(root, format="isbi", annotator="senior", image_size=(20, 16),
              split_fractions=(0.7, 0.25, 0.05))
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [3, 1, 3]
    test = dm.dataset("test")
    assert test.case_ids == ["005", "006", "007"]
    item = test[0]
    assert np.allclose(item["landmarks"].numpy(), (_points(5, 0) + 0.5) * 0.5 - 0.5)
    assert item["spacing"].item() == pytest.approx(0.2)  # 0.1 mm/pixel x 2
    assert dm.info.pixel_spacing_mm == pytest.approx(0.2)
    avg = make(root, format="isbi", split_fractions=(0.7, 0.25, 0.05)).build_split("test")
    assert np.allclose(avg[0]["landmarks"].numpy(), _points(5, 0) + 1.0)  # mean of +0, +2


def test_isbi_wrong_landmark_count(tmp_path: Path) -> None:
    root = write_isbi(tmp_path / "isbi")
    bad = root / "AnnotationsByMD" / "400_junior" / "006.txt"
    bad.write_text("\n".join(bad.read_text().splitlines()[1:]))
    with pytest.raises(ValueError, match=r"400_junior/006\.txt: expected 5 'x,y' landmark lines, "
                                         r"found 4"):
        make(root, format="isbi").setup()
    make(root, format="isbi", annotator="senior").setup()


# --- the shared real data --------------------------------------------------------------------
@pytest.mark.realdata
def test_real_cephalometric_loads_completely(shared_data: Path) -> None:
    root = shared_data / "cephalometric"
    counts = {}
    for annotator in ("average", "mollabashi", "farhadifar"):
        with pytest.warns(UserWarning) as caught:
            dm = CephalometricDataModule(root=str(root), annotator=annotator)
            splits = dm.splits()
        counts[annotator] = sum(len(v) for v in splits.values())
        invisible = sum(int(np.isnan(c.points).any(axis=1).sum())
                        for v in splits.values() for c in v)
        # Published annotation slips (checked by hand): 9 Dr. mollabashi files with a
        # duplicated or missing landmark (10 points), 1 Dr. farhadifar file (2 points); the
        # other annotator always has those points, so the average is complete.
        assert invisible == {"average": 0, "mollabashi": 10, "farhadifar": 2}[annotator]
        assert "landmark problem(s)" in warned(caught)
    assert counts == {"average": 150, "mollabashi": 150, "farhadifar": 150}
    assert {c.image_hw for v in splits.values() for c in v} == {(417, 335)}
    with pytest.warns(UserWarning, match="12 landmark problem"):
        dm = CephalometricDataModule(root=str(root), annotator="average")
        assert dm.info.pixel_spacing_mm is None  # not stated by the data
    dm.setup()
    n = 0
    for split in ("train", "val", "test"):
        for batch in dm._loader(split, shuffle=False):
            assert batch["image"].shape[1:] == (1, 208, 168)
            assert batch["visible"].all() and torch.isnan(batch["spacing"]).all()
            lm = batch["landmarks"]
            assert (lm[..., 0] >= 0).all() and (lm[..., 0] < 168).all()
            assert (lm[..., 1] >= 0).all() and (lm[..., 1] < 208).all()
            n += len(batch["index"])
    assert n == 150
    with pytest.raises(ValueError, match="9 bad sample"):
        CephalometricDataModule(root=str(root), annotator="mollabashi",
                                bad_landmarks="error").setup()
