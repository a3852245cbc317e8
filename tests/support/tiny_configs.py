"""Shipped experiment configs shrunk for tests: the same file, with tiny data, nets and attacks.

Tests that run ``train.py`` on a real config (not a hand-written one) start from
:func:`tiny_experiment`, so a change to a shipped config is exercised by them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medrobust.config_pieces import load_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "configs" / "experiment"


def tiny_experiment(experiment: str, *, data: dict[str, Any], features: list[int],
                    only_callback: str | None = None, attack_steps: int | None = 1) -> dict[str, Any]:
    """``configs/experiment/<experiment>.yaml`` (its pieces resolved) with small sizes.

    Args:
        data: ``data.init_args`` updates (``num_train``, ``image_size``, ``batch_size``, …).
        features: the net's ``features`` (channel widths), e.g. ``[4]``.
        only_callback: keep only the callback whose class path ends with this name; default:
            every callback except ``MarginMonitor`` (it needs an AMAT method).
        attack_steps: the training method's attack steps (``None``: leave them; a method
            without an attack is left alone).
    """
    cfg = load_config(EXPERIMENTS / f"{experiment}.yaml")
    cfg["data"]["init_args"].update(data)
    callbacks = cfg["trainer"]["callbacks"]
    if only_callback is not None:
        cfg["trainer"]["callbacks"] = [cb for cb in callbacks if cb["class_path"].endswith(only_callback)]
    else:
        cfg["trainer"]["callbacks"] = [cb for cb in callbacks if not cb["class_path"].endswith("MarginMonitor")]
    cfg["model"]["init_args"]["net"]["init_args"]["features"] = list(features)
    method = cfg["model"]["init_args"].get("method") or {}
    attack = method.get("init_args", {}).get("attack") if isinstance(method, dict) else None
    if attack_steps is not None and isinstance(attack, dict):
        attack["steps"] = attack_steps
    return cfg


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    """``cfg`` as YAML at ``path`` (parent folders made); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path
