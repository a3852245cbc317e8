"""The catastrophic-overfitting watchdog: its rule, its actions (warn / stop / restore the
pre-collapse weights), its state, and the same numbers on 1 and 2 DDP processes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import CatastrophicOverfittingWatchdog
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import NFGSM, SAT, ClassificationModule
from tests.support.ddp_runs import run_on_two_processes_and_one

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NET = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}


def _dm(n: int = 32) -> SyntheticDataModule:
    return SyntheticDataModule(task="classification", num_train=n, num_val=8, num_test=8,
                               image_size=(16, 16), batch_size=8, seed=0)


def _fit(dog: CatastrophicOverfittingWatchdog, root: Path, method=None, epochs: int = 4,
         lr: float = 3e-3) -> tuple[ClassificationModule, L.Trainer]:
    """Fit with the watchdog; its files go to ``root`` (the trainer's log directory without a
    logger), never to the working directory."""
    L.seed_everything(0, verbose=False)
    dm = _dm()
    model = ClassificationModule(net=NET, data_info=dm.info, lr=lr,
                                 method=method or SAT(eps=0.03, attack={"steps": 2}))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=root, callbacks=[dog])
    trainer.fit(model, dm)
    return model, trainer


class Scripted(CatastrophicOverfittingWatchdog):
    """The watchdog with its measurements replaced by a script (the rule and the actions are
    the real ones); it records the weights it saw at every measurement."""

    def __init__(self, script: list[tuple[float, float]], **kw) -> None:
        super().__init__(subset=8, plot=False, **kw)
        self.script = list(script)
        self.weights: list[dict[str, torch.Tensor]] = []

    def measure(self, trainer, pl_module) -> dict[str, float]:
        self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})
        single, multi = self.script.pop(0)
        return {"clean": 0.9, "single_step": single, "multi_step": multi, "eps": 0.03}


# single-step rises while multi-step collapses at the 4th measurement (epoch 3)
CO = [(0.40, 0.30), (0.45, 0.35), (0.50, 0.38), (0.90, 0.05), (0.95, 0.00), (0.97, 0.00)]


def test_rule_fires_only_when_multi_step_collapses_while_single_step_rises(tmp_path: Path) -> None:
    dog = Scripted(CO, action="warn")
    with pytest.warns(UserWarning, match="catastrophic overfitting at epoch 3"):
        _fit(dog, tmp_path / "co", epochs=6)
    assert [h["collapsed"] for h in dog.history] == [0, 0, 0, 1, 1, 1]
    assert dog.fired["epoch"] == 3 and dog.best["epoch"] == 2
    # one line per measurement in the run's log directory (default_root_dir without a logger)
    lines = (tmp_path / "co" / "co_watchdog.jsonl").read_text().splitlines()
    assert [json.loads(line)["collapsed"] for line in lines] == [0, 0, 0, 1, 1, 1]
    # both falling (a bad step, a growing ε) is not CO; nor is a fall smaller than min_drop
    quiet = Scripted([(0.5, 0.4), (0.2, 0.1), (0.6, 0.25), (0.7, 0.45)], action="stop")
    _, trainer = _fit(quiet, tmp_path / "quiet", epochs=4)
    assert quiet.fired is None and trainer.current_epoch == 4


def test_stop_and_restore_give_back_the_pre_collapse_weights(tmp_path: Path) -> None:
    dog = Scripted(CO, action="stop")
    with pytest.warns(UserWarning, match="stopped"):
        _, trainer = _fit(dog, tmp_path / "stop", epochs=6)
    assert trainer.current_epoch == 4  # stopped after the epoch that collapsed (epoch 3)
    dog = Scripted(CO, action="restore")
    with pytest.warns(UserWarning, match="restored the weights of epoch 2"):
        model, trainer = _fit(dog, tmp_path / "restore", epochs=6)
    assert trainer.current_epoch == 4
    best = dog.weights[2]  # what the module held at the best measurement (epoch 2)
    now = model.state_dict()
    assert all(torch.equal(now[k], best[k]) for k in best)
    assert not all(torch.equal(dog.weights[3][k], best[k]) for k in best)  # it had moved on
    # the state survives a checkpoint (the weight snapshot is not part of it)
    fresh = CatastrophicOverfittingWatchdog()
    fresh.load_state_dict(dog.state_dict())
    assert fresh.history == dog.history and fresh.fired == dog.fired and fresh.best == dog.best


def test_bad_arguments_name_the_field() -> None:
    cases = [({"action": "halt"}, r"CatastrophicOverfittingWatchdog\.action must be one of"),
             ({"min_drop": 0}, r"\.min_drop must be a number > 0"),
             ({"every_n_epochs": 0}, r"give every_n_epochs >= 1 or every_n_train_steps"),
             ({"multi_step_attack": {"name": "pgdd"}}, r"\.multi_step_attack\.name: unknown attack"),
             ({"attack": {"name": "salt_pepper"}}, r"\.attack: 'salt_pepper' takes no budget"),
             ({"subset": 0}, r"subset: a count must be >= 1")]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            CatastrophicOverfittingWatchdog(**kwargs)


def test_real_measurement_logs_three_curves_and_the_png(tmp_path: Path) -> None:
    """A real (unscripted) measurement: the training attack of the method (N-FGSM's, its ε),
    PGD-10 no stronger-looking than it should be (multi-step ≤ single-step ≤ clean is not
    guaranteed for N-FGSM's 3ε perturbation, but PGD-10 ≤ clean is), the files written."""
    dog = CatastrophicOverfittingWatchdog(subset=16, batch_size=8, every_n_epochs=1)
    model, trainer = _fit(dog, tmp_path, method=NFGSM(eps=0.03), epochs=2)
    assert len(dog.history) == 2 and all(h["eps"] == 0.03 for h in dog.history)
    for h in dog.history:
        assert h["multi_step"] <= h["clean"] + 1e-9
        assert 0.0 <= h["single_step"] <= 1.0
    assert (tmp_path / "co_watchdog.png").exists() and (tmp_path / "co_watchdog.jsonl").exists()


@pytest.mark.slow
def test_pgd_trained_run_stays_quiet(tmp_path: Path) -> None:
    dog = CatastrophicOverfittingWatchdog(subset=32, batch_size=16, every_n_train_steps=4,
                                          every_n_epochs=0, action="stop", plot=False)
    _, trainer = _fit(dog, tmp_path, method=SAT(eps=0.03, attack={"steps": 5}), epochs=6)
    assert dog.fired is None and trainer.current_epoch == 6 and len(dog.history) >= 6


# ---------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent('''
    """Run by test_two_processes_measure_what_one_does: the watchdog on 1 or 2 processes."""
    import lightning as L
    import torch

    from callbacks import CatastrophicOverfittingWatchdog
    from datamodules.synthetic import SyntheticDataModule
    from lightning_modules import FGSMRS, ClassificationModule
    from tests.support.ddp_runs import close_process_group, ddp_fit_trainer, script_main


    def run(devices, out):
        L.seed_everything(0)
        dm = SyntheticDataModule(task="classification", num_train=12, num_val=4, num_test=4,
                                 image_size=(16, 16), batch_size=4 // devices)
        # lr = 0 and no BatchNorm: the model is the same on 1 and 2 processes, so the
        # measurement must be too (3 batches of 4: rank 1 computes one padding copy)
        net = {"class_path": "lightning_modules.nets.SmallCNN",
               "init_args": {"features": [4, 8], "norm": "none"}}
        model = ClassificationModule(net=net, data_info=dm.info, optimizer="sgd", lr=0.0,
                                     method=FGSMRS(eps=0.05))
        dog = CatastrophicOverfittingWatchdog(subset=12, batch_size=4, plot=False)
        trainer = ddp_fit_trainer(devices, [dog], max_epochs=2, default_root_dir=out)
        trainer.fit(model, dm)
        torch.save(dog.history, f"{out}/history_rank{trainer.global_rank}.pt")
        close_process_group()


    if __name__ == "__main__":
        script_main(run)
''')


@pytest.mark.slow
def test_two_processes_measure_what_one_does(tmp_path: Path) -> None:
    out2, out1 = run_on_two_processes_and_one(DDP_SCRIPT, tmp_path, "ddp_watchdog")
    rank0, rank1 = (torch.load(out2 / f"history_rank{r}.pt") for r in range(2))
    single = torch.load(out1 / "history_rank0.pt")
    key = ("clean", "single_step", "multi_step")
    assert [[h[k] for k in key] for h in rank0] == [[h[k] for k in key] for h in rank1]
    for a, b in zip(rank0, single, strict=True):
        for k in key:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert any(0 < h["clean"] < 1 for h in single)  # a measurement that can differ


# ---------------------------------------------------------------------------- a real collapse
@pytest.mark.slow
@pytest.mark.realdata
def test_real_fgsm_run_collapses_and_restore_gives_back_the_best_weights(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        one_thread: None) -> None:
    """Plain FGSM (no random start) at ε = 0.05 on balanced PneumoniaMNIST overfits
    catastrophically (benchmarks/co_watchdog.py, docs/co_watchdog.png): the watchdog fires —
    PGD-10 accuracy down ≥ min_drop from its best while FGSM accuracy is higher than then — and
    ``restore`` leaves the module with weights that measure exactly the best point again. One
    torch thread, as the benchmark runs: the trajectory depends on float reduction order."""
    from benchmarks import co_watchdog as co

    monkeypatch.setenv("MEDROBUST_DATA", str(shared_data))
    args = co.parse_args(["--dataset", "pneumoniamnist", "--balanced", "--epochs", "8",
                          "--num-train", "4708", "--eval-subset", "64", "--every-n-steps", "16",
                          "--eps", "0.05"])
    train_set, eval_items, info = co.load(args)
    objects: dict = {}
    record = co.run(args, "restore", train_set, eval_items, info, tmp_path, objects)
    fired, best = record["fired"], record["best"]
    assert fired is not None and best is not None and best["step"] < fired["step"]
    assert best["multi_step"] - fired["multi_step"] >= args.min_drop
    assert fired["single_step"] > best["single_step"]
    assert objects["trainer"].should_stop  # restore stops the run
    again = objects["watchdog"].measure(objects["trainer"], objects["model"])
    for key in ("clean", "single_step", "multi_step"):
        assert again[key] == pytest.approx(best[key], abs=1e-9), key


# ----------------------------------------------------------------------------- every task
TASK_NETS = {
    "segmentation": {"class_path": "lightning_modules.nets.SmallUNet", "init_args": {"features": [4, 8]}},
    "landmarks": {"class_path": "lightning_modules.nets.SmallUNet", "init_args": {"features": [4, 8]}},
    "detection": {"class_path": "lightning_modules.nets.detectors.tiny_fcos",
                  "init_args": {"widths": [16, 32], "out_channels": 32}},
}


def _fit_task(task: str, dog: CatastrophicOverfittingWatchdog, root: Path, epochs: int = 1):
    """A tiny ``task`` model fitted with N-FGSM and the watchdog; files under ``root``."""
    from lightning_modules import DetectionModule, LandmarkModule, SegmentationModule

    L.seed_everything(0, verbose=False)
    kw = {"num_landmarks": 3} if task == "landmarks" else {}
    size = (32, 32) if task == "detection" else (16, 16)
    dm = SyntheticDataModule(task=task, num_train=16, num_val=4, num_test=4, image_size=size,
                             batch_size=8, seed=0, **kw)
    cls = {"segmentation": SegmentationModule, "landmarks": LandmarkModule, "detection": DetectionModule}[task]
    model = cls(net=TASK_NETS[task], data_info=dm.info, lr=3e-3, method=NFGSM(eps=0.03))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=root, callbacks=[dog])
    trainer.fit(model, dm)
    return model, trainer


@pytest.mark.parametrize("task", ["segmentation", "landmarks", "detection"])
def test_real_measurement_on_every_task(task: str, tmp_path: Path) -> None:
    """The watchdog measures the task's own main metric (Dice, radial error, mAP) clean, under
    the method's single-step attack and under PGD-10, on every task."""
    dog = CatastrophicOverfittingWatchdog(subset=8, batch_size=8, every_n_epochs=1, plot=False)
    model, _ = _fit_task(task, dog, tmp_path)
    assert len(dog.history) == 1
    entry = dog.history[0]
    for key in ("clean", "single_step", "multi_step"):
        assert torch.isfinite(torch.tensor(entry[key])), (key, entry)
    assert entry["eps"] == 0.03
    assert (tmp_path / "co_watchdog.jsonl").exists()


def test_rule_follows_the_metric_direction_for_radial_error(tmp_path: Path) -> None:
    """Radial error: lower is better, so a collapse is PGD-10's MRE *rising* by min_drop while
    the single-step MRE *falls*; the classification-shaped script (multi-step falling) is an
    improvement there and does not fire."""
    collapse = [(3.0, 4.0), (2.5, 3.8), (1.0, 6.0)]  # (single-step MRE, PGD-10 MRE) per epoch
    dog = Scripted(collapse, action="warn", min_drop=1.0)
    with pytest.warns(UserWarning, match="catastrophic overfitting at epoch 2"):
        _fit_task("landmarks", dog, tmp_path / "co", epochs=3)
    assert [h["collapsed"] for h in dog.history] == [0, 0, 1] and dog.best["epoch"] == 1
    improving = Scripted([(3.0, 4.0), (3.5, 3.0), (4.0, 1.0)], action="warn", min_drop=1.0)
    _fit_task("landmarks", improving, tmp_path / "better", epochs=3)
    assert improving.fired is None
