"""Experiment configs as short overrides of shared pieces, and how to read them as plain dicts.

An experiment (``configs/experiment/<x>.yaml``) lists the callbacks it shares with others by
path, relative to its own file::

    trainer:
      callbacks:
        - ../callbacks/checkpoint_robust_area.yaml     # a ModelCheckpoint piece
        - ../callbacks/evaluation/ph2.yaml             # an AdversarialEvaluation piece
        - class_path: callbacks.MarginMonitor          # or written out in place

``train.py`` needs nothing for this: jsonargparse reads a string where a callback is expected as
the path of a YAML file holding ``{class_path, init_args}``, relative to the config file that
names it (``--print_config`` shows the pieces inlined). Code that reads an experiment's YAML
*itself* — to edit a copy (``benchmarks/run.py``, tests that shrink a config) — reads it with
:func:`load_config`, which inlines the pieces the same way, so the copy can live anywhere and
``callbacks[AdversarialEvaluation]`` selectors see every callback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

#: where an experiment may reference a piece by path: ``trainer.<key>`` lists
PIECE_LISTS: tuple[str, ...] = ("callbacks",)


def _load_piece(value: str, base: Path, where: str) -> dict[str, Any]:
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: piece {value!r} not found (looked for {path})")
    piece = yaml.safe_load(path.read_text())
    if not isinstance(piece, dict) or "class_path" not in piece:
        raise ValueError(f"{where}: piece {value!r} ({path}) must hold a mapping with a "
                         f"class_path, got {type(piece).__name__}")
    return piece


def inline_pieces(cfg: dict[str, Any], base: str | os.PathLike[str],
                  source: str = "config") -> dict[str, Any]:
    """``cfg`` with every piece referenced by path under ``trainer.callbacks`` replaced by the
    piece's ``{class_path, init_args}`` (in place; also returned). ``base``: the folder relative
    paths are resolved from (the config file's folder, as jsonargparse does)."""
    trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
    if not isinstance(trainer, dict):
        return cfg
    for key in PIECE_LISTS:
        items = trainer.get(key)
        if not isinstance(items, list):
            continue
        trainer[key] = [
            _load_piece(item, Path(base), f"{source}: trainer.{key}[{i}]") if isinstance(item, str)
            else item
            for i, item in enumerate(items)]
    return cfg


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML config at ``path`` as a plain dict with its shared pieces inlined
    (:func:`inline_pieces`): what an experiment says, without jsonargparse's defaults."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a config must be a mapping, got {type(cfg).__name__}")
    return inline_pieces(cfg, path.parent, source=str(path))
