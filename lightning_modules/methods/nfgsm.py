"""N-FGSM (de Jorge et al., NeurIPS 2022, "Make Some Noise: Reliable and Efficient Single-Step
Adversarial Training"): single-step training with a large noise and no projection back."""

from __future__ import annotations

from lightning_modules.methods.sat import SAT


class NFGSM(SAT):
    """N-FGSM adversarial training (de Jorge et al. 2022), task-agnostic.

    Each step: noise ``η ~ U[−k·ε, k·ε]^n`` around the input (``k = 2``), one FGSM step of size
    ``α = ε`` from ``x + η``, and *no* projection back onto the ε-ball — only the valid range
    ``bounds`` is enforced — so the training perturbation reaches ``‖δ‖∞ ≤ (k + 1)·ε = 3·ε``.
    The larger noise and the missing clip are what avoid catastrophic overfitting at the cost
    of one gradient step (the paper: on par with GradAlign at about a third of its cost).
    The network is trained on ``(1 − β)·L(x) + β·L(x_adv)`` (default ``β = 1``). ``eps`` is the
    robustness budget the model is trained for (the one it is evaluated at), not the size of
    the training perturbation. Schedules, modes and seeding are :class:`SAT`'s.

    The attack is :class:`attacks.FGSM` with ``random_start=True, rel_init_radius=2,
    rel_step_size=1, project=False``; ``attack: {rel_init_radius: 4}`` changes ``k``
    (the paper uses larger ``k`` only with larger ε on CIFAR; ``k = 2`` throughout its main
    results), ``attack: {project: true}`` restores the clip (their ablation: worse).
    """

    name = "nfgsm"
    #: FGSM of step ε from x + U[−2ε, 2ε], not projected back onto the ball (de Jorge et al.)
    default_attack = {"name": "fgsm", "norm": "linf", "random_start": True,
                      "rel_init_radius": 2.0, "rel_step_size": 1.0, "project": False}
    legacy_attack_fields: dict[str, str] = {}
