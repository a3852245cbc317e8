"""Figures: no suptitle overlap, no offset notation, ε label with norm and units, a legend in
every panel, a ground-truth / prediction key and class names on boxes."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import callbacks.plotting as plotting  # noqa: E402

RECORD = {
    "task": "classification", "method": "amat", "split": "val", "epoch": 7,
    "clean": {"accuracy": 0.91312, "balanced_accuracy": 0.9131201},  # flat to 1e-7: the case
    "attacks": [{"attack": "pgd", "norm": "linf", "eps": e, "steps": 10,
                 "metrics": {"accuracy": 0.9 - e, "balanced_accuracy": 0.91312}} for e in (0.01, 0.02)],
    "ensemble": [{"attack": "ensemble", "eps": e, "metrics": {"accuracy": 0.89 - e,
                                                              "balanced_accuracy": 0.91312}}
                 for e in (0.01, 0.02)],
}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plotting functions save, kept open for inspection."""
    kept: list = []

    def save(fig, path):  # noqa: ANN001, ANN202
        fig.canvas.draw()
        kept.append(fig)
        return Path(path)

    monkeypatch.setattr(plotting, "_save", save)
    yield kept
    for fig in kept:
        plt.close(fig)


def test_robustness_curves(figures: list, tmp_path: Path) -> None:
    plotting.plot_robustness_curves(RECORD, tmp_path / "c.png", "accuracy", bounds=(0.0, 1.0))
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        assert not sup.overlaps(ax.title.get_window_extent(renderer))  # suptitle clear of titles
        assert ax.get_xlabel() == "ε (L∞, pixels on [0, 1])"
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == ["pgd (10 steps)", "ensemble (worst case)"]
        assert ax.yaxis.get_offset_text().get_text() == ""  # no "1e-7 + 9.13e-1"
    flat = fig.axes[1]
    ticks = [float(t.get_text().replace("−", "-")) for t in flat.get_yticklabels() if t.get_text()]
    assert ticks and all(0.85 < t < 0.98 for t in ticks), ticks  # values, not offsets from 0.91312


def test_detection_panel_key_and_class_names(figures: list, tmp_path: Path) -> None:
    x = torch.rand(1, 1, 32, 32)
    boxes, labels = [torch.tensor([[2.0, 2.0, 14.0, 14.0]])], [torch.tensor([1])]
    pred = [{"boxes": boxes[0] + 1, "labels": torch.tensor([0]), "scores": torch.tensor([0.9])}]
    plotting.plot_adversarial_panel(x, x, pred, pred, "detection", (0.0, 1.0), ["RBC", "WBC"],
                                    tmp_path / "p.png", "title", None,
                                    {"image": x, "boxes": boxes, "labels": labels})
    (fig,) = figures
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ground truth (class)",
                                                          "prediction (class score)"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "WBC" in texts and "RBC 0.90" in texts  # truth's and prediction's class names
    renderer = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(renderer)
    assert not any(sup.overlaps(ax.title.get_window_extent(renderer)) for ax in fig.axes)


@pytest.mark.parametrize(("task", "labels"), [("segmentation", ["ground truth", "prediction (per class)"]),
                                              ("landmarks", ["ground truth", "prediction"])])
def test_panel_keys(task: str, labels: list[str], figures: list, tmp_path: Path) -> None:
    x = torch.rand(1, 1, 16, 16)
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[:, 4:10, 4:10] = 1
    pts = torch.tensor([[[3.0, 4.0], [10.0, 12.0]]])
    batch = {"image": x, "mask": mask, "landmarks": pts}
    pred = {"mask": mask} if task == "segmentation" else {"points": pts}
    plotting.plot_adversarial_panel(x, x, pred, pred, task, (0.0, 1.0), ["bg", "lesion"],
                                    tmp_path / "p.png", "t", None, batch)
    assert [t.get_text() for t in figures[0].legends[0].get_texts()] == labels
