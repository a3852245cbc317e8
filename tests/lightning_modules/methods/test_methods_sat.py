"""SAT and its ε schedules; TRADES; the attack forwards inside methods leave the model alone."""

from __future__ import annotations

import pytest
import torch

from datamodules.info import DataInfo
from lightning_modules import SAT, TRADES, ClassificationModule, SegmentationModule
from lightning_modules.methods import EpsSchedule

TINY_CNN = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}
TINY_UNET = {"class_path": "lightning_modules.nets.SmallUNet", "init_args": {"features": [4, 8]}}
CLS = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=3,
               num_train=8)
SEG = DataInfo(task="segmentation", in_channels=1, image_size=(16, 16), num_classes=3,
               num_train=8)


def cls_batch(b: int = 8) -> dict:
    return {"image": torch.rand(b, 1, 16, 16), "label": torch.arange(b) % 3, "index": torch.arange(b)}


def seg_batch(b: int = 4) -> dict:
    return {"image": torch.rand(b, 1, 16, 16), "mask": torch.randint(0, 3, (b, 16, 16)),
            "index": torch.arange(b)}


def test_schedules() -> None:
    assert [EpsSchedule("constant", 0.1)(e) for e in (0, 5)] == [0.1, 0.1]
    lin = EpsSchedule("linear", 0.4, warmup_epochs=4)
    assert [lin(e) for e in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    # Joel et al. 2022: 0.001 then 0.002, the last stage held
    staged = EpsSchedule("staged", stages=[[0.001, 2], [0.002, 3]])
    assert [staged(e) for e in range(7)] == [0.001, 0.001, 0.002, 0.002, 0.002, 0.002, 0.002]
    assert staged.max_eps == 0.002
    with pytest.raises(ValueError, match="warmup_epochs"):
        EpsSchedule("linear", 0.1, warmup_epochs=0)


def test_sat_current_eps_follows_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    sat = SAT(schedule="staged", stages=[[0.001, 1], [0.002, 1]], attack={"steps": 2, "rel_step_size": 0.25})
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=sat)
    epoch = {"value": 0}
    monkeypatch.setattr(type(m), "current_epoch", property(lambda self: epoch["value"]))
    for e, expected in ((0, 0.001), (1, 0.002), (5, 0.002)):
        epoch["value"] = e
        sat.on_train_epoch_start(m)
        assert sat.current_eps == expected and sat.signals() == {"eps": expected}
        _, logs = sat.training_loss(m, cls_batch())
        assert logs["eps"] == expected
        assert sat.make_attack(m, expected).step_size == pytest.approx(expected / 4)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_sat_step_classification_and_segmentation(beta: float) -> None:
    for info, net, batch in ((CLS, TINY_CNN, cls_batch()), (SEG, TINY_UNET, seg_batch())):
        module = (ClassificationModule if info.task == "classification" else SegmentationModule)
        m = module(net=net, data_info=info, method=SAT(eps=0.03, attack={"steps": 2}, beta=beta))
        loss, logs = m.method.training_loss(m, batch)
        loss.backward()
        assert torch.isfinite(loss) and logs["eps"] == 0.03 and "adv_violated" in logs
        assert ("loss_clean" in logs) == (beta < 1)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.net.parameters())


@pytest.mark.parametrize("method", [SAT(eps=0.05, attack={"steps": 3}, beta=0.5),
                                    TRADES(eps=0.05, attack={"steps": 3}, forward="joint")],
                         ids=["sat", "trades"])
def test_attack_forwards_do_not_touch_bn_stats_or_grads(method) -> None:
    """Everything before the training forward (the attack, TRADES' reference output) leaves
    BatchNorm running statistics, parameter gradients and module modes as they were."""
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=method)
    m.train()
    stats = {k: v.clone() for k, v in m.net.state_dict().items() if "running" in k or "num_batches" in k}
    seen = {}
    original = m.forward_joint

    def spy(xs: list[torch.Tensor]) -> list:
        seen["stats"] = {k: v.clone() for k, v in m.net.state_dict().items() if k in stats}
        seen["grads"] = [p.grad for p in m.parameters()]
        seen["modes"] = [mod.training for mod in m.modules()]
        return original(xs)

    m.forward_joint = spy  # type: ignore[method-assign]
    m.method.training_loss(m, cls_batch())
    assert all(torch.equal(stats[k], seen["stats"][k]) for k in stats)
    assert all(g is None for g in seen["grads"])
    assert all(seen["modes"])


def test_sat_attack_is_reproducible_by_seed() -> None:
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=SAT(eps=0.05, attack={"steps": 2}, seed=3))
    m.eval()
    b = cls_batch()
    g1 = m.method.generator(m, torch.device("cpu"), 3)
    g2 = m.method.generator(m, torch.device("cpu"), 3)
    atk = m.method.make_attack(m, 0.05)
    x1 = atk(m.attack_model(), b["image"], b, loss_fn=m.per_sample_loss, generator=g1)
    x2 = atk(m.attack_model(), b["image"], b, loss_fn=m.per_sample_loss, generator=g2)
    assert torch.equal(x1, x2)
    assert (x1 - b["image"]).abs().max() <= 0.05 + 1e-6


def test_trades_segmentation_uses_the_task_divergence() -> None:
    m = SegmentationModule(net=TINY_UNET, data_info=SEG, method=TRADES(eps=0.03, attack={"steps": 2}, beta=2.0))
    loss, logs = m.method.training_loss(m, seg_batch())
    loss.backward()
    assert torch.isfinite(loss) and logs["divergence"] >= 0
    assert set(logs) == {"eps", "loss_clean", "divergence"}


@pytest.mark.parametrize("name", ["SAT", "TRADES", "AMAT", "Denoise"])
def test_attack_modes_are_checked_and_kept(name: str) -> None:
    import lightning_modules.methods as methods

    cls = getattr(methods, name)
    method = cls(attack_bn_mode="train", attack_dropout_mode="keep")
    assert (method.attack_bn_mode, method.attack_dropout_mode) == ("train", "keep")
    with pytest.raises(ValueError, match=rf"{name}\.attack_dropout_mode must be one of"):
        cls(attack_dropout_mode="frozen")
