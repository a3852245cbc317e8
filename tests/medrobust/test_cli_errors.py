"""A mistake on the command line prints its message alone; ``--debug`` keeps the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from medrobust.cli import main
from medrobust.cli_errors import strip_debug, user_error

BAD = ["fit", "--config", "configs/experiment/quickstart.yaml", "--model.init_args.lr=-1"]


def test_one_message_without_the_jsonargparse_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDROBUST_DEBUG", raising=False)
    with pytest.raises(SystemExit) as done:
        main([*BAD, "--trainer.default_root_dir", str(tmp_path)])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "ClassificationModule.lr must be a number >= 0, got -1.0" in err
    assert "Traceback" not in err and "Namespace(" not in err  # no frames, no config dump
    assert "--debug" in err
    assert not list(tmp_path.glob("**/version_*"))  # nothing half-made


def test_debug_keeps_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDROBUST_DEBUG", raising=False)
    with pytest.raises(Exception) as raised:
        main([*BAD, "--trainer.default_root_dir", str(tmp_path), "--debug"])
    assert not isinstance(raised.value, SystemExit)
    assert user_error(raised.value) is not None  # the original error is in the chain


def test_only_our_user_errors_are_shortened() -> None:
    def ours() -> None:
        raise ValueError("ours")

    try:
        try:
            ours()
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert str(user_error(outer)) == "ours"
    import json

    try:
        json.loads("{")  # raised inside the standard library: not ours
    except ValueError as theirs:
        assert user_error(theirs) is None
    assert strip_debug(["fit", "--debug"])[0] == ["fit"]
