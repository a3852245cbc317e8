"""A model medrobust did not train, as :func:`medrobust.evaluate` reads it: from an
``nn.Module`` or a file (TorchScript, ``torch.export``, a medrobust checkpoint, a state dict with
its network spec, or — ``trusted`` only — a pickled ``nn.Module``: :func:`load_model`), and the
input normalisation the user states for it (:func:`normalizer`; never assumed)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ExportedModel", "load_model", "normalizer"]


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
