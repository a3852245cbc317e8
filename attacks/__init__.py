"""Task-agnostic adversarial attacks and general noises on tensors.

Every attack is called as ``atk(model, x, target, loss_fn=None, is_violated=None,
generator=None) -> x_adv`` (or ``atk.perturb(...) -> AttackResult``), where ``model`` is any
callable and ``loss_fn(output, target) -> Tensor[B]`` is a per-sample loss; tasks differ only in
the ``loss_fn`` (and ``is_violated``) they hand over. Nothing here knows Lightning, tasks or
datasets.

A new attack is one file: subclass the public call object :class:`Attack` (it owns argument
checks, train/eval mode, input gradients, projection, restarts), set ``name``, implement
``_run(call: AttackCall) -> x_adv`` and decorate the class with :func:`register_attack`. Its
name then works in every :class:`AttackSpec`: a training method's ``attack:`` field and an
evaluation callback's attack list.
"""

from . import losses, task_losses
from .apgd import APGD
from .base import Attack
from .call import AttackCall, AttackResult
from .checks import check_count, check_scalar
from .cw import CW
from .fmn import FMN
from .gradient import BIM, FGSM, MIFGSM, PGD
from .losses import argmax_violated, loss_above
from .mode import attack_mode
from .noise import GaussianNoise, Noise, SaltPepperNoise, SpeckleNoise, UniformNoise
from .projection import per_sample_norm
from .registry import ATTACKS, build_attack, register_attack
from .spec import AttackSpec, parse_attack_specs
from .square import Square
from .start import GradientStats, StartGradient, input_gradient, start_gradient
from .suites import SUITES, SuiteRecipe, suite_configs

__all__ = [
    "APGD",
    "ATTACKS",
    "SUITES",
    "AttackSpec",
    "GradientStats",
    "StartGradient",
    "Square",
    "parse_attack_specs",
    "register_attack",
    "SuiteRecipe",
    "suite_configs",
    "task_losses",
    "BIM",
    "CW",
    "FMN",
    "FGSM",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackCall",
    "Noise",
    "check_count",
    "check_scalar",
    "AttackResult",
    "GaussianNoise",
    "SaltPepperNoise",
    "SpeckleNoise",
    "UniformNoise",
    "attack_mode",
    "build_attack",
    "input_gradient",
    "loss_above",
    "losses",
    "argmax_violated",
    "per_sample_norm",
    "start_gradient",
]
