"""train.py wires crash-safe checkpoint writing through Lightning's ``plugins`` slot, and the
task modules do not reach into the trainer (no writer swap, no callback class change)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import DDPStrategy

from callbacks.checkpoint import AtomicCheckpointIO, ModelCheckpoint
from medrobust.cli_trainer import warn_plain_model_checkpoint, with_atomic_checkpoint_io

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_writer_added_unless_a_checkpoint_io_is_named() -> None:
    added = with_atomic_checkpoint_io(None, "auto")
    assert len(added) == 1 and isinstance(added[0], AtomicCheckpointIO)
    env = LightningEnvironment()
    added = with_atomic_checkpoint_io([env], "ddp")
    assert added[0] is env and isinstance(added[1], AtomicCheckpointIO)
    assert isinstance(with_atomic_checkpoint_io(None, DDPStrategy())[0], AtomicCheckpointIO)
    own = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([own], "auto") == [own]  # the user's writer is kept
    assert with_atomic_checkpoint_io(None, "fsdp") is None  # strategies with their own writer
    assert with_atomic_checkpoint_io(None, "deepspeed_stage_2") is None
    assert with_atomic_checkpoint_io(None, "auto", accelerator="tpu") is None


def test_plain_lightning_checkpoint_with_save_last_is_warned_about() -> None:
    plain = LightningModelCheckpoint(monitor="val/loss", save_last=True)
    with pytest.warns(UserWarning, match="use class_path: callbacks.ModelCheckpoint"):
        warn_plain_model_checkpoint([plain])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_plain_model_checkpoint([ModelCheckpoint(monitor="val/loss", save_last=True),
                                     LightningModelCheckpoint(monitor="val/loss")])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_task_modules_do_not_import_callbacks_or_change_classes() -> None:
    files = sorted((ROOT / "lightning_modules").rglob("*.py"))
    assert files
    upward = {f.relative_to(ROOT).as_posix(): sorted(m for m in _imports(f) if m.split(".")[0] == "callbacks")
              for f in files}
    assert {k: v for k, v in upward.items() if v} == {}
    for f in [*files, ROOT / "callbacks" / "checkpoint.py"]:
        tree = ast.parse(f.read_text())
        swaps = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Attribute) and t.attr == "__class__" for t in n.targets)]
        assert swaps == [], f"{f.name} assigns __class__ at lines {swaps}"


def test_checkpoint_callback_uses_no_private_lightning_state() -> None:
    source = (ROOT / "callbacks" / "checkpoint.py").read_text()
    for private in ("_save_last_checkpoint", "_last_global_step_saved", "_monitor_candidates",
                    "_every_n_train_steps", "_save_on_train_epoch_end", "_save_checkpoint"):
        assert not re.search(rf"\b{private}\b", source), private
