"""configs/callbacks/adversarial_eval_strong.yaml composes with every shipped experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
        cfg = yaml.safe_load(path.read_text())
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
