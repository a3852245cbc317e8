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
earlier ones; command-line flags override files).

* The datamodule's :class:`~datamodules.info.DataInfo` is linked into the model
  (``data.info → model.init_args.data_info``), so configs never repeat channels, classes,
  bounds or the training-set size.
* Runs log under ``<trainer.default_root_dir>/<experiment name>/version_<n>/`` (CSV by default;
  ``configs/logger/wandb.yaml`` for W&B, offline without an account) — that is
  ``trainer.log_dir``; the resolved config is saved there as ``config.yaml`` (never
  overwritten: a clash gets a numbered name) and checkpoints go to its ``checkpoints/``.
* ``--ckpt_path last`` with ``fit`` resumes from the newest ``last*.ckpt`` of earlier runs of the
  same experiment under ``default_root_dir`` (Lightning alone would only look in the new run's
  empty folder).
* ``--batch_scaling global`` (the default) reads ``data.batch_size`` as the global batch,
  split over ``num_nodes × devices`` processes, so a run means the same on 1 or 8 GPUs;
  ``--speed.channels_last`` / ``--speed.compile`` are GPU speed options (docs/scaling.md).
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
from lightning.pytorch.loggers import CSVLogger

from callbacks.scaling import BATCH_SCALING_MODES, BatchScaling, SpeedOptions
from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule

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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.data_info", compute_fn=data_info_of,
                              apply_on="instantiate")
        add_scaling_arguments(parser)

    # ---------------------------------------------------------------- run naming / logging
    def run_name(self) -> str:
        """The experiment's name: the stem of its config file (the last one under
        ``experiment/`` if several are given), else ``medrobust``."""
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        paths = [str(p) for p in (cfg.get("config") or []) if p is not None]
        if not paths:
            return DEFAULT_RUN_NAME
        experiments = [p for p in paths if "experiment" in Path(p).parts]
        return Path((experiments or paths)[-1]).stem

    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        trainer_cfg = self._subconfig().trainer
        root = trainer_cfg.default_root_dir or os.getcwd()
        loggers = trainer_cfg.logger
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            # W&B writes ./wandb by default; keep it under the run's root like everything else.
            if getattr(lg, "class_path", "").endswith("WandbLogger"):
                if lg.init_args.get("save_dir") in (None, "", "."):
                    lg.init_args["save_dir"] = str(root)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if config.get("logger") in (None, True) and not config.get("fast_dev_run"):
            # Lightning's default is TensorBoard when installed; medrobust's default is CSV,
            # under <default_root_dir>/<experiment>/version_<n>.
            config["logger"] = CSVLogger(save_dir=config.get("default_root_dir") or os.getcwd(),
                                         name=self.run_name())
        callbacks = [*callbacks, *scaling_callbacks(self._subconfig())]
        return super()._instantiate_trainer(config, callbacks)

    # ---------------------------------------------------------------- resume
    def _load_weights_only(self) -> None:
        # Checkpoints hold tensors and plain values only (lightning_modules/base.py,
        # lightning_modules/fault_tolerance.py), so they load without unpickling code.
        cfg = self.config_init[self.subcommand]
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg["weights_only"] = True

    def before_validate(self) -> None:
        self._load_weights_only()

    def before_test(self) -> None:
        self._load_weights_only()

    def before_predict(self) -> None:
        self._load_weights_only()

    def before_fit(self) -> None:
        self._load_weights_only()
        cfg = self.config_init[self.subcommand]
        if cfg.get("ckpt_path") == "last":
            found = self.find_last_checkpoint()
            if found is not None:
                print(f"[medrobust] resuming from {found}", file=sys.stderr)
                cfg["ckpt_path"] = str(found)
            else:
                print("[medrobust] --ckpt_path last: no last.ckpt of an earlier run found; "
                      "Lightning will look in this run's checkpoint folder", file=sys.stderr)

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

    def find_last_checkpoint(self) -> Path | None:
        """Newest ``last*.ckpt`` of earlier runs: under the logger's run folder
        (``<save_dir>/<name>/version_*/checkpoints``), else anywhere up to four levels below
        ``default_root_dir``."""
        trainer = self.trainer
        roots: list[Path] = []
        logger = trainer.logger
        if logger is not None and getattr(logger, "root_dir", None):
            roots.append(Path(logger.root_dir))
        roots.append(Path(trainer.default_root_dir))
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
    if mode not in BATCH_SCALING_MODES:
        raise ValueError(f"--batch_scaling must be one of {list(BATCH_SCALING_MODES)}, got {mode!r}")
    out: list[Callback] = [BatchScaling(mode)]
    speed = cfg.get("speed") or {}
    opts = SpeedOptions(channels_last=bool(speed.get("channels_last", False)),
                        compile=bool(speed.get("compile", False)),
                        compile_mode=speed.get("compile_mode"))
    if opts.enabled:
        out.append(opts)
    return out


def summarise_record(rec: dict[str, Any], metric: str | None) -> str:
    """``"epoch 9 · clean accuracy 0.91 · pgd linf eps=0.01 (10 steps) accuracy 0.55 · …"``."""
    clean = rec.get("clean") or {}
    if not clean:
        return ""
    metric = metric if metric in clean else next(iter(clean))
    parts = [f"epoch {rec.get('epoch')}", f"clean {metric} {clean[metric]:.3f}"]
    for entry in list(rec.get("attacks") or []) + list(rec.get("ensemble") or []):
        value = (entry.get("metrics") or {}).get(metric)
        if value is None:
            continue
        norm = f" {entry['norm']}" if entry.get("norm") else ""
        steps = f" ({entry['steps']} steps)" if entry.get("steps") else ""
        parts.append(f"{entry.get('attack')}{norm} eps={entry.get('eps'):g}{steps} {metric} {value:.3f}")
    return " · ".join(parts)


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
