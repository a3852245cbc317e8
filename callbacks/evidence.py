"""The dataset-level evidence file: what AUROC, balanced accuracy, F1 and mAP are recomputed from.

AUROC, balanced accuracy, F1 and mAP are not means of per-sample values, so the per-sample file
(``robustness_samples.csv``) cannot give them an interval. What can: each image's prediction in
the form the metric consumes, kept for every condition of the evaluation, from which the metric
is recomputed on any multiset of images. The evaluation writes it beside ``robustness.json`` as
``robustness_evidence.json``::

    {"format": "medrobust dataset-level evidence", "version": 1, "kind": "scores",
     "metrics": ["auroc", "balanced_accuracy", "f1"], "info": {"classes": 2, "multilabel": false},
     "sample_ids": [3, 17, …],
     "targets": [1, 0, …],
     "columns": {"clean": [0.91, 0.12, …], "pgd/0.004": […], "worst/0.004": […]}}

* ``kind: "scores"`` (classification): per sample, the positive-class probability for two
  classes, else the list of class probabilities (multi-label: per-label sigmoids); ``targets``:
  the label (multi-label: the 0/1 list). Probabilities carry 9 significant digits (an exact
  round trip of the float32 the metrics saw, so the ordering and the 0.5 threshold are kept).
* ``kind: "matches"`` (detection): per image, its kept detections ``[class, score, tp_bits]``
  matched to ground truth as COCOeval matches them (``tp_bits``: bit ``k`` set for a true
  positive at ``info.iou_thresholds[k]``; :func:`lightning_modules.metrics.detection.coco_matches`);
  ``targets``: ``[[class, count], …]`` ground-truth boxes per class. Matching is per image and
  class, so these lists recompute AP on any multiset of images.
* columns: ``clean``, ``<attack>/<ε>``, ``worst/<ε>``: the same conditions (and the same
  candidate chosen for the worst case) as the per-sample file; rows sorted by sample id.

The same evaluation gives a byte-identical file (fixed key order, floats printed by ``repr``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callbacks.per_sample import common_ids

__all__ = ["FILE_NAME", "Evidence", "evidence_key", "round9"]

#: the file's name inside a run's log directory (beside ``robustness.json``)
FILE_NAME = "robustness_evidence.json"
FORMAT = "medrobust dataset-level evidence"
FORMAT_VERSION = 1
KINDS = ("scores", "matches")


def evidence_key(condition: str, eps: float | None = None) -> str:
    """``clean``, ``pgd/0.004``, ``worst/0.004`` (the per-sample file's column names, less the metric)."""
    return condition if eps is None else f"{condition}/{float(eps):g}"


def round9(value: float) -> float:
    """9 significant digits: an exact round trip of a float32, printed short."""
    return float(f"{float(value):.9g}")


@dataclass
class Evidence:
    """Per-image predictions of one evaluation in the form its dataset-level metrics consume
    (module docstring). ``columns[key][i]`` and ``targets[i]`` belong to ``sample_ids[i]``."""

    kind: str
    metrics: list[str]
    sample_ids: np.ndarray
    targets: list[Any]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset-level evidence: kind must be one of {KINDS}, got {self.kind!r}")
        self.sample_ids = np.asarray(self.sample_ids, dtype=np.int64).reshape(-1)
        n = self.sample_ids.size
        if len(np.unique(self.sample_ids)) != n:
            raise ValueError("dataset-level evidence: sample ids must be unique")
        if len(self.targets) != n:
            raise ValueError(f"dataset-level evidence: {len(self.targets)} targets for {n} samples")
        for key, values in self.columns.items():
            if len(values) != n:
                raise ValueError(f"dataset-level evidence: column {key!r} has {len(values)} entries for {n} samples")

    @property
    def n(self) -> int:
        return int(self.sample_ids.size)

    def sorted(self) -> Evidence:
        """Rows sorted by sample id."""
        order = np.argsort(self.sample_ids, kind="stable").tolist()
        return Evidence(self.kind, list(self.metrics), self.sample_ids[order], [self.targets[i] for i in order],
                        {k: [v[i] for i in order] for k, v in self.columns.items()}, dict(self.info))

    def aligned(self, other: Evidence) -> tuple[Evidence, Evidence]:
        """Both tables restricted to the sample ids they share, sorted by id (for paired
        comparisons); ``ValueError`` when they share none or are of different kinds."""
        if self.kind != other.kind:
            raise ValueError(f"dataset-level evidence of different kinds ({self.kind!r}, {other.kind!r}) "
                             "cannot be paired")
        common = common_ids(self.sample_ids, other.sample_ids)
        return self._take(common), other._take(common)

    def _take(self, ids: np.ndarray) -> Evidence:
        pos = {int(s): i for i, s in enumerate(self.sample_ids.tolist())}
        rows = [pos[int(s)] for s in ids]
        return Evidence(self.kind, list(self.metrics), ids.copy(), [self.targets[i] for i in rows],
                        {k: [v[i] for i in rows] for k, v in self.columns.items()}, dict(self.info))

    def to_dict(self) -> dict[str, Any]:
        table = self.sorted()
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": table.kind, "metrics": table.metrics,
                "info": table.info, "sample_ids": table.sample_ids.tolist(), "targets": table.targets,
                "columns": table.columns}

    def to_json(self) -> str:
        # one line per column: compact, and a diff shows which column changed
        d = self.to_dict()
        head = {k: v for k, v in d.items() if k != "columns"}
        lines = [json.dumps(head, allow_nan=False)[:-1] + ', "columns": {']
        cols = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False, separators=(',', ':'))}"
                for k, v in d["columns"].items()]
        return "\n".join(lines + [",\n".join(cols), "}}"]) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename), like ``robustness.json``."""
        from callbacks.atomic import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Evidence:
        """Read a file written by :meth:`save`; errors name the file and the key."""
        from callbacks.atomic import read_result_text

        path = Path(path)
        text = read_result_text(path, "dataset-level evidence")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a medrobust dataset-level evidence file (key 'format' should be {FORMAT!r})")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path}: format version {data.get('version')} is newer than this medrobust reads")
        try:
            return cls(data["kind"], list(data["metrics"]), np.asarray(data["sample_ids"], dtype=np.int64),
                       list(data["targets"]), dict(data["columns"]), dict(data.get("info") or {}))
        except KeyError as err:
            raise ValueError(f"{path}: key {err} is missing") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
