"""Faults: a killed run resumes exactly, no output file is ever torn, NaN does not train on.

* resume: ``benchmarks/fault_resume.py`` (SIGKILL mid-epoch, ``--ckpt_path last``) for clean,
  staged SAT, AMAT and denoise at the epoch boundary, and AMAT from a mid-epoch checkpoint;
* atomic writes: a writer killed at its worst moment (data written, not yet renamed) and in a
  loop at random moments leaves the old or the new complete file; a plain writer is torn;
* ``last.ckpt`` is the latest state, the top-k record survives a resume;
* the resumable training loader, the RNG state round trip (``weights_only=True``);
* the non-finite guard and the module's ``nonfinite="skip"`` policy; non-finite pixels at data load.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from torch.utils.data import DataLoader

from callbacks.atomic import append_line_atomic, atomic_write_text
from callbacks.checkpoint import AtomicCheckpointIO, ModelCheckpoint
from datamodules.base import collate_batch
from datamodules.imagefiles import read_image
from datamodules.info import DataInfo
from datamodules.resumable import EpochRandomSampler, ResumableDataLoader
from datamodules.samples import BadSampleError
from lightning_modules import ClassificationModule
from lightning_modules.fault_tolerance import NonFiniteError, rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


# ---------------------------------------------------------------------- resume after SIGKILL
@pytest.fixture(scope="module")
def fault_results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """One harness run: 4 methods killed in epoch 1 and resumed from the end-of-epoch-0
    checkpoint, and AMAT resumed from a checkpoint taken after batch 0 of epoch 1."""
    out = tmp_path_factory.mktemp("fault_resume")
    results = {}
    for boundary, methods in (("epoch", ["clean", "sat-staged", "amat", "denoise"]), ("step", ["amat"])):
        cmd = [PY, str(ROOT / "benchmarks" / "fault_resume.py"), "--fork", "--epochs", "2",
               "--batches", "3", "--kill-epoch", "1", "--kill-batch", "1", "--boundary", boundary,
               "--out", str(out / boundary), "--methods", *methods]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        for r in json.loads((out / boundary / "fault_resume.json").read_text()):
            results[(r["method"], r["boundary"])] = r
    return results


@pytest.mark.slow
@pytest.mark.parametrize("method", ["clean", "sat-staged", "amat", "denoise"])
def test_resume_at_epoch_boundary_is_bit_exact(fault_results, method: str) -> None:
    r = fault_results[(method, "epoch")]
    ck = r["checkpoint"]
    # Every tensor and number of the final checkpoint: weights, buffers (AMAT margins and
    # threshold), optimizer, scheduler, loop progress (epoch -> ε position), RNG, callbacks.
    assert ck["total"] > 700 and ck["equal"] == ck["total"], ck["different"][:20]
    for group in ("weights", "buffers", "optimizer", "scheduler", "rng", "loops", "callbacks"):
        assert r["groups"][group]["total"] > 0, group
    assert r["eps_position"] == {"reference": 1, "resumed": 1}
    # per-epoch logged metrics (killed run's folder + the resumed one) and robustness records
    assert r["metric_epochs"] == [0, 1]
    assert r["epoch_metrics"]["total"] > 20 and r["epoch_metrics"]["different"] == []
    assert r["robustness_history"]["total"] > 50 and r["robustness_history"]["different"] == []
    assert r["robustness_json_equal"]
    if method == "amat":  # the per-sample margins and the threshold were compared
        assert {"method.margins", "method.threshold_value"} <= set(r["buffer_keys"])


@pytest.mark.slow
def test_resume_mid_epoch_state_exact_epoch_means_partial(fault_results) -> None:
    """From a checkpoint inside epoch 1: the end state is bit-exact (the resumable loader skips
    the batches already trained, AMAT's in-epoch margin records are in the checkpoint). What is
    *not* restored is Lightning's running epoch means of the training logs: the resumed epoch's
    ``train/*_epoch`` values average only the batches after the resume (documented)."""
    r = fault_results[("amat", "step")]
    ck = r["checkpoint"]
    assert ck["equal"] == ck["total"], ck["different"][:20]
    assert r["robustness_history"]["different"] == [] and r["robustness_json_equal"]
    diff = r["epoch_metrics"]["different"]
    assert diff and all(k.startswith("1.train/") for k in diff), diff


# ---------------------------------------------------------------------- atomic writes
WRITER = textwrap.dedent("""
    import importlib.util, os, sys, time
    kind, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    # callbacks/atomic.py alone (standard library only): no package import, a fast start
    spec = importlib.util.spec_from_file_location("atomic", {atomic!r})
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    if kind == "ckpt":  # the packages come from PYTHONPATH=<repo> (see _env)
        import torch
        from callbacks.checkpoint import AtomicCheckpointIO
        io_plugin = AtomicCheckpointIO()
    if mode == "pause":  # stop at the worst moment: data written to the temp file, not renamed
        real = os.fsync
        def fsync(fd):
            real(fd)
            print("mid-write", flush=True)
            time.sleep(60)
        os.fsync = fsync

    def write_forever():
        i = len(open(path).read().splitlines()) if kind == "jsonl" and os.path.exists(path) else 0
        while True:
            i += 1
            tag = "AB"[i % 2]
            if kind == "json":
                atomic.atomic_write_text(path, '{{"v": "' + tag * 400000 + '"}}')
            elif kind == "jsonl":
                atomic.append_line_atomic(path, '{{"epoch": ' + str(i) + ', "pad": "' + "x" * 20000 + '"}}')
            elif kind == "ckpt":
                io_plugin.save_checkpoint({{"w": torch.full((300000,), float(i))}}, path)
            elif kind == "plain":  # the non-atomic way, for contrast
                with open(path, "w") as fh:
                    for k in range(50):
                        fh.write(tag * 8000)
                        fh.flush()
                        if mode == "pause" and k == 25:
                            print("mid-write", flush=True)
                            time.sleep(60)
            print("done", i, flush=True)

    if mode == "pause":
        write_forever()
    # loop mode: one forked writer per line on stdin (the caller kills it), imports paid once
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            write_forever()
        print("child", pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
""")


def _start_writer(tmp_path: Path, kind: str, path: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(atomic=str(ROOT / "callbacks" / "atomic.py")))
    return subprocess.Popen([PY, str(script), kind, str(path), mode], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, env=_env())


def _complete(kind: str, path: Path) -> bool:
    """Whether ``path`` holds one complete version of what the writer writes."""
    if kind == "json":
        v = json.loads(path.read_text())["v"]
        return len(v) == 400000 and len(set(v)) == 1
    if kind == "jsonl":
        lines = path.read_text().split("\n")
        return lines[-1] == "" and [json.loads(s)["epoch"] for s in lines[:-1]] == list(
            range(1, len(lines)))
    if kind == "ckpt":
        w = torch.load(path, weights_only=True)["w"]
        return w.shape == (300000,) and bool((w == w[0]).all())
    text = path.read_text()
    return len(text) == 400000 and len(set(text)) == 1


def _wait_line(proc: subprocess.Popen, word: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if word in line:
            return line
    raise AssertionError(f"writer ended before printing {word!r}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["json", "jsonl", "ckpt"])
def test_kill_at_the_worst_moment_keeps_the_previous_file(tmp_path: Path, kind: str) -> None:
    from callbacks.checkpoint import AtomicCheckpointIO

    path = tmp_path / f"out.{kind}"
    # a first complete version
    if kind == "json":
        atomic_write_text(path, '{"v": "' + "Z" * 400000 + '"}')
    elif kind == "jsonl":
        append_line_atomic(path, json.dumps({"epoch": 1, "pad": ""}))
    else:
        AtomicCheckpointIO().save_checkpoint({"w": torch.full((300000,), 7.0)}, path)
    before = path.read_bytes()
    proc = _start_writer(tmp_path, kind, path, "pause")
    _wait_line(proc, "mid-write")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before  # untouched: the new data was only in the temp file
    leftovers = list(tmp_path.glob(f".{path.name}.tmp-*"))
    assert leftovers  # the killed writer's temp file ...
    if kind == "jsonl":
        append_line_atomic(path, json.dumps({"epoch": 2, "pad": ""}))
    else:
        atomic_write_text(path, '{"v": "' + "Y" * 400000 + '"}')
    assert not list(tmp_path.glob(f".{path.name}.tmp-*"))  # ... is removed by the next write


@pytest.mark.slow
def test_plain_write_is_torn_by_the_same_kill(tmp_path: Path) -> None:
    """The check above can fail: the same kill tears a file written in place."""
    path = tmp_path / "plain.txt"
    path.write_text("Z" * 400000)
    proc = _start_writer(tmp_path, "plain", path, "pause")
    _wait_line(proc, "mid-write")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not _complete("plain", path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["json", "jsonl", "ckpt"])
def test_writer_killed_in_a_loop_never_leaves_a_torn_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"loop.{kind}"
    rng = random.Random(0)
    proc = _start_writer(tmp_path, kind, path, "loop")
    assert proc.stdin is not None
    try:
        for kill in range(12):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            child = int(_wait_line(proc, "child").split()[1])
            _wait_line(proc, "done")  # at least one complete version exists
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(child, signal.SIGKILL)
            _wait_line(proc, "reaped")
            assert _complete(kind, path), f"torn {kind} file after kill {kill + 1}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    if kind == "jsonl":  # every kill was after >= 1 complete append
        assert len(path.read_text().splitlines()) >= 12


# ---------------------------------------------------------------------- last.ckpt, top-k
class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_tiny(tmp_path: Path, callback, plugins: list | None = None) -> dict:
    data = DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=3, default_root_dir=tmp_path, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, plugins=plugins)
    trainer.fit(_Tiny(), data)
    return torch.load(tmp_path / "last.ckpt", weights_only=True)


def test_last_ckpt_is_the_latest_epoch(tmp_path: Path) -> None:
    # monitor "epoch" with mode "min": only epoch 0 is ever a new best
    kw = {"dirpath": None, "monitor": "epoch", "mode": "min", "save_top_k": 1, "save_last": True}
    plain = _fit_tiny(tmp_path / "a", LightningModelCheckpoint(**{**kw, "dirpath": tmp_path / "a"}))
    ours = _fit_tiny(tmp_path / "b", ModelCheckpoint(**{**kw, "dirpath": tmp_path / "b"}))
    assert plain["epoch"] == 0  # Lightning 2.6: last.ckpt only when a top-k file is written
    assert ours["epoch"] == 2


class _CountingIO(AtomicCheckpointIO):
    """The crash-safe writer, noting the name of every file it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[str] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.saved.append(Path(path).name)
        super().save_checkpoint(checkpoint, path, storage_options)


@pytest.mark.parametrize("weights_only", [False, True])
@pytest.mark.parametrize("mode", ["max", "min", "no_topk"])
def test_last_ckpt_written_once_per_epoch_through_the_plugin(tmp_path: Path, mode: str,
                                                             weights_only: bool) -> None:
    """``last.ckpt`` once per epoch, whether Lightning wrote it with a top-k file (``max``: every
    epoch is a new best) or the refresh did (``min``: only epoch 0; ``no_topk``: never, and
    not again at the end of fit), and every file goes through the ``CheckpointIO`` given in
    ``Trainer(plugins=[...])``."""
    io_plugin = _CountingIO()
    top_k = 0 if mode == "no_topk" else 1
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="epoch", mode="min" if top_k == 0 else mode,
                               save_top_k=top_k,
                               save_last=True, filename="best-{epoch}", auto_insert_metric_name=False,
                               save_weights_only=weights_only)
    last = _fit_tiny(tmp_path, callback, plugins=[io_plugin])
    assert last["epoch"] == 2
    assert io_plugin.saved.count("last.ckpt") == 3
    best = [n for n in io_plugin.saved if n.startswith("best-")]
    expected = {"max": ["best-0.ckpt", "best-1.ckpt", "best-2.ckpt"], "min": ["best-0.ckpt"], "no_topk": []}
    assert best == expected[mode]


def test_topk_record_survives_a_new_dirpath(tmp_path: Path) -> None:
    old = tmp_path / "version_0"
    old.mkdir()
    (old / "best-000.ckpt").write_bytes(b"x")
    state = {"monitor": "adv/robust_area", "best_model_score": torch.tensor(0.56),
             "best_model_path": str(old / "best-000.ckpt"), "current_score": torch.tensor(0.56),
             "dirpath": str(old), "best_k_models": {str(old / "best-000.ckpt"): torch.tensor(0.56)},
             "kth_best_model_path": str(old / "best-000.ckpt"), "kth_value": torch.tensor(0.56),
             "last_model_path": str(old / "last.ckpt")}
    plain = LightningModelCheckpoint(dirpath=tmp_path / "version_1", monitor="adv/robust_area", mode="max")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        plain.load_state_dict(state)
    assert plain.best_model_score is None  # Lightning forgets the best score
    ours = ModelCheckpoint(dirpath=tmp_path / "version_1", monitor="adv/robust_area", mode="max")
    ours.load_state_dict(state)
    assert float(ours.best_model_score) == pytest.approx(0.56)
    assert ours.best_model_path == str(old / "best-000.ckpt")
    one_process = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda d: d))
    assert ours.check_monitor_top_k(one_process, torch.tensor(0.5)) is False  # worse: not "best"
    assert ours.check_monitor_top_k(one_process, torch.tensor(0.6)) is True
    assert ours.last_model_path == ""  # the new folder gets its own last.ckpt


# ---------------------------------------------------------------------- loader, RNG
def _batches(loader) -> list[list[int]]:
    return [b["index"].tolist() for b in loader]


@pytest.mark.parametrize("workers", [0, 1])
def test_resumable_loader_skips_what_was_trained(workers: int) -> None:
    data = [{"index": torch.tensor(i), "image": torch.zeros(1)} for i in range(10)]

    def make() -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=3, sampler=EpochRandomSampler(data, seed=5),
                                   collate_fn=collate_batch, num_workers=workers,
                                   persistent_workers=workers > 0)

    a = make()
    a.sampler.set_epoch(0)
    e0 = _batches(a)
    a.sampler.set_epoch(1)
    e1 = _batches(a)
    assert e0 != e1 and sorted(sum(e1, [])) == list(range(10)) and len(a) == 4
    again = make()
    again.sampler.set_epoch(1)
    assert _batches(again) == e1  # the order depends on (seed, epoch) only
    # interrupted after 2 batches of epoch 1
    b = make()
    b.sampler.set_epoch(1)
    it = iter(b)
    taken = [next(it)["index"].tolist() for _ in range(2)]
    state = b.state_dict()
    assert state == {"epoch": 1, "batches": 2} and taken == e1[:2]
    c = make()
    c.load_state_dict(state)
    c.sampler.set_epoch(1)
    assert len(c) == 4  # Lightning counts batches against the whole epoch
    assert _batches(c) == e1[2:]
    c.sampler.set_epoch(2)
    assert len(_batches(c)) == 4  # the skip applies to the resumed epoch only


def test_rng_state_round_trip_loads_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002 - the legacy global generator is what is saved
    random.seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2]


# ---------------------------------------------------------------------- non-finite guard
def _module(**options) -> ClassificationModule:
    info = DataInfo(task="classification", spatial_dims=2, in_channels=1, num_classes=2,
                    num_train=16)
    return ClassificationModule(net={"class_path": "lightning_modules.nets.SmallCNN",
                                     "init_args": {"features": [4]}}, data_info=info, **options)


def _batch(nan_at: int | None = None) -> dict:
    image = torch.rand(4, 1, 8, 8)
    if nan_at is not None:
        image[nan_at, 0, 3, 3] = float("nan")
    return {"image": image, "label": torch.tensor([0, 1, 0, 1]), "index": torch.tensor([10, 11, 12, 13])}


def test_nonfinite_image_is_an_error_naming_the_sample() -> None:
    m = _module()
    assert isinstance(m.training_step(_batch(), 0), torch.Tensor)
    with pytest.raises(NonFiniteError, match=r"batch\['image'\] of samples index=\[12\].*SkipNonFinite"):
        m.training_step(_batch(nan_at=2), 0)


def test_nonfinite_loss_is_an_error_naming_the_batch(monkeypatch) -> None:
    m = _module()
    monkeypatch.setattr(m.method, "training_loss",
                        lambda task, batch: (torch.tensor(float("inf"), requires_grad=True), {}))
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(inf\).*index=\[10, 11, 12, 13\]"):
        m.training_step(_batch(), 0)


def test_skipped_nonfinite_loss_restores_batchnorm_statistics(monkeypatch) -> None:
    m = _module(nonfinite="skip")
    real = m.method.training_loss

    def diverged(task, batch):
        loss, logs = real(task, batch)  # the forward updates the BatchNorm running statistics
        return loss * float("nan"), logs

    monkeypatch.setattr(m.method, "training_loss", diverged)
    before = [b.clone() for b in m.buffers()]
    assert m.training_step(_batch(), 0) is None
    assert all(torch.equal(a, b) for a, b in zip(before, m.buffers()))
    assert m.nonfinite_policy.skipped == 1 and m.nonfinite_policy.skipped_indices == [10, 11, 12, 13]
    monkeypatch.setattr(m.method, "training_loss", real)
    m.training_step(_batch(), 0)  # a finite step does update them (the check above can fail)
    assert not all(torch.equal(a, b) for a, b in zip(before, m.buffers()))


class _ParamWatch(pl.Callback):
    """Whether each training batch changed the weights: ``{(epoch, batch_idx): bool}``."""

    def __init__(self) -> None:
        self.changed: dict[tuple[int, int], bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = list(pl_module.parameters())
        self.changed[(trainer.current_epoch, batch_idx)] = any(
            not torch.equal(a, b) for a, b in zip(self._before, now))


def test_skip_nonfinite_policy_counts_and_trains_on(tmp_path: Path, caplog) -> None:
    items = [{"image": torch.rand(1, 8, 8), "label": torch.tensor(i % 2), "index": torch.tensor(i)}
             for i in range(16)]
    items[5]["image"][0, 0, 0] = float("inf")
    loader = DataLoader(items, batch_size=4, collate_fn=collate_batch)  # batch 1 holds index 5
    m = _module(nonfinite="skip", max_nonfinite_skips=10)
    policy = m.nonfinite_policy
    watch = _ParamWatch()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                         callbacks=[watch], default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False)
    with caplog.at_level("WARNING"):
        trainer.fit(m, loader)
    assert policy.skipped == 2 and policy.skipped_indices == [5, 5]  # once per epoch
    # the skipped batches (batch_idx 1) changed no weight; the others did
    assert watch.changed == {(0, 0): True, (0, 1): False, (0, 2): True, (0, 3): True,
                             (1, 0): True, (1, 1): False, (1, 2): True, (1, 3): True}
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert all(torch.isfinite(b).all() for b in m.buffers())  # the NaN never reached BatchNorm
    assert float(trainer.callback_metrics["train/nonfinite_skipped"]) == 2.0
    assert "index=[5]" in caplog.text
    assert policy.state_dict()["skipped"] == 2  # checkpointed with the module
    checkpoint: dict = {}
    m.on_save_checkpoint(checkpoint)
    assert checkpoint["medrobust"]["nonfinite"] == {"skipped": 2, "skipped_indices": [5, 5]}
    resumed = _module(nonfinite="skip", max_nonfinite_skips=10)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.nonfinite_policy.skipped == 2 and resumed.nonfinite_policy.skipped_indices == [5, 5]
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteError, match="more than max_skipped=1"):
        trainer.fit(_module(nonfinite="skip", max_nonfinite_skips=1), loader)


def test_nonfinite_option_is_checked() -> None:
    assert _module().nonfinite_policy is None  # the default: a non-finite step is an error
    with pytest.raises(ValueError, match=r"ClassificationModule\.nonfinite must be 'error' or 'skip'"):
        _module(nonfinite="ignore")
    with pytest.raises(ValueError, match=r"max_nonfinite_skips needs nonfinite='skip'"):
        _module(max_nonfinite_skips=3)
    with pytest.raises(ValueError, match=r"max_nonfinite_skips must be None or an int >= 0"):
        _module(nonfinite="skip", max_nonfinite_skips=-1)


def test_nonfinite_pixels_at_load(tmp_path: Path) -> None:
    from PIL import Image

    arr = np.full((6, 6), 0.5, dtype=np.float32)
    arr[2, 3] = np.nan
    path = tmp_path / "scan.tiff"
    Image.fromarray(arr, mode="F").save(path)
    with pytest.raises(BadSampleError, match=r"scan\.tiff holds 1 non-finite"):
        read_image(path, 1)


def test_nonfinite_voxels_at_load(tmp_path: Path) -> None:
    import nibabel as nib

    from datamodules.volumes import DecathlonDataModule

    task = tmp_path / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    training = []
    for i in range(4):
        image = np.random.default_rng(i).normal(300.0, 50.0, (8, 8, 6)).astype(np.float32)
        if i == 2:
            image[3, 3, 3] = np.nan
        label = np.zeros((8, 8, 6), np.uint8)
        label[2:5, 2:5, 1:3] = 1
        name = f"hippocampus_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), task / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (task / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"},
        "numTraining": 4, "training": training, "test": []}))
    ds = DecathlonDataModule(root=str(tmp_path), split_fractions=(1.0, 0.0, 0.0),
                             batch_size=2).build_split("train")
    ds[1]  # a finite volume loads
    with pytest.raises(BadSampleError, match=r"hippocampus_002\.nii\.gz holds \d+ non-finite"):
        ds[2]


def test_amat_in_epoch_records_round_trip_and_split_by_rank(monkeypatch) -> None:
    from lightning_modules.methods import amat as amat_mod
    from lightning_modules.methods import per_sample_state

    m = amat_mod.AMAT()
    m.setup(SimpleNamespace(data_info=SimpleNamespace(num_train=8), violation_direction=None))
    # rows [global order key, index, margin, statistic, grew, clean violated]
    rows = torch.tensor([[k, 7 - k, 0.1 * k, float("nan"), 1.0, 0.0] for k in range(6)],
                        dtype=torch.float64)
    m.records.load_state(rows[:4], torch.device("cpu"))
    m.records.add(torch.tensor([3, 2]), margin=rows[4:, 2], statistic=rows[4:, 3], grew=rows[4:, 4],
                  clean_violated=rows[4:, 5])
    assert m.records.seen == 6
    state = m.epoch_state()
    fresh = amat_mod.AMAT()
    fresh.setup(SimpleNamespace(data_info=SimpleNamespace(num_train=8), violation_direction=None))
    fresh.load_epoch_state(state)
    assert torch.allclose(fresh.records.rows(torch.device("cpu")), rows, rtol=0, atol=0, equal_nan=True)
    assert fresh.records.seen == 6
    # under DDP (keys are position·W + rank) every rank takes back its own rows
    monkeypatch.setattr(per_sample_state, "world_size", lambda: 2)
    monkeypatch.setattr(per_sample_state, "rank", lambda: 1)
    fresh.load_epoch_state({"pending_rows": rows})
    assert fresh.records.rows(torch.device("cpu"))[:, 0].tolist() == [1.0, 3.0, 5.0]
    assert fresh.records.seen == 3
    with pytest.raises(ValueError, match=r"expected rows \[n, 6\]"):
        fresh.load_epoch_state({"pending_rows": rows[:, :4]})
