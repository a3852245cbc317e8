"""Scaling: batch scaling under DDP, channels_last and torch.compile equal to eager, the SLURM
config on Lightning's SLURMEnvironment, a 2-node × 1-process torchrun run whose evaluation
equals one process, and the GPU speed benchmark's reduced CPU mode."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml

from attacks import PGD
from attacks.start import input_gradient
from callbacks.scaling import (
    BatchScaling,
    SpeedOptions,
    channels_last_input,
    compile_network,
    per_device_batch,
    to_channels_last,
)
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import SAT, ClassificationModule
from train import cli_main

ROOT = Path(__file__).resolve().parents[2]
NET = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [8, 16]}}


def tiny_dm(**kw) -> SyntheticDataModule:
    args = {"task": "classification", "num_train": 16, "num_val": 8, "num_test": 4,
            "image_size": (16, 16), "batch_size": 8, "seed": 0, **kw}
    return SyntheticDataModule(**args)


# --------------------------------------------------------------------------- batch scaling
def test_per_device_batch_divides_or_says_what_to_do() -> None:
    assert per_device_batch(32, 1) == 32 and per_device_batch(32, 4) == 8
    with pytest.raises(ValueError, match=r"batch_size=30.*world_size=4.*28 or 32"):
        per_device_batch(30, 4)


def test_batch_scaling_modes() -> None:
    dm = tiny_dm(batch_size=32)
    model = ClassificationModule(net=NET, data_info=dm.info, lr=0.01)
    two = SimpleNamespace(world_size=2, datamodule=dm)
    cb = BatchScaling("global")
    cb.setup(two, model, "fit")
    assert dm.batch_size == 16 and model.lr == 0.01
    cb.setup(two, model, "fit")  # fit then test: not halved twice
    assert dm.batch_size == 16
    assert cb.applied == {"mode": "global", "world_size": 2, "global_batch_size": 32,
                          "per_device_batch_size": 16}
    dm2 = tiny_dm(batch_size=32)
    lin = BatchScaling("linear")
    lin.setup(SimpleNamespace(world_size=4, datamodule=dm2), model, "fit")
    lin.setup(SimpleNamespace(world_size=4, datamodule=dm2), model, "fit")
    assert dm2.batch_size == 32 and model.lr == pytest.approx(0.04)
    BatchScaling("per_device").setup(SimpleNamespace(world_size=4, datamodule=dm2), model, "fit")
    assert dm2.batch_size == 32
    with pytest.raises(ValueError, match="batch_scaling must be one of"):
        BatchScaling("auto")
    with pytest.raises(ValueError, match="needs a datamodule"):
        BatchScaling("global").setup(SimpleNamespace(world_size=2, datamodule=None), model, "fit")


def test_cli_adds_batch_scaling_and_speed_callbacks(tmp_path: Path) -> None:
    base = ["--config", str(ROOT / "configs/experiment/quickstart.yaml"),  # run=False: no subcommand
            "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu"]
    cli = cli_main(base, run=False)
    (bs,) = [c for c in cli.trainer.callbacks if isinstance(c, BatchScaling)]
    assert bs.mode == "global"  # the default: batch_size means the global batch
    assert not [c for c in cli.trainer.callbacks if isinstance(c, SpeedOptions)]  # off by default
    cli = cli_main(base + ["--batch_scaling", "linear", "--speed.channels_last", "true"], run=False)
    assert [c.mode for c in cli.trainer.callbacks if isinstance(c, BatchScaling)] == ["linear"]
    (sp,) = [c for c in cli.trainer.callbacks if isinstance(c, SpeedOptions)]
    assert sp.channels_last and not sp.compile
    with pytest.raises(ValueError, match="--batch_scaling must be one of"):
        cli_main(base + ["--batch_scaling", "twice"], run=False)


# --------------------------------------------------------------------------- speed options
def _fit_two_steps(speed: SpeedOptions | None, tmp_path: Path) -> ClassificationModule:
    L.seed_everything(0, verbose=False)
    dm = tiny_dm()
    model = ClassificationModule(net=NET, data_info=dm.info, method=SAT(eps=0.02, attack={"steps": 2}), lr=0.01)
    L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              default_root_dir=tmp_path, callbacks=[speed] if speed else []).fit(model, dm)
    return model


def test_channels_last_equals_eager(tmp_path: Path) -> None:
    """Same training (2 SAT steps through Lightning) and same PGD result, NHWC vs NCHW."""
    eager = _fit_two_steps(None, tmp_path / "eager")
    nhwc = _fit_two_steps(SpeedOptions(channels_last=True), tmp_path / "nhwc")
    conv = [p for p in nhwc.net.parameters() if p.ndim == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    for (name, a), (_, b) in zip(eager.state_dict().items(), nhwc.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    eager.eval(), nhwc.eval()
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    atk = PGD(eps=0.1, norm="l2", steps=3)
    ref = atk(eager.attack_model(), x, y, generator=torch.Generator().manual_seed(0))
    got = atk(nhwc.attack_model(), channels_last_input(x), y,
              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_to_channels_last_handles_3d_and_leaves_values() -> None:
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Conv2d(2, 2, 1), torch.nn.Linear(2, 2))
    before = copy.deepcopy(net.state_dict())
    to_channels_last(net)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert net[1].weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_compile_equals_eager() -> None:
    """torch.compile (Inductor, C++ on the CPU) of the net: outputs, input gradients and a PGD
    attack through the compiled attack model equal eager within float32 tolerance."""
    dm = tiny_dm()
    # one conv stage: fewer generated C++ kernels, so the cold compile stays short
    net = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4]}}
    model = ClassificationModule(net=net, data_info=dm.info).eval()
    eager = copy.deepcopy(model)
    compile_network(model)
    assert model.net._compiled_call_impl is not None
    assert list(model.state_dict()) == list(eager.state_dict())  # checkpoints keep their keys
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    atk = PGD(eps=0.1, norm="l2", steps=3)
    ref = atk(eager.attack_model(), x, y, generator=torch.Generator().manual_seed(0))
    got = atk(model.attack_model(), x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    g_ref, l_ref = input_gradient(eager.attack_model(), x, y)
    g, loss = input_gradient(model.attack_model(), x, y)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, l_ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, x)  # the attack moved


# --------------------------------------------------------------------------- SLURM
def test_slurm_config_runs_on_lightnings_slurm_environment(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    cfg = yaml.safe_load((ROOT / "configs/trainer/slurm.yaml").read_text())
    assert cfg["batch_scaling"] == "global" and cfg["trainer"]["strategy"] == "ddp"
    # One SLURM task, as `srun` would describe it (a 1-node, 1-task allocation).
    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
                       "SLURM_JOB_NUM_NODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "medrobust",
                       "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    cli = cli_main(["--config", str(ROOT / "configs/experiment/quickstart.yaml"),
                    "--config", str(ROOT / "configs/trainer/slurm.yaml"),
                    "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                    "--trainer.num_nodes", "1", "--trainer.precision", "32-true",
                    "--trainer.default_root_dir", str(tmp_path)], run=False)
    env = cli.trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue
    assert env.main_address == "localhost" and env.world_size() == 1
    assert [c.mode for c in cli.trainer.callbacks if isinstance(c, BatchScaling)] == ["global"]
    # the experiment's own callbacks survive the trainer config
    assert any(type(c).__name__ == "AdversarialEvaluation" for c in cli.trainer.callbacks)
    script = (ROOT / "scripts/slurm_train.sbatch").read_text()
    assert "srun python train.py fit" in script and "configs/trainer/slurm.yaml" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/slurm_train.sbatch")]).returncode == 0


# --------------------------------------------------------------------------- 2 nodes
TINY_RUN = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False,
                "enable_model_summary": False, "log_every_n_steps": 1,
                "callbacks": [
                    {"class_path": "callbacks.ModelCheckpoint",
                     "init_args": {"save_last": True}},
                    {"class_path": "callbacks.AdversarialEvaluation",
                     "init_args": {"attacks": [{"name": "pgd", "norm": "linf", "steps": 3},
                                               {"name": "pgd", "norm": "linf", "steps": 2,
                                                "random_start": True, "label": "pgd_rs"}],
                                   "eps": [0.02], "subset": 10, "batch_size": 4,
                                   "every_n_epochs": 1, "plot": False}}]},
    "data": {"class_path": "datamodules.synthetic.SyntheticDataModule",
             "init_args": {"task": "classification", "num_train": 16, "num_val": 10,
                           "num_test": 4, "image_size": [16, 16], "batch_size": 8}},
    "model": {"class_path": "lightning_modules.ClassificationModule",
              "init_args": {"net": NET, "lr": 0.01,
                            "method": {"class_path": "lightning_modules.methods.SAT",
                                       "init_args": {"eps": 0.02, "attack": {"name": "pgd", "steps": 2}}}}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_nodes_by_torchrun_train_and_evaluate_like_one_process(tmp_path: Path) -> None:
    """Two ``torchrun --nnodes 2 --node_rank {0,1}`` processes on localhost (gloo) train one
    epoch; the global batch is kept (2 steps, as on 1 process), and the evaluation of the
    result equals a 1-process ``validate`` of its checkpoint, number for number."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    out = tmp_path / "two_nodes"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = []
    start = time.time()
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--node_rank", str(node_rank),
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               str(ROOT / "train.py"), "fit", "--config", str(config),
               "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
               "--trainer.default_root_dir", str(out)]
        log = open(tmp_path / f"node{node_rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=ROOT), log))
    try:
        codes = [p.wait(timeout=540) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    wall = time.time() - start
    logs = {r: (tmp_path / f"node{r}.log").read_text()[-3000:] for r in (0, 1)}
    assert codes == [0, 0], logs
    print(f"2-node torchrun fit: {wall:.1f} s wall")
    run_dir = out / "tiny" / "version_0"
    two = json.loads((run_dir / "robustness.json").read_text())
    assert two["settings"]["world_size"] == 2
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    # 16 samples, global batch 8: 2 steps, as on one process (per device 4 on each "node")
    assert state["global_step"] == 2
    cli = cli_main(["validate", "--config", str(config), "--ckpt_path", str(ckpt),
                    "--trainer.default_root_dir", str(tmp_path / "one")])
    (cb,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "AdversarialEvaluation"]
    one = cb.last_record["val"].to_dict()
    assert one["settings"]["world_size"] == 1
    assert one["subset"]["indices"] == two["subset"]["indices"]
    # fit's record is the per-epoch evaluation (early exit across ε: two["settings"]); the same
    # evaluation of the checkpoint on one process
    assert two["settings"]["early_exit"] is True
    from callbacks.common import check_robust_task

    run = cb.runner.run(cli.trainer, cli.model, check_robust_task(cli.model, "test"), "val", cb.suites.specs, cb.eps,
                        cb.subset, per_epoch=True)
    assert run.world_size == 1 and run.outcome.early_exit
    assert two["clean"] == pytest.approx(run.outcome.clean, abs=1e-6) == one["clean"]
    got = {(a["attack"], a["eps"]): (a["metrics"], a["gradients"]) for a in two["attacks"]}
    assert set(got) == set(run.outcome.attacks)
    for key, (metrics, gradients) in got.items():
        assert metrics == pytest.approx(run.outcome.attacks[key], abs=1e-6), key
        assert gradients == run.outcome.gradients[key], key
    for entry in two["ensemble"]:
        assert entry["metrics"] == pytest.approx(run.outcome.ensemble[entry["eps"]], abs=1e-6)


# --------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_gpu_speed_benchmark_reduced_cpu_mode(tmp_path: Path) -> None:
    """benchmarks/gpu_speed.py's reduced mode (what runs on a machine without a GPU): every
    model × precision row is measured, and the fp32/bf16 robust-accuracy check is reported."""
    out = tmp_path / "speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # ResNet-18 shares the classification path with the quickstart CNN: left out to save time
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_speed.py"), "--reduced",
                          "--device", "cpu", "--models", "quickstart_cnn", "unet",
                          "--train-steps", "1", "--out", str(out)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "reduced" and report["device"] == "cpu"
    rows = report["rows"]
    models = {r["model"] for r in rows}
    assert models == {"quickstart_cnn", "unet"}  # classification and segmentation
    for model in models:
        configs = {r["config"] for r in rows if r["model"] == model}
        assert {"fp32", "bf16", "bf16+channels_last"} <= configs, (model, configs)
    for r in rows:
        assert r["attack_img_per_s"] > 0 and r["sat_img_per_s"] > 0, r
        assert 0.0 <= r["robust"] <= 1.0 and 0.0 <= r["clean"] <= 1.0, r
    for check in report["bf16_checks"]:
        assert set(check) >= {"model", "fp32_robust", "bf16_robust", "diff_points", "within_0.5"}
        assert abs(check["diff_points"] - 100 * abs(check["bf16_robust"] - check["fp32_robust"])) < 1e-6
    assert "fp32" in res.stdout and "bf16" in res.stdout  # the side-by-side table is printed
