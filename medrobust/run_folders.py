"""One folder per run, for every logger: ``<root>/<experiment>/version_<n>/``.

Lightning gives CSV and TensorBoard loggers a ``<save_dir>/<name>/version_<n>`` folder, but for
any other logger (W&B) ``trainer.log_dir`` is the logger's bare ``save_dir``: two W&B runs of
different experiments then write ``robustness.json``, ``robustness_history.jsonl``, panels and
configs into the same folder. :func:`configure_loggers` rewrites the parsed logger configs
*before* anything is instantiated, so that

* CSV / TensorBoard loggers get ``name = <experiment>`` (unless the config names one) and an
  explicit ``version``;
* a W&B logger gets ``save_dir = <root>/<experiment>/version_<n>`` (its ``wandb/`` folder goes
  inside), a display name ``<experiment>/version_<n>`` and, on resume, the W&B run id found there;
* ``fit --ckpt_path last`` resolves to the newest ``last*.ckpt`` of the experiment's runs and the
  run continues *in that run's folder* (same ``version``) instead of opening a new one.

Nothing is created on disk here (folders appear when a logger first writes), so a run whose
config fails to instantiate leaves no empty folder. Under DDP the version chosen by the launching
process is handed to the processes Lightning starts through ``$MEDROBUST_RUN_FOLDER``, so every
rank agrees even when rank 0 has already created the folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any

ENV_KEY = "MEDROBUST_RUN_FOLDER"
_VERSION = re.compile(r"^version_(\d+)$")
#: names Lightning uses when a config gives none
_DEFAULT_NAMES = (None, "", "lightning_logs")


def next_version(parent: Path) -> int:
    """``1 + max(n)`` over ``parent/version_<n>`` folders (0 when there is none)."""
    if not parent.is_dir():
        return 0
    found = [int(m.group(1)) for p in parent.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    return max(found) + 1 if found else 0


def version_of(path: Path, parent: Path) -> int | None:
    """``n`` when ``path`` lies inside ``parent/version_<n>``, else ``None``."""
    try:
        rel = path.resolve().relative_to(parent.resolve())
    except ValueError:
        return None
    m = _VERSION.match(rel.parts[0]) if rel.parts else None
    return int(m.group(1)) if m else None


def find_last_checkpoint(roots: list[Path]) -> Path | None:
    """Newest ``last*.ckpt`` in a ``checkpoints/`` folder up to four levels below the first of
    ``roots`` that holds one."""
    for root in roots:
        if not root.is_dir():
            continue
        found: list[Path] = []
        for depth in range(0, 4):
            pattern = "/".join(["*"] * depth + ["checkpoints", "last*.ckpt"])
            found += [p for p in root.glob(pattern) if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


def choose_version(parent: Path, resume_from: Path | None) -> int:
    """The run's version: the resumed checkpoint's, else the next free one (shared with the
    DDP processes Lightning launches, see the module docstring)."""
    key = str(parent.resolve())
    inherited = os.environ.get(ENV_KEY, "")
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 and inherited.startswith(key + "::"):
        return int(inherited.rsplit("::", 1)[1])
    version = version_of(resume_from, parent) if resume_from is not None else None
    if version is None:
        version = next_version(parent)
    os.environ[ENV_KEY] = f"{key}::{version}"
    return version


def _class_path(cfg: Any) -> str:
    return str(getattr(cfg, "class_path", "") or (cfg.get("class_path", "") if isinstance(cfg, dict) else ""))


def wandb_run_id(folder: Path) -> str | None:
    """The id of the newest W&B run under ``folder/wandb`` (``…-<id>`` folder names)."""
    runs = sorted((folder / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime)
    runs = [p for p in runs if p.is_dir()]
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def configure_loggers(loggers: Any, root: Path, name: str, resume_from: Path | None) -> Path | None:
    """Rewrite the parsed ``trainer.logger`` config in place (see the module docstring).

    Args:
        loggers: ``trainer.logger`` as parsed: a ``{class_path, init_args}`` namespace, a list
            of them, or ``None`` / ``True`` / ``False``.
        root: ``trainer.default_root_dir`` (or the working directory).
        name: the experiment's name (the config file's stem).
        resume_from: the checkpoint ``fit`` resumes from, if any.

    Returns:
        The run folder of the first logger (``trainer.log_dir``), ``None`` without a configured
        logger.
    """
    entries = loggers if isinstance(loggers, list) else [loggers]
    first: Path | None = None
    for lg in entries:
        path = _class_path(lg)
        if not path:
            continue
        args = lg.init_args
        if path.endswith(("CSVLogger", "TensorBoardLogger")):
            if args.get("name") in _DEFAULT_NAMES:
                args["name"] = name
            parent = Path(args.get("save_dir") or root) / args["name"]
            if args.get("version") is None:
                args["version"] = choose_version(parent, resume_from)
            version = args["version"]
            folder = parent / (version if isinstance(version, str) else f"version_{version}")
        elif path.endswith("WandbLogger"):
            base = args.get("save_dir")
            base = Path(root if base in (None, "", ".") else base)
            version = choose_version(base / name, resume_from)
            folder = base / name / f"version_{version}"
            args["save_dir"] = str(folder)
            if args.get("name") in (None, ""):
                args["name"] = f"{name}/version_{version}"
            if resume_from is not None and args.get("id") in (None, ""):
                run_id = wandb_run_id(folder)
                if run_id is not None:
                    args["id"] = run_id
                    args["resume"] = "allow"
        else:
            continue
        first = first or folder
    return first


def keep_csv_history(loggers: list[Any]) -> None:
    """On resume, keep the earlier epochs in the run's ``metrics.csv``.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it opens a non-empty folder;
    a resumed run must continue the file instead. The old rows are read first, the writer is
    opened (which deletes the file) and the rows are written back with their header, so new rows
    append (and a new column rewrites the file with the union of the headers, as Lightning does).
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        text = path.read_text()
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        writer = logger.experiment  # rank 0: opens the folder and deletes metrics.csv
        if getattr(writer, "metrics_file_path", None) is None:
            continue
        Path(writer.metrics_file_path).write_text(text)
        writer.metrics_keys = sorted(header)



def resolve_ckpt_path(cfg: Any, root: Path, name: str, subcommand: str) -> Path | None:
    """``--ckpt_path last`` (in ``cfg``, replaced in place): the newest ``last*.ckpt`` of earlier
    runs of experiment ``name`` under ``root`` (``fit`` resumes it; ``validate`` / ``test``
    evaluate it). Returns the checkpoint whose run folder this command continues (``fit``, if
    it is one of ours) or writes beside (``validate`` / ``test``: the same ``version_<n>``), or
    ``None``."""
    if cfg.get("ckpt_path") == "last":
        found = find_last_checkpoint([root / name, root])
        if found is not None:
            verb = "resuming from" if subcommand == "fit" else "checkpoint"
            print(f"[medrobust] {verb} {found}", file=sys.stderr)
            cfg["ckpt_path"] = str(found)
        else:
            print("[medrobust] --ckpt_path last: no last.ckpt of an earlier run found; "
                  "Lightning will look in this run's checkpoint folder", file=sys.stderr)
    if cfg.get("ckpt_path") not in (None, "last", "best", "hpc"):
        return Path(cfg["ckpt_path"])
    return None


def remove_unused_run_folder(folder: str | os.PathLike[str] | None) -> bool:
    """Remove ``folder`` (a run folder the failed command opened) when it holds nothing but
    the resolved config(s) it saved: a failed ``test`` leaves no empty ``version_<n>``. A
    folder with anything else in it (a checkpoint, metrics, a partial robustness record) is
    kept. Rank 0 only. Returns whether it was removed."""
    if folder is None or int(os.environ.get("LOCAL_RANK", "0") or 0) > 0:
        return False
    path = Path(folder)
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if any(not (p.is_file() and p.name.startswith("config") and p.suffix == ".yaml") for p in entries):
        return False
    for p in entries:
        p.unlink()
    path.rmdir()
    with contextlib.suppress(OSError):  # the experiment's folder too, when this run was its only one
        path.parent.rmdir()
    return True
