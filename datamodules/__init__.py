"""LightningDataModules for medical images: a synthetic default and real dataset loaders."""

from datamodules.base import BaseDataModule, collate_batch
from datamodules.info import DataInfo

__all__ = ["BaseDataModule", "DataInfo", "collate_batch"]
