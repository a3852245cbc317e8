"""What LightningCLI offers for each datamodule: the loader options are declared once
(``BaseDataModule``) and forwarded as ``**loader``; VOC and COCO forward the shared detection
options, paired folders the manifest's. The CLI (jsonargparse) follows those calls, so every
datamodule still offers them, with the base's defaults and each datamodule's own ``batch_size``."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

import datamodules
from datamodules import BaseDataModule

LOADER = {"num_workers": 0, "pin_memory": False, "eval_batch_size": None}
BATCH_SIZE = {"SyntheticDataModule": 32, "PH2DataModule": 16, "ISICDataModule": 32,
              "ChestXrayFolderDataModule": 32, "MedMNISTDataModule": 128,
              "VOCDetectionDataModule": 8, "COCODetectionDataModule": 8,
              "CephalometricDataModule": 8, "DecathlonDataModule": 2, "ManifestDataModule": 16,
              "PairedFoldersDataModule": 16}
DETECTION = {"image_size": None, "channels": 3, "split_fractions": (0.7, 0.15, 0.15), "seed": 0,
             "split_file": None, "augment": None, "degenerate_boxes": "drop",
             "on_bad_sample": "error"}


def cli_options(name: str) -> dict[str, object]:
    """The ``init_args`` the CLI resolves for datamodule ``name`` given only its class path."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseDataModule, "data")
    cls = getattr(datamodules, name)
    cfg = parser.parse_args([f"--data={cls.__module__}.{name}"])
    return vars(cfg.data.init_args)


@pytest.mark.parametrize("name", sorted(BATCH_SIZE))
def test_every_datamodule_offers_the_loader_options(name: str) -> None:
    options = cli_options(name)
    assert {k: options.get(k, "absent") for k in LOADER} == LOADER
    assert options["batch_size"] == BATCH_SIZE[name]


@pytest.mark.parametrize("name", ["VOCDetectionDataModule", "COCODetectionDataModule"])
def test_detection_datamodules_offer_the_shared_detection_options(name: str) -> None:
    options = cli_options(name)
    assert {k: options.get(k, "absent") for k in DETECTION} == DETECTION


def test_paired_folders_offer_the_manifest_options_segmentation_uses() -> None:
    options = cli_options("PairedFoldersDataModule")
    assert set(options) == {"images_dir", "masks_dir", "image_suffix", "mask_suffix",
                            "mask_threshold", "image_size", "patch_size", "channels",
                            "class_names", "num_classes", "augment", "split_fractions",
                            "split_seed", "split_file", "on_bad_sample", "batch_size", *LOADER}
    assert options["split_file"] == "auto"
