"""Benchmark any model in one call: ``medrobust.evaluate(model, data, task=…, suite=…, eps=…)``.

For a model medrobust did not train (a TorchScript file from a collaborator, a network fine-tuned
elsewhere, a state dict) and a test set. The model is wrapped in medrobust's task module
(:mod:`lightning_modules`) with *the input normalisation the user states* — never a default —
and evaluated by ``trainer.test`` with :class:`callbacks.AdversarialEvaluation`: the same runner,
suites, sanity flags, per-sample file (``robustness_samples.csv``), intervals, curve and
``report.md`` as a medrobust run, on one device or several::

    import medrobust
    record = medrobust.evaluate("model.ts", (x, y), task="classification", suite="standard",
                                eps=[1/255, 2/255], normalization={"mean": 0.5, "std": 0.25},
                                out="results/my_model")
    print(record.robust_area)

Accepted models (:func:`load_model`): an ``nn.Module``; a TorchScript file (``torch.jit.load``);
a ``torch.export`` file (``torch.export.load``); a medrobust checkpoint (its normalisation is in
it); a state dict with a network spec ``net`` (read with ``weights_only=True``). A file holding a
pickled whole ``nn.Module`` runs code when it is unpickled: it loads only with ``trusted=True``.

Accepted data (:func:`as_datamodule`): a medrobust datamodule, a manifest file
(:class:`datamodules.manifest.ManifestDataModule`), a data folder (holding a manifest, or
segmentation's ``images/`` + ``masks/`` paired by stem), or tensors ``(x, y)``: ``x`` ``[N, C, *spatial]``
in ``bounds``; ``y`` labels ``[N]`` (classification), masks ``[N, *spatial]`` (segmentation),
points ``[N, L, 2]`` ``(x, y)`` image pixels, NaN = missing (landmarks), or a list of ``N``
``{"boxes": [N_i, 4] xyxy pixels, "labels": [N_i]}`` (detection).

Detection: a torchvision-style detector (``FCOS``, ``RetinaNet``, the R-CNN family, or a model
that takes a list of images and returns its training losses in train mode), as an
``nn.Module`` or a state dict + ``net`` spec, trained in plain PyTorch: it is put inside
:class:`~lightning_modules.nets.detectors.DetectorWrapper` (which computes the per-image losses
the attacks need from the detector's own heads) and evaluated by
:class:`~lightning_modules.DetectionModule`. Its class count must be the data's (plus the
background slot of an R-CNN). Its own transform (``image_mean``/``image_std``, resizing) stays
as the user built it; ``normalization`` states anything it expects *before* that.

Before evaluating, the wrapped model's clean output on the first batch is compared with the
bare model's (after the stated normalisation; detection: the detections' boxes, scores and
labels): a wrapper that changed a prediction is an error.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medrobust.evaluation_data import TaskTensorDataset, TensorDataModule, as_datamodule
from medrobust.model_loading import ExportedModel, load_model, normalizer
from medrobust.options import Norm, Split, When, check_choice

__all__ = ["evaluate"]


def evaluate(
    model: Any,
    data: Any,
    task: str = "classification",
    suite: str | list[dict[str, Any]] = "standard",
    eps: Sequence[float] = (0.002, 0.004),
    norm: Norm = "linf",
    normalization: Any = None,
    out: str | Path | None = None,
    *,
    net: Any = None,
    trusted: bool = False,
    num_classes: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    split: Split = "test",
    subset: int | float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    sanity: When = "test",
    intervals: When = "test",
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    progress: bool = True,
    module_options: Mapping[str, Any] | None = None,
    corruptions: str | list[dict[str, Any]] | None = None,
    corruption_reference: str | None = None,
    corruption_severities: Sequence[int] | None = None,
) -> Any:
    """Robustness of ``model`` on ``data`` as a :class:`callbacks.record.RobustnessRecord`.

    Args:
        model: see :func:`load_model` (with ``net`` and ``trusted``).
        data: a datamodule, a manifest / datamodule-config path, or tensors ``(x, y)`` (module
            docstring).
        task: ``classification``, ``segmentation``, ``landmarks`` or ``detection``.
        suite: a named suite (``standard``, ``quick``, ``aa_budget``; :mod:`attacks.suites`) or
            an attack list as ``AdversarialEvaluation.test_attacks`` takes.
        eps: the budgets, in the units of ``bounds`` (pixel units).
        norm: ``linf`` or ``l2``: the threat model of every member of a named suite.
        normalization: what the model expects: ``"none"``, ``{"mean", "std"}``, ``(mean, std)``
            or a callable (see :func:`normalizer`); required, except for a medrobust checkpoint
            (its normalisation is in it; stating one is then an error).
        out: the folder for ``robustness.json``, ``robustness_samples.csv``, ``robustness.png``
            and ``report.md``; ``None``: nothing is kept.
        num_classes: classification / segmentation: the number of classes (default: the
            model's output channels on the first batch); detection: object classes, no
            background (default: read from the detector's head).
        bounds: the images' value range (tensor data; a datamodule says its own).
        split: the datamodule split (``test``).
        subset, batch_size, seed, sanity, intervals: as ``AdversarialEvaluation``'s
            ``test_subset``, ``batch_size``, ``seed``, ``sanity``, ``intervals``.
        accelerator, devices, strategy: the Trainer's (``devices=2, strategy="ddp"``: DDP).
        progress: show progress bars.
        module_options: extra arguments of the task module (e.g. landmarks' ``decode``).
        corruptions, corruption_reference, corruption_severities: a corruption suite run beside
            the attacks on the same samples (a modality name of :mod:`corruptions.suites`), the
            reference run's ``robustness.json`` for mCE, the severities; as
            ``AdversarialEvaluation``'s ``corruptions`` (docs/corruptions.md).

    Raises:
        ValueError: a missing or contradictory normalisation, an output that does not fit the
            task, labels out of range, a file that is not a model, or a wrapped model whose
            clean output differs from the bare model's.
    """
    from callbacks import AdversarialEvaluation
    from callbacks.suite_plan import check_eps_grid
    from datamodules.base import collate_batch
    from datamodules.info import DataInfo
    from lightning_modules.tasks import model_task, task_names

    if task not in task_names():
        raise ValueError(f"evaluate: task must be one of {task_names()}, got {task!r}")
    kind = model_task(task, "evaluate")
    check_choice(norm, Norm, "evaluate: norm")
    check_choice(split, Split, "evaluate: split")
    eps_grid = check_eps_grid(list(eps), "evaluate.eps")
    bare, loaded = load_model(model, net, trusted)
    if loaded is not None:
        if normalization is not None:
            raise ValueError("evaluate: a medrobust checkpoint carries its own normalisation; do not "
                             "state one (normalization=None)")
        if loaded.task != task:
            raise ValueError(f"evaluate: the checkpoint is a {loaded.task!r} model, not {task!r}")

    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = kind.check_tensors(data[0], data[1], "evaluate")
        dm = None
        channels = int(x.shape[1])
        tensors = TaskTensorDataset(x, y, kind)
        probe = collate_batch([tensors[i] for i in range(min(len(x), batch_size or 32))])
    else:
        dm = as_datamodule(data, task, batch_size, split)
        info = dm.info
        if info.task != task:
            raise ValueError(f"evaluate: the data is for task {info.task!r}, not {task!r}")
        channels = info.in_channels
        dm.setup("test" if split == "test" else "validate")
        ds = dm.dataset(split)
        probe = collate_batch([ds[i] for i in range(min(len(ds), batch_size or 8))])
    probe_x = probe["image"]

    if loaded is not None:
        module = loaded
        wrapped_ref = None
        if dm is None:  # tensors: described by the checkpoint's data_info
            kind.check_target_classes(y, max(loaded.data_info.num_classes, 1), "evaluate")
            dm = TensorDataModule(x, y, kind, loaded.data_info, batch_size or 32)
    else:
        made = kind.wrap_model(bare, normalizer(normalization, channels), probe_x, num_classes,
                               opaque=isinstance(bare, (ExportedModel, torch.jit.ScriptModule)))
        if dm is None:
            kind.check_target_classes(y, made.num_classes, "evaluate")
            info = DataInfo(task=task, in_channels=channels, spatial_dims=x.ndim - 2, bounds=tuple(bounds),
                            image_size=tuple(x.shape[2:]), **kind.info_fields(y, made.num_classes))
            dm = TensorDataModule(x, y, kind, info, batch_size or 32)
        else:
            kind.check_model_classes(made, dm.info)
        module = kind.module(net=made.net, data_info=dm.info, mean=0.0, std=1.0,
                             **{**made.options, **dict(module_options or {})})
        wrapped_ref = made.reference
    module.eval()
    with torch.no_grad():
        wrapped = module.attack_model()(probe_x)
    _check_fits(module, wrapped, probe, task)
    if wrapped_ref is not None:
        _check_same(kind.comparable_output(wrapped), wrapped_ref)

    cb = AdversarialEvaluation(test_attacks=suite, test_eps=eps_grid, test_subset=subset, subset=subset,
                               batch_size=batch_size, seed=seed, sanity=sanity, intervals=intervals,
                               corruptions=corruptions, corruption_reference=corruption_reference,
                               corruption_severities=None if corruption_severities is None
                               else list(corruption_severities))
    if norm != "linf":
        cb.suites.norm = norm
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, logger=False,
                            default_root_dir=str(root), enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=progress, callbacks=[cb])
        if split == "test":
            trainer.test(module, datamodule=dm, verbose=False)
        else:
            trainer.validate(module, datamodule=dm, verbose=False)
    return cb.last_record["test" if split == "test" else "val"]


def _check_fits(module: Any, output: Any, batch: Mapping[str, Any], task: str) -> None:
    """The task's loss accepts the model's output on a first batch (else a clear error)."""
    try:
        module.per_sample_loss(output, batch)
    except (ValueError, RuntimeError, IndexError) as err:
        raise ValueError(f"evaluate: the model's output does not fit the {task} task: {err}") from None


def _check_same(wrapped: Any, reference: Any) -> None:
    """The wrapped model gives the bare model's clean output (else an error)."""
    from attacks.tree import tree_leaves

    a, b = tree_leaves(wrapped), tree_leaves(reference)
    for u, v in zip(a, b, strict=True):
        if u.shape != v.shape or not torch.allclose(u.float(), v.float(), rtol=1e-4, atol=1e-5):
            diff = (u.float() - v.float()).abs().max().item() if u.shape == v.shape else math.inf
            raise ValueError(f"evaluate: the wrapped model's clean output differs from the bare model's "
                             f"on the first batch (max |difference| {diff:.3g}); nothing is evaluated")
