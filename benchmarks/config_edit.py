"""A paper-suite run's config, derived from the shipped one: dotted-path overrides (with
``callbacks[Class]`` / ``method[Class]`` selectors), every attack's steps, L2 budgets scaled with
the image, and the overrides of ``--quick`` / ``--smoke`` (:func:`derive_config`)."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from benchmarks.common import ROOT
from benchmarks.paper_spec import SMOKE, Group, Overrides, Run
from medrobust.config_pieces import load_config

_SELECTOR = re.compile(r"^(?P<key>[^\[]+)\[(?P<cls>[^:\]]+)(?::(?P<prefix>[^\]]+))?\]$")
_ADV_EVAL = "AdversarialEvaluation"


# ------------------------------------------------------------------------------ config editing
def _child(node: Any, part: str) -> Any:
    """``node[part]``; ``callbacks[Class]`` / ``callbacks[Class:prefix]`` pick a callback of a
    list by class name (and ``prefix`` init arg, default ``adv``); ``method[Class]`` is the
    method only when it is of that class. ``None`` when absent."""
    m = _SELECTOR.match(part)
    if m is None:
        return node.get(part) if isinstance(node, dict) else None
    items = node.get(m["key"]) if isinstance(node, dict) else None
    for item in [items] if isinstance(items, dict) else items or []:
        if not str(item.get("class_path", "")).endswith(m["cls"]):
            continue
        prefix = (item.get("init_args") or {}).get("prefix", "adv")
        if m["cls"] != _ADV_EVAL or prefix == (m["prefix"] or "adv"):
            return item
    return None


def set_path(cfg: dict[str, Any], path: str, value: Any) -> bool:
    """Set a dotted ``path`` of a config (see :func:`_child`) when its parent exists; returns
    whether it was set. A leaf may be new (``trainer.limit_train_batches``); a missing parent
    means the setting does not apply to this config (a clean method has no ``attack``). A
    training method's ``attack`` spec that the config leaves to the method's default is filled
    in with that default first (``method.init_args.attack.steps`` then applies to it)."""
    parts = path.split(".")
    node: Any = cfg
    parent: Any = None
    for part in parts[:-1]:
        child = _child(node, part)
        if child is None and part == "attack" and isinstance(node, dict):
            child = _default_attack(parent, node)
        parent, node = node, child
        if not isinstance(node, dict):
            return False
    node[parts[-1]] = copy.deepcopy(value)
    return True


def _default_attack(method: Any, init_args: dict[str, Any]) -> dict[str, Any] | None:
    """The default attack spec of the training method ``{class_path, init_args}`` (written into
    ``init_args``), or ``None`` when ``init_args`` is not a method's or it has no attack."""
    if not (isinstance(method, dict) and method.get("init_args") is init_args
            and str(method.get("class_path", "")).startswith("lightning_modules.methods")):
        return None
    from lightning_modules.nets.builder import import_object

    default = getattr(import_object(method["class_path"]), "default_attack", None)
    if not isinstance(default, dict):
        return None
    init_args["attack"] = copy.deepcopy(default)
    return init_args["attack"]


def _eval_callbacks(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return [cb for cb in (cfg.get("trainer", {}).get("callbacks") or [])
            if str(cb.get("class_path", "")).endswith(_ADV_EVAL)]


def _method_args(cfg: dict[str, Any]) -> dict[str, Any] | None:
    method = (cfg.get("model", {}).get("init_args") or {}).get("method") or {}
    return method.get("init_args")


def set_attack_steps(cfg: dict[str, Any], steps: int) -> dict[str, Any]:
    """Every multi-step attack of the evaluation callbacks and of the training method → ``steps``."""
    changed: dict[str, Any] = {}
    for cb in _eval_callbacks(cfg):
        args = cb.get("init_args") or {}
        for key in ("attacks", "test_attacks"):
            for a in args.get(key) or []:
                if a.get("steps", 10 if a.get("name") in ("pgd", "bim") else 1) > 1:
                    a["steps"] = steps
                    changed[f"{args.get('prefix', 'adv')}.{key}.steps"] = steps
    attack = (_method_args(cfg) or {}).get("attack")
    if isinstance(attack, dict) and "steps" in attack:
        attack["steps"] = steps
        changed["method.attack.steps"] = steps
    return changed


def scale_l2(cfg: dict[str, Any], factor: float) -> dict[str, Any]:
    """Multiply every L2 budget (evaluation ε grids of L2-only suites, SAT/denoise L2 ε, AMAT
    margins) by ``factor``; returns the new values by name."""
    changed: dict[str, Any] = {}
    if factor == 1.0:
        return changed
    for cb in _eval_callbacks(cfg):
        args = cb.get("init_args") or {}
        attacks = list(args.get("attacks") or []) + list(args.get("test_attacks") or [])
        if attacks and all(a.get("norm") == "l2" for a in attacks):
            for key in ("eps", "test_eps"):
                if args.get(key) is not None:
                    args[key] = [round(e * factor, 6) for e in args[key]]
                    changed[f"{args.get('prefix', 'adv')}.{key}"] = args[key]
    margs = _method_args(cfg) or {}
    keys = []
    if "delta" in margs and "max_margin" in margs:  # AMAT margins are L2
        keys += ["delta", "max_margin"]
    elif ((margs.get("attack") or {}).get("norm")) == "l2":  # SAT / TRADES eps, Denoise adv_eps
        keys += ["eps", "adv_eps"]
    for key in keys:
        if key in margs:
            margs[key] = round(float(margs[key]) * factor, 6)
            changed[f"method.{key}"] = margs[key]
    return changed


def derive_config(run: Run, group: Group, mode: str) -> tuple[dict[str, Any], Overrides]:
    """The shipped config of ``run`` with its per-run overrides and those of ``mode``
    (``full`` | ``quick`` | ``smoke``); returns the config and every override applied."""
    path = ROOT / "configs" / "experiment" / f"{run.config}.yaml"
    cfg = load_config(path)  # shared pieces inlined: the derived copy lives elsewhere
    applied: Overrides = {}

    def apply(overrides: Overrides) -> None:
        for key, value in overrides.items():
            if key == "attack_steps":
                applied.update(set_attack_steps(cfg, int(value)))
            elif set_path(cfg, key, value):
                applied[key] = value

    apply(run.overrides)
    if mode in ("quick", "smoke"):
        apply(group.quick)
        applied.update({f"L2 ×{group.quick_l2_scale:g}: {k}": v
                        for k, v in scale_l2(cfg, group.quick_l2_scale).items()})
    if mode == "smoke":
        apply(SMOKE)
    return cfg, applied


def run_label(run: Run, cfg: dict[str, Any]) -> str:
    """The table label; SAT variants show the ε actually used (after L2 scaling)."""
    margs = _method_args(cfg) or {}
    return run.method.format(eps=margs.get("eps", math.nan)) if "{" in run.method else run.method
