"""configs/callbacks/adversarial_eval_strong.yaml and adversarial_eval_standard.yaml compose with
every shipped experiment, and the standard file's header command runs as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medrobust.config_pieces import load_config
from tests.support.tiny_configs import tiny_experiment, write_config
from train import cli_main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STRONG = PROJECT_ROOT / "configs" / "callbacks" / "adversarial_eval_strong.yaml"
STANDARD = PROJECT_ROOT / "configs" / "callbacks" / "adversarial_eval_standard.yaml"
EXPERIMENTS = sorted((PROJECT_ROOT / "configs" / "experiment").glob("*.yaml"))
#: parsed for real (one per task, real and synthetic data); all are checked statically below
PARSED = ["quickstart", "segmentation_ph2_sat", "landmarks_synthetic_amat",
          "detection_bccd_clean", "classification_pneumoniamnist_sat-joel2022"]


def evaluation_prefixes(callbacks: list[dict]) -> list[str]:
    return [cb.get("init_args", {}).get("prefix", "adv") for cb in callbacks
            if str(cb.get("class_path", "")).endswith("AdversarialEvaluation")]


@pytest.mark.parametrize("piece", [STRONG, STANDARD], ids=["strong", "standard"])
def test_no_experiment_clashes_with_the_added_suite(piece: Path) -> None:
    added = yaml.safe_load(piece.read_text())
    assert EXPERIMENTS
    for path in EXPERIMENTS:
        cfg = load_config(path)
        callbacks = list((cfg.get("trainer") or {}).get("callbacks") or [])
        prefixes = evaluation_prefixes([*callbacks, added])
        assert len(prefixes) == len(set(prefixes)), f"{path.name}: {prefixes}"


@pytest.mark.parametrize("experiment", PARSED)
def test_strong_suite_composes(experiment: str, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDROBUST_DATA", "/nonexistent")  # parsing only: no data is read
    path = PROJECT_ROOT / "configs" / "experiment" / f"{experiment}.yaml"
    with pytest.raises(SystemExit) as exc:
        cli_main(["test", "--config", str(path), f"--trainer.callbacks+={STRONG}", "--print_config"])
    assert exc.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    prefixes = evaluation_prefixes(cfg["trainer"]["callbacks"])
    assert "strong" in prefixes and len(prefixes) == len(set(prefixes)), prefixes
    strong = next(cb for cb in cfg["trainer"]["callbacks"]
                  if cb["init_args"].get("prefix") == "strong")
    assert [a["name"] for a in strong["init_args"]["test_attacks"]] == ["fgsm", "mifgsm", "pgd"]


@pytest.mark.slow
def test_strong_suite_runs_beside_the_experiments_evaluation(tmp_path: Path) -> None:
    """The README's command: fit, then test the last checkpoint with the strong suite added."""
    import json

    import torch

    cfg = tiny_experiment("quickstart", features=[4],
                          data=dict(num_train=16, num_val=8, num_test=8, image_size=[12, 12], batch_size=8))
    path = write_config(cfg, tmp_path / "quickstart.yaml")
    strong = yaml.safe_load(STRONG.read_text())
    strong["init_args"]["test_attacks"] = [{"name": "fgsm", "norm": "linf"},
                                           {"name": "pgd", "norm": "linf", "steps": 2, "restarts": 2}]
    (tmp_path / "callbacks").mkdir()
    strong_path = tmp_path / "callbacks" / "strong.yaml"  # the shipped file with fewer steps
    strong_path.write_text(yaml.safe_dump(strong))
    common = ["--config", str(path), "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
    cli_main(["fit", *common, "--trainer.max_epochs", "1"])
    torch.manual_seed(0)
    test = cli_main(["test", *common, f"--trainer.callbacks+={strong_path}", "--ckpt_path", "last"])
    folder = Path(test.trainer.log_dir)
    assert folder.name == "version_0"  # beside the training run that saved the checkpoint
    plain = json.loads((folder / "robustness.json").read_text())
    record = json.loads((folder / "robustness_strong.json").read_text())
    assert record["split"] == plain["split"] == "test"
    assert [a["attack"] for a in record["attacks"]][:2] == ["fgsm", "pgd"]
    assert {a["eps"] for a in record["attacks"]} == {0.001, 0.002, 0.004, 0.008}
    assert (folder / "report_strong.md").is_file()
    assert "strong/robust_area" in test.trainer.callback_metrics


def header_command(piece: Path) -> list[str]:
    """The command in the file's header comment (``#   python train.py …``, continued with ``\\``)
    as an argument list without ``python train.py``."""
    lines = [line[1:].strip() for line in piece.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("python train.py"))
    text = ""
    for line in lines[start:]:
        text += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            break
    words = text.split()
    assert words[:2] == ["python", "train.py"], words
    return words[2:]


def test_standard_suite_header_command_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit an experiment, then run the header command of adversarial_eval_standard.yaml on its
    checkpoint (the shipped file with a tiny budget: the quick suite on 4 samples at one ε)."""
    import json

    args = header_command(STANDARD)
    assert args[0] == "test" and "configs/experiment/<x>.yaml" in args and "<ckpt>" in args
    assert "--trainer.callbacks+=configs/callbacks/adversarial_eval_standard.yaml" in args
    cfg = tiny_experiment("classification_synthetic_sat", features=[4],
                          data=dict(num_train=8, num_val=4, num_test=4, image_size=[12, 12], batch_size=4))
    write_config(cfg, tmp_path / "configs" / "experiment" / "classification_synthetic_sat.yaml")
    (tmp_path / "configs" / "callbacks").mkdir()
    standard = yaml.safe_load(STANDARD.read_text())
    assert standard["init_args"]["test_attacks"] == "standard"
    standard["init_args"].update(test_attacks="quick", test_eps=[0.05], test_subset=4)
    (tmp_path / "configs" / "callbacks" / "adversarial_eval_standard.yaml").write_text(yaml.safe_dump(standard))
    monkeypatch.chdir(tmp_path)  # the command's relative paths, to the tiny copies
    common = ["--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
              "--trainer.accelerator", "cpu"]
    fit = cli_main(["fit", "--config", "configs/experiment/classification_synthetic_sat.yaml", *common,
                    "--trainer.max_epochs", "1"])
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    args = [a.replace("<x>", "classification_synthetic_sat").replace("<ckpt>", str(ckpt)) for a in args]
    test = cli_main([*args, *common])
    folder = Path(test.trainer.log_dir)
    assert folder == ckpt.parent.parent
    record = json.loads((folder / "robustness_standard.json").read_text())
    assert record["split"] == "test" and record["suite_name"] == "quick"
    assert json.loads((folder / "robustness.json").read_text())["split"] == "test"  # the experiment's own
    assert (folder / "report_standard.md").is_file() and (folder / "robustness_samples_standard.csv").is_file()
    assert "standard/robust_area" in test.trainer.callback_metrics
