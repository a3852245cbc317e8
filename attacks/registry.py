"""Attacks by name, for configs: ``build_attack("pgd", eps=0.004, steps=10)``."""

from __future__ import annotations

from typing import Any

from .base import Attack
from .cw import CW
from .gradient import BIM, FGSM, MIFGSM, PGD
from .noise import GaussianNoise, SaltPepperNoise, SpeckleNoise, UniformNoise

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "mifgsm": MIFGSM,
    "cw": CW,
    "gaussian": GaussianNoise,
    "uniform": UniformNoise,
    "salt_pepper": SaltPepperNoise,
    "speckle": SpeckleNoise,
}

# Spellings people use in papers and configs.
_ALIASES = {
    "ifgsm": "bim",
    "i_fgsm": "bim",
    "mi_fgsm": "mifgsm",
    "fgm": "fgsm",
    "cw_l2": "cw",
    "cwl2": "cw",
    "gaussian_noise": "gaussian",
    "uniform_noise": "uniform",
    "salt_and_pepper": "salt_pepper",
    "saltpepper": "salt_pepper",
    "s&p": "salt_pepper",
    "speckle_noise": "speckle",
}


def canonical_name(name: str) -> str:
    """Registry key for ``name`` (case-insensitive; ``-`` and spaces read as ``_``)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return key


def build_attack(name: str, **kwargs: Any) -> Attack:
    """Instantiate the attack registered under ``name`` with ``kwargs``.

    ``build_attack("fgm", norm="l2", eps=0.5)`` is the L2 fast gradient method.
    """
    return ATTACKS[canonical_name(name)](**kwargs)
