"""Per-sample losses and violated tests: shapes and known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attacks import losses

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def test_cross_entropy_shapes_and_values() -> None:
    logits = torch.zeros(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(losses.cross_entropy(logits, y), torch.full((4,), math.log(5)))
    # segmentation: [B, K, H, W] with [B, H, W] -> mean over pixels
    seg = torch.randn(2, 3, 4, 4)
    t = torch.randint(0, 3, (2, 4, 4))
    expected = F.cross_entropy(seg, t, reduction="none").mean(dim=(1, 2))
    torch.testing.assert_close(losses.cross_entropy(seg, t), expected)
    torch.testing.assert_close(losses.cross_entropy(seg, t[:, None]), expected)  # [B, 1, H, W]
    # 3-D
    assert losses.cross_entropy(torch.randn(2, 3, 2, 2, 2), torch.randint(0, 3, (2, 2, 2, 2))
                                ).shape == (2,)
    # binary single logit, [B] and [B, 1], float or int targets
    z = torch.tensor([0.0, 2.0])
    for out, tgt in ((z, torch.tensor([1.0, 0.0])), (z[:, None], torch.tensor([1, 0]))):
        torch.testing.assert_close(losses.cross_entropy(out, tgt),
                                   torch.tensor([math.log(2), math.log(1 + math.e**2)]))
    # multi-label [B, K] float -> mean BCE over labels
    ml = losses.cross_entropy(torch.zeros(3, 4), torch.ones(3, 4))
    torch.testing.assert_close(ml, torch.full((3,), math.log(2)))
    # a batch dict is accepted
    assert losses.cross_entropy(logits, {"target": y, "image": None}).shape == (4,)


def test_dice_loss_perfect_and_wrong() -> None:
    t = torch.randint(0, 3, (2, 6, 6))
    perfect = F.one_hot(t, 3).movedim(-1, 1).float() * 40 - 20  # confident correct logits
    d = losses.dice_loss(perfect, t)
    assert d.shape == (2,) and bool((d < 1e-4).all())
    wrong = F.one_hot((t + 1) % 3, 3).movedim(-1, 1).float() * 40 - 20
    assert bool((losses.dice_loss(wrong, t) > 0.99).all())
    # 3-D, one-hot target, include background, probabilities
    t3 = torch.randint(0, 2, (2, 3, 3, 3))
    probs = F.one_hot(t3, 2).movedim(-1, 1).float()
    d3 = losses.dice_loss(probs, probs, include_background=True, softmax=False)
    assert d3.shape == (2,) and bool((d3.abs() < 1e-6).all())
    # binary single channel (sigmoid)
    tb = torch.randint(0, 2, (2, 1, 5, 5))
    assert bool((losses.dice_loss(tb.float() * 40 - 20, tb) < 1e-4).all())
    dce = losses.dice_ce_loss(perfect, t)
    assert dce.shape == (2,) and bool((dce < 1e-3).all())


def test_heatmap_mse_and_margin() -> None:
    out = torch.zeros(2, 3, 4, 4)
    tgt = torch.ones(2, 3, 4, 4)
    tgt[1] = 3
    torch.testing.assert_close(losses.heatmap_mse(out, tgt), torch.tensor([1.0, 9.0]))
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(losses.margin_loss(logits, y), torch.tensor([-2.0, 3.0]))
    torch.testing.assert_close(losses.margin_loss(logits, y, kappa=1.0), torch.tensor([-2.0, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        losses.heatmap_mse(out, tgt[:, :2])


def test_violation_helpers() -> None:
    logits = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
    assert losses.argmax_violated(logits, torch.tensor([0, 0, 1])).tolist() == [False, True, True]
    assert losses.argmax_violated(torch.tensor([[1.0], [-1.0]]), torch.tensor([1, 1])).tolist() == \
        [False, True]
    above = losses.loss_above(losses.cross_entropy, torch.tensor([0.5, 0.5, 10.0]))
    assert above(logits, torch.tensor([0, 0, 1])).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="loss_above"):
        losses.argmax_violated(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


def test_bernoulli_and_categorical_kl_match_torch_distributions() -> None:
    """The one KL of TRADES (classification, segmentation, detection heads) against
    torch.distributions; zero for equal inputs; float32 even for half inputs."""
    from torch.distributions import Bernoulli, Categorical, kl_divergence

    from attacks.losses import bernoulli_kl, categorical_kl

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(4, 3, generator=g) * 3, torch.randn(4, 3, generator=g) * 3
    ref = kl_divergence(Bernoulli(logits=p), Bernoulli(logits=q))
    assert torch.allclose(bernoulli_kl(p, q), ref, atol=1e-5)
    assert torch.allclose(bernoulli_kl(p, p), torch.zeros_like(p), atol=1e-6)
    assert bernoulli_kl(p.half(), q.half()).dtype == torch.float32
    assert torch.isfinite(bernoulli_kl(torch.tensor([80.0]), torch.tensor([-80.0]))).all()
    ref_c = kl_divergence(Categorical(logits=p), Categorical(logits=q))
    assert torch.allclose(categorical_kl(p, q), ref_c, atol=1e-5)
    pix_p, pix_q = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    per_pixel = categorical_kl(pix_p, pix_q, dim=1)
    assert per_pixel.shape == (2, 4, 5)
    ref_pix = kl_divergence(Categorical(logits=pix_p.movedim(1, -1)), Categorical(logits=pix_q.movedim(1, -1)))
    assert torch.allclose(per_pixel, ref_pix, atol=1e-5)
