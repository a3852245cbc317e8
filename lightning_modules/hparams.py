"""A task module's constructor arguments as built parts and as plain hyperparameters.

Checkpoints store hyperparameters as plain values (``data_info`` as a dict, the method as
``{class_path, init_args}``, a network given as an object as a marker), so
``Module.load_from_checkpoint(path)`` and ``train.py test --ckpt_path`` rebuild the model without
unpickling objects (LightningCLI loads with ``weights_only=True``). This module turns the stored
forms back into objects, states the input-normalisation rule, and reads the corruption-aware
training options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from datamodules.info import DataInfo
from lightning_modules.methods.base import TrainingMethod, upgrade_init_args
from lightning_modules.nets.builder import import_object

#: the keys of a task module's ``corruption_augment`` mapping
CORRUPTION_AUGMENT_KEYS = ("suite", "p", "severities", "exclude", "seed")


def data_info_to_dict(info: DataInfo) -> dict[str, Any]:
    """``DataInfo`` as plain values (tuples become lists) for hyperparameters and YAML."""
    out = dataclasses.asdict(info)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def as_data_info(value: Any, owner: str) -> DataInfo:
    """A :class:`DataInfo` from itself or its dict; a clear error when missing."""
    if isinstance(value, DataInfo):
        return value
    if value is None:
        raise ValueError(
            f"{owner}: data_info is required. train.py links it from the datamodule "
            "(data.info); in Python pass data_info=datamodule.info"
        )
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(DataInfo)}
        unknown = set(value) - fields
        if unknown:
            raise ValueError(f"{owner}.data_info has unknown fields {sorted(unknown)}")
        return DataInfo(**dict(value))
    raise ValueError(f"{owner}.data_info must be a DataInfo or a dict, got {type(value).__name__}")


def as_method(value: Any, owner: str) -> TrainingMethod:
    """A :class:`TrainingMethod` from itself, its ``{class_path, init_args}``, or ``None``
    (clean training)."""
    if value is None:
        from lightning_modules.methods.clean import Clean

        return Clean()
    if isinstance(value, TrainingMethod):
        return value
    if isinstance(value, Mapping) and "class_path" in value:
        cls = import_object(value["class_path"], f"{owner}.method.class_path")
        if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
            raise ValueError(
                f"{owner}.method.class_path={value['class_path']!r} is not a TrainingMethod subclass"
            )
        return cls(**upgrade_init_args(cls, value.get("init_args") or {}))
    raise ValueError(
        f"{owner}.method must be a TrainingMethod or {{class_path, init_args}}, got {value!r}"
    )


def input_normalization(net: Any, mean: float | list[float] | None, std: float | list[float] | None,
                        bounds: tuple[float, float], owner: str) -> tuple[Any, Any]:
    """``(mean, std)`` of the model's first module. ``None``: the middle of ``bounds`` and a
    quarter of their width (0.5 and 0.25 for [0, 1]), only for a network medrobust builds; a
    built ``nn.Module`` comes from elsewhere (plain PyTorch, a MONAI bundle…) and guessing its
    input normalisation would silently change its predictions, so it needs both stated."""
    lo, hi = bounds
    if isinstance(net, nn.Module) and (mean is None or std is None):
        raise ValueError(
            f"{owner}(net=<{type(net).__name__} instance>): state the input normalisation the "
            "network expects, mean=… and std=… (one value or one per channel; mean=0.0, "
            "std=1.0: it takes the images as they are, in data_info.bounds). The default "
            f"(mean {(lo + hi) / 2:g}, std {(hi - lo) / 4:g}) is only for networks medrobust "
            "builds from a config and trains behind it. Loading an older checkpoint of such "
            "a module: load_from_checkpoint(path, net=…, mean=0.5, std=0.25) keeps what it "
            "was trained with.")
    return ((lo + hi) / 2 if mean is None else mean), ((hi - lo) / 4 if std is None else std)


def corruption_augment_from(options: dict[str, Any] | None, owner: str) -> tuple[Any, int]:
    """``(CorruptionAugment or None, seed)`` from a task module's ``corruption_augment``
    mapping ``{suite, p?, severities?, exclude?, seed?}``."""
    if options is None:
        return None, 0
    if not isinstance(options, dict):
        raise ValueError(f"{owner}.corruption_augment must be a mapping like {{suite: chest_xray, p: 0.5}}, "
                         f"got {options!r}")
    unknown = set(options) - set(CORRUPTION_AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"{owner}.corruption_augment: unknown keys {sorted(unknown)} "
                         f"({', '.join(CORRUPTION_AUGMENT_KEYS)})")
    from corruptions import CorruptionAugment

    args = {k: v for k, v in options.items() if k != "seed"}
    return CorruptionAugment(**args), int(options.get("seed", 0))
