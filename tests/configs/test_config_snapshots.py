"""Every ``configs/experiment/*.yaml`` resolves, through train.py's parser, to the config in its
golden snapshot ``tests/data/resolved_configs/<name>.yaml``.

The experiments are short overrides of shared pieces (``configs/callbacks/…`` referenced by
path); this pins what each of them means once resolved, so moving a block into a shared piece
cannot change a run. When a change is *meant* to alter resolved configs (a new init argument, a
new default), rewrite the snapshots and review their diff::

    python -m tests.configs.test_config_snapshots --write      # from the repo root

Real-data experiments resolve with ``MEDROBUST_DATA`` pointing nowhere: parsing reads no data.
Nothing is excluded from the comparison (the ``# lightning.pytorch==…`` header of
``--print_config`` is a comment and not part of the config).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import yaml

from train import resolved_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((PROJECT_ROOT / "configs" / "experiment").glob("*.yaml"))
SNAPSHOTS = PROJECT_ROOT / "tests" / "data" / "resolved_configs"
NO_DATA = "/nonexistent-medrobust-data"


def snapshot_path(experiment: Path) -> Path:
    return SNAPSHOTS / experiment.name


def test_every_experiment_has_a_snapshot() -> None:
    assert EXPERIMENTS
    missing = [p.name for p in EXPERIMENTS if not snapshot_path(p).is_file()]
    stale = sorted({p.name for p in SNAPSHOTS.glob("*.yaml")} - {p.name for p in EXPERIMENTS})
    assert not missing, f"no snapshot for {missing}: run python -m tests.configs.test_config_snapshots --write"
    assert not stale, f"snapshots without an experiment: {stale}"


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_resolves_to_its_snapshot(experiment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDROBUST_DATA", NO_DATA)
    expected = yaml.safe_load(snapshot_path(experiment).read_text())
    assert resolved_config(experiment) == expected


def write_snapshots() -> None:
    os.environ["MEDROBUST_DATA"] = NO_DATA
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    for path in EXPERIMENTS:
        cfg = resolved_config(path)
        snapshot_path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"wrote {snapshot_path(path).relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite every snapshot")
    if parser.parse_args().write:
        write_snapshots()
    else:
        parser.print_help()


def test_load_config_inlines_pieces_like_the_parser(tmp_path: Path) -> None:
    """``load_config`` gives the experiment's callbacks as dicts, as the CLI reads them, so an
    edited copy written anywhere still runs (benchmarks/run.py, shrinking tests)."""
    from medrobust.config_pieces import load_config

    path = PROJECT_ROOT / "configs" / "experiment" / "classification_ph2_sat-xue2019.yaml"
    raw = yaml.safe_load(path.read_text())["trainer"]["callbacks"]
    assert all(isinstance(item, str) for item in raw)  # the experiment references its pieces
    cfg = load_config(path)
    callbacks = cfg["trainer"]["callbacks"]
    assert [cb["class_path"].rsplit(".", 1)[-1] for cb in callbacks] == [
        "ModelCheckpoint", "AdversarialEvaluation", "AdversarialEvaluation"]
    assert callbacks[2]["init_args"]["prefix"] == "noise"
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    copy.write_text(yaml.safe_dump(cfg))
    resolved = yaml.safe_load(snapshot_path(path).read_text())
    assert resolved_config(copy)["trainer"]["callbacks"] == resolved["trainer"]["callbacks"]


def test_a_missing_piece_is_named(tmp_path: Path) -> None:
    from medrobust.config_pieces import load_config

    cfg = tmp_path / "x.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    - ../callbacks/nope.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"trainer\.callbacks\[0\].*nope\.yaml"):
        load_config(cfg)
    (tmp_path / "bad.yaml").write_text("- 1\n")
    cfg.write_text("trainer:\n  callbacks:\n    - bad.yaml\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*class_path"):
        load_config(cfg)


def test_every_shared_piece_is_used() -> None:
    """A piece under configs/callbacks/evaluation/ that no experiment lists is dead config."""
    listed = {item for p in EXPERIMENTS
              for item in yaml.safe_load(p.read_text())["trainer"].get("callbacks") or []
              if isinstance(item, str)}
    used = {(PROJECT_ROOT / "configs" / "experiment" / item).resolve() for item in listed}
    pieces = set((PROJECT_ROOT / "configs" / "callbacks" / "evaluation").glob("*.yaml"))
    assert pieces and not {p.resolve() for p in pieces} - used
