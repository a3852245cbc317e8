"""Attacks by name, for configs: ``build_attack("pgd", eps=0.004, steps=10)``.

The registry key is the attack class's ``name``. Every attack module registers its classes
with the :func:`register_attack` decorator, so a new attack is one file: subclass
:class:`attacks.Attack`, set ``name``, implement ``_run``, decorate. Its ``name`` then works in
every attack spec — a training method's ``attack:`` field and an evaluation callback's attack
list alike (:class:`attacks.AttackSpec`). A config may also name the attack by its dotted class
path (``name: my_package.my_attacks.MyAttack``): the module is imported on first use, which
registers the class, so a YAML run needs no other edit either.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from .base import Attack

ATTACKS: dict[str, type[Attack]] = {}

A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator: make ``cls`` buildable by its ``name`` (``build_attack(cls.name)``)."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"register_attack: {cls!r} is not a subclass of attacks.Attack")
    key = cls.name
    if key in ATTACKS and ATTACKS[key] is not cls:
        raise ValueError(f"attack name {key!r} is registered twice ({ATTACKS[key]} and {cls})")
    ATTACKS[key] = cls
    return cls


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


def _from_class_path(path: str) -> str | None:
    """Registry key of the attack class at dotted ``path`` (imported and registered), or
    ``None`` when ``path`` names no importable class."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        return None
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(obj, type) and issubclass(obj, Attack)):
        raise ValueError(f"attack {path!r} is not a subclass of attacks.Attack")
    return register_attack(obj).name


def canonical_name(name: str) -> str:
    """Registry key for ``name`` (case-insensitive; ``-`` and spaces read as ``_``), or for the
    attack class at the dotted class path ``name``."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key in ATTACKS:
        return key
    if "." in name:
        found = _from_class_path(name.strip())
        if found is not None:
            return found
    raise ValueError(f"unknown attack {name!r}; available: {sorted(ATTACKS)} (or the dotted class "
                     "path of an attacks.Attack subclass)")


def build_attack(name: str, **kwargs: Any) -> Attack:
    """Instantiate the attack registered under ``name`` with ``kwargs``.

    ``build_attack("fgm", norm="l2", eps=0.5)`` is the L2 fast gradient method.
    """
    return ATTACKS[canonical_name(name)](**kwargs)
