"""AMAT's margins (Ma & Liang 2022): the per-sample update rule, the adversarial loss term over
the clean-correct samples, and the end-of-epoch application of the margins recorded during the
epoch, with the diagnostics it reports. The per-batch algorithm is
:class:`lightning_modules.methods.amat.AMAT`."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.methods.per_sample_state import GatheredRecords

#: what AMAT records per sample and batch: the new margin (NaN: no update, e.g. a warm-up
#: batch), the clean violation statistic, whether it took the +δ branch, whether its clean
#: input violated (the last two 0/1; NaN in warm-up)
RECORD_FIELDS = ("margin", "statistic", "grew", "clean_violated")


def margin_update(
    margins: Tensor,
    violated: Tensor,
    clean_correct: Tensor,
    noise_norm: Tensor,
    delta: float,
    max_margin: float,
) -> Tensor:
    """AMAT's margin rule, per sample (all ``[B]``).

    Expand by ``delta`` when the attack found no violation and the clean prediction is correct;
    otherwise move halfway to the noise norm where the violation was found (or reached):
    ``(E + ‖noise‖) / 2``. Result clamped to ``[0, max_margin]``.
    """
    grow = (~violated) & clean_correct
    new = torch.where(grow, margins + delta, (margins + noise_norm.to(margins.dtype)) / 2)
    return new.clamp(0.0, max_margin)


def adversarial_term(loss_adv: Tensor, clean_correct: Tensor, on: str) -> Tensor:
    """``L_adv`` of a batch from per-sample adversarial losses ``[B]``.

    ``on="all"``: their mean. ``on="clean_correct"``: the mean over the samples with
    ``clean_correct`` (Bool ``[B]``), 0 (still differentiable) when there are none — Ma &
    Liang's ``loss3``.
    """
    if on == "all":
        return loss_adv.mean()
    mask = clean_correct.to(loss_adv.dtype)
    return (loss_adv * mask).sum() / mask.sum().clamp(min=1.0)


def apply_margins(margins: Tensor, rec: GatheredRecords) -> dict[str, Tensor]:
    """Write the epoch's recorded margins (``rec``: every rank's records, each sample's first
    occurrence, fields :data:`RECORD_FIELDS`) into ``margins`` ``[N]`` in place; a NaN margin
    (a warm-up batch) leaves the sample's margin as it was.

    Returns the diagnostics over the updated samples (empty when none was): the fractions that
    took the +δ branch (``margin_grown``), ended more than 1 % below their old margin
    (``margin_shrunk``: without early stopping a violated margin moves halfway to a final noise
    norm just under ``E``, which counts as ``margin_held``), neither (``margin_held``), and whose
    clean input violated the threshold test (``clean_violated``).
    """
    new = rec["margin"]
    upd = ~torch.isnan(new)
    if not bool(upd.any()):
        return {}
    index = rec.index[upd]
    old = margins[index].clone()
    margins[index] = new[upd].to(margins.dtype)
    now = margins[index]
    grew = rec["grew"][upd] > 0.5
    shrunk = (~grew) & (now < 0.99 * old)
    return {"margin_grown": grew.float().mean(), "margin_shrunk": shrunk.float().mean(),
            "margin_held": ((~grew) & ~shrunk).float().mean(),
            "clean_violated": (rec["clean_violated"][upd] > 0.5).float().mean()}
