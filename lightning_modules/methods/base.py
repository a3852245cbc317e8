"""The training-method plug-in: what every method (clean, SAT, AMAT, denoise, TRADES…) is.

A method is an ``nn.Module`` so that its state (AMAT's margins, the denoiser's weights) lives in
the task module's ``state_dict`` and is checkpointed, moved to the device and synchronised like
any other parameter or buffer. It talks to the task only through
:class:`lightning_modules.protocol.TrainableTask` — it never knows which task it trains. What a
method trains on is ``task.batch_loss`` (the mean of the per-sample losses, except where the task
reduces its own way: detection); attacks keep the per-sample loss ``[B]``.

Hooks (all optional except :meth:`TrainingMethod.training_loss`):

* ``setup(task)`` once, when the task module is built (the net exists, ``data_info`` is known):
  allocate buffers sized by the data, build embedded modules;
* ``training_loss(task, batch) -> (loss, logs)`` every training step;
* ``on_train_epoch_start(task)`` / ``on_train_epoch_end(task) -> logs`` around each epoch; the
  task guarantees ``on_train_epoch_end`` runs once per epoch, after the last training batch and
  *before* validation and checkpointing, on every rank;
* ``embedded_module()``: a module placed between normalization and the network at train *and*
  test time (the denoiser), so attacks see it;
* ``signals()``: the method's current state for callbacks and logs (SAT's ε…).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.mode import check_mode
from attacks.options import check_choice as check_option
from attacks.seeding import seeded_generator
from attacks.spec import AttackSpec
from attacks.tree import tree_map
from lightning_modules.protocol import Batch, TrainableTask

Logs = dict[str, float | Tensor]


class TrainingMethod(nn.Module):
    """Base class of the training methods. Subclasses set :attr:`name` and implement
    :meth:`training_loss`.

    The constructor arguments of every method are recorded automatically, so
    :meth:`config` can describe the method as ``{class_path, init_args}`` — what the task module
    saves in its checkpoint hyperparameters to rebuild the method (no pickled objects).
    Constructor arguments must therefore be plain values (numbers, strings, lists, dicts).
    """

    name: ClassVar[str] = "method"
    #: the method's own attack (an :class:`attacks.AttackSpec` mapping), for methods that
    #: take an ``attack`` field; ``None`` for those without one (clean training)
    default_attack: ClassVar[dict[str, Any] | None] = None
    #: flat attack fields of checkpoints written before the ``attack`` spec → spec keys
    legacy_attack_fields: ClassVar[dict[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainingMethod:
        obj = super().__new__(cls)
        # Record the call before __init__ runs; config() binds it to the signature later.
        object.__setattr__(obj, "_init_call", (args, dict(kwargs)))
        return obj

    # ------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        """``{"class_path": "pkg.module.Class", "init_args": {...}}`` rebuilding this method."""
        args, kwargs = getattr(self, "_init_call", ((), {}))
        sig = inspect.signature(type(self).__init__)
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init_args = {}
        for key, value in list(bound.arguments.items())[1:]:
            kind = sig.parameters[key].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                init_args.update({k: _plain(v, f"{type(self).__name__}.{k}") for k, v in value.items()})
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{type(self).__name__}: *args constructors cannot be recorded")
            else:
                init_args[key] = _plain(value, f"{type(self).__name__}.{key}")
        if "attack" in init_args and isinstance(getattr(self, "attack", None), AttackSpec):
            # The attack as resolved (method default filled in), so the checkpoint says it.
            init_args["attack"] = self.attack.to_config()
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config()["init_args"].items())

    def set_attack_modes(self, bn: str, dropout: str) -> None:
        """Check and keep the BatchNorm / Dropout modes the method's attack forwards run in
        (``"eval"``, ``"train"`` or ``"keep"``, see :func:`attacks.mode.attack_mode`) as
        ``self.attack_bn_mode`` / ``self.attack_dropout_mode``."""
        owner = type(self).__name__
        self.attack_bn_mode = check_mode(bn, f"{owner}.attack_bn_mode")
        self.attack_dropout_mode = check_mode(dropout, f"{owner}.attack_dropout_mode")

    def set_attack(self, attack: AttackSpec | Mapping[str, Any] | str | None,
                   default: Mapping[str, Any]) -> AttackSpec:
        """Check the method's ``attack`` field and keep it as ``self.attack``
        (:class:`attacks.AttackSpec`). ``None`` is ``default`` (the method's own attack); a
        mapping without ``name``, or naming the default's attack, changes the default (see
        :meth:`AttackSpec.parse`). Errors name ``<Method>.attack``. Attack losses (``loss:``)
        are an evaluation setting: a method hands the attack its own loss."""
        where = f"{type(self).__name__}.attack"
        spec = AttackSpec.parse(attack, where, default)
        if spec.loss is not None:
            raise ValueError(f"{where}.loss: a training method attacks its own loss (the task's "
                             f"per-sample loss, or TRADES' divergence); remove loss={spec.loss!r}")
        if not spec.budgeted:
            raise ValueError(f"{where}: {spec.name!r} takes no budget eps; a training method "
                             "needs an attack inside its eps-ball")
        self.attack = spec
        return spec

    # ------------------------------------------------------------------ hooks
    def setup(self, task: TrainableTask) -> None:
        """Called once by the task module's constructor (``task.net`` and ``task.data_info``
        exist). Allocate data-sized buffers and embedded modules here."""

    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        """The scalar training loss of ``batch`` and the method's signals to log."""
        raise NotImplementedError

    def on_train_epoch_start(self, task: TrainableTask) -> None:
        """Called at the start of every training epoch, on every rank."""

    def on_train_epoch_end(self, task: TrainableTask) -> Logs:
        """Called once per epoch after the last training batch, on every rank (collective
        operations are allowed); returns epoch-level signals to log."""
        return {}

    def embedded_module(self) -> nn.Module | None:
        """A module applied between normalization and the network (train and test)."""
        return None

    def signals(self) -> dict[str, float]:
        """The method's current state for callbacks (e.g. ``{"eps": 0.002}``)."""
        return {}

    def epoch_state(self) -> dict[str, Any]:
        """State accumulated during the current epoch that is not a buffer (e.g. AMAT's margin
        records of the batches trained so far), as tensors and plain values: saved in
        checkpoints so that a resume from a mid-epoch checkpoint loses nothing."""
        return {}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`epoch_state` (``{}`` for checkpoints without it)."""

    # ------------------------------------------------------------------ helpers
    def generator(self, task: TrainableTask, device: torch.device, seed: int | None) -> torch.Generator | None:
        """A generator for this step's attack randomness, seeded by ``(seed, global step,
        rank)``: reproducible, different on every rank and step, and identical when a run is
        resumed from a checkpoint. ``seed=None``: ``None`` (the global RNG)."""
        if seed is None:
            return None
        return seeded_generator(seed, int(task.global_step), int(task.global_rank), device=device)


def upgrade_init_args(cls: type[TrainingMethod], init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` of a checkpoint written before the methods took one ``attack`` spec
    (``steps``, ``norm``, ``rel_step_size``… as flat method fields) with those fields moved into
    ``attack`` — so old checkpoints still load; current ``init_args`` are returned unchanged."""
    args = dict(init_args)
    old = {k: args.pop(k) for k in list(args) if k in cls.legacy_attack_fields}
    if not old:
        return args
    attack = dict(args.get("attack") or getattr(cls, "default_attack", {}))
    # (the old fields were checked then: at most one of step_size / rel_step_size was set)
    moved = {cls.legacy_attack_fields[k]: v for k, v in old.items() if v is not None}
    for key in moved:  # a moved field replaces the default's absolute/relative partner
        partner = key[4:] if key.startswith("rel_") else f"rel_{key}"
        attack.pop(partner, None)
        if key.endswith("init_radius") and "init_distribution" in attack:
            attack["init_distribution"] = "uniform"  # old starts were uniform (TRADES' is now Gaussian)
    attack.update(moved)
    args["attack"] = attack
    return args


def detach_output(out: Any) -> Any:
    """Detach a task output of any structure (tensor, dict, list, tuple)."""
    return tree_map(Tensor.detach, out)


def _plain(value: Any, where: str) -> Any:
    """Config-safe copy of ``value``: numbers, strings, None, lists and str-keyed dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, AttackSpec):
        return _plain(value.to_config(), where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v, where) for v in value]
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(
        f"{where}={value!r}: method arguments must be plain values (numbers, strings, lists, "
        "dicts) so that checkpoints can rebuild the method"
    )


def check_choice(owner: str, field: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming ``owner.field`` when ``value`` is not one of ``choices``
    (the methods' spelling of :func:`attacks.options.check_choice`, the one option check)."""
    check_option(f"{owner}.{field}", value, choices)


def check_range(
    owner: str, field: str, value: float, lo: float | None = None, hi: float | None = None,
    lo_open: bool = False, hi_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``owner.field`` when ``value`` is outside the range."""
    bad = not isinstance(value, int | float) or isinstance(value, bool)
    if not bad and lo is not None:
        bad = value <= lo if lo_open else value < lo
    if not bad and hi is not None:
        bad = value >= hi if hi_open else value > hi
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ValueError(f"{owner}.{field} must be a number in {rng}, got {value!r}")
