"""configs/callbacks/adversarial_eval_strong.yaml composes with every shipped experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medrobust.config_pieces import load_config
from train import cli_main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STRONG = PROJECT_ROOT / "configs" / "callbacks" / "adversarial_eval_strong.yaml"
EXPERIMENTS = sorted((PROJECT_ROOT / "configs" / "experiment").glob("*.yaml"))
#: parsed for real (one per task, real and synthetic data); all are checked statically below
PARSED = ["quickstart", "segmentation_ph2_sat", "landmarks_synthetic_amat",
          "detection_bccd_clean", "classification_pneumoniamnist_sat-joel2022"]


def evaluation_prefixes(callbacks: list[dict]) -> list[str]:
    return [cb.get("init_args", {}).get("prefix", "adv") for cb in callbacks
            if str(cb.get("class_path", "")).endswith("AdversarialEvaluation")]


def test_no_experiment_clashes_with_the_strong_suite() -> None:
    strong = yaml.safe_load(STRONG.read_text())
    assert EXPERIMENTS
    for path in EXPERIMENTS:
        cfg = load_config(path)
        callbacks = list((cfg.get("trainer") or {}).get("callbacks") or [])
        prefixes = evaluation_prefixes([*callbacks, strong])
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

    cfg = load_config(PROJECT_ROOT / "configs" / "experiment" / "quickstart.yaml")
    cfg["data"]["init_args"].update(num_train=16, num_val=8, num_test=8, image_size=[12, 12], batch_size=8)
    cfg["trainer"]["callbacks"] = [cb for cb in cfg["trainer"]["callbacks"]
                                   if not cb["class_path"].endswith("MarginMonitor")]
    cfg["model"]["init_args"]["net"]["init_args"]["features"] = [4]
    cfg["model"]["init_args"]["method"]["init_args"]["attack"]["steps"] = 1
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(cfg))
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
    assert folder.name == "version_1"
    plain = json.loads((folder / "robustness.json").read_text())
    record = json.loads((folder / "robustness_strong.json").read_text())
    assert record["split"] == plain["split"] == "test"
    assert [a["attack"] for a in record["attacks"]][:2] == ["fgsm", "pgd"]
    assert {a["eps"] for a in record["attacks"]} == {0.001, 0.002, 0.004, 0.008}
    assert (folder / "report_strong.md").is_file()
    assert "strong/robust_area" in test.trainer.callback_metrics
