"""Tests of the evaluation callbacks (issue 6): logging, files, DDP equality, model safety."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from callbacks import (
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    AdversarialEvaluation,
    AdversarialExamples,
    MarginMonitor,
    robust_area,
)
from callbacks.common import select_subset, shard_batches
from tests.support.callback_models import (
    SMALL_NETS,
    FeatureDataModule,
    ToyClassifier,
    make_datamodule,
    make_module,
    real_module_class,
)

ROOT = Path(__file__).resolve().parents[2]

#: a cheap, deterministic suite; subset 9 in batches of 4 -> batches 4, 4, 1 (odd: DDP pads)
FAST = {
    "attacks": [{"name": "fgsm"}, {"name": "pgd", "norm": "linf", "steps": 2, "random_start": False}],
    "eps": [0.01, 0.03],
    "subset": 9,
    "batch_size": 4,
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """One intra-op thread: on a shared 2-core machine OpenMP threads spin against other
    processes and make these tiny models 10-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer(tmp_path: Path, callbacks: list[Callback], logger: Any = None, **kw: Any) -> L.Trainer:
    opts: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
        "enable_model_summary": False, "enable_checkpointing": False,
        "default_root_dir": str(tmp_path), "limit_train_batches": 2,
        "num_sanity_val_steps": 0, "log_every_n_steps": 1,
    }
    opts.update(kw)
    return L.Trainer(logger=logger if logger is not None else False, callbacks=callbacks, **opts)


def check_schema(record: dict[str, Any], task: str, split: str) -> None:
    """``robustness.json`` as DESIGN.md fixes it (plus our extra keys)."""
    assert record["task"] == task
    assert isinstance(record["method"], str) and record["method"]
    assert isinstance(record["epoch"], int)
    assert record["split"] == split
    assert isinstance(record["clean"], dict) and record["clean"]
    assert all(isinstance(v, float) for v in record["clean"].values())
    assert record["attacks"], "no attack entries"
    for entry in record["attacks"]:
        for key in ("attack", "norm", "eps", "steps", "metrics", "step_size", "restarts", "random_start"):
            assert key in entry, key
        assert isinstance(entry["eps"], float) and isinstance(entry["steps"], int)
        assert set(entry["metrics"]) == set(record["clean"])
    for entry in record["ensemble"]:
        assert entry["attack"] == "ensemble" and set(entry["metrics"]) == set(record["clean"])
    assert isinstance(record["robust_area"]["value"], float)


# --- pure helpers -------------------------------------------------------------------------------
def test_subset_is_fixed_and_shards_cover_each_sample_once() -> None:
    a = select_subset(100, 13, seed=3)
    assert a == select_subset(100, 13, seed=3) and len(a) == 13 and a == sorted(a)
    assert a != select_subset(100, 13, seed=4)
    assert len(select_subset(100, 0.25, seed=0)) == 25
    assert select_subset(5, 50, seed=0) == [0, 1, 2, 3, 4]
    for world_size in (1, 2, 3, 4):
        shards = [shard_batches(a, 4, r, world_size) for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1  # same number of iterations on every rank
        counted = [i for s in shards for _, b, c in s if c for i in b]
        assert sorted(counted) == a  # every sample exactly once
        batches = sorted((n, tuple(b)) for s in shards for n, b, c in s if c)
        assert batches == [(n, tuple(a[4 * n: 4 * n + 4])) for n in range(4)]  # same batches


def test_robust_area_is_normalised_and_higher_is_better() -> None:
    assert robust_area(1.0, {0.5: 1.0, 1.0: 1.0}, lower_better=False) == pytest.approx(1.0)
    assert robust_area(1.0, {1.0: 0.0}, lower_better=False) == pytest.approx(0.5)
    # error metrics: the negative mean error, so a smaller error gives a larger area
    assert robust_area(2.0, {1.0: 4.0}, lower_better=True) == pytest.approx(-3.0)
    assert robust_area(2.0, {1.0: 3.0}, True) > robust_area(2.0, {1.0: 4.0}, True)


def test_callback_yaml_pieces_instantiate() -> None:
    import yaml

    pieces = sorted((ROOT / "configs" / "callbacks").rglob("*.yaml"))  # evaluation/ too
    assert {p.name for p in pieces} >= {"adversarial_eval.yaml", "adversarial_eval_strong.yaml"}
    for path in pieces:
        cfg = yaml.safe_load(path.read_text())
        module, _, name = cfg["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        cls(**cfg.get("init_args", {}))
    default = yaml.safe_load((ROOT / "configs" / "callbacks" / "adversarial_eval.yaml").read_text())
    assert default["init_args"]["attacks"] == DEFAULT_ATTACKS and default["init_args"]["eps"] == DEFAULT_EPS


def test_bad_configuration_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"attacks\[1\]\.name.*pgdd.*known attacks.*pgd"):
        AdversarialEvaluation(attacks=[{"name": "fgsm"}, {"name": "pgdd"}])
    with pytest.raises(ValueError, match=r"attacks\[0\]\.eps"):
        AdversarialEvaluation(attacks=[{"name": "pgd", "eps": 0.1}])
    with pytest.raises(ValueError, match="test_attacks.*twice.*label"):
        AdversarialEvaluation(test_attacks=[{"name": "pgd"}, {"name": "pgd", "norm": "l2"}])
    with pytest.raises(ValueError, match="every_n_epochs"):
        AdversarialEvaluation(every_n_epochs=0)
    with pytest.raises(ValueError, match=r"\.subset=1\.5"):
        AdversarialEvaluation(subset=1.5)
    with pytest.raises(ValueError, match=r"\.test_subset='all'"):
        AdversarialEvaluation(test_subset="all")
    with pytest.raises(ValueError, match=r"attacks\[0\]: fgsm does not accept.*steps"):
        AdversarialEvaluation(attacks=[{"name": "fgsm", "steps": 5}])
    with pytest.raises(ValueError, match="bn_mode"):
        AdversarialEvaluation(bn_mode="frozen")
    with pytest.raises(ValueError, match=r"test_eps.*> 0"):
        AdversarialEvaluation(test_eps=[0.0, 0.1])
    with pytest.raises(ValueError, match="minimal_eps.*unknown"):
        AdversarialEvaluation(minimal_eps={"eps": 0.1})
    # aliases of the attack registry are accepted
    AdversarialEvaluation(attacks=[{"name": "I-FGSM", "steps": 2}])


# --- one training run shared by the logging / file tests --------------------------------------
@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """2 epochs of fit (+ test) with CSV and, when importable, an offline W&B logger."""
    tmp = tmp_path_factory.mktemp("fit")
    loggers: list[Any] = [CSVLogger(tmp, name="csv")]
    wandb = None
    with pytest.MonkeyPatch.context() as mp:
        try:
            import wandb
            from lightning.pytorch.loggers import WandbLogger

            for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                         "WANDB_DIR": str(tmp / "wb")}.items():
                mp.setenv(k, v)
            (tmp / "wb").mkdir()
            loggers.append(WandbLogger(save_dir=str(tmp / "wb"), offline=True, project="medrobust-test"))
        except ImportError:
            wandb = None
        dm = make_datamodule()
        model = make_module(dm)
        cb = AdversarialEvaluation(**FAST, test_attacks=[
            {"name": "pgd", "steps": 3, "random_start": True, "restarts": 2, "label": "pgd_r2"}])
        ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", monitor="adv/robust_area", mode="max")
        stop = EarlyStopping(monitor="adv/robust_area", mode="max", patience=5)
        examples = AdversarialExamples(num_samples=2, eps=0.03)
        tr = trainer(tmp, [cb, ckpt, stop, examples], loggers, max_epochs=2, enable_checkpointing=True)
        try:
            tr.fit(model, dm)
            log_dir = Path(tr.log_dir)
            val_record = json.loads((log_dir / "robustness.json").read_text())
            tr.test(model, dm, verbose=False)
        finally:
            if wandb is not None:
                wandb.finish()
    wandb_runs = list((tmp / "wb" / "wandb").glob("offline-run-*")) if wandb is not None else []
    return SimpleNamespace(log_dir=log_dir, val_record=val_record, ckpt=ckpt,
                           wandb_run=wandb_runs[0] if wandb_runs else None)


def test_csv_logger_gets_the_scalars_and_checkpoint_can_monitor(fit_run: SimpleNamespace) -> None:
    header = (fit_run.log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("adv/clean/accuracy", "adv/fgsm/eps=0.01/accuracy", "adv/pgd/eps=0.03/auroc",
                "adv/ensemble/eps=0.03/accuracy", "adv/robust_area", "adv/eval_seconds"):
        assert key in header, key
    score = fit_run.ckpt.best_model_score
    assert score is not None and math.isfinite(float(score))


def test_robustness_json_schema_history_and_plots(fit_run: SimpleNamespace) -> None:
    record = fit_run.val_record
    check_schema(record, "classification", "val")
    assert record["epoch"] == 1 and record["subset"]["size"] == 9
    assert [(e["attack"], e["eps"]) for e in record["attacks"]] == [
        ("fgsm", 0.01), ("pgd", 0.01), ("fgsm", 0.03), ("pgd", 0.03)]
    lines = (fit_run.log_dir / "robustness_history.jsonl").read_text().splitlines()
    assert [(json.loads(x)["split"], json.loads(x)["epoch"]) for x in lines] == [
        ("val", 0), ("val", 1), ("test", 2)]
    assert (fit_run.log_dir / "robustness.png").stat().st_size > 0
    assert (fit_run.log_dir / "adv_examples" / "epoch=001.png").stat().st_size > 0
    assert (fit_run.log_dir / "adv_examples" / "test.png").stat().st_size > 0
    # the ensemble is the per-sample worst case: never better than any single attack
    for e in record["ensemble"]:
        worst = min(a["metrics"]["accuracy"] for a in record["attacks"] if a["eps"] == e["eps"])
        assert e["metrics"]["accuracy"] <= worst + 1e-9


def test_test_uses_the_strong_suite_and_writes_report(fit_run: SimpleNamespace) -> None:
    record = json.loads((fit_run.log_dir / "robustness.json").read_text())
    check_schema(record, "classification", "test")
    assert {(e["attack"], e["restarts"], e["steps"], e["random_start"]) for e in record["attacks"]} == {
        ("pgd_r2", 2, 3, True)}
    report = (fit_run.log_dir / "report.md").read_text()
    for text in ("pgd_r2", "robustness.png", "restarts", "subset seed", "version torch",
                 "version lightning", "version medrobust", "bn_mode", "| **ensemble** |"):
        assert text in report, text


def test_wandb_offline_run_has_scalars_images_and_table(fit_run: SimpleNamespace) -> None:
    if fit_run.wandb_run is None:
        pytest.skip("wandb cannot be imported")
    run_dir: Path = fit_run.wandb_run
    data = b"".join(p.read_bytes() for p in run_dir.glob("*.wandb"))
    for key in ("adv/robust_area", "adv/clean/accuracy", "adv/pgd/eps=0.03/accuracy",
                "adv/ensemble/eps=0.01/accuracy", "adv/eval_seconds"):
        assert key.encode() in data, key
    media = run_dir / "files" / "media"
    assert list(media.glob("images/adv/robustness_curve_val_*.png"))
    assert list(media.glob("images/adv/robustness_curve_test_*.png"))
    assert list(media.glob("images/adv/examples_val_*.png"))
    assert list(media.glob("table/adv/robustness_table_val_*.table.json"))


# --- focused runs ------------------------------------------------------------------------------
def test_model_is_left_exactly_as_found(tmp_path: Path) -> None:
    """Parameters, buffers (BN stats), per-submodule modes, requires_grad and .grad survive,
    even with train-mode BatchNorm/Dropout during the attacks."""
    dm = make_datamodule()
    model = make_module(dm)
    snapshots: list[dict[str, Any]] = []

    class Snoop(Callback):
        def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            # an unusual state on purpose: mixed modes, a frozen parameter, existing gradients
            mods = list(pl_module.modules())
            for i, m in enumerate(mods):
                m.training = i % 2 == 0
            params = list(pl_module.parameters())
            params[0].requires_grad_(False)
            for p in params[1:]:
                p.grad = torch.randn_like(p)

        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            snapshots.append({
                "modes": [m.training for m in pl_module.modules()],
                "req": [p.requires_grad for p in pl_module.parameters()],
                "grad_ids": [id(p.grad) for p in pl_module.parameters()],
                "grads": [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()],
                "state": {k: v.clone() for k, v in pl_module.state_dict().items()},
            })

    cb = AdversarialEvaluation(**{**FAST, "eps": [0.05]}, bn_mode="train", dropout_mode="train",
                               write_json=False, plot=False)
    tr = trainer(tmp_path, [Snoop(), cb, Snoop()])
    tr.validate(model, dm, verbose=False)
    before, after = snapshots
    assert before["modes"] == after["modes"]
    assert before["req"] == after["req"]
    assert before["grad_ids"] == after["grad_ids"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


def test_same_numbers_with_inference_mode_on_and_off(tmp_path: Path) -> None:
    """Trainer(inference_mode=True) (Lightning's default) and False give the same numbers.
    The suite includes a budget-less noise, reported but kept out of the ensemble."""
    dm = make_datamodule()
    model = make_module(dm)
    suite = {**FAST, "attacks": [*FAST["attacks"], {"name": "salt_pepper", "amount": 0.1}]}
    records = []
    for flag in (True, False):
        cb = AdversarialEvaluation(**suite, write_json=False, plot=False)
        tr = trainer(tmp_path / str(flag), [cb], inference_mode=flag)
        tr.validate(model, dm, verbose=False)
        records.append(cb.last_record["val"].to_dict())
    for key in ("clean", "attacks", "ensemble"):
        assert records[0][key] == records[1][key], key
    assert records[0]["robust_area"]["value"] == records[1]["robust_area"]["value"]
    noise = [e for e in records[0]["attacks"] if e["attack"] == "salt_pepper"]
    assert len(noise) == 2 and not any(e["in_ensemble"] for e in noise)
    assert all(e["attacks"] == ["fgsm", "pgd"] for e in records[0]["ensemble"])


def test_two_evaluations_need_distinct_prefixes(tmp_path: Path) -> None:
    dm = make_datamodule()
    model = make_module(dm)
    tr = trainer(tmp_path, [AdversarialEvaluation(**FAST), AdversarialEvaluation(**FAST)])
    with pytest.raises(ValueError, match="prefix"):
        tr.validate(model, dm, verbose=False)
    strong = AdversarialEvaluation(**{**FAST, "eps": [0.03]}, prefix="adv_strong", plot=False)
    tr = trainer(tmp_path, [AdversarialEvaluation(**FAST, plot=False), strong])
    tr.validate(model, dm, verbose=False)
    assert "adv_strong/robust_area" in tr.callback_metrics and "adv/robust_area" in tr.callback_metrics
    assert (Path(tr.log_dir) / "robustness_adv_strong.json").exists()


@pytest.mark.parametrize(("task", "metric", "other"), [
    ("segmentation", "dice", "iou"),
    ("landmarks", "mre", "sdr_2px"),
    ("detection", "map", "map_50"),
])
def test_dense_task_modules(tmp_path: Path, task: str, metric: str, other: str) -> None:
    """Segmentation (Dice), landmarks (MRE, lower is better: negative robust area) and
    detection (mAP: a metric over all samples, fed the per-sample ensemble outputs)."""
    if real_module_class(task) is None:
        pytest.skip(f"no {task} module in lightning_modules yet")
    dm = make_datamodule(task=task)
    model = make_module(dm)
    cb = AdversarialEvaluation(**{**FAST, "subset": 6, "eps": [0.03]})
    logger = CSVLogger(tmp_path, name=task)
    tr = trainer(tmp_path, [cb, AdversarialExamples(num_samples=2, eps=0.03)], logger)
    tr.validate(model, dm, verbose=False)
    record = json.loads((Path(tr.log_dir) / "robustness.json").read_text())
    check_schema(record, task, "val")
    area = record["robust_area"]
    assert area["metric"] == metric and other in record["clean"]
    if metric == "mre":
        assert area["metric_lower_is_better"] and area["value"] < 0
    header = (Path(tr.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert f"adv/ensemble/eps=0.03/{metric}" in header and "adv/robust_area" in header
    assert f"adv/pgd/eps=0.03/{other}" in header
    assert (Path(tr.log_dir) / "adv_examples" / "epoch=000.png").exists()


def test_minimal_eps_output(tmp_path: Path) -> None:
    dm = make_datamodule()
    model = make_module(dm)
    cb = AdversarialEvaluation(**{**FAST, "subset": 6}, minimal_eps={"eps_max": 0.2, "attack": {"steps": 3},
                                                                   "n_bisect": 4})
    logger = CSVLogger(tmp_path, name="me")
    tr = trainer(tmp_path, [cb], logger)
    tr.validate(model, dm, verbose=False)
    me = json.loads((Path(tr.log_dir) / "robustness.json").read_text())["minimal_eps"]
    assert len(me["per_sample"]) == 6 and sum(me["histogram"]["counts"]) + me["histogram"]["censored"] == 6
    assert all(v is None or 0.0 <= v <= 0.2 for v in me["per_sample"])
    assert me["resolution"] == pytest.approx(0.2 / 16)
    assert (Path(tr.log_dir) / "minimal_eps.png").exists()
    assert "adv/minimal_eps_median" in tr.callback_metrics


def test_margin_monitor_logs_quantiles(tmp_path: Path) -> None:
    dm = make_datamodule()
    if real_module_class("classification") is not None:
        from lightning_modules import AMAT

        cls = real_module_class("classification")
        model = cls(net=SMALL_NETS["classification"], data_info=dm.info, method=AMAT(attack={"steps": 2}))
    else:  # stand-in for AMAT: a method holding a margins buffer
        model = ToyClassifier(dm.info)
        model.method = torch.nn.Module()
        model.method.name = "amat"
        model.method.register_buffer("margins", torch.linspace(0.0, 1.0, dm.info.num_train))
    mon = MarginMonitor()
    logger = CSVLogger(tmp_path, name="mm")
    tr = trainer(tmp_path, [mon], logger, limit_val_batches=0)
    tr.fit(model, dm)
    margins = model.method.margins.float()
    assert mon.last_stats["margin_q50"] == pytest.approx(float(margins.quantile(0.5)))
    assert mon.last_stats["margin_max"] == pytest.approx(float(margins.max()))
    header = (Path(tr.log_dir) / "metrics.csv").read_text().splitlines()[0]
    for key in ("amat/margin_q10", "amat/margin_q50", "amat/margin_q90", "amat/margin_mean",
                "amat/margin_min", "amat/margin_max"):
        assert key in header, key
    assert (Path(tr.log_dir) / "margins" / "epoch=000.png").exists()


# --- the expensive ones --------------------------------------------------------------------------
def _validate_on_one_and_two_processes(tmp_path: Path, data: dict, cb_kwargs: dict) -> tuple[dict, dict, str]:
    """Fit a tiny model, then validate its checkpoint with ``AdversarialEvaluation(**cb_kwargs)``
    in this process and in 2 CPU DDP processes (a script: Lightning's ddp launcher re-runs
    ``sys.argv``). Returns both records and the 2-process run's stderr."""
    dm = make_datamodule(**data)
    model = make_module(dm)
    tr = trainer(tmp_path, [])
    tr.fit(model, dm)
    ckpt = tmp_path / "model.ckpt"
    tr.save_checkpoint(ckpt)
    toy = real_module_class("classification") is None
    cb = AdversarialEvaluation(**cb_kwargs)
    trainer(tmp_path / "d1", [cb]).validate(model, dm, ckpt_path=ckpt, verbose=False)
    out = tmp_path / "d2"
    cmd = [sys.executable, str(ROOT / "tests" / "support" / "callback_models.py"),
           "--ckpt", str(ckpt), "--out", str(out), "--devices", "2",
           "--callback", json.dumps(cb_kwargs), "--data", json.dumps(data)] + (["--toy"] if toy else [])
    # the script imports this checkout's packages (not another install): PYTHONPATH, no sys.path edits
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return cb.last_record["val"].to_dict(), json.loads((out / "robustness.json").read_text()), res.stderr


@pytest.mark.slow
def test_two_processes_give_the_same_numbers_as_one(tmp_path: Path) -> None:
    """1 process vs 2 CPU processes (DDP, gloo) validating the same checkpoint: identical."""
    # 9 samples in batches 4, 4, 1: rank 1 runs a padded copy that must not be counted. A
    # random-start PGD is included too: its stream is seeded per batch, not per rank.
    suite = [*FAST["attacks"], {"name": "pgd", "steps": 2, "random_start": True, "label": "pgd_rs"}]
    one, two, _ = _validate_on_one_and_two_processes(tmp_path, {"num_val": 24},
                                                      {**FAST, "attacks": suite, "plot": False})
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    assert one["subset"]["indices"] == two["subset"]["indices"]
    for key in ("clean", "attacks", "ensemble"):
        assert one[key] == two[key], key
    assert one["robust_area"]["value"] == two["robust_area"]["value"]
    # the per-sample file too: each rank's samples gathered, the same bytes as one process
    from callbacks.per_sample import FILE_NAME

    files = [sorted((tmp_path / d).rglob(FILE_NAME)) for d in ("d1", "d2")]
    assert len(files[0]) == 1 and len(files[1]) == 1, files
    assert files[0][0].read_bytes() == files[1][0].read_bytes()


@pytest.mark.slow
def test_two_processes_with_a_subset_of_one_batch(tmp_path: Path) -> None:
    """6 samples in one batch of 8 on 2 processes: rank 1 would hold only padding, never update
    the metrics and skip torchmetrics' collectives (a gloo collective mismatch). The batch is
    shrunk to 3 so both ranks count one; with deterministic attacks the numbers equal 1 process
    at batch 8. Fewer samples than processes is a clear error."""
    one, two, stderr = _validate_on_one_and_two_processes(
        tmp_path, {"num_val": 12}, {**FAST, "subset": 6, "batch_size": 8, "plot": False})  # no random starts
    assert "evaluating in batches of 3" in stderr
    assert two["settings"]["world_size"] == 2
    for key in ("clean", "attacks", "ensemble"):
        assert one[key] == two[key], key

    from callbacks.evaluation_runner import batch_size_for_world

    assert batch_size_for_world(6, 8, 1, 0, "val") == 8  # one process: unchanged
    assert batch_size_for_world(20, 8, 2, 0, "val") == 8  # 3 batches for 2 processes: unchanged
    with pytest.raises(ValueError, match="the val subset has 1 sample"):
        batch_size_for_world(1, 8, 2, 0, "val")


@pytest.mark.slow
def test_sat_model_has_a_larger_robust_area_than_clean(tmp_path: Path) -> None:
    """Same data, same subset, same suite: adversarial training buys robust area.

    Data with a robust and a non-robust feature (see ``FeatureDataset``) so a few CPU epochs
    suffice; the real ClassificationModule + SAT when they exist, else the toy module.
    """
    areas = {}
    for method in ("clean", "sat"):
        L.seed_everything(0)
        dm = FeatureDataModule()
        model = make_module(dm, method, eps=0.06, steps=2, lr=2e-2)
        cb = AdversarialEvaluation(attacks=[{"name": "pgd", "steps": 5, "random_start": False}],
                                   eps=[0.03, 0.06], subset=64, batch_size=32, plot=False)
        trainer(tmp_path / method, [], max_epochs=4, limit_train_batches=None,
                limit_val_batches=0).fit(model, dm)
        trainer(tmp_path / method, [cb]).validate(model, dm, verbose=False)
        record = cb.last_record["val"].to_dict()
        assert record["method"] == method
        areas[method] = record["robust_area"]["value"]
    assert areas["sat"] > areas["clean"] + 0.03, areas
