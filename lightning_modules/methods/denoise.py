"""Denoising defence (Xue et al. 2019, "Improving Robustness of Medical Image Diagnosis with
Denoising Convolutional Neural Networks"): an auto-encoder embedded in the model, trained to
reconstruct the clean image from a noisy one, with a high-level feature invariance loss.

Placement (default, and why): the denoiser sits right after input normalization and before the
network — ``Normalize → denoiser → net`` — so

* it works with *any* network (MONAI, torchvision, ours) without surgery inside it;
* it sees the normalized image, so its scale does not depend on the data's intensity bounds;
* at test time it is part of :meth:`TaskModule.attack_model`, so attacks (and the evaluation
  callbacks) face the whole deployed pipeline, gradients flowing through the denoiser.

Feature invariance (default, and why): ``feature_layer=None`` holds the *network output* (logits
/ logit maps) invariant — the "logit-guided" choice that Liao et al. 2018 found as good as
intermediate layers for denoisers guided by high-level representations, and the only layer
every network of every task has. Name a submodule of the net (``"features"`` in ``SmallCNN``,
``"features.denseblock4"`` in MONAI's DenseNet121, ``"layer4"`` in a torchvision ResNet) to use
its output instead; a forward hook captures it.

The invariance target is the feature of the *clean* image through the same pipeline,
``φ(D(x))``, detached: at deployment the network only ever sees denoised images, so pulling the
noisy features onto those of the deployed clean path is the invariance that matters, and it
needs no extra forward. The reconstruction term keeps ``D(x) ≈ x``.

Loss: ``L = ½(L_task(D(x)) + L_task(D(x̃))) + λ_rec·‖D(x̃) − x‖² + λ_inv·‖φ(D(x̃)) − φ(D(x))‖²``
(squared errors are means over elements; the reconstruction error also includes the clean input,
``‖D(x) − x‖²``, so the denoiser learns to leave clean images alone). ``x̃`` is ``x`` under a
random general noise per sample (Gaussian, salt-and-pepper, speckle, uniform — from
``attacks``), or, for a fraction of the samples, a PGD adversarial example against the whole
pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from attacks import AttackSpec, GaussianNoise, SaltPepperNoise, SpeckleNoise, UniformNoise
from attacks.mode import Mode
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
)
from lightning_modules.nets.builder import build_net
from lightning_modules.protocol import Batch, TrainableTask

Noise = Literal["gaussian", "salt_pepper", "speckle", "uniform"]
NOISES: tuple[str, ...] = get_args(Noise)
DEFAULT_DENOISER = "lightning_modules.nets.DenoisingAutoEncoder"


class Denoise(TrainingMethod):
    """Train the network together with an embedded denoising auto-encoder.

    Args:
        denoiser: ``{class_path, init_args}`` of the denoiser (``in_channels`` /
            ``out_channels`` / ``spatial_dims`` filled from the data); ``None`` →
            :class:`~lightning_modules.nets.DenoisingAutoEncoder` (residual, starts as identity).
        noises: general noises to draw from, one per sample: any of ``gaussian``,
            ``salt_pepper``, ``speckle``, ``uniform``. ``None`` = all four.
        gaussian_std: largest Gaussian σ (pixel units of ``data_info.bounds``); each sample
            draws σ uniformly in ``(0, gaussian_std]``.
        speckle_std: largest speckle σ (multiplicative), drawn the same way.
        uniform_eps: largest uniform-noise amplitude, drawn the same way.
        salt_pepper_amount: fraction of pixels set to the bounds.
        adversarial_fraction: fraction of samples whose noise is an adversarial perturbation
            of the whole pipeline instead (0 = general noise only).
        adv_eps: that attack's budget.
        attack: that attack, an :class:`attacks.AttackSpec` or its mapping (``None``:
            :attr:`default_attack`, PGD-5 L∞ with the attack's default step and random start);
            a mapping without ``name`` or naming ``pgd`` changes the default (see :class:`SAT`).
        lambda_rec: weight of the reconstruction loss.
        lambda_inv: weight of the feature-invariance loss.
        feature_layer: dotted name of a submodule of the net whose output is ``φ``; ``None`` =
            the net's output (see the module docstring).
        attack_bn_mode, attack_dropout_mode: module modes during the adversarial-noise attack.
        seed: seed of the noise / attack randomness; ``None`` = global RNG.
    """

    name = "denoise"
    #: PGD-5 L∞ (the attack's own step 2.5·ε/5 and random start)
    default_attack = {"name": "pgd", "norm": "linf", "steps": 5}
    legacy_attack_fields = {"adv_norm": "norm", "adv_steps": "steps"}

    def __init__(
        self,
        denoiser: dict | None = None,
        noises: list[Noise] | None = None,
        gaussian_std: float = 0.1,
        speckle_std: float = 0.2,
        uniform_eps: float = 0.1,
        salt_pepper_amount: float = 0.05,
        adversarial_fraction: float = 0.0,
        adv_eps: float = 0.004,
        attack: dict[str, Any] | AttackSpec | None = None,
        lambda_rec: float = 1.0,
        lambda_inv: float = 0.1,
        feature_layer: str | None = None,
        attack_bn_mode: Mode = "eval",
        attack_dropout_mode: Mode = "eval",
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.noises = list(NOISES if noises is None else noises)
        if not self.noises:
            raise ValueError(f"{owner}.noises must name at least one of {list(NOISES)}")
        for noise in self.noises:
            check_choice(owner, "noises", noise, NOISES)
        for field, value in (("gaussian_std", gaussian_std), ("speckle_std", speckle_std),
                             ("uniform_eps", uniform_eps), ("adv_eps", adv_eps),
                             ("lambda_rec", lambda_rec), ("lambda_inv", lambda_inv)):
            check_range(owner, field, value, 0.0)
        check_range(owner, "salt_pepper_amount", salt_pepper_amount, 0.0, 1.0)
        check_range(owner, "adversarial_fraction", adversarial_fraction, 0.0, 1.0)
        self.set_attack(attack, self.default_attack)
        self.denoiser_spec = denoiser
        self.gaussian_std, self.speckle_std = float(gaussian_std), float(speckle_std)
        self.uniform_eps, self.salt_pepper_amount = float(uniform_eps), float(salt_pepper_amount)
        self.adversarial_fraction = float(adversarial_fraction)
        self.adv_eps = float(adv_eps)
        self.lambda_rec, self.lambda_inv = float(lambda_rec), float(lambda_inv)
        self.feature_layer = feature_layer
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self.seed = seed

    # ------------------------------------------------------------------ setup
    def setup(self, task: TrainableTask) -> None:
        info = task.data_info
        self.denoiser = build_net(self.denoiser_spec, info, info.in_channels, DEFAULT_DENOISER,
                                  field="method.denoiser")
        if self.feature_layer is not None:
            names = dict(task.net.named_modules())
            if self.feature_layer not in names or self.feature_layer == "":
                some = [n for n in names if n][:12]
                raise ValueError(
                    f"Denoise.feature_layer={self.feature_layer!r} is not a submodule of the net; "
                    f"some names: {some}"
                )

    def embedded_module(self) -> nn.Module:
        return self.denoiser

    # ------------------------------------------------------------------ noise
    def corrupt(self, x: Tensor, bounds: tuple[float, float], generator: torch.Generator | None) -> Tensor:
        """``x`` (``[B, C, *spatial]`` in ``bounds``) under one random general noise per sample
        (type and strength drawn per sample), clamped to ``bounds``."""
        b = x.shape[0]
        width = bounds[1] - bounds[0]

        def rand(n: int) -> Tensor:
            if generator is None:
                return torch.rand(n, device=x.device)
            return torch.rand(n, generator=generator, device=generator.device).to(x.device)

        kind = (rand(b) * len(self.noises)).long().clamp_(max=len(self.noises) - 1)
        level = rand(b).mul_(0.9).add_(0.1)  # strength in (0.1, 1] of the configured maximum
        makers: dict[str, Callable[[], Any]] = {
            "gaussian": lambda: GaussianNoise(std=level * self.gaussian_std * width, bounds=bounds),
            "speckle": lambda: SpeckleNoise(std=level * self.speckle_std, bounds=bounds),
            "uniform": lambda: UniformNoise(eps=level * self.uniform_eps * width, bounds=bounds),
            "salt_pepper": lambda: SaltPepperNoise(amount=self.salt_pepper_amount, bounds=bounds),
        }
        noisy = x.clone()
        for i, name in enumerate(self.noises):
            sel = kind == i
            if bool(sel.any()):
                out = makers[name]()(None, x, generator=generator)
                noisy = torch.where(sel.view(-1, *[1] * (x.ndim - 1)), out, noisy)
        return noisy

    # ------------------------------------------------------------------ training
    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        x = batch["image"]
        b = x.shape[0]
        bounds = tuple(task.data_info.bounds)
        gen = self.generator(task, x.device, self.seed)
        noisy = self.corrupt(x, bounds, gen)  # type: ignore[arg-type]
        logs: Logs = {}
        if self.adversarial_fraction > 0:
            u = (torch.rand(b, generator=gen, device=gen.device) if gen is not None
                 else torch.rand(b, device=x.device)).to(x.device)
            pick = u < self.adversarial_fraction
            if bool(pick.any()):
                atk = self.attack.build(self.adv_eps, bounds,  # type: ignore[arg-type]
                                        (self.attack_bn_mode, self.attack_dropout_mode))
                x_adv = atk(task.attack_model(), x, batch, loss_fn=task.per_sample_loss,
                            generator=gen)
                noisy = torch.where(pick.view(-1, *[1] * (x.ndim - 1)), x_adv, noisy)
            logs["adv_fraction"] = pick.float().mean()

        captured: dict[str, list[Tensor]] = {"in": [], "out": [], "feat": []}

        def den_hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            captured["in"].append(inputs[0])
            captured["out"].append(output)

        def feat_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            captured["feat"].append(output)

        handles = [self.denoiser.register_forward_hook(den_hook)]
        if self.feature_layer is not None:
            layer = dict(task.net.named_modules())[self.feature_layer]
            handles.append(layer.register_forward_hook(feat_hook))
        try:
            out_clean, out_noisy = task.forward_joint([x, noisy])
        finally:
            for h in handles:
                h.remove()

        den_in, den_out = torch.cat(captured["in"]), torch.cat(captured["out"])
        target = den_in[:b].detach()  # the normalized clean image
        rec = ((den_out - torch.cat([target, target])) ** 2).mean()
        if self.feature_layer is None:
            f_clean, f_noisy = out_clean, out_noisy
        else:
            feats = torch.cat([f if isinstance(f, Tensor) else f[0] for f in captured["feat"]])
            f_clean, f_noisy = feats[:b], feats[b:]
        if not (isinstance(f_clean, Tensor) and isinstance(f_noisy, Tensor)):
            raise ValueError(
                "Denoise: the net's output is not a tensor; set feature_layer to a submodule "
                "whose output is one"
            )
        inv = ((f_noisy.float() - f_clean.detach().float()) ** 2).mean()
        loss_clean = task.batch_loss(out_clean, batch)
        loss_noisy = task.batch_loss(out_noisy, batch)
        task_loss = 0.5 * (loss_clean + loss_noisy)
        loss = task_loss + self.lambda_rec * rec + self.lambda_inv * inv
        logs.update({"loss_clean": loss_clean.detach(), "loss_noisy": loss_noisy.detach(),
                     "rec": rec.detach(), "inv": inv.detach()})
        return loss, logs
