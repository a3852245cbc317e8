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
  W&B run id kept).
* ``--batch_scaling global`` (the default) reads ``data.batch_size`` as the global batch,
  split over ``num_nodes × devices`` processes, so a run means the same on 1 or 8 GPUs;
  ``--speed.channels_last`` / ``--speed.compile`` are GPU speed options (docs/scaling.md).
* Installed (``pip install .``), the same CLI is the ``medrobust`` command (medrobust/cli.py).
* Real datasets are found through ``$MEDROBUST_DATA`` (e.g. ``MEDROBUST_DATA=../shared/data``)
  or an explicit ``--data.init_args.root`` path. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from attacks.options import check_choice
from callbacks.scaling import BATCH_SCALING_MODES, BatchScaling, SpeedOptions
from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule
from medrobust.config_checks import check_config

DEFAULT_RUN_NAME = "medrobust"


def _accept_linked_targets_for_functions() -> None:
    """Work around a jsonargparse bug that breaks ``--model.init_args.<x>`` overrides.

    When a command-line flag changes the model's arguments, jsonargparse re-checks nested
    ``{class_path, init_args}`` values such as ``net`` and builds a parser for their class path
    with the model's extra keyword arguments, ``linked_targets`` among them (our
    ``data → model.init_args.data_info`` link). For a *function* class path — the torchvision
    detection builders, ``torchvision.models.resnet18``, our ``tiny_fcos`` —
    ``add_function_arguments`` does not take that keyword and the whole parse fails with
    "unexpected keyword argument 'linked_targets'". Functions have no linked targets, so the
    keyword is dropped for them. Idempotent.
    """
    from jsonargparse import ArgumentParser  # defines its own copy of the method

    original = ArgumentParser.add_function_arguments
    if getattr(original, "_medrobust_shim", False):
        return

    def add_function_arguments(self: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("linked_targets", None)
        return original(self, function, *args, **kwargs)

    add_function_arguments._medrobust_shim = True  # type: ignore[attr-defined]
    ArgumentParser.add_function_arguments = add_function_arguments  # type: ignore[method-assign]


_accept_linked_targets_for_functions()


def data_info_of(datamodule: BaseDataModule) -> DataInfo:
    """The link ``data → model.init_args.data_info`` (applied when both are instantiated)."""
    return datamodule.info


def free_config_name(log_dir: str | os.PathLike[str], name: str) -> str:
    """``name`` if ``log_dir/name`` does not exist, else ``stem-1.yaml``, ``stem-2.yaml`` …"""
    path = Path(log_dir) / name
    if not path.exists():
        return name
    stem, suffix = path.stem, path.suffix
    i = 1
    while (Path(log_dir) / f"{stem}-{i}{suffix}").exists():
        i += 1
    return f"{stem}-{i}{suffix}"


class NoClobberSaveConfigCallback(SaveConfigCallback):
    """Saves the resolved config in ``trainer.log_dir`` and never overwrites one: a second
    run into the same directory writes ``config-1.yaml`` instead of failing or clobbering.
    With a W&B logger the resolved config also goes to the run's config."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir
            name = free_config_name(log_dir, self.config_filename) if (
                trainer.is_global_zero and log_dir is not None) else self.config_filename
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover - wandb is a declared dependency
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                cfg = self.parser.dump(self.config, skip_none=False, format="json")
                import json

                logger.experiment.config.update({"cli": json.loads(cfg)}, allow_val_change=True)


class MedRobustCLI(LightningCLI):
    """LightningCLI with the data → model link, a CSV logger by default and ``--ckpt_path
    last`` resolution across runs."""

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
        """The experiment's name: the stem of its config file (the last one under
        ``experiment/`` if several are given, never a ``logger/``, ``trainer/`` or
        ``callbacks/`` piece), else ``medrobust``."""
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        paths = [str(p) for p in (cfg.get("config") or []) if p is not None]
        if not paths:
            return DEFAULT_RUN_NAME
        experiments = [p for p in paths if "experiment" in Path(p).parts]
        # pieces that add a logger / trainer / callbacks do not name the experiment
        named = [p for p in paths if not {"logger", "trainer", "callbacks"} & set(Path(p).parts[-2:-1])]
        return Path((experiments or named or paths)[-1]).stem

    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        # One folder per run for every logger, and `fit --ckpt_path last` continuing in the
        # resumed run's folder (see medrobust/run_folders.py). Nothing is created on disk here.
        from medrobust.run_folders import configure_loggers, find_last_checkpoint

        cfg = self._subconfig()
        problems = check_config(cfg)
        if problems:
            raise ValueError("; ".join(problems))
        trainer_cfg = cfg.trainer
        root = Path(trainer_cfg.default_root_dir or os.getcwd())
        name = self.run_name()
        resume: Path | None = None
        if cfg.get("ckpt_path") == "last":  # fit resumes it; validate / test evaluate it
            found = find_last_checkpoint([root / name, root])
            if found is not None:
                verb = "resuming from" if self.subcommand == "fit" else "checkpoint"
                print(f"[medrobust] {verb} {found}", file=sys.stderr)
                cfg["ckpt_path"] = str(found)
            else:
                print("[medrobust] --ckpt_path last: no last.ckpt of an earlier run found; "
                      "Lightning will look in this run's checkpoint folder", file=sys.stderr)
        if self.subcommand == "fit" and cfg.get("ckpt_path") not in (None, "last", "best", "hpc"):
            resume = Path(cfg["ckpt_path"])  # continues in its run folder if it is one of ours
        if trainer_cfg.logger in (None, True) and not trainer_cfg.get("fast_dev_run"):
            # Lightning's default is TensorBoard when installed; medrobust's default is CSV,
            # under <default_root_dir>/<experiment>/version_<n>.
            from jsonargparse import Namespace

            trainer_cfg.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                           init_args=Namespace(save_dir=str(root), name=name))
        self._run_folder = configure_loggers(trainer_cfg.logger, root, name, resume)
        self._resuming = resume is not None

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

    # ---------------------------------------------------------------- resume
    def _load_weights_only(self) -> None:
        # Checkpoints hold tensors and plain values only (lightning_modules/base.py,
        # lightning_modules/fault_tolerance.py), so they load without unpickling code.
        cfg = self.config_init[self.subcommand]
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg["weights_only"] = True

    def before_fit(self) -> None:
        self._load_weights_only()

    def before_validate(self) -> None:
        self._load_weights_only()

    def before_test(self) -> None:
        self._load_weights_only()

    def before_predict(self) -> None:
        self._load_weights_only()

    def after_fit(self) -> None:
        self.print_robustness()

    def after_validate(self) -> None:
        self.print_robustness()

    def after_test(self) -> None:
        self.print_robustness()

    def print_robustness(self) -> None:
        """One line per split: the task's main metric clean and under each evaluated attack,
        from the ``robustness.json`` record of ``callbacks.AdversarialEvaluation`` (if used)."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metric = getattr(self.model, "main_metric", None)
        for cb in trainer.callbacks:
            records = getattr(cb, "last_record", None)
            if not isinstance(records, dict):
                continue
            for split, rec in records.items():
                line = summarise_record(rec, metric)
                if line:
                    print(f"[medrobust] {split}: {line}")


#: strategies whose checkpoints are Lightning's plain ``torch.save`` of one dict (the ones
#: :class:`~callbacks.checkpoint.AtomicCheckpointIO` can write); FSDP, DeepSpeed and XLA have
#: their own writers
_PLAIN_CHECKPOINT_STRATEGIES = ("auto", "ddp", "single_device")


def with_atomic_checkpoint_io(plugins: Any, strategy: Any, accelerator: Any = None) -> Any:
    """``plugins`` plus :class:`~callbacks.checkpoint.AtomicCheckpointIO` (crash-safe checkpoint
    writes, through Lightning's ``Trainer(plugins=[...])`` slot), unless they already name a
    ``CheckpointIO`` or the strategy writes its own checkpoints (FSDP, DeepSpeed, XLA/TPU)."""
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from callbacks.checkpoint import AtomicCheckpointIO

    given = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in given):
        return plugins
    if isinstance(strategy, DDPStrategy | SingleDeviceStrategy):
        plain = "XLA" not in type(strategy).__name__
    else:
        plain = isinstance(strategy, str | None) and (strategy or "auto").startswith(
            _PLAIN_CHECKPOINT_STRATEGIES)
    if not plain or accelerator == "tpu":
        return plugins
    return [*given, AtomicCheckpointIO()]


def warn_plain_model_checkpoint(callbacks: list[Callback]) -> None:
    """Lightning's own ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when a
    top-k file is written; say so once and name the class that keeps it current."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

    from callbacks.checkpoint import ModelCheckpoint

    for cb in callbacks:
        if (isinstance(cb, LightningModelCheckpoint) and not isinstance(cb, ModelCheckpoint)
                and cb.save_last is True and cb.monitor is not None):
            warnings.warn(
                "trainer.callbacks has lightning.pytorch.callbacks.ModelCheckpoint with save_last "
                "and a monitor: its last.ckpt is refreshed only in epochs where the monitored value "
                "improves, so --ckpt_path last may resume epochs back; use "
                "class_path: callbacks.ModelCheckpoint (same arguments) for a last.ckpt that is "
                "always the latest state", UserWarning, stacklevel=2)
            return


def add_scaling_arguments(parser: LightningArgumentParser) -> None:
    """``--batch_scaling`` and ``--speed.*`` (see :mod:`callbacks.scaling` and docs/scaling.md);
    top-level keys, so a ``configs/trainer/*.yaml`` can set them without replacing an
    experiment's callback list."""
    parser.add_argument(
        "--batch_scaling", type=str, default="global",
        help="how data.batch_size and model.lr scale with num_nodes × devices: 'global' "
             "(batch_size is the global batch, split over processes), 'linear' (per-process "
             "batch, lr × world size) or 'per_device' (Lightning's default)")
    parser.add_argument("--speed.channels_last", type=bool, default=False,
                        help="channels-last weights and images (NHWC; faster on GPUs)")
    parser.add_argument("--speed.compile", type=bool, default=False,
                        help="torch.compile the task's network (attacks run it too)")
    parser.add_argument("--speed.compile_mode", type=str | None, default=None,
                        help="torch.compile mode: default, reduce-overhead, max-autotune")


def scaling_callbacks(cfg: Any) -> list[Callback]:
    """The callbacks that ``--batch_scaling`` and ``--speed.*`` ask for."""
    mode = cfg.get("batch_scaling", "global")
    check_choice("--batch_scaling", mode, BATCH_SCALING_MODES)
    out: list[Callback] = [BatchScaling(mode)]
    speed = cfg.get("speed") or {}
    opts = SpeedOptions(channels_last=bool(speed.get("channels_last", False)),
                        compile=bool(speed.get("compile", False)),
                        compile_mode=speed.get("compile_mode"))
    if opts.enabled:
        out.append(opts)
    return out


def summarise_record(rec: Any, metric: str | None) -> str:
    """``"epoch 9 · clean accuracy 0.91 · pgd linf eps=0.01 (10 steps) accuracy 0.55 · …"``.

    ``rec``: a :class:`callbacks.record.RobustnessRecord` or its ``robustness.json`` dict."""
    from callbacks.record import RobustnessRecord

    rec = RobustnessRecord.coerce(rec, "summary record")
    clean = rec.clean
    if not clean:
        return ""
    metric = metric if metric in clean else next(iter(clean))
    parts = [f"epoch {rec.epoch}", f"clean {metric} {clean[metric]:.3f}"]
    for entry in [*rec.attacks, *rec.ensemble]:
        value = entry.metrics.get(metric)
        if value is None:
            continue
        norm = f" {entry.norm}" if getattr(entry, "norm", None) else ""
        steps = f" ({entry.steps} steps)" if getattr(entry, "steps", None) else ""
        parts.append(f"{entry.attack}{norm} eps={entry.eps:g}{steps} {metric} {value:.3f}")
    return " · ".join(parts)


def resolved_config(config: str | os.PathLike[str], subcommand: str = "fit") -> dict[str, Any]:
    """The config that ``python train.py <subcommand> --config <config>`` runs with: every piece
    it references inlined and every default filled in, as ``--print_config`` prints it (without
    its ``# lightning.pytorch==…`` header). Nothing is instantiated and no data is read."""
    import contextlib
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
    cli_main()
