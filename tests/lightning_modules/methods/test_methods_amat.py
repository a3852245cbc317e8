"""AMAT: the margin rule, a hand-made batch, checkpoint/resume, DDP consistency."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from callbacks.checkpoint import ModelCheckpoint
from callbacks.margin_monitor import MarginMonitor
from datamodules.base import collate_batch
from datamodules.info import DataInfo
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import AMAT, ClassificationModule
from lightning_modules.methods.amat_margins import margin_update
from lightning_modules.methods.amat_thresholds import CleanCheckpointThreshold, robust_threshold
from lightning_modules.methods.per_sample_state import first_occurrence
from tests.support.ddp_runs import run_on_two_processes_and_one

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TINY_CNN = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}


# ---------------------------------------------------------------------------- the rule
def test_margin_update_rule() -> None:
    old = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.95])
    violated = torch.tensor([False, True, False, True, False])
    correct = torch.tensor([True, True, False, False, True])
    noise = torch.tensor([0.0, 0.1, 0.2, 0.05, 0.3])
    new = margin_update(old, violated, correct, noise, delta=0.1, max_margin=1.0)
    expected = torch.tensor([0.2, 0.15, 0.25, 0.225, 1.0])  # grow, shrink ×3, grow + clamp
    assert torch.allclose(new, expected)


def test_threshold_and_dedup_helpers() -> None:
    s = torch.tensor([0.1, 0.2, 0.3, 0.4, 10.0])  # an outlier does not move the median
    assert robust_threshold(s, 0.0, "below") == pytest.approx(0.3, abs=1e-6)
    mad = 1.4826 * 0.1
    assert robust_threshold(s, 2.0, "above") == pytest.approx(0.3 + 2 * mad, abs=1e-6)
    assert robust_threshold(s, 2.0, "below") == pytest.approx(0.3 - 2 * mad, abs=1e-6)
    index = torch.tensor([3, 1, 3, 0])
    keys = torch.tensor([5, 2, 1, 7])
    assert first_occurrence(index, keys, 4).tolist() == [False, True, True, True]


class MeanLogit(nn.Module):
    """Two logits ``[0, 10·mean(z)]`` of the normalized image ``z``: the decision depends only
    on the mean intensity, so how far each sample is from the boundary is known exactly."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = z.flatten(1).mean(dim=1)
        return torch.stack([torch.zeros_like(m), 10 * m], dim=1)


def test_amat_hand_made_batch_grows_robust_and_shrinks_violated() -> None:
    info = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=2,
                    num_train=4)
    m = ClassificationModule(net=TINY_CNN, data_info=info,
                             method=AMAT(delta=0.1, max_margin=0.55, attack={"steps": 20}, alpha=4.0,
                                         early_stop=True))  # the halving variant
    m.net = MeanLogit()
    # 16×16 images in [0, 1], normalization (x − 0.5)/0.25. Flipping a sample needs a uniform
    # shift of its mean; the L2 norm of that shift is 16 × (mean shift).
    level = torch.tensor([0.6, 0.51, 0.6, 0.6])  # robust / near the boundary / wrong / robust
    x = level.view(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    batch = {"image": x, "label": torch.tensor([1, 1, 0, 1]), "index": torch.arange(4)}
    m.method.margins.copy_(torch.tensor([0.5, 0.5, 0.5, 0.1]))
    m.method.on_train_epoch_start(m)
    loss, logs = m.method.training_loss(m, batch)
    assert torch.isfinite(loss)
    assert float(logs["violated"]) == 0.5  # samples 1 (attack found) and 2 (already wrong)
    assert torch.equal(m.method.margins, torch.tensor([0.5, 0.5, 0.5, 0.1]))  # applied at epoch end
    m.method.on_train_epoch_end(m)
    new = m.method.margins
    assert new[0] == pytest.approx(0.55)  # 0.5 + δ, clamped to max_margin
    assert new[3] == pytest.approx(0.2)  # 0.1 + δ
    # sample 1 needs a noise of norm 0.16 to flip: found inside its 0.5 ball → halfway down
    assert 0.25 <= float(new[1]) < 0.5
    # sample 2 is misclassified clean: violated at its random start of norm 0.5 − δ = 0.4
    assert float(new[2]) == pytest.approx((0.5 + 0.4) / 2, abs=1e-4)


def test_duplicates_keep_the_first_occurrence() -> None:
    info = DataInfo(task="classification", in_channels=1, num_classes=2, num_train=3)
    method = AMAT(delta=0.1)
    ClassificationModule(net=TINY_CNN, data_info=info, method=method)
    # rows: [global order key, index, new margin, statistic, grew, clean violated];
    # index 1 seen twice
    method.records.load_state(torch.tensor([[4.0, 1.0, 0.9, 0.0, 1.0, 0.0], [0.0, 1.0, 0.3, 0.0, 0.0, 0.0],
                                            [1.0, 2.0, 0.2, 0.0, 1.0, 0.0]], dtype=torch.float64),
                              torch.device("cpu"))
    method.on_train_epoch_end(None)  # type: ignore[arg-type]
    assert torch.allclose(method.margins, torch.tensor([0.1, 0.3, 0.2]))


def test_attack_forwards_leave_bn_stats_and_grads() -> None:
    """Inside an AMAT step the attack runs in eval-mode BN: running statistics and parameter
    gradients are untouched until the joint training forward."""
    info = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=2,
                    num_train=8)
    m = ClassificationModule(net=TINY_CNN, data_info=info, method=AMAT(attack={"steps": 3}))
    m.train()
    before = {k: v.clone() for k, v in m.net.state_dict().items() if "running" in k or "num_batches" in k}
    seen = {}
    original = m.forward_joint

    def spy(xs: list[torch.Tensor]) -> list:
        seen["stats"] = {k: v.clone() for k, v in m.net.state_dict().items() if k in before}
        seen["grads"] = [p.grad for p in m.parameters()]
        seen["training"] = [mod.training for mod in m.modules()]
        return original(xs)

    m.forward_joint = spy  # type: ignore[method-assign]
    batch = {"image": torch.rand(8, 1, 16, 16), "label": torch.arange(8) % 2, "index": torch.arange(8)}
    m.method.training_loss(m, batch)
    assert all(torch.equal(before[k], seen["stats"][k]) for k in before)
    assert all(g is None for g in seen["grads"])
    assert all(seen["training"])  # modes restored after the attack


# ---------------------------------------------------------------------------- checkpoints
class OrderedSynthetic(SyntheticDataModule):
    """Synthetic data with a fixed training order (so runs are comparable sample by sample)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("train"), batch_size=self.batch_size, shuffle=False,
                          collate_fn=collate_batch)


class MarginsAtEpochStart(Callback):
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ClassificationModule) -> None:
        self.seen.append(pl_module.method.margins.clone())


def _fit(tmp: Path, epochs: int, ckpt: str | None = None, callbacks: list | None = None):
    L.seed_everything(0)
    dm = OrderedSynthetic(task="classification", num_train=24, num_val=8, num_test=8,
                          image_size=(16, 16), batch_size=8)
    model = ClassificationModule(net=TINY_CNN, data_info=dm.info,
                                 method=AMAT(delta=0.05, max_margin=1.0, attack={"steps": 3}))
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=1, accelerator="cpu",
                        callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True, save_top_k=0),
                                   *(callbacks or [])])
    trainer.fit(model, dm, ckpt_path=ckpt)
    return model


def test_margins_survive_checkpoint_and_resume(tmp_path: Path) -> None:
    first = _fit(tmp_path / "a", epochs=1)
    saved = first.method.margins.clone()
    assert not torch.equal(saved, torch.full_like(saved, 0.05))  # the epoch did update them
    ckpt = tmp_path / "a" / "last.ckpt"
    loaded = ClassificationModule.load_from_checkpoint(ckpt)
    assert torch.equal(loaded.method.margins, saved)  # bit for bit
    assert loaded.method.config() == first.method.config()

    watch = MarginsAtEpochStart()
    resumed = _fit(tmp_path / "b", epochs=2, ckpt=str(ckpt), callbacks=[watch])
    assert torch.equal(watch.seen[0], saved)  # the resumed epoch starts from them
    straight = _fit(tmp_path / "c", epochs=2)
    # Same data order, attack seeds from (seed, step, rank), restored optimizer and BN state:
    # resuming gives exactly the margins of an uninterrupted run.
    assert torch.equal(resumed.method.margins, straight.method.margins)


# ---------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent('''
    """Run by the DDP tests below: one AMAT epoch on 11 synthetic samples; every rank saves its
    margins (and, on segmentation, the threshold taken from the clean checkpoint)."""
    import lightning as L

    from datamodules.synthetic import SyntheticDataModule
    from lightning_modules import AMAT, ClassificationModule, SegmentationModule
    from tests.support.ddp_runs import SaveAtTrainEnd, close_process_group, ddp_fit_trainer, script_main

    # lr = 0 and no BatchNorm: each sample's margin depends on that sample only, so 1 and 2
    # processes must agree; random_start=False removes the RNG from the attack.
    SETUPS = {
        "classification": (ClassificationModule, "SmallCNN", dict(delta=0.05, max_margin=1.0)),
        "segmentation": (SegmentationModule, "SmallUNet", dict(delta=0.3, max_margin=3.0)),
    }


    def state(module):
        m = module.method
        return {"margins": m.margins.cpu(), "threshold": m.threshold_value.cpu()}


    def run(devices, out, task, clean=None):
        L.seed_everything(0)
        # 11 samples on 2 ranks: the distributed sampler pads one duplicate in (also in the
        # threshold's statistics pass).
        dm = SyntheticDataModule(task=task, num_train=11, num_val=4, num_test=4,
                                 image_size=(16, 16), batch_size=4 // devices)
        module_class, net_class, margins = SETUPS[task]
        net = {"class_path": f"lightning_modules.nets.{net_class}",
               "init_args": {"features": [4, 8], "norm": "none"}}
        method = AMAT(**margins, attack={"steps": 3, "random_start": False}, clean_checkpoint=clean)
        model = module_class(net=net, data_info=dm.info, optimizer="sgd", lr=0.0, method=method)
        ddp_fit_trainer(devices, [SaveAtTrainEnd(out, "state", state)]).fit(model, dm)
        close_process_group()


    if __name__ == "__main__":
        script_main(run)
''')


@pytest.mark.slow
def test_ddp_margins_match(tmp_path: Path) -> None:
    out2, out1 = run_on_two_processes_and_one(DDP_SCRIPT, tmp_path, "ddp_amat", "classification")
    rank0, rank1 = (torch.load(out2 / f"state_rank{r}.pt")["margins"] for r in range(2))
    assert torch.equal(rank0, rank1)  # identical on both ranks
    single = torch.load(out1 / "state_rank0.pt")["margins"]
    assert not torch.equal(single, torch.full_like(single, 0.05))  # margins moved
    assert torch.allclose(rank0, single, atol=1e-5)  # and as with one process


# ---------------------------------------------------------------------------- reference options
def test_adv_loss_on_clean_correct_closed_form() -> None:
    """``adv_loss_on='clean_correct'``: the adversarial term is the mean adversarial loss of the
    clean-correct samples only (Ma & Liang's ``loss3``); ``'all'``: of every sample."""
    info = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=2,
                    num_train=4)
    level = torch.tensor([0.6, 0.7, 0.6, 0.45])  # correct, correct, wrong, wrong (labels below)
    x = level.view(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    batch = {"image": x, "label": torch.tensor([1, 1, 0, 1]), "index": torch.arange(4)}
    beta = 0.3
    for on in ("clean_correct", "all"):
        m = ClassificationModule(net=TINY_CNN, data_info=info,
                                 method=AMAT(delta=0.1, attack={"steps": 3}, beta=beta, adv_loss_on=on))
        m.net = MeanLogit()
        seen: dict = {}
        original = m.forward_joint

        def spy(xs: list[torch.Tensor], original=original, seen=seen) -> list:
            seen["out"] = original(xs)
            return seen["out"]

        m.forward_joint = spy  # type: ignore[method-assign]
        m.method.on_train_epoch_start(m)
        loss, logs = m.method.training_loss(m, batch)
        out_clean, out_adv = seen["out"]
        ce_clean = torch.nn.functional.cross_entropy(out_clean, batch["label"], reduction="none")
        ce_adv = torch.nn.functional.cross_entropy(out_adv, batch["label"], reduction="none")
        adv = ce_adv[:2].mean() if on == "clean_correct" else ce_adv.mean()
        expected = (1 - beta) * ce_clean.mean() + beta * adv
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)
        assert float(logs["clean_correct"]) == 0.5
    # the two forms differ on this batch (the wrong samples' adversarial loss is large)
    assert float(ce_adv[2:].mean()) > float(ce_adv[:2].mean()) + 1.0


def test_early_stop_off_runs_every_step_and_keeps_violated_margin() -> None:
    """``early_stop=False`` (reference): the attack runs all steps (one gradient forward per
    step), a violation is only recorded, and the final noise sits on the margin sphere, so a
    violated sample's margin stays at ``(E + E)/2 = E`` instead of halving."""
    info = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=2,
                    num_train=2)
    calls = {"n": 0}

    class Counting(MeanLogit):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return super().forward(z)

    level = torch.tensor([0.51, 0.51])  # both flip at an L2 noise of 0.16 < margin 0.5
    x = level.view(2, 1, 1, 1).expand(2, 1, 16, 16).clone()
    batch = {"image": x, "label": torch.tensor([1, 1]), "index": torch.arange(2)}
    results = {}
    for early in (True, False):
        m = ClassificationModule(net=TINY_CNN, data_info=info,
                                 method=AMAT(delta=0.1, max_margin=1.0, attack={"steps": 10}, early_stop=early))
        m.net = Counting()
        m.method.margins.fill_(0.5)
        calls["n"] = 0
        m.method.on_train_epoch_start(m)
        m.method.training_loss(m, batch)
        m.method.on_train_epoch_end(m)
        results[early] = (calls["n"], m.method.margins.clone(), m.method.last_diagnostics)
    n_stop, margins_stop, _ = results[True]
    n_all, margins_all, diag = results[False]
    assert n_all == 10 + 1  # 10 attack forwards + the joint training forward
    assert n_stop < n_all
    assert torch.allclose(margins_all, torch.full((2,), 0.5), atol=1e-4)  # held
    # early stop: halfway to the norm where the violation was found (inside the ball)
    assert bool((margins_stop < margins_all - 0.02).all())
    assert diag["margin_grown"] == 0.0 and diag["margin_held"] == 1.0


class FarApart(nn.Module):
    """A tiny classifier ``[0, w·mean(z)]`` with one learnable weight; the training images are
    constant 0.1 or 0.9 (normalised ±1.6), so it fits them at once and every sample stays
    correct under L2 noise up to 16 × 0.4 = 6.4 (a uniform shift back to 0.5), far beyond the
    margins used here."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = z.flatten(1).mean(dim=1)
        return torch.stack([torch.zeros_like(m), self.w * m], dim=1)


class Constant(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.label = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        level = 0.9 if int(self.label[i]) == 1 else 0.1
        return {"image": torch.full((1, 16, 16), level), "label": self.label[i],
                "index": torch.tensor(i)}


class RecordMargins(Callback):
    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ClassificationModule) -> None:
        if trainer.current_epoch > 0:
            self.after.append(pl_module.method.margins.clone())

    def on_train_end(self, trainer: L.Trainer, pl_module: ClassificationModule) -> None:
        self.after.append(pl_module.method.margins.clone())


def test_margins_grow_by_delta_per_epoch_when_samples_stay_correct(tmp_path: Path) -> None:
    """A tiny model that fits its training set, samples far from the boundary: every margin is
    ``δ·(1 + epochs)`` after each epoch (start δ, +δ per epoch), exactly."""
    L.seed_everything(0)
    n, delta, epochs = 12, 0.15, 3
    info = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=2,
                    num_train=n)
    model = ClassificationModule(net=TINY_CNN, data_info=info, lr=1e-3,
                                 method=AMAT(delta=delta, max_margin=5.0, attack={"steps": 5}))
    model.net = FarApart()
    rec = RecordMargins()
    monitor = MarginMonitor(budgets=(0.4, 0.5))
    loader = DataLoader(Constant(n), batch_size=4, shuffle=True, collate_fn=collate_batch)
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[rec, monitor],
                        limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader)
    assert len(rec.after) == epochs
    for e, margins in enumerate(rec.after, 1):
        assert torch.allclose(margins, torch.full((n,), delta * (1 + e)), atol=1e-6), e
    # MarginMonitor's per-epoch diagnostics: margins 0.3, 0.45, 0.6 against budgets 0.4, 0.5
    lines = [json.loads(x) for x in (tmp_path / "margins" / "diagnostics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in lines] == [0, 1, 2]
    assert [row["margin_ge0.4"] for row in lines] == [0.0, 1.0, 1.0]
    assert [row["margin_ge0.5"] for row in lines] == [0.0, 0.0, 1.0]
    assert all(row["margin_grown"] == 1.0 and row["margin_shrunk"] == 0.0 for row in lines)
    assert all(row["clean_violated"] == 0.0 for row in lines)
    png = tmp_path / "margins" / "epoch=002.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- clean-model threshold
TINY_UNET = {"class_path": "lightning_modules.nets.SmallUNet",
             "init_args": {"features": [4, 8], "norm": "none"}}


def _seg_data(batch_size: int = 8, num_train: int = 16) -> OrderedSynthetic:
    dm = OrderedSynthetic(task="segmentation", num_train=num_train, num_val=4, num_test=4,
                          image_size=(16, 16), batch_size=batch_size)
    dm.setup("fit")
    return dm


def _clean_checkpoint(path: Path, dm: OrderedSynthetic) -> float:
    """A "clean model" checkpoint (the net of a seeded SegmentationModule after a few clean
    SGD steps) and, by hand, the mean training Dice of that net (the expected threshold)."""
    from lightning_modules import SegmentationModule

    torch.manual_seed(1)
    clean = SegmentationModule(net=TINY_UNET, data_info=dm.info, lr=0.05)
    opt = torch.optim.SGD(clean.parameters(), lr=0.05)
    loader = dm.train_dataloader()
    for batch in loader:  # one clean epoch
        opt.zero_grad()
        clean.per_sample_loss(clean.attack_model()(batch["image"]), batch).mean().backward()
        opt.step()
    torch.save({"state_dict": clean.state_dict()}, path)
    clean.eval()
    with torch.no_grad():
        stats = torch.cat([clean.violation_statistic(clean.attack_model()(b["image"]), b)
                           for b in loader])
    return float(stats.double().mean())


class ThresholdAndMargins(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.seen.append((pl_module.method.margins.clone(), float(pl_module.method.threshold_value)))


def _fit_seg(tmp: Path, epochs: int, clean: Path, ckpt: str | None = None,
             callbacks: list | None = None):
    from lightning_modules import SegmentationModule

    L.seed_everything(0)
    dm = _seg_data()
    model = SegmentationModule(net=TINY_UNET, data_info=dm.info, lr=0.01,
                               method=AMAT(delta=0.3, max_margin=3.0, attack={"steps": 3},
                                           clean_checkpoint=str(clean)))
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu",
                        callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True, save_top_k=0),
                                   *(callbacks or [])])
    trainer.fit(model, dm, ckpt_path=ckpt)
    return model


def test_clean_checkpoint_threshold_and_resume_are_exact(tmp_path: Path, monkeypatch) -> None:
    """``threshold_from='clean_checkpoint'``: the threshold is the clean net's mean training
    Dice, computed once at fit start; resuming mid-training restores margins and threshold
    bit for bit (without recomputing it) and ends where an uninterrupted run ends."""
    clean = tmp_path / "clean.ckpt"
    expected = _clean_checkpoint(clean, _seg_data())
    first = _fit_seg(tmp_path / "a", 1, clean)
    thr = float(first.method.threshold_value)
    assert thr == pytest.approx(expected, abs=1e-6)
    saved = first.method.margins.clone()
    assert not torch.equal(saved, torch.full_like(saved, 0.3))  # the epoch moved them
    assert 0.0 < first.method.last_diagnostics["margin_grown"] < 1.0  # some grew, some not
    straight = _fit_seg(tmp_path / "c", 2, clean)

    def no_recompute(self, task, size, device):  # noqa: ANN001
        raise AssertionError("the threshold was recomputed on resume")

    monkeypatch.setattr(CleanCheckpointThreshold, "from_clean_model", no_recompute)
    watch = ThresholdAndMargins()
    resumed = _fit_seg(tmp_path / "b", 2, clean, ckpt=str(tmp_path / "a" / "last.ckpt"),
                       callbacks=[watch])
    margins0, thr0 = watch.seen[0]
    assert torch.equal(margins0, saved) and thr0 == thr
    assert float(resumed.method.threshold_value) == thr == float(straight.method.threshold_value)
    assert torch.equal(resumed.method.margins, straight.method.margins)


def test_clean_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    from lightning_modules import SegmentationModule

    dm = _seg_data()
    m = SegmentationModule(net=TINY_UNET, data_info=dm.info,
                           method=AMAT(clean_checkpoint=str(tmp_path / "nope" / "*.ckpt")))
    with pytest.raises(FileNotFoundError, match="nope"):
        m.method.thresholds.resolve_checkpoint(m)
    # At fit start a missing clean run is a loud fallback, so every config runs on its own.
    assert not m.method.thresholds.running
    with pytest.warns(UserWarning, match="falls back to threshold_from='running'"):
        m.method.on_train_epoch_start(m)
    assert m.method.thresholds.running and math.isnan(float(m.method.threshold_value))
    with pytest.raises(ValueError, match="clean_checkpoint is only used"):
        AMAT(threshold_from="running", clean_checkpoint="x.ckpt")
    with pytest.raises(ValueError, match="adv_loss_on"):
        AMAT(adv_loss_on="some")




@pytest.mark.slow
def test_ddp_segmentation_margins_and_threshold_match(tmp_path: Path) -> None:
    """The reference defaults on segmentation (no early stop, threshold from a clean
    checkpoint gathered over ranks): 2 DDP processes give the margins and threshold of 1."""
    from lightning_modules import SegmentationModule

    torch.manual_seed(1)
    dm = SyntheticDataModule(task="segmentation", num_train=11, num_val=4, num_test=4,
                             image_size=(16, 16), batch_size=4)
    clean_net = SegmentationModule(net=TINY_UNET, data_info=dm.info)
    clean = tmp_path / "clean.ckpt"
    torch.save({"state_dict": clean_net.state_dict()}, clean)
    out2, out1 = run_on_two_processes_and_one(DDP_SCRIPT, tmp_path, "ddp_amat_seg", "segmentation",
                                              str(clean))
    rank0, rank1 = (torch.load(out2 / f"state_rank{r}.pt") for r in range(2))
    single = torch.load(out1 / "state_rank0.pt")
    assert torch.equal(rank0["margins"], rank1["margins"])
    assert torch.equal(rank0["threshold"], rank1["threshold"])
    assert torch.isfinite(single["threshold"])
    assert torch.allclose(rank0["threshold"], single["threshold"], atol=1e-6)
    m = single["margins"]
    assert bool((m != 0.3).any())  # margins moved
    assert torch.allclose(rank0["margins"], m, atol=1e-5)
