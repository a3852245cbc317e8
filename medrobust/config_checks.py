"""Checks of parsed configs that jsonargparse cannot make, with a "did you mean".

``model.init_args.net`` is a free mapping (``{class_path, init_args}`` for *any* network,
filled from the data at build time), so jsonargparse accepts any key in it, and a datamodule's
``task`` is a plain string. A typo there used to surface only when the model was built, as a
``TypeError`` from deep inside, and ``--print_config`` printed it happily. :func:`check_config`
runs on the parsed config, before ``--print_config`` prints and before anything is built.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

#: keys of a net spec that are not constructor arguments (see lightning_modules/nets/builder.py)
SPEC_KEYS = ("class_path", "init_args", "weights_path", "weights_skip")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'features'?"`` or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None) if not hasattr(node, "get") else node.get(key)


def _as_dict(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, Mapping):
        return dict(node)
    if hasattr(node, "as_dict"):
        return dict(node.as_dict())
    return dict(vars(node))


def check_net_spec(spec: Any, field: str) -> list[str]:
    """Problems of a ``{class_path, init_args}`` net spec: unknown class, unknown arguments."""
    from lightning_modules.nets.builder import import_object

    spec_d = _as_dict(spec)
    if not spec_d or not spec_d.get("class_path"):
        return []
    class_path = str(spec_d["class_path"])
    try:
        target = import_object(class_path, f"{field}.class_path")
    except ValueError as err:
        module_name, _, attr = class_path.rpartition(".")
        hint = ""
        try:
            import importlib

            hint = did_you_mean(attr, dir(importlib.import_module(module_name)))
        except ImportError:
            pass
        return [f"{err}{hint}"]
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []  # takes anything (torchvision builders)
    names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    given = {**_as_dict(spec_d.get("init_args")),
             **{k: v for k, v in spec_d.items() if k not in ("class_path", "init_args")}}
    problems = []
    for key in given:
        if key in names or key in SPEC_KEYS:
            continue
        problems.append(f"{field}.init_args.{key}: {class_path} takes no argument {key!r}"
                        f"{did_you_mean(key, [*names, *SPEC_KEYS[2:]])} (it takes {names})")
    return problems


def check_config(cfg: Any) -> list[str]:
    """Problems of a parsed (sub)command config (``model``, ``data`` sections)."""
    from lightning_modules.tasks import task_names

    problems: list[str] = []
    model_args = _get(_get(cfg, "model"), "init_args")
    net = _get(model_args, "net")
    if net is not None and not isinstance(net, str):
        problems += check_net_spec(net, "model.init_args.net")
    task = _get(_get(_get(cfg, "data"), "init_args"), "task")
    tasks = task_names()
    if isinstance(task, str) and task not in tasks:
        problems.append(f"data.init_args.task={task!r} is not a task{did_you_mean(task, tasks)} "
                        f"(tasks: {list(tasks)})")
    return problems
