"""Panels of clean / perturbation / adversarial images with the model's predictions drawn.

Every ``every_n_epochs`` validation epochs (and after ``test``), rank 0 attacks a few fixed
samples and saves ``adv_examples/epoch=NNN.png`` (``adv_examples/test.png``) in the log
directory; with a W&B (or TensorBoard) logger the panel is logged as an image too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from attacks.seeding import seeded_generator
from attacks.spec import parse_attack_specs
from callbacks.common import (
    check_robust_task,
    format_eps,
    gradients_enabled,
    guarded_model,
    method_name,
    preserved_rng,
    resolve_dataset,
    select_subset,
    set_eval_mode,
    to_autograd_safe,
)


class AdversarialExamples(Callback):
    """Adversarial example panels for a few fixed samples.

    Args:
        every_n_epochs: draw after validation epochs with ``(epoch + 1) % n == 0``.
        num_samples: rows of the panel (samples fixed from ``seed``, as the evaluation subset).
        attack: ``{name, **params}`` of the attack (default PGD-10, L∞, no random start).
        eps: its budget, in pixel units.
        bn_mode, dropout_mode: BatchNorm / Dropout mode during the attack.
        seed: which samples are drawn (and the attack's random stream).
        on_test: also draw after ``test``.
        min_score: detection boxes scoring below this are not drawn.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 4,
        attack: dict[str, Any] | None = None,
        eps: float = 0.004,
        bn_mode: str = "eval",
        dropout_mode: str = "eval",
        seed: int = 0,
        on_test: bool = True,
        min_score: float = 0.3,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"AdversarialExamples.every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_samples < 1:
            raise ValueError(f"AdversarialExamples.num_samples must be >= 1, got {num_samples}")
        if not eps > 0:
            raise ValueError(f"AdversarialExamples.eps must be > 0, got {eps}")
        cfg = attack if attack is not None else {"name": "pgd", "norm": "linf", "steps": 10, "random_start": False}
        (self.spec,) = parse_attack_specs([dict(cfg)], "AdversarialExamples.attack")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.eps = float(eps)
        self.bn_mode = bn_mode
        self.dropout_mode = dropout_mode
        self.seed = seed
        self.on_test = on_test
        self.min_score = float(min_score)
        #: path of the last panel written (rank 0)
        self.last_path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_robust_task(pl_module, "AdversarialExamples")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self.draw(trainer, pl_module, "val", f"epoch={trainer.current_epoch:03d}")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self.draw(trainer, pl_module, "test", "test")

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, name: str) -> Path | None:
        """Attack the fixed samples and write the panel (rank 0); every rank must call it."""
        log_dir = Path(str(trainer.log_dir or trainer.default_root_dir))  # collective
        if not trainer.is_global_zero:
            return None
        task = check_robust_task(pl_module, "AdversarialExamples")
        dataset, collate_fn, _ = resolve_dataset(trainer, split)
        indices = select_subset(len(dataset), self.num_samples, self.seed)
        raw = collate_fn([dataset[i] for i in indices]) if collate_fn else None
        device = pl_module.device
        model = task.attack_model()
        atk = self.spec.build(self.eps, tuple(task.data_info.bounds), (self.bn_mode, self.dropout_mode))

        with preserved_rng(device), gradients_enabled(), guarded_model(pl_module, model):
            set_eval_mode(pl_module, model)
            batch = to_autograd_safe(raw, device)
            x = batch["image"]
            gen = seeded_generator(self.seed, device=device)
            x_adv = atk(model, x, batch, loss_fn=lambda out, b: task.per_sample_loss(out, b), generator=gen)
            with torch.no_grad():
                clean_pred = task.predict_for_display(model(x))
                adv_pred = task.predict_for_display(model(x_adv))

        from callbacks.logger_outputs import log_image
        from callbacks.plotting import plot_adversarial_panel
        from lightning_modules.panels import panel_for

        panel = panel_for(task)  # the task draws itself: no branching on task names here
        names = list(task.data_info.class_names)
        captions = [panel.truth_caption(batch, i, names) for i in range(x.shape[0])]
        truths = captions if any(c is not None for c in captions) else None
        desc = atk.describe()
        title = (
            f"{task.task} · {method_name(pl_module)} · {split} {name} · {self.spec.label} "
            f"{desc.get('norm')} ε={format_eps(self.eps)} steps={desc.get('steps')}"
        )
        path = plot_adversarial_panel(
            x, x_adv, clean_pred, adv_pred, panel, tuple(task.data_info.bounds),
            list(task.data_info.class_names), log_dir / "adv_examples" / f"{name}.png", title, truths,
            batch, self.min_score,
        )
        log_image(trainer, f"adv/examples_{split}", path, caption=title)
        self.last_path = path
        return path
