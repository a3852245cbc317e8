"""Build hook: a wheel carries ``train.py`` and ``configs/`` inside the ``medrobust`` package.

The source tree keeps the layout of the product card (``train.py`` and ``configs/`` at the top);
an installed wheel has no top level of its own, so the build copies them to
``medrobust/_train.py`` and ``medrobust/configs/`` (used by the ``medrobust`` console command,
see ``medrobust/cli.py``). Editable installs (``pip install -e .``) read them in place.
Everything else is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class build_py_with_cli_files(build_py):  # noqa: N801 - setuptools command naming
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "medrobust"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "train.py", target / "_train.py")
        shutil.copytree(HERE / "configs", target / "configs", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": build_py_with_cli_files})
