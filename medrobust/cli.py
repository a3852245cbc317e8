"""The ``medrobust`` console command: ``medrobust {fit,validate,test,predict} --config …``.

The same CLI as ``python train.py`` (which stays the entry point of the source tree). Config
paths that do not exist relative to the working directory are looked up in the shipped configs
(:data:`medrobust.CONFIG_DIR`), so after ``pip install medrobust`` the README's commands work
from any folder::

    medrobust fit --config configs/experiment/quickstart.yaml --trainer.max_epochs 1
    medrobust fit --config experiment/quickstart.yaml          # the same file

A mistake in a flag or config prints its message alone (``--debug``: with the traceback; see
:mod:`medrobust.cli_errors`).

Subcommands that read finished runs instead of training (:data:`SUBCOMMANDS`)::

    medrobust compare runs/a/version_0 runs/b/version_0      # paired comparison, same samples
    medrobust evaluate --model m.ts --data manifest.csv --task classification --eps 0.004 \
        --mean 0.5 --std 0.25 --out results/m              # any model, no training code
    medrobust leaderboard results/ --sort accuracy@0.004     # many records, one table
    medrobust certify --model last.ckpt --data cfg.yaml --task classification --sigma 0.25 \
        --out results/m                                      # randomized smoothing + empirical L2
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import medrobust

#: ``medrobust <name> …`` commands that are not LightningCLI subcommands: name → module with ``main(argv)``
SUBCOMMANDS: dict[str, str] = {"certify": "medrobust.cli_certify",
                               "compare": "medrobust.callbacks.compare",
                               "evaluate": "medrobust.cli_evaluate",
                               "leaderboard": "medrobust.callbacks.leaderboard"}


def resolve_config_path(value: str) -> str:
    """``value`` if it exists; else the shipped config it names (``configs/x.yaml`` or
    ``x.yaml`` under :data:`medrobust.CONFIG_DIR`); else ``value`` unchanged (the CLI then
    reports the missing file)."""
    path = Path(value)
    if path.exists() or path.is_absolute():
        return value
    parts = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    shipped = medrobust.CONFIG_DIR.joinpath(*parts) if parts else medrobust.CONFIG_DIR
    return str(shipped) if shipped.is_file() else value


def resolve_config_args(args: list[str]) -> list[str]:
    """Every ``--config PATH`` / ``--config=PATH`` of ``args`` through :func:`resolve_config_path`."""
    out: list[str] = []
    take = False
    for arg in args:
        if take:
            out.append(resolve_config_path(arg))
            take = False
        elif arg == "--config":
            out.append(arg)
            take = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config_path(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def load_train_module() -> ModuleType:
    """``train.py``: shipped inside the package as ``medrobust/_train.py`` by a wheel, at the
    top of the source tree otherwise. Loaded by file path, so no top-level ``train`` module is
    installed (a generic name a user's own ``train.py`` would clash with)."""
    loaded = sys.modules.get("medrobust._train")
    if loaded is not None:  # once per process, as an import would be
        return loaded
    here = Path(__file__).resolve().parent
    for candidate in (here / "_train.py", medrobust.ROOT / "train.py"):
        if candidate.is_file():
            for name in medrobust.PACKAGES:  # bind the framework's names before train.py does
                getattr(medrobust, name)
            spec = importlib.util.spec_from_file_location("medrobust._train", candidate)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["medrobust._train"] = module
            spec.loader.exec_module(module)
            return module
    raise ImportError(f"medrobust: train.py not found beside {here}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw and raw[0] in SUBCOMMANDS:
        command = importlib.import_module(SUBCOMMANDS[raw[0]])
        raise SystemExit(command.main(raw[1:]))
    from medrobust.cli_errors import run_cli, strip_debug

    args, debug = strip_debug(resolve_config_args(raw))
    train = load_train_module()
    # The resolved flags go through sys.argv: Lightning's DDP launcher restarts this command
    # from sys.argv for the other ranks.
    sys.argv = [sys.argv[0], *args]
    run_cli(lambda _: train.cli_main(None), args, debug)


if __name__ == "__main__":
    main()
