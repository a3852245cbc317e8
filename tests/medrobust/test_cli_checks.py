"""CLI: typos in net.init_args and data task fail at --print_config with a "did you mean";
--model.help works for every task module."""

from __future__ import annotations

from pathlib import Path

import pytest

from train import cli_main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "experiment" / "quickstart.yaml")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--model.init_args.net.init_args.featurs", "[4, 8]", "did you mean 'features'?"),
    ("--model.init_args.net.init_args.weight_path", "w.pth", "did you mean 'weights_path'?"),
    ("--data.init_args.task", "clasification", "did you mean 'classification'?"),
])
def test_typos_fail_at_print_config(flag: str, value: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--config", QUICKSTART, flag, value, "--print_config"])
    assert exc.value.code not in (0, None)
    assert message in capsys.readouterr().err


def test_typo_fails_before_building(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'features'"):
        cli_main(["fit", "--config", QUICKSTART, "--model.init_args.net.init_args.featurs", "[4]",
                  "--trainer.default_root_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("module", "option"), [("LandmarkModule", "--model.sigma"),
                                                ("DetectionModule", "--model.label_offset"),
                                                ("SegmentationModule", "--model.net")])
def test_model_help(module: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--model.help", module])
    assert exc.value.code in (0, None)
    assert option in capsys.readouterr().out
