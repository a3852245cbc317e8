"""Attacks by name, for configs: ``build_attack("pgd", eps=0.004, steps=10)``.

The registry key is the attack class's ``name``; an attack module registers its class with
:func:`register_attack` (a decorator), so a new attack is one file plus its import in
``attacks/__init__.py``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .base import Attack
from .cw import CW
from .gradient import BIM, FGSM, MIFGSM, PGD
from .noise import GaussianNoise, SaltPepperNoise, SpeckleNoise, UniformNoise

ATTACKS: dict[str, type[Attack]] = {}

A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator: make ``cls`` buildable by its ``name`` (``build_attack(cls.name)``)."""
    key = cls.name
    if key in ATTACKS and ATTACKS[key] is not cls:
        raise ValueError(f"attack name {key!r} is registered twice ({ATTACKS[key]} and {cls})")
    ATTACKS[key] = cls
    return cls


for _cls in (FGSM, BIM, PGD, MIFGSM, CW, GaussianNoise, UniformNoise, SaltPepperNoise, SpeckleNoise):
    register_attack(_cls)

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
    "auto_pgd": "apgd",
    "autopgd": "apgd",
    "square_attack": "square",
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
