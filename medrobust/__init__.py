"""``medrobust``: one import name for the framework whose code lives in top-level folders.

The product card fixes the layout on disk (``attacks/``, ``datamodules/``,
``lightning_modules/``, ``callbacks/`` at the top, configs in ``configs/``). Those are generic
names: a user's own ``callbacks.py`` beside their script would shadow ours. This package
re-exports each of them under ``medrobust.<name>``, loaded *by file path* from the folder that
holds this package's siblings (the source tree, or ``site-packages`` for a wheel), never through
``sys.path``::

    from medrobust.callbacks import AdversarialEvaluation
    from medrobust.lightning_modules import ClassificationModule
    # in YAML: class_path: medrobust.callbacks.AdversarialEvaluation

How a clash is handled: if a *foreign* module already holds one of the names in
``sys.modules`` (the user imported their ``callbacks.py`` first), ours is loaded under that name
with all its submodules imported at once (so the framework's own absolute imports, also those
inside functions such as ``from callbacks.plotting import …``, bind to ours), and then the
user's module is put back under the bare name. Their ``import callbacks`` keeps working and so
does ours. When nothing holds the name, ours is bound to it as usual. (A user module named like
ours and imported *after* ``medrobust`` gets ours: import yours first, or rename it.)

``medrobust.CONFIG_DIR`` is the folder of the shipped YAML configs; ``medrobust fit --config
configs/experiment/quickstart.yaml`` finds them there when the path does not exist relative to
the working directory (see :mod:`medrobust.cli`).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

#: the framework's top-level packages, re-exported as ``medrobust.<name>``
PACKAGES: tuple[str, ...] = ("attacks", "corruptions", "datamodules", "lightning_modules", "callbacks",
                           "certification")
#: the folder holding the top-level packages (the source tree or site-packages)
ROOT: Path = Path(__file__).resolve().parent.parent


def _config_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "configs"  # a wheel ships them here
    return packaged if packaged.is_dir() else ROOT / "configs"


#: the shipped YAML configs (``experiment/``, ``data/``, ``model/``, ``trainer/``, ...)
CONFIG_DIR: Path = _config_dir()


def _is_ours(module: ModuleType, name: str) -> bool:
    where = getattr(module, "__file__", None)
    if where is None:
        return False
    try:
        return Path(where).resolve().is_relative_to(ROOT / name)
    except (OSError, ValueError):
        return False


def _load(name: str) -> ModuleType:
    """Our package ``name``, loaded from :data:`ROOT` (see the module docstring)."""
    alias = f"{__name__}.{name}"
    if alias in sys.modules:
        return sys.modules[alias]
    current = sys.modules.get(name)
    if current is not None and _is_ours(current, name):
        module = current
    else:
        spec = importlib.machinery.PathFinder.find_spec(name, [str(ROOT)])
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            raise ImportError(f"medrobust: package {name!r} not found in {ROOT}")
        foreign = {k: v for k, v in sys.modules.items() if k == name or k.startswith(name + ".")}
        for key in foreign:
            del sys.modules[key]
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            if foreign:
                # Bind every submodule now, while the bare name is ours.
                for info in pkgutil.walk_packages(module.__path__, prefix=name + "."):
                    importlib.import_module(info.name)
        except BaseException:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            sys.modules.update(foreign)
            raise
        if foreign and name in foreign:
            sys.modules[name] = foreign[name]  # the user's module keeps the bare name
    sys.modules[alias] = module
    return module


def __getattr__(name: str) -> Any:
    if name in PACKAGES:
        module = _load(name)
        globals()[name] = module
        return module
    if name == "evaluate":  # medrobust.evaluate(model, data, task=…, suite=…, eps=…)
        for package in PACKAGES:
            __getattr__(package)
        from medrobust.evaluation import evaluate

        return evaluate
    if name == "certify":  # medrobust.certify(model, data, task=…, sigmas=…, radii=…)
        for package in PACKAGES:
            __getattr__(package)
        from medrobust.smoothing import certify

        return certify
    raise AttributeError(f"module 'medrobust' has no attribute {name!r}")


class _AliasFinder:
    """Makes ``import medrobust.callbacks`` (and ``class_path: medrobust.callbacks.X``) load the
    re-exported package, and ``medrobust.callbacks.common`` its submodule."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> object:
        head, _, rest = fullname.partition(".")
        if head != __name__ or not rest:
            return None
        top, _, sub = rest.partition(".")
        if top not in PACKAGES:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(top, sub))


class _AliasLoader:
    def __init__(self, top: str, sub: str) -> None:
        self.top, self.sub = top, sub

    def create_module(self, spec: object) -> ModuleType:
        package = __getattr__(self.top)
        if not self.sub:
            return package
        return importlib.import_module(f"{package.__name__}.{self.sub}")

    def exec_module(self, module: ModuleType) -> None:  # already executed
        return None


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
