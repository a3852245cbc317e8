"""Precision checks for attacks: bf16 autocast is supported, fp16 autocast is warned about.

Attacks take the gradient of the loss with respect to a float32 input with
``torch.autograd.grad``. Under bf16 autocast the model runs in bfloat16 but the backward keeps
float32's exponent range, so gradients do not underflow. Under fp16 autocast (Lightning's
``16-mixed``) activations' gradients are float16: without the loss scaling that a
``GradScaler`` applies to *parameter* gradients, small input gradients flush to zero, the
attack stalls, and robust accuracy is over-estimated (gradient masking by arithmetic).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


class HalfPrecisionAttackWarning(UserWarning):
    """An attack runs under float16 autocast; its input gradients may underflow."""


def fp16_autocast_active(x: Tensor) -> bool:
    """Whether float16 autocast is enabled for ``x``'s device type."""
    device_type = x.device.type
    try:
        return bool(torch.is_autocast_enabled(device_type)) and (
            torch.get_autocast_dtype(device_type) == torch.float16)
    except (RuntimeError, TypeError):  # device types without autocast support
        return False


def warn_if_fp16_autocast(x: Tensor, attack: str) -> None:
    """Warn (category :class:`HalfPrecisionAttackWarning`) when ``attack`` runs under float16
    autocast. Turn it into an error with ``warnings.simplefilter("error",
    HalfPrecisionAttackWarning)``."""
    if fp16_autocast_active(x):
        warnings.warn(
            f"{attack} runs under float16 autocast (e.g. trainer.precision=16-mixed): input "
            "gradients through float16 activations underflow without loss scaling, so the "
            "attack can stall and over-estimate robustness. Use bf16-mixed (or 32-true) for "
            "adversarial training and evaluation; see docs/scaling.md",
            HalfPrecisionAttackWarning,
            stacklevel=5,
        )
