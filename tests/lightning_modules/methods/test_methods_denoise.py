"""Denoise (Xue et al. 2019): the embedded auto-encoder learns to remove noise."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from attacks import GaussianNoise
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import ClassificationModule, Denoise

TINY_CNN = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [8, 16]}}
DAE = {"class_path": "lightning_modules.nets.DenoisingAutoEncoder", "init_args": {"features": [8, 16]}}


class RecPerEpoch(Callback):
    def __init__(self) -> None:
        self.rec: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: ClassificationModule) -> None:
        self.rec.append(float(trainer.callback_metrics["train/rec"]))


def test_denoise_method_options() -> None:
    with pytest.raises(ValueError, match="Denoise.noises"):
        Denoise(noises=["gaussian", "poisson"])
    dm = SyntheticDataModule(task="classification", num_train=8, image_size=(16, 16))
    with pytest.raises(ValueError, match="feature_layer"):
        ClassificationModule(net=TINY_CNN, data_info=dm.info, method=Denoise(feature_layer="nope"))
    m = ClassificationModule(net=TINY_CNN, data_info=dm.info,
                             method=Denoise(denoiser=DAE, feature_layer="features",
                                            adversarial_fraction=0.5, attack={"steps": 2}))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss, logs = m.method.training_loss(m, batch)
    loss.backward()
    assert {"rec", "inv", "loss_clean", "loss_noisy", "adv_fraction"} <= set(logs)
    assert m.method.denoiser.body.out.weight.grad is not None  # the denoiser trains
    noisy = m.method.corrupt(batch["image"], (0.0, 1.0), None)
    assert noisy.shape == batch["image"].shape and 0 <= noisy.min() and noisy.max() <= 1


def test_denoiser_learns_to_remove_gaussian_noise(tmp_path) -> None:
    L.seed_everything(0)
    dm = SyntheticDataModule(task="classification", num_train=96, num_val=32, num_test=8,
                             image_size=(16, 16), batch_size=32)
    method = Denoise(denoiser=DAE, noises=["gaussian", "speckle"], gaussian_std=0.15,
                     lambda_rec=5.0)
    m = ClassificationModule(net=TINY_CNN, data_info=dm.info, method=method, lr=0.01)
    rec = RecPerEpoch()
    L.Trainer(max_epochs=4, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              num_sanity_val_steps=0, accelerator="cpu", callbacks=[rec]).fit(m, dm)
    assert rec.rec[-1] < 0.7 * rec.rec[0], rec.rec  # reconstruction loss falls

    m.eval()
    x = torch.stack([dm.dataset("val")[i]["image"] for i in range(32)])
    noisy = GaussianNoise(std=0.1)(None, x, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean_n, noisy_n = m.normalizer(x), m.normalizer(noisy)
        denoised = m.method.denoiser(noisy_n)
    before = ((noisy_n - clean_n) ** 2).mean()
    after = ((denoised - clean_n) ** 2).mean()
    assert after < 0.7 * before, (float(before), float(after))
