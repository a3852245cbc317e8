"""datamodules/samples.py: the one bad-sample policy of every loader — collect all bad samples,
then raise one error listing each (``name: reason``) or skip them with one warning that counts
and names them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.chest_xray import ChestXrayFolderDataModule
from datamodules.samples import MAX_LISTED, BadSampleError, BadSamples, check_on_bad_sample, screen


def _check(item: int) -> None:
    if item % 3 == 0:
        raise BadSampleError(f"file_{item}.png is unreadable")


def test_error_lists_every_bad_sample_not_just_the_first() -> None:
    with pytest.raises(BadSampleError) as exc:
        screen(list(range(1, 8)), _check, "error", "toy split", describe=lambda i: f"case{i}")
    msg = str(exc.value)
    assert msg.startswith("toy split: 2 bad sample(s):")
    assert "case3: file_3.png is unreadable" in msg and "case6: file_6.png is unreadable" in msg
    assert "on_bad_sample='skip'" in msg


def test_skip_warns_once_with_the_count_and_the_names() -> None:
    with pytest.warns(UserWarning) as rec:
        kept = screen(list(range(1, 8)), _check, "skip", "toy split", describe=lambda i: f"case{i}")
    assert kept == [1, 2, 4, 5, 7]
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "skipping 2 bad sample(s)" in msg and "skipped 2 of 7 samples" in msg
    assert "case3" in msg and "case6" in msg


def test_nothing_bad_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert screen([1, 2], _check, "skip", "toy") == [1, 2]
        BadSamples("toy", "error").resolve()


def test_bad_samples_merge_reasons_and_cap_the_listing() -> None:
    bad = BadSamples("big set", "error")
    bad.add("a.png", "missing")
    bad.add("a.png", "no label")
    assert "a.png" in bad and len(bad) == 1
    for i in range(MAX_LISTED + 5):
        bad.add(f"z{i:03d}.png", "unreadable")
    with pytest.raises(BadSampleError, match=r"(?s)31 bad sample\(s\).*a\.png: missing; no label.*and 6 more"):
        bad.resolve(hint="Check the folder.\n")


def test_policy_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"on_bad_sample must be one of \['error', 'skip'\], got 'ignore'"):
        check_on_bad_sample("ignore")
    with pytest.raises(ValueError, match="on_bad_sample"):
        BadSamples("toy", "warn")


def test_a_folder_loader_lists_all_its_bad_files(tmp_path: Path) -> None:
    """Folder loaders used to stop at the first bad file; now one error names all of them."""
    for name in ("NORMAL", "PNEUMONIA"):
        for i in range(3):
            path = tmp_path / "train" / name / f"{name.lower()}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 7), 40 * i, dtype=np.uint8)).save(path)
    (tmp_path / "train" / "NORMAL" / "normal_1.png").write_bytes(b"not an image")
    (tmp_path / "train" / "PNEUMONIA" / "pneumonia_2.png").write_bytes(b"")
    with pytest.raises(BadSampleError, match=r"(?s)2 bad sample\(s\).*normal_1\.png.*pneumonia_2\.png"):
        ChestXrayFolderDataModule(root=str(tmp_path)).dataset("train")
    with pytest.warns(UserWarning, match=r"(?s)skipping 2 bad sample\(s\).*skipped 2 of 6.*normal_1"):
        assert len(ChestXrayFolderDataModule(root=str(tmp_path), on_bad_sample="skip").dataset("train")) == 4
