"""medrobust entry point: ``python train.py {fit,validate,test,predict} --config <yaml> [...]``.

Examples::

    python train.py fit --config configs/experiment/quickstart.yaml
    python train.py fit --config configs/experiment/classification_synthetic_amat.yaml \\
        --trainer.max_epochs 5 --trainer.default_root_dir runs
    python train.py fit --config configs/experiment/classification_synthetic_sat.yaml \\
        --ckpt_path last                                   # resume the latest run of it
    python train.py test --config configs/experiment/classification_synthetic_sat.yaml \\
        --ckpt_path runs/classification_synthetic_sat/version_0/checkpoints/last.ckpt
    python train.py fit --config configs/experiment/classification_synthetic_sat.yaml --print_config

Composable pieces: ``--config configs/trainer/cpu.yaml --config configs/data/<…>.yaml
--config configs/model/<…>.yaml [--config configs/logger/wandb.yaml]`` (later files override
earlier ones; command-line flags override files). Inside an experiment, callbacks it shares
with others are listed by path relative to the file (``- ../callbacks/checkpoint_robust_area.yaml``,
``- ../callbacks/evaluation/ph2.yaml``): jsonargparse loads them (see
:mod:`medrobust.config_pieces`); :func:`resolved_config` gives the fully resolved result.

* The datamodule's :class:`~datamodules.info.DataInfo` is linked into the model
  (``data.info → model.init_args.data_info``), so configs never repeat channels, classes,
  bounds or the training-set size.
* Runs log under ``<trainer.default_root_dir>/<experiment name>/version_<n>/`` (CSV by default;
  ``configs/logger/wandb.yaml`` for W&B, offline without an account; TensorBoard alike) — that
  is ``trainer.log_dir``, one folder per run for every logger (medrobust/run_folders.py); the
  resolved config is saved there as ``config.yaml`` (never overwritten: a clash gets a numbered
  name) and checkpoints go to its ``checkpoints/``.
* ``--ckpt_path last`` with ``fit`` resumes from the newest ``last*.ckpt`` of earlier runs of the
  same experiment under ``default_root_dir`` (Lightning alone would only look in the new run's
  empty folder); a resumed run continues in its run folder (same ``version_<n>``, CSV rows and
  W&B run id kept). ``validate`` / ``test`` with ``--ckpt_path last`` or the path of a run's
  checkpoint write beside that training run (its ``version_<n>``: ``robustness.json``,
  ``report.md``, a numbered ``config-<k>.yaml``; the training's CSV rows are kept), and a
  command that fails before writing anything but its config leaves no folder behind.
* ``--batch_scaling global`` (the default) reads ``data.batch_size`` as the global batch,
  split over ``num_nodes × devices`` processes, so a run means the same on 1 or 8 GPUs;
  ``--speed.channels_last`` / ``--speed.compile`` are GPU speed options (docs/scaling.md).
* Installed (``pip install .``), the same CLI is the ``medrobust`` command (medrobust/cli.py).
* Real datasets are found through ``$MEDROBUST_DATA`` (e.g. ``MEDROBUST_DATA=../shared/data``)
  or an explicit ``--data.init_args.root`` path. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule
from medrobust.cli_parsing import accept_linked_targets_for_functions
from medrobust.cli_runs import NoClobberSaveConfigCallback, csv_logger_config, experiment_name
from medrobust.cli_summary import print_robustness
from medrobust.cli_trainer import (
    add_scaling_arguments,
    scaling_callbacks,
    warn_plain_model_checkpoint,
    with_atomic_checkpoint_io,
)
from medrobust.config_checks import check_config


def data_info_of(datamodule: BaseDataModule) -> DataInfo:
    """The link ``data → model.init_args.data_info`` (applied when both are instantiated)."""
    return datamodule.info


class MedRobustCLI(LightningCLI):
    """LightningCLI with the data → model link, a CSV logger by default, ``--ckpt_path last``
    resolution across runs and crash-safe checkpoint writes (the pieces live in
    ``medrobust/cli_*.py``)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `--print_config` prints and exits inside the parse: check what jsonargparse cannot
        # (net.init_args keys, data task names) on a parse without it first.
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        if any(str(a).startswith("--print_config") for a in argv):
            quiet = [a for a in argv if not str(a).startswith("--print_config")]
            try:
                cfg = parser.parse_args(quiet)
            except SystemExit:
                cfg = None  # the real parse below reports it
            if cfg is not None:
                problems = check_config(cfg.get(str(cfg.get("subcommand")), cfg))
                if problems:
                    parser.error("; ".join(problems))
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.data_info", compute_fn=data_info_of,
                              apply_on="instantiate")
        add_scaling_arguments(parser)

    # ---------------------------------------------------------------- run naming / logging
    def run_name(self) -> str:
        """The experiment's name (:func:`medrobust.cli_runs.experiment_name` of the configs)."""
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        return experiment_name(list(cfg.get("config") or []))

    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        # One folder per run for every logger, and `fit --ckpt_path last` continuing in the
        # resumed run's folder (see medrobust/run_folders.py). Nothing is created on disk here.
        from medrobust.run_folders import configure_loggers, resolve_ckpt_path

        cfg = self._subconfig()
        problems = check_config(cfg)
        if problems:
            raise ValueError("; ".join(problems))
        trainer_cfg = cfg.trainer
        root = Path(trainer_cfg.default_root_dir or os.getcwd())
        name = self.run_name()
        resume = resolve_ckpt_path(cfg, root, name, str(self.subcommand))
        if trainer_cfg.logger in (None, True) and not trainer_cfg.get("fast_dev_run"):
            trainer_cfg.logger = csv_logger_config(root, name)
        self._run_folder = configure_loggers(trainer_cfg.logger, root, name, resume)
        self._resuming = resume is not None
        # a run folder this command opens, removed again if the command fails before it wrote
        # anything but its config (see _run_subcommand)
        folder = self._run_folder
        self._new_folder = folder if folder is not None and not Path(folder).exists() else None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        callbacks = [*callbacks, *scaling_callbacks(self._subconfig())]
        config = {**config, "plugins": with_atomic_checkpoint_io(
            config.get("plugins"), config.get("strategy"), config.get("accelerator"))}
        trainer = super()._instantiate_trainer(config, callbacks)
        warn_plain_model_checkpoint(trainer.callbacks)
        folder = getattr(self, "_run_folder", None)
        if folder is not None:
            # Checkpoints in <run folder>/checkpoints for every logger (Lightning would use
            # <save_dir>/<project>/<run id>/checkpoints for W&B).
            for cb in trainer.checkpoint_callbacks:
                if getattr(cb, "dirpath", None) is None:
                    cb.dirpath = str(Path(folder) / "checkpoints")
        if getattr(self, "_resuming", False) and trainer.is_global_zero:
            from medrobust.run_folders import keep_csv_history

            keep_csv_history(trainer.loggers)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            from medrobust.run_folders import remove_unused_run_folder

            remove_unused_run_folder(getattr(self, "_new_folder", None))
            raise

    # ---------------------------------------------------------------- resume
    def _load_weights_only(self) -> None:
        # Checkpoints hold tensors and plain values only (lightning_modules/base.py,
        # lightning_modules/fault_tolerance.py), so they load without unpickling code.
        cfg = self.config_init[self.subcommand]
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg["weights_only"] = True

    before_fit = before_validate = before_test = before_predict = _load_weights_only

    def print_robustness(self) -> None:
        """One line per split (:func:`medrobust.cli_summary.print_robustness`)."""
        print_robustness(self.trainer, getattr(self.model, "main_metric", None))

    after_fit = after_validate = after_test = print_robustness


def resolved_config(config: str | os.PathLike[str], subcommand: str = "fit") -> dict[str, Any]:
    """The config that ``python train.py <subcommand> --config <config>`` runs with: every piece
    it references inlined and every default filled in, as ``--print_config`` prints it (without
    its ``# lightning.pytorch==…`` header). Nothing is instantiated and no data is read."""
    import io

    import yaml

    out = io.StringIO()
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both carry flags
    try:
        with contextlib.redirect_stdout(out):
            cli_main([subcommand, "--config", str(config), "--print_config"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.argv = saved_argv
    return yaml.safe_load(out.getvalue())


def cli_main(args: list[str] | None = None, run: bool = True) -> MedRobustCLI:
    """Build and run the CLI (``args=None``: ``sys.argv``). Returns the CLI object."""
    accept_linked_targets_for_functions()
    return MedRobustCLI(
        TaskModule,
        BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=NoClobberSaveConfigCallback,
        save_config_kwargs={"overwrite": False},
        seed_everything_default=0,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    from medrobust.cli_errors import run_cli, strip_debug

    _args, _debug = strip_debug(sys.argv[1:])
    sys.argv = [sys.argv[0], *_args]  # DDP workers restart from sys.argv
    run_cli(lambda _: cli_main(None), _args, _debug)
