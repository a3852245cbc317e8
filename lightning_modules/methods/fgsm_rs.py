"""FGSM with a random start ("fast is better than free", Wong, Rice & Kolter, ICLR 2020):
single-step adversarial training at the cost of about two clean steps."""

from __future__ import annotations

from lightning_modules.methods.sat import SAT


class FGSMRS(SAT):
    """FGSM-RS adversarial training (Wong et al. 2020), task-agnostic.

    Each step: a uniform random start in the ε-ball (L∞ cube / L2 sphere), one FGSM step of
    size ``1.25·ε`` on the task's per-sample loss, projected back onto the ball and clamped to
    ``bounds``; the network is trained on ``(1 − β)·L(x) + β·L(x_adv)`` (default ``β = 1``,
    adversarial batches only, as in the paper). Everything else — ``eps``, the ε schedules
    (``linear``: the ε ramp of fast-AT recipes), ``beta``, BatchNorm/Dropout modes of the
    attack, the seeded generator — is :class:`SAT`'s; only the default attack differs.

    Paper defaults: step ``α = 1.25·ε`` (their sweep: larger α → catastrophic overfitting),
    uniform start, a cyclic learning rate (``scheduler: onecycle`` of the task module) and
    early stopping on PGD accuracy of a training batch — here the
    :class:`callbacks.CatastrophicOverfittingWatchdog`. CIFAR-10, ε = 8/255: 46.06 % PGD-50
    robust accuracy in 12 minutes (PGD-7 AT: 45.80 %).

    ``attack`` changes the default like SAT's (``{rel_step_size: 1.0}``: step ε).
    """

    name = "fgsm_rs"
    #: one FGSM step of 1.25·ε from a uniform start in the ball, projected back (Wong et al.)
    default_attack = {"name": "fgsm", "norm": "linf", "random_start": True,
                      "rel_step_size": 1.25}
    legacy_attack_fields: dict[str, str] = {}
