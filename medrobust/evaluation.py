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
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_modules.tasks.base import NormalizedModel
from lightning_modules.tasks.detection import detector_classes

__all__ = ["NormalizedModel", "TensorDataModule", "as_datamodule", "detector_classes", "evaluate",
           "load_model", "normalizer"]



# ------------------------------------------------------------------------------ the model
def load_model(model: Any, net: Any = None, trusted: bool = False) -> tuple[nn.Module, Any]:
    """``(bare model, medrobust task module or None)`` from any accepted model form.

    Args:
        model: an ``nn.Module`` or a path to a TorchScript, ``torch.export``, medrobust
            checkpoint, state dict or (with ``trusted``) pickled ``nn.Module`` file.
        net: for a state dict: the network to load it into — an ``nn.Module``, a zero-argument
            callable returning one, or ``{class_path, init_args}``.
        trusted: allow unpickling a whole ``nn.Module`` (runs code from the file).

    A medrobust checkpoint comes back as its task module (second element; the first is its
    whole model, normalisation included).
    """
    if isinstance(model, nn.Module):
        return model, None
    if not isinstance(model, (str, Path)):
        raise TypeError(f"evaluate: model must be an nn.Module or a file path, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"evaluate: model file {str(path)!r} does not exist")
    names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    if any("/code/__torch__" in n for n in names):
        return torch.jit.load(str(path), map_location="cpu"), None
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return ExportedModel(torch.export.load(str(path)).module()), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — an UnpicklingError, or not a torch file at all
        if not names and not _is_pickle(path):
            raise ValueError(f"evaluate: {str(path)!r} is not a model file (not TorchScript, torch.export, "
                             f"a checkpoint or a state dict): {err}") from None
        if not trusted:
            raise ValueError(
                f"evaluate: {str(path)!r} holds pickled Python objects (a whole nn.Module?), and "
                "unpickling runs code from the file. Load it only if you trust its source, with "
                "trusted=True (CLI: --trusted); better, save it as TorchScript, torch.export or a "
                "state dict + net spec") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(obj, nn.Module):
            raise ValueError(f"evaluate: {str(path)!r} unpickled to a {type(obj).__name__}, not an nn.Module") from None
        return obj, None
    if isinstance(obj, Mapping) and "state_dict" in obj and "hyper_parameters" in obj:
        return _from_checkpoint(path, obj, net)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not (isinstance(state, Mapping) and state and all(isinstance(v, Tensor) for v in state.values())):
        raise ValueError(f"evaluate: {str(path)!r} holds a {type(obj).__name__}, not a model: expected "
                         "TorchScript, torch.export, a medrobust checkpoint or a state dict")
    if net is None:
        raise ValueError(f"evaluate: {str(path)!r} is a state dict; give the network it belongs to as "
                         "net= (an nn.Module, or {class_path, init_args}; CLI: --net)")
    module = _build_net(net)
    module.load_state_dict(dict(state), strict=True)
    return module, None


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol >= 2


def _build_net(net: Any) -> nn.Module:
    if isinstance(net, nn.Module):
        return net
    if isinstance(net, Mapping):
        from lightning_modules.nets.builder import import_object

        if "class_path" not in net:
            raise ValueError(f"evaluate: net spec needs class_path, got keys {sorted(net)}")
        built = import_object(str(net["class_path"]))(**dict(net.get("init_args", {})))
    elif callable(net):
        built = net()
    else:
        raise TypeError(f"evaluate: net must be an nn.Module, a callable or {{class_path, init_args}}, "
                        f"got {type(net).__name__}")
    if not isinstance(built, nn.Module):
        raise TypeError(f"evaluate: net built a {type(built).__name__}, not an nn.Module")
    return built


def _from_checkpoint(path: Path, ckpt: Mapping[str, Any], net: Any) -> tuple[nn.Module, Any]:
    from lightning_modules.tasks import model_task, task_names

    info = ckpt["hyper_parameters"].get("data_info") or {}
    task = info.get("task") if isinstance(info, Mapping) else None
    if task not in task_names():
        raise ValueError(f"evaluate: checkpoint {str(path)!r} is for task {task!r}; evaluate takes "
                         f"{sorted(task_names())}")
    extra = {"net": _build_net(net)} if net is not None else {}
    module = model_task(task).module.load_from_checkpoint(str(path), map_location="cpu", weights_only=True, **extra)
    return module.attack_model(), module


# ------------------------------------------------------------------------------ normalisation
def normalizer(normalization: Any, channels: int) -> nn.Module:
    """The user's stated input normalisation as a module over images in ``bounds``.

    ``normalization``: ``"none"`` (the model takes the images as they are), ``{"mean": m,
    "std": s}`` or ``(mean, std)`` (one value or one per channel), or a callable ``x -> x'``.
    ``None`` is an error: a model's normalisation is stated, never assumed."""
    from lightning_modules.nets.normalize import Normalize

    if normalization is None:
        raise ValueError(
            "evaluate: state the input normalisation the model expects: normalization='none' "
            "(it takes the images as they are), {'mean': m, 'std': s} or a callable "
            "(CLI: --mean/--std or --no-normalization); it is never assumed")
    if isinstance(normalization, str):
        if normalization != "none":
            raise ValueError(f"evaluate: normalization={normalization!r}: the only name is 'none'")
        return nn.Identity()
    if isinstance(normalization, Mapping):
        if set(normalization) != {"mean", "std"}:
            raise ValueError(f"evaluate: normalization needs exactly 'mean' and 'std', got {sorted(normalization)}")
        return Normalize(normalization["mean"], normalization["std"], channels)
    if isinstance(normalization, (tuple, list)) and len(normalization) == 2:
        return Normalize(normalization[0], normalization[1], channels)
    if callable(normalization):
        return _CallableModule(normalization)
    raise TypeError(f"evaluate: normalization must be 'none', {{mean, std}}, (mean, std) or a callable, "
                    f"got {type(normalization).__name__}")


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module whose mode switches do not reach the program
    (``train()``/``eval()`` are not supported on it; it runs as it was exported, normally in
    eval mode). Registered as a child, so it moves with ``.to(device)``."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Any:
        return self.program(x)


class _CallableModule(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


# ------------------------------------------------------------------------------ the data
class _TensorDataset(Dataset):
    """Items of a task's batch contract from tensors (``index`` = position; the targets as the
    task object builds them: :meth:`datamodules.tasks.DataTask.tensor_item`)."""

    def __init__(self, x: Tensor, y: Any, task: Any) -> None:
        from datamodules.tasks import task_named

        self.x, self.y, self.task = x, y, task_named(task, "evaluate")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "index": torch.tensor(i), **self.task.tensor_item(self.y[i])}


class TensorDataModule(L.LightningDataModule):
    """Tensors ``(x, y)`` as a datamodule whose ``test`` split (also ``val``) holds them all."""

    def __init__(self, x: Tensor, y: Any, task: Any, info: Any, batch_size: int = 32) -> None:
        super().__init__()
        self._dataset = _TensorDataset(x, y, task)
        self.info, self.batch_size, self.eval_batch_size = info, batch_size, batch_size

    def dataset(self, split: str) -> Dataset:
        return self._dataset

    def test_dataloader(self) -> DataLoader:
        from datamodules.base import collate_batch

        return DataLoader(self._dataset, batch_size=self.batch_size, collate_fn=collate_batch)

    val_dataloader = test_dataloader


def _check_tensors(x: Any, y: Any, task: Any) -> tuple[Tensor, Any]:
    """``(x, y)`` checked and converted by the task object
    (:meth:`datamodules.tasks.DataTask.check_tensors`)."""
    from datamodules.tasks import task_named

    return task_named(task, "evaluate").check_tensors(x, y, "evaluate")


def as_datamodule(data: Any, task: str, batch_size: int | None = None, split: str = "test") -> Any:
    """A medrobust datamodule (returned as is), a manifest path (a
    :class:`~datamodules.manifest.ManifestDataModule`), a data folder (a manifest in it, or
    segmentation's ``images/`` + ``masks/``: :func:`_datamodule_from_folder`) or a YAML datamodule
    config (``{class_path, init_args}``). Tensors are handled by :func:`evaluate` (they need the model).

    A manifest path is the evaluation set: without a ``split`` column every row is in ``split``
    (no seeded train / val / test split, no split file written beside it); with one, its
    ``split`` rows are evaluated. Images keep their size (the manifest's common size)."""
    if isinstance(data, L.LightningDataModule):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        kwargs: dict[str, Any] = {"eval_batch_size": batch_size} if batch_size else {}
        # the evaluation set: every sample in the evaluated split, no split file written
        kwargs.update(split_fractions=(0.0, 0.0, 1.0) if split == "test" else (0.0, 1.0, 0.0), split_file=None)
        if path.is_dir():
            return _datamodule_from_folder(path, task, kwargs)
        if not path.is_file():
            raise FileNotFoundError(f"evaluate: data file {str(path)!r} does not exist")
        if path.suffix in (".yaml", ".yml"):
            return _datamodule_from_config(path)
        from datamodules.manifest import ManifestDataModule

        return ManifestDataModule(manifest=str(path), task=task, **kwargs)
    raise TypeError(f"evaluate: data must be a datamodule, a manifest / config path or tensors (x, y), "
                    f"got {type(data).__name__}")


#: manifest names :func:`as_datamodule` looks for in a data folder
FOLDER_MANIFESTS = ("manifest.csv", "manifest.tsv", "manifest.json")


def _datamodule_from_folder(path: Path, task: str, kwargs: dict[str, Any]) -> Any:
    """A data folder in a layout medrobust reads: one holding a manifest (``manifest.csv`` /
    ``.tsv`` / ``.json``), or, for segmentation, ``images/`` and ``masks/`` folders paired by
    file stem (:class:`~datamodules.manifest.folders.PairedFoldersDataModule`)."""
    from datamodules.manifest import ManifestDataModule

    for name in FOLDER_MANIFESTS:
        if (path / name).is_file():
            return ManifestDataModule(manifest=str(path / name), task=task, **kwargs)
    from datamodules.tasks import task_named

    found = task_named(task, "evaluate").folder_datamodule(path, kwargs)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"evaluate: data folder {str(path)!r} has no layout medrobust reads: a manifest "
        f"({' / '.join(FOLDER_MANIFESTS)}) or, for segmentation, images/ and masks/ folders paired by "
        "file stem; or give a manifest or datamodule config file")


def _datamodule_from_config(path: Path) -> Any:
    import yaml

    from lightning_modules.nets.builder import import_object

    cfg = yaml.safe_load(path.read_text())
    if isinstance(cfg, Mapping) and "data" in cfg:
        cfg = cfg["data"]
    if not (isinstance(cfg, Mapping) and "class_path" in cfg):
        raise ValueError(f"evaluate: {str(path)!r} is not a datamodule config ({{class_path, init_args}}, "
                         "or a run config with a data: section)")
    return import_object(str(cfg["class_path"]))(**dict(cfg.get("init_args") or {}))


# ------------------------------------------------------------------------------ evaluate
def evaluate(
    model: Any,
    data: Any,
    task: str = "classification",
    suite: str | list[dict[str, Any]] = "standard",
    eps: Sequence[float] = (0.002, 0.004),
    norm: str = "linf",
    normalization: Any = None,
    out: str | Path | None = None,
    *,
    net: Any = None,
    trusted: bool = False,
    num_classes: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    split: str = "test",
    subset: int | float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    sanity: str = "test",
    intervals: str = "test",
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
    if norm not in ("linf", "l2"):
        raise ValueError(f"evaluate: norm must be 'linf' or 'l2', got {norm!r}")
    if split not in ("val", "test"):
        raise ValueError(f"evaluate: split must be 'val' or 'test', got {split!r}")
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
        tensors = _TensorDataset(x, y, kind)
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
