"""``callbacks.record.RobustnessRecord``: the one reader/writer of ``robustness.json``.

Round trip, the exact key set of the file (DESIGN.md's contract plus medrobust's keys and
``schema_version``), errors naming the file and the key, and crash safety of both files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest

import callbacks.atomic as atomic
from callbacks import AdversarialEvaluation
from callbacks.record import (
    SCHEMA_VERSION,
    RecordError,
    RobustnessRecord,
    append_history,
    load_history,
)
from tests.support.callback_models import make_datamodule, make_module

#: DESIGN.md's robustness.json contract
DESIGN_KEYS = {"task", "method", "epoch", "split", "clean", "attacks"}
DESIGN_ATTACK_KEYS = {"attack", "norm", "eps", "steps", "metrics"}
#: every key the writer puts in the file (as before the record existed) + schema_version
FILE_KEYS = DESIGN_KEYS | {
    "schema_version", "global_step", "suite", "suite_name", "sequential", "members", "ensemble",
    "ensemble_rule", "robust_area", "eval_seconds", "subset", "settings", "minimal_eps", "sanity",
    "compute", "higher_is_better",
    "unreliable",  # the fired sanity flags (they fire on this untrained model)
    "intervals",  # confidence intervals from the per-sample file (validate: intervals="test")
}
ATTACK_KEYS = DESIGN_ATTACK_KEYS | {"name", "step_size", "restarts", "random_start", "in_ensemble",
                                    "loss", "gradients", "unreliable"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RobustnessRecord]:
    """A real ``robustness.json`` (minimal ε and sanity checks on: every optional key)."""
    tmp = tmp_path_factory.mktemp("record")
    L.seed_everything(0, verbose=False)
    dm = make_datamodule()
    cb = AdversarialEvaluation(attacks=[{"name": "pgd", "norm": "linf", "steps": 2, "random_start": False}],
                               eps=[0.01, 0.03], subset=8, sanity="always",
                               minimal_eps={"eps_max": 0.2, "attack": {"steps": 2}, "n_bisect": 2})
    tr = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp),
                   callbacks=[cb])
    with pytest.warns(UserWarning):  # the sanity checks fire on an untrained model
        tr.validate(make_module(dm), dm, verbose=False)
    return tmp / "robustness.json", cb.last_record["val"]


def test_round_trip_and_exact_keys(written: tuple[Path, RobustnessRecord], tmp_path: Path) -> None:
    path, in_memory = written
    loaded = RobustnessRecord.load(path)
    assert loaded.to_json() == in_memory.to_json()  # what was written is what is read
    again = loaded.save(tmp_path / "again.json")
    assert RobustnessRecord.load(again) == loaded  # save → load is the identity
    data = json.loads(path.read_text())
    assert set(data) == FILE_KEYS
    for entry in data["attacks"]:
        assert set(entry) == ATTACK_KEYS
    assert {k for e in data["ensemble"] for k in e} == {"attack", "eps", "attacks", "metrics", "unreliable"}
    assert set(data["robust_area"]) == {"value", "metric", "higher_is_better", "metric_lower_is_better",
                                        "definition"}
    assert data["schema_version"] == SCHEMA_VERSION
    # every metric's direction, from the task's metric objects (classification: all scores)
    assert data["higher_is_better"] == {m: True for m in data["clean"]}
    assert loaded.lower_is_better("balanced_accuracy") is False
    assert loaded.robust_area is not None and loaded.robust_area.metric == "accuracy"
    assert loaded.value("accuracy", "pgd", 0.03) == data["attacks"][-1]["metrics"]["accuracy"]


def test_history_lines_are_records(written: tuple[Path, RobustnessRecord]) -> None:
    path, in_memory = written
    (line,) = load_history(path.parent / "robustness_history.jsonl")
    assert line.to_json() == in_memory.to_json()


def test_schema_version_missing_and_newer(written: tuple[Path, RobustnessRecord], tmp_path: Path) -> None:
    data = json.loads(written[0].read_text())
    old = dict(data)
    old.pop("schema_version")
    assert RobustnessRecord.from_dict(old, "old.json").schema_version == 0  # files from before
    bad = tmp_path / "future.json"
    bad.write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RecordError, match=r"future\.json.*schema_version"):
        RobustnessRecord.load(bad)


def test_bad_files_name_the_file_and_the_key(written: tuple[Path, RobustnessRecord], tmp_path: Path) -> None:
    text = written[0].read_text()
    torn = tmp_path / "torn.json"
    torn.write_text(text[: len(text) // 2])  # a copy cut short
    with pytest.raises(RecordError, match=r"torn\.json: not valid JSON.*truncated"):
        RobustnessRecord.load(torn)
    data = json.loads(text)
    no_clean = tmp_path / "no_clean.json"
    no_clean.write_text(json.dumps({k: v for k, v in data.items() if k != "clean"}))
    with pytest.raises(RecordError, match=r"no_clean\.json: missing key 'clean'"):
        RobustnessRecord.load(no_clean)
    data["attacks"][1]["eps"] = "big"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"wrong\.json: attacks\[1\]: key 'eps' must be int or float"):
        RobustnessRecord.load(wrong)
    with pytest.raises(RecordError, match=r"absent\.json: cannot read"):
        RobustnessRecord.load(tmp_path / "absent.json")


def test_a_crash_while_writing_keeps_the_old_files(written: tuple[Path, RobustnessRecord], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    record = RobustnessRecord.load(written[0])
    path, history = tmp_path / "robustness.json", tmp_path / "robustness_history.jsonl"
    record.save(path)
    append_history(history, record)
    before, before_history = path.read_bytes(), history.read_bytes()

    def killed(src: str, dst: str) -> None:  # the process dies between write and rename
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(atomic.os, "replace", killed)
    record.epoch = 99
    with pytest.raises(KeyboardInterrupt):
        record.save(path)
    with pytest.raises(KeyboardInterrupt):
        append_history(history, record)
    monkeypatch.undo()
    assert path.read_bytes() == before and history.read_bytes() == before_history  # intact
    assert RobustnessRecord.load(path).epoch == written[1].epoch
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert len(load_history(history)) == 1


def test_history_reader_drops_a_torn_last_line_and_rejects_a_bad_middle(
        written: tuple[Path, RobustnessRecord], tmp_path: Path) -> None:
    record = RobustnessRecord.load(written[0])
    history = tmp_path / "h.jsonl"
    append_history(history, record)
    full = history.read_text()
    history.write_text(full + full[: len(full) // 3])  # an older writer killed mid-line
    with pytest.warns(UserWarning, match=r"h\.jsonl: line 2 is torn"):
        assert len(load_history(history)) == 1
    history.write_text(full[: len(full) // 3] + "\n" + full)
    with pytest.raises(RecordError, match=r"h\.jsonl: line 1 is not valid JSON"):
        load_history(history)
    os.remove(history)
