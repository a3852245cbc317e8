"""A new training method is one file: the method below is defined only here, and train.py's CLI
trains it, the evaluation callback measures it and its checkpoint reloads it — no edit to
lightning_modules/, callbacks/ or train.py.

The method is Gaussian data augmentation as in Cohen et al. 2019 ("Certified adversarial
robustness via randomized smoothing"): each training image becomes ``clip(x + σ·N(0, I))``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor

from lightning_modules import ClassificationModule
from lightning_modules.methods.base import Logs, TrainingMethod, check_range
from lightning_modules.protocol import Batch, TrainableTask
from medrobust.config_pieces import load_config
from train import cli_main

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EXPERIMENT = PROJECT_ROOT / "configs" / "experiment" / "classification_synthetic_clean.yaml"


class GaussianAugmentation(TrainingMethod):
    """Train on ``clip(x + σ·ε)``, ``ε ~ N(0, I)``, in ``data_info.bounds`` (Cohen et al. 2019).

    Args:
        sigma: noise standard deviation in pixel units (``>= 0``; 0 is clean training).
        seed: seed of the noise (with the global step and rank); ``None``: the global RNG.
    """

    name = "gaussian_augmentation"

    def __init__(self, sigma: float = 0.1, seed: int | None = 0) -> None:
        super().__init__()
        check_range(type(self).__name__, "sigma", sigma, 0.0)
        self.sigma, self.seed = float(sigma), seed

    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        x = batch["image"]
        gen = self.generator(task, x.device, self.seed)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        lo, hi = task.data_info.bounds
        x_noisy = (x + self.sigma * noise).clamp(lo, hi)
        loss = task.per_sample_loss(task.attack_model()(x_noisy), batch).mean()
        return loss, {"sigma": self.sigma}


def _tiny_config(tmp_path: Path, method: dict) -> Path:
    cfg = load_config(EXPERIMENT)
    cfg["data"]["init_args"].update(num_train=16, num_val=8, num_test=8, image_size=[16, 16], batch_size=8)
    cfg["model"]["init_args"]["net"]["init_args"]["features"] = [4, 8]
    cfg["model"]["init_args"]["method"] = method
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("AdversarialEvaluation"):
            cb["init_args"].update(subset=8, plot=False)
    path = tmp_path / "gaussian.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigma_zero_is_clean_training_and_noise_changes_the_loss() -> None:
    """σ = 0 gives exactly the clean loss; σ > 0 trains on other (noisy, in-range) images."""
    from datamodules.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(task="classification", num_train=8, num_val=4, num_test=4,
                             image_size=(16, 16), batch_size=8, seed=0)
    net = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}
    torch.manual_seed(0)
    module = ClassificationModule(net=net, data_info=dm.info, method=GaussianAugmentation(sigma=0.0))
    batch = next(iter(_loader(dm)))
    clean = module.per_sample_loss(module.attack_model()(batch["image"]), batch).mean()
    loss0, _ = module.method.training_loss(module, batch)
    torch.testing.assert_close(loss0, clean)
    module.method.sigma = 0.5
    loss_noisy, logs = module.method.training_loss(module, batch)
    assert logs["sigma"] == 0.5 and not torch.allclose(loss_noisy, clean)
    with pytest.raises(ValueError, match="GaussianAugmentation.sigma"):
        GaussianAugmentation(sigma=-1.0)


def _loader(dm):  # type: ignore[no-untyped-def]
    dm.setup("fit")
    return dm.train_dataloader()


def test_new_method_trains_through_the_cli_and_reloads(tmp_path: Path) -> None:
    method = {"class_path": f"{__name__}.GaussianAugmentation", "init_args": {"sigma": 0.2}}
    root = tmp_path / "runs"
    fit = cli_main(["fit", "--config", str(_tiny_config(tmp_path, method)), "--trainer.default_root_dir",
                    str(root), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu"])
    assert isinstance(fit.model.method, GaussianAugmentation) and fit.model.method.sigma == 0.2
    log_dir = Path(fit.trainer.log_dir)
    record = json.loads((log_dir / "robustness.json").read_text())
    assert record["method"] == "gaussian_augmentation" and record["attacks"]
    loaded = ClassificationModule.load_from_checkpoint(log_dir / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.method, GaussianAugmentation) and loaded.method.sigma == 0.2
