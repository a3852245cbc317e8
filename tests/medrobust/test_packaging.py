"""The wheel: built from the repo, installed into a fresh venv, `medrobust fit` runs a shipped
config from a folder outside the repo; the `medrobust` namespace survives a user's own
`callbacks.py`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "results", "lightning_logs", "wandb", "build",
                              "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "tests")


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv holding only the medrobust wheel; the dependencies (torch…) come from this
    interpreter's site-packages through a plain path entry, which does not run the editable
    install's ``.pth`` hook, so nothing of the source tree can be imported from it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(PROJECT_ROOT, src, ignore=SKIP)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(src)], tmp, env)
    wheel = next((tmp / "dist").glob("medrobust-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp, env).strip())
    deps = Path(torch.__file__).resolve().parents[1]  # site-packages of the dependencies
    (site / "_medrobust_test_deps.pth").write_text(f"{deps}\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         "-q", str(wheel)], tmp, env)
    return venv, env


@pytest.mark.slow
def test_wheel_runs_the_shipped_quickstart(wheel_venv: tuple[Path, dict[str, str]],
                                           tmp_path: Path) -> None:
    venv, env = wheel_venv
    site = str(venv)
    where = run([str(venv / "bin" / "python"), "-c", textwrap.dedent("""
        import attacks, callbacks, datamodules, lightning_modules, medrobust
        for m in (attacks, callbacks, datamodules, lightning_modules, medrobust):
            print(m.__file__)
        print(medrobust.CONFIG_DIR)
    """)], tmp_path, env).split()
    assert all(w.startswith(site) for w in where), where  # the wheel, not the source tree
    run([str(venv / "bin" / "medrobust"), "fit", "--config", "configs/experiment/quickstart.yaml",
         "--trainer.max_epochs", "1", "--data.init_args.num_train", "64",
         "--data.init_args.num_val", "32", "--trainer.enable_progress_bar", "false",
         "--trainer.accelerator", "cpu"], tmp_path, env)
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    assert (run_dir / "robustness.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_namespace_survives_a_users_callbacks_module(wheel_venv: tuple[Path, dict[str, str]],
                                                     tmp_path: Path) -> None:
    venv, env = wheel_venv
    (tmp_path / "callbacks.py").write_text("MINE = True\n")
    (tmp_path / "script.py").write_text(textwrap.dedent("""
        import sys
        import callbacks                      # the user's own module
        import medrobust
        from medrobust.callbacks import AdversarialEvaluation
        from medrobust.callbacks.plotting import plot_robustness_curves
        import medrobust.lightning_modules as lm
        assert callbacks.MINE and sys.modules["callbacks"] is callbacks
        assert AdversarialEvaluation.__module__ == "callbacks.adversarial_evaluation"
        assert sys.modules["callbacks.adversarial_evaluation"].__file__.startswith(sys.prefix)
        print("ok", lm.ClassificationModule.__name__)
    """))
    out = run([str(venv / "bin" / "python"), "script.py"], tmp_path, env)
    assert "ok ClassificationModule" in out


def test_config_paths_resolve_to_the_shipped_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medrobust
    from medrobust.cli import resolve_config_args

    monkeypatch.chdir(tmp_path)  # no configs/ here
    shipped = str(medrobust.CONFIG_DIR / "experiment" / "quickstart.yaml")
    assert resolve_config_args(["fit", "--config", "configs/experiment/quickstart.yaml"]) == [
        "fit", "--config", shipped]
    assert resolve_config_args(["--config=experiment/quickstart.yaml"]) == [f"--config={shipped}"]
    (tmp_path / "mine.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_args(["--config", "mine.yaml"]) == ["--config", "mine.yaml"]  # own file
    assert resolve_config_args(["--config", "absent.yaml"]) == ["--config", "absent.yaml"]
