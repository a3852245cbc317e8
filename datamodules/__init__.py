"""LightningDataModules for medical images: a synthetic default and real dataset loaders."""

from datamodules.base import BaseDataModule, collate_batch
from datamodules.chest_xray import ChestXrayFolderDataModule
from datamodules.detection import COCODetectionDataModule, VOCDetectionDataModule
from datamodules.info import DataInfo
from datamodules.isic import ISICDataModule
from datamodules.landmarks import CephalometricDataModule
from datamodules.manifest import ManifestDataModule, PairedFoldersDataModule
from datamodules.medmnist import MedMNISTDataModule
from datamodules.paths import resolve_data_path
from datamodules.ph2 import PH2DataModule
from datamodules.samples import BadSampleError
from datamodules.splits import load_or_create_split, stratified_split
from datamodules.synthetic import SyntheticDataModule
from datamodules.transforms import AugmentConfig, JointTransform
from datamodules.volumes import DecathlonDataModule

__all__ = [
    "AugmentConfig",
    "BadSampleError",
    "BaseDataModule",
    "COCODetectionDataModule",
    "CephalometricDataModule",
    "ChestXrayFolderDataModule",
    "DataInfo",
    "DecathlonDataModule",
    "ISICDataModule",
    "JointTransform",
    "ManifestDataModule",
    "MedMNISTDataModule",
    "PH2DataModule",
    "PairedFoldersDataModule",
    "SyntheticDataModule",
    "VOCDetectionDataModule",
    "collate_batch",
    "load_or_create_split",
    "resolve_data_path",
    "stratified_split",
]
