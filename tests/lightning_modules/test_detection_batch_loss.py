"""Detection trains on torchvision's batch-normalised loss, attacks on exact per-image losses.

torchvision's FCOS divides its summed terms by the foreground locations of the whole batch
(Faster R-CNN averages over the batch's sampled anchors / proposals); the mean of per-image
losses weighs every image alike. With uneven object counts (2, 0 and 1 here) they differ."""

from __future__ import annotations

import pytest
import torch

from benchmarks.detection_batch_loss import torchvision_loss
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import Clean, DetectionModule
from lightning_modules.protocol import TrainableTask

SIZE = 64
NETS = {"fcos": "lightning_modules.nets.detectors.tiny_fcos",
        "rcnn": "lightning_modules.nets.detectors.tiny_fasterrcnn"}


def _batch() -> dict:
    torch.manual_seed(5)
    boxes = [torch.tensor([[5.0, 6.0, 20.0, 25.0], [30.0, 30.0, 50.0, 44.0]]),
             torch.zeros(0, 4),  # no objects
             torch.tensor([[10.0, 10.0, 30.0, 30.0]])]
    labels = [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.int64), torch.tensor([2])]
    return {"image": torch.rand(3, 3, SIZE, SIZE), "boxes": boxes, "labels": labels,
            "index": torch.arange(3)}


def _module(net: str) -> DetectionModule:
    info = SyntheticDataModule(task="detection", num_train=8, num_val=4, num_test=4,
                               image_size=(SIZE, SIZE), in_channels=3).info
    torch.manual_seed(0)
    return DetectionModule(data_info=info, net={"class_path": NETS[net]}, sampling_seed=0).eval()


@pytest.mark.parametrize("net", list(NETS))
def test_batch_loss_is_torchvisions_training_loss(net: str) -> None:
    module, batch = _module(net), _batch()
    reference = torchvision_loss(module, batch, seed=0)
    out = module(batch["image"])
    got = module.batch_loss(out, batch)
    assert got.shape == ()
    assert float(got) == pytest.approx(float(reference), rel=1e-5)
    # the gradient too (w.r.t. the parameters)
    params = [p for p in module.parameters() if p.requires_grad]
    g_ref = torch.autograd.grad(reference, params, allow_unused=True)
    g_got = torch.autograd.grad(got, params, allow_unused=True)
    for a, b in zip(g_got, g_ref, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # attacks still get exact per-image losses [B]
    assert module.per_sample_loss(out, batch).shape == (3,)


def test_fcos_batch_loss_is_not_the_per_image_mean() -> None:
    """FCOS: the batch loss weighs an image by its foreground locations; the per-image mean
    (what methods trained on before) differs by far more than rounding on uneven counts."""
    module, batch = _module("fcos"), _batch()
    out = module(batch["image"])
    mean = float(module.per_sample_loss(out, batch).mean())
    assert abs(float(module.batch_loss(out, batch)) - mean) > 0.01 * abs(mean)


def test_methods_train_on_the_batch_loss() -> None:
    """Clean training's loss is torchvision's (it was the per-image mean); tasks without the
    own reduction get the protocol's default, the per-sample mean."""
    module, batch = _module("fcos"), _batch()
    loss, _ = Clean().training_loss(module, batch)
    assert float(loss) == pytest.approx(float(torchvision_loss(module, batch)), rel=1e-5)

    class NoHook:  # the default is the protocol's, inherited by every TaskModule
        def per_sample_loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
            return output

    assert float(TrainableTask.batch_loss(NoHook(), torch.tensor([1.0, 2.0, 6.0]), {})) == pytest.approx(3.0)
