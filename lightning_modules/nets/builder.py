"""Build any network from ``{class_path, init_args}`` and the dataset's :class:`DataInfo`.

A config names a network (ours, MONAI's, torchvision's or anything importable) and only the
arguments that are a modelling choice; what follows from the data — input channels, output
channels / classes, spatial dims — is filled in here when the constructor takes it and the
config did not say it. Nothing is ever downloaded: pretrained-weight arguments are forced to
``None``/``False`` and a config asking for weights is an error; local weights come from
``net.weights_path`` (see :mod:`lightning_modules.nets.weights`). From Python, ``net`` may also be
a built ``nn.Module``, used as it is.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from datamodules.info import DataInfo
from lightning_modules.nets.weights import load_weights, pop_weight_options

#: what a checkpoint's hyperparameters hold for a network given as a built ``nn.Module``
NET_INSTANCE = "nn.Module instance"


def net_instance_marker(net: nn.Module) -> str:
    """The plain value stored as the ``net`` hyperparameter for a built network."""
    return f"{NET_INSTANCE} {type(net).__module__}.{type(net).__qualname__}"

#: constructor arguments that would fetch pretrained weights from the internet
WEIGHT_ARGS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def import_object(path: str, field: str = "class_path") -> Any:
    """Import ``"package.module.Name"``; errors name the config ``field``."""
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"{field} must be a dotted import path like 'pkg.module.Name', got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{field}={path!r}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"{field}={path!r}: module {module_name!r} has no {attr!r}") from err


def _signature(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}, True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return params, var_kw


class ChannelAdapter(nn.Module):
    """Feed ``in_channels`` images to a network that expects ``out_channels`` (torchvision nets
    want 3). One grey channel is repeated (parameter-free, the usual grey→RGB convention);
    other counts go through a learned 1×1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, net: nn.Module) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.proj = None if in_channels == 1 else nn.Conv2d(in_channels, out_channels, 1)
        self.net = net

    def forward(self, x: Tensor) -> Any:
        if self.proj is None:
            x = x.expand(-1, self.out_channels, *x.shape[2:])
        else:
            x = self.proj(x)
        return self.net(x)


def build_net(
    spec: Mapping[str, Any] | None,
    info: DataInfo,
    out_channels: int,
    default_class_path: str,
    field: str = "net",
    extra_fill: Mapping[str, Any] | None = None,
    adapt_channels: bool = True,
) -> nn.Module:
    """Instantiate the network described by ``spec`` for data ``info``.

    Args:
        spec: ``{"class_path": "monai.networks.nets.DenseNet121", "init_args": {...},
            "weights_path": <local file>?, "weights_skip": [<key prefix>]?}``, ``None`` for
            ``default_class_path`` with its defaults, or a built ``nn.Module`` (returned as is). Keys beside ``class_path`` /
            ``init_args`` override ``init_args`` (how command-line overrides arrive).
        info: the data description (channels, spatial dims).
        out_channels: what the task needs the network to output (logits / classes / channels).
        default_class_path: used when ``spec`` is ``None`` or has no ``class_path``.
        field: config name of ``spec`` for error messages.
        extra_fill: more ``{argument: value}`` to fill the same way (a task's own needs).
        adapt_channels: wrap torchvision image networks in a :class:`ChannelAdapter` when the
            data does not have 3 channels (a detection task, whose models take lists, turns
            this off and adapts itself).

    Filled when the constructor takes the argument and ``init_args`` lacks it:
    ``in_channels``, ``spatial_dims`` (and MONAI's legacy ``dimensions``), ``out_channels``,
    ``num_classes`` (torchvision builders take it through ``**kwargs``). torchvision image
    networks (3 input channels, no ``in_channels`` argument) get a :class:`ChannelAdapter`
    when the data has another number of channels.
    """
    if isinstance(spec, nn.Module):
        return spec  # built by the caller (a script); it already fits the data
    if isinstance(spec, str) and spec.startswith(NET_INSTANCE):
        raise ValueError(
            f"{field}: this checkpoint was trained with a network passed as an object "
            f"({spec[len(NET_INSTANCE):].strip()}); pass it again: "
            "Module.load_from_checkpoint(path, net=MyNet(...))"
        )
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{field} must be a mapping {{class_path: ..., init_args: {{...}}}}, got {type(spec).__name__}"
        )
    class_path = spec.get("class_path") or default_class_path
    init_args = dict(spec.get("init_args") or {})
    # Other keys are init_args too: jsonargparse turns a command-line override
    # `--model.init_args.net.init_args.features [4,8]` into `net: {..., features: [4, 8]}`.
    init_args.update({k: v for k, v in spec.items() if k not in ("class_path", "init_args")})
    target = import_object(class_path, f"{field}.class_path")
    if not callable(target):
        raise ValueError(f"{field}.class_path={class_path!r} is not callable")
    params, var_kw = _signature(target)
    weights_path, weights_skip = pop_weight_options(init_args, params)
    module_name = getattr(target, "__module__", "") or ""
    is_torchvision = module_name.startswith("torchvision.models")

    fill = {
        "in_channels": info.in_channels,
        "spatial_dims": info.spatial_dims,
        "dimensions": info.spatial_dims,
        "out_channels": out_channels,
        "num_classes": out_channels,
        **dict(extra_fill or {}),
    }
    for name, value in fill.items():
        if name in init_args:
            continue
        if name in params or (is_torchvision and var_kw and name == "num_classes"):
            init_args[name] = value

    for name in WEIGHT_ARGS:
        if name in init_args:
            if init_args[name] not in (None, False):
                raise ValueError(
                    f"{field}.init_args.{name}={init_args[name]!r}: pretrained weights would be "
                    "downloaded, and medrobust never downloads; set it to null and load a local "
                    "checkpoint instead"
                )
        elif name in params:
            default = params[name].default
            init_args[name] = False if isinstance(default, bool) else None

    try:
        net = target(**init_args)
    except TypeError as err:
        raise ValueError(f"{field}: cannot build {class_path} with init_args {init_args}: {err}") from err
    if not isinstance(net, nn.Module):
        raise ValueError(f"{field}.class_path={class_path!r} did not return an nn.Module")
    if weights_path is not None:
        load_weights(net, weights_path, weights_skip, field)

    if adapt_channels and is_torchvision and "in_channels" not in params:
        if info.spatial_dims != 2:
            raise ValueError(f"{field}: torchvision network {class_path} is 2-D, data is 3-D")
        if info.in_channels != 3:
            net = ChannelAdapter(info.in_channels, 3, net)
    return net
