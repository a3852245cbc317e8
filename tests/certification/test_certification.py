"""Randomized smoothing (``certification``): Cohen et al.'s CERTIFY against the closed form of a
linear classifier, soundness under an attack on the smoothed model, SegCertify's abstention and
correction, median smoothing's bounds, determinism, 2-D and 3-D inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from attacks import APGD
from certification import (
    ABSTAIN,
    MedianSmoothedLandmarks,
    NoiseSampler,
    SmoothedClassifier,
    SmoothedSegmenter,
    certified_scores,
    radial_error_bound,
)
from certification.statistics import (
    binomial_pvalue_greater,
    bonferroni_reject,
    clopper_pearson_lower,
    holm_reject,
    order_statistic_ranks,
)
from lightning_modules.methods import GaussianAugment

SIGMA = 0.25


# ------------------------------------------------------------------------------ statistics
def test_clopper_pearson_and_binomial_test_are_the_same_event() -> None:
    """p̲ ≥ τ exactly when the exact test of p ≤ τ rejects at α (the bound CERTIFY uses and the
    test SegCertify uses), and the bound is the textbook Beta quantile."""
    n, alpha = 200, 0.01
    k = np.arange(0, n + 1)
    low = clopper_pearson_lower(k, n, alpha)
    assert low[0] == 0.0 and np.all(np.diff(low) > 0)
    assert low[150] == pytest.approx(stats.beta.ppf(alpha, 150, 51))
    for tau in (0.5, 0.7, 0.9):
        rejected = binomial_pvalue_greater(k, n, tau) <= alpha
        assert np.array_equal(rejected, low >= tau - 1e-12)


def test_holm_between_bonferroni_and_no_correction() -> None:
    p = np.array([0.0001, 0.004, 0.012, 0.02, 0.3])
    # Holm: 0.0001 ≤ .05/5, 0.004 ≤ .05/4, 0.012 ≤ .05/3, 0.02 ≤ .05/2 = 0.025, 0.3 > 0.05
    assert holm_reject(p, 0.05).tolist() == [True, True, True, True, False]
    assert bonferroni_reject(p, 0.05).tolist() == [True, True, False, False, False]
    # the step-down stops at the first failure, even if a later p-value would pass its own level
    assert holm_reject(np.array([0.03, 0.001, 0.04]), 0.05).tolist() == [False, True, False]


def test_corrections_per_family_equal_one_family_at_a_time() -> None:
    """``axis``: every slice along it is its own family, in one vectorised pass, with the same
    decisions as the procedure applied to each family alone (ties and the step-down's stop
    included), on either axis; SegCertify uses it for all radii at once."""
    rng = np.random.default_rng(0)
    p = rng.choice([1e-7, 1e-5, 1e-4, 0.003, 0.01, 0.2], size=(5, 40)) * rng.uniform(0.5, 1.5, size=(5, 40))
    p[2, :] = 1e-6  # a family rejected everywhere; ties
    p[3, 7] = 0.9   # one family that stops at its last test
    p[4, :] = 0.0099 / (40 - np.arange(40))  # Holm rejects all 40, Bonferroni only the smallest
    for fn in (holm_reject, bonferroni_reject):
        rows = fn(p, 0.01, axis=1)
        assert rows.shape == p.shape
        assert all(np.array_equal(rows[i], fn(p[i], 0.01)) for i in range(p.shape[0]))
        cols = fn(p.T, 0.01, axis=0)
        assert np.array_equal(cols, rows.T)
        assert np.array_equal(fn(p, 0.01), fn(p.reshape(-1), 0.01).reshape(p.shape))  # axis=None: one family
    holm, bonf = holm_reject(p, 0.01, axis=1), bonferroni_reject(p, 0.01, axis=1)
    assert holm[2].all() and holm[4].all() and bonf[4].sum() == 1 and not holm[3, 7]
    # several τ at once broadcast against the counts, as one τ at a time
    k, taus = np.arange(0, 51), np.array([0.5, 0.7, 0.9])
    many = binomial_pvalue_greater(k[None, :], 50, taus[:, None])
    assert np.array_equal(many, np.stack([binomial_pvalue_greater(k, 50, t) for t in taus]))
    with pytest.raises(ValueError, match="tau"):
        binomial_pvalue_greater(k, 50, np.array([0.5, 1.2]))


def test_order_statistic_ranks_cover_the_percentile() -> None:
    """Over many replications the chosen order statistics bound the true percentile at least
    1 − α of the time (a standard normal: percentiles known)."""
    n, alpha, p_lo, p_hi = 300, 0.05, 0.2, 0.8
    k_lo, k_hi = order_statistic_ranks(n, p_lo, p_hi, alpha)
    assert 1 <= k_lo < n * p_lo < n * p_hi < k_hi <= n
    g = np.random.default_rng(0)
    draws = np.sort(g.standard_normal((4000, n)), axis=1)
    cover_lo = np.mean(draws[:, k_lo - 1] <= stats.norm.ppf(p_lo))
    cover_hi = np.mean(draws[:, k_hi - 1] >= stats.norm.ppf(p_hi))
    assert cover_lo >= 1 - alpha - 0.01 and cover_hi >= 1 - alpha - 0.01
    # the next rank inwards would not cover: the ranks are the tightest valid ones
    assert stats.binom.sf(k_lo, n, p_lo) < 1 - alpha
    assert stats.binom.cdf(k_hi - 2, n, p_hi) < 1 - alpha
    assert order_statistic_ranks(10, 0.001, 0.999, 0.01) == (0, 11)  # too few draws: no bound


# ------------------------------------------------------------------------------ classification
class Linear(nn.Module):
    """``f(x) = [w·x + b > 0]``, as two logits; its smoothed classifier is itself, and its
    robustness radius at ``x`` is ``|w·x + b| / ‖w‖`` (Cohen et al.: ``σ·Φ⁻¹(p_A)`` is exact)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(d, generator=g)
        self.b = 0.1

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.margin(x)
        return torch.stack([-m, m], dim=1)


def linear_points(model: Linear, distances: list[float]) -> torch.Tensor:
    """Images ``[N, 1, 4, 4]`` at the given signed distances from the decision hyperplane."""
    unit = model.w / model.w.norm()
    base = -model.b * model.w / model.w.norm() ** 2  # on the hyperplane
    return torch.stack([(base + d * unit).view(1, 4, 4) for d in distances])


def test_linear_classifier_radius_never_exceeds_the_true_one_and_approaches_it() -> None:
    model = Linear()
    distances = [0.05, 0.15, -0.2, 0.3, -0.4]
    x = linear_points(model, distances)
    true = np.abs(distances)
    gaps = {}
    for n in (100, 1000, 20000):
        g = SmoothedClassifier(lambda z: model(z).argmax(1), 2, NoiseSampler(SIGMA, batch_size=5000, seed=n))
        radii = []
        for i in range(len(distances)):
            cert = g.certify(x[i], n0=100, n=n, alpha=0.001, sample_id=i)
            if not cert.abstained:
                assert cert.label == int(distances[i] > 0)
            radii.append(max(cert.radius, 0.0))
        radii = np.array(radii)
        assert np.all(radii <= true + 1e-9), (n, radii, true)
        gaps[n] = float(np.mean(true - radii))
    assert gaps[100] > gaps[1000] > gaps[20000]
    # the exact radius at n = 20000, α = 0.001: within the Clopper–Pearson slack
    assert gaps[20000] < 0.03


def test_predict_abstains_on_a_coin_flip_and_answers_a_clear_case() -> None:
    model = Linear()
    x = linear_points(model, [0.0, 0.5])
    g = SmoothedClassifier(lambda z: model(z).argmax(1), 2, NoiseSampler(SIGMA, batch_size=1000))
    assert g.predict(x[0], n=1000, alpha=0.001) == ABSTAIN
    assert g.predict(x[1], n=1000, alpha=0.001) == 1
    assert g.certify(x[0], 100, 1000, 0.001).radius == -1.0


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 1×6×6 images: a bright square top-left or bottom-right, plus noise."""
    y = torch.arange(n) % 2
    x = 0.1 * torch.rand(n, 1, 6, 6, generator=g)
    x[y == 0, :, :3, :3] += 0.8
    x[y == 1, :, 3:, 3:] += 0.8
    return x, y


@pytest.fixture(scope="module")
def tiny_noise_trained() -> nn.Module:
    """A tiny CNN trained 100 steps with Gaussian augmentation (GaussianAugment's noise)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(288, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    method = GaussianAugment(sigma=SIGMA)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        x, y = _blobs(32, g)
        xn, _ = method.noisy(x, g)
        loss = nn.functional.cross_entropy(net(xn), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


class SmoothedSoft(nn.Module):
    """The Monte-Carlo estimate of the smoothed classifier's class probabilities,
    ``log E_δ[softmax f(x + δ)]`` over ``m`` fresh draws each forward (expectation over the noise
    in every attack step), as logits for the attack."""

    def __init__(self, net: nn.Module, m: int = 32) -> None:
        super().__init__()
        self.net, self.m = net, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        noisy = x.repeat_interleave(self.m, 0) + SIGMA * torch.randn((b * self.m, *x.shape[1:]))
        p = self.net(noisy).softmax(1).view(b, self.m, -1).mean(1)
        return p.clamp_min(1e-12).log()


def test_soundness_apgd_on_the_smoothed_model_finds_no_flip_inside_the_radius(tiny_noise_trained: nn.Module) -> None:
    net = tiny_noise_trained
    x, y = _blobs(12, torch.Generator().manual_seed(5))
    g = SmoothedClassifier(lambda z: net(z).argmax(1), 2, NoiseSampler(SIGMA, batch_size=2000))
    certs = [g.certify(x[i], n0=100, n=2000, alpha=0.001, sample_id=i) for i in range(len(x))]
    ok = [i for i, c in enumerate(certs) if not c.abstained and c.label == int(y[i])]
    assert len(ok) >= 8, [c.radius for c in certs]
    idx = torch.tensor(ok)
    radii = torch.tensor([certs[i].radius for i in ok])
    labels = torch.tensor([certs[i].label for i in ok])
    torch.manual_seed(1)
    soft = SmoothedSoft(net)
    bounds = (-10.0, 10.0)  # no clamp: the certificate is about the whole L2 ball

    def smoothed_vote(z: torch.Tensor) -> torch.Tensor:
        gv = SmoothedClassifier(lambda u: net(u).argmax(1), 2, NoiseSampler(SIGMA, batch_size=2000, seed=7))
        return torch.tensor([int(gv.counts(z[i], 2000, gv.sampler.generator(i, "cpu")).argmax()) for i in range(len(z))])

    inside = APGD(eps=0.95 * radii, norm="l2", steps=25, bounds=bounds)(soft, x[idx], labels)
    assert torch.equal(smoothed_vote(inside), labels)  # no flip inside the certified radius
    # the same attack is strong enough to flip the smoothed model well outside it
    outside = APGD(eps=4.0 * radii + 1.0, norm="l2", steps=25, bounds=bounds)(soft, x[idx], labels)
    assert (smoothed_vote(outside) != labels).float().mean() >= 0.5


def test_determinism_and_sample_streams() -> None:
    model = Linear()
    x = linear_points(model, [0.05, 0.1])

    def counts(seed: int, sid: int) -> torch.Tensor:
        g = SmoothedClassifier(lambda z: model(z).argmax(1), 2, NoiseSampler(SIGMA, batch_size=64, seed=seed))
        return g.certify(x[0], 10, 300, 0.01, sample_id=sid).counts

    assert torch.equal(counts(0, 3), counts(0, 3))

    def draws(seed: int, sid: int) -> torch.Tensor:
        s = NoiseSampler(SIGMA, batch_size=16, seed=seed)
        return s.collect(lambda z: z, torch.zeros(1, 2, 2), 32, s.generator(sid, "cpu"))

    assert torch.equal(draws(0, 3), draws(0, 3))
    assert not torch.allclose(draws(0, 3), draws(1, 3)) and not torch.allclose(draws(0, 3), draws(0, 4))
    assert float(draws(0, 3).std()) == pytest.approx(SIGMA, rel=0.25)
    # the batch size does not change the draws' statistics' determinism (same seed, same batches)
    a = NoiseSampler(SIGMA, batch_size=64, seed=0)
    b = NoiseSampler(SIGMA, batch_size=64, seed=0)
    va = a.vote_counts(lambda z: model(z).argmax(1), x[1], 500, 2, a.generator(0, "cpu"))
    vb = b.vote_counts(lambda z: model(z).argmax(1), x[1], 500, 2, b.generator(0, "cpu"))
    assert torch.equal(va, vb) and a.forwards == 500


def test_three_d_inputs_classification() -> None:
    w = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))

    def predict(z: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 5  # [b, C, D, H, W]
        return ((z * w).flatten(1).sum(1) > 0).long()

    x = 0.4 * w / w.norm()  # distance 0.4 from the hyperplane through 0
    cert = SmoothedClassifier(predict, 2, NoiseSampler(SIGMA, batch_size=500)).certify(x, 100, 5000, 0.001)
    assert cert.label == 1 and 0.3 < cert.radius <= 0.4


# ------------------------------------------------------------------------------ segmentation
def test_segmentation_fixed_map_certified_everywhere_2d_and_3d() -> None:
    for shape in ((8, 8), (4, 4, 4)):
        fixed = (torch.arange(math.prod(shape)).view(shape) % 3).long()

        def predict(z: torch.Tensor, fixed: torch.Tensor = fixed) -> torch.Tensor:
            return fixed.expand(z.shape[0], *fixed.shape)

        seg = SmoothedSegmenter(predict, 3, NoiseSampler(0.5, batch_size=500))
        cert = seg.certify(torch.zeros(1, *shape), radii=[0.0, 0.25, 0.5, 1.0], n0=20, n=1000, alpha=0.001)
        assert (cert.labels == fixed).all() and (cert.abstain_rate() == 0).all()
        acc, dice = certified_scores(cert.labels, fixed, 3)
        assert torch.allclose(acc, torch.ones(4)) and torch.allclose(dice, torch.ones(4))


def _ramp_segmenter(correction: str) -> tuple[SmoothedSegmenter, torch.Tensor]:
    """A 2-class map whose pixel i votes class 1 with probability Φ(c_i/σ): c from −0.05 to 0.3,
    so pixels with c near 0 flip under noise, those near 0.3 hold, and a few in between have
    p-values between α/64 and α (certified only without a correction)."""
    c = torch.linspace(-0.05, 0.3, 64).view(8, 8)

    def predict(z: torch.Tensor) -> torch.Tensor:
        return (z[:, 0] + c > 0).long()

    return SmoothedSegmenter(predict, 2, NoiseSampler(SIGMA, batch_size=1000, seed=3), correction), c


def test_segmentation_flipping_pixels_abstain_and_the_correction_is_applied() -> None:
    x = torch.zeros(1, 8, 8)
    out = {}
    for corr in ("none", "holm", "bonferroni"):
        seg, c = _ramp_segmenter(corr)
        out[corr] = seg.certify(x, radii=[0.0, 0.1], n0=50, n=500, alpha=0.01)
    holm = out["holm"]
    # coin-flip pixels (|c| small) abstain at every radius, confident ones (c = 0.5) never
    assert (holm.labels[:, (c.abs() < 0.02)] == ABSTAIN).all()
    assert (holm.labels[:, c > 0.28] == 1).all()
    # the correction: Bonferroni ⊆ Holm ⊆ uncorrected certified pixels, strictly fewer than none
    cert = {k: (v.labels != ABSTAIN) for k, v in out.items()}
    assert (cert["bonferroni"] <= cert["holm"]).all() and (cert["holm"] <= cert["none"]).all()
    assert int(cert["holm"].sum()) < int(cert["none"].sum())
    # each radius' decision equals Holm / Bonferroni / none applied by hand to that radius' per-pixel
    # exact tests, one radius at a time (the certificate computes all radii in one pass)
    for corr, fn in (("holm", holm_reject), ("bonferroni", bonferroni_reject), ("none", None)):
        for i, r in enumerate((0.0, 0.1)):
            pv = binomial_pvalue_greater(out[corr].counts.numpy(), 500, stats.norm.cdf(r / SIGMA))
            by_hand = fn(pv, 0.01) if fn is not None else pv <= 0.01
            assert np.array_equal(by_hand, (out[corr].labels[i] != ABSTAIN).numpy())
            assert (out[corr].labels[i][torch.from_numpy(by_hand)] == out[corr].top[torch.from_numpy(by_hand)]).all()


def test_certified_dice_counts_abstained_pixels_as_wrong() -> None:
    target = torch.tensor([[1, 1, 0, 0]])
    labels = torch.tensor([[[1, 1, 0, 0]], [[1, ABSTAIN, 0, ABSTAIN]]])
    acc, dice = certified_scores(labels, target, 2)
    assert acc.tolist() == [1.0, 0.5]
    # radius 1: TP 1, FN 1 (abstained lesion), FP 1 (abstained background): 2/(2+1+1)
    assert dice.tolist() == pytest.approx([1.0, 0.5])
    # no lesion anywhere, one abstained pixel: it could be lesion, Dice 0
    _, d = certified_scores(torch.tensor([[[0, ABSTAIN]]]), torch.tensor([[0, 0]]), 2)
    assert d.item() == 0.0


# ------------------------------------------------------------------------------ landmarks
class TinyLandmarks(nn.Module):
    """Two points ``(x, y)`` in a 32×32 image, linear in the image (a tiny regression model)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.lin = nn.Linear(64, 4)
        with torch.no_grad():
            self.lin.weight.mul_(3.0)
            self.lin.bias.copy_(torch.tensor([10.0, 12.0, 20.0, 18.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)).view(-1, 2, 2)


def test_landmark_bounds_contain_the_smoothed_output_under_perturbations_inside_the_radius() -> None:
    model = TinyLandmarks().eval()
    x = 0.5 * torch.ones(1, 8, 8)
    smooth = MedianSmoothedLandmarks(model, (32, 32), NoiseSampler(SIGMA, batch_size=1000, seed=0))
    radii = [0.0, 0.1, 0.25]
    with torch.no_grad():
        cert = smooth.certify(x, radii, n=2000, alpha=0.001)
        assert torch.allclose(cert.median, model(x[None])[0], atol=0.2)  # linear: median = f(x)
        w = model.lin.weight.view(2, 2, 64)
        g = torch.Generator().manual_seed(9)
        for i, r in enumerate(radii):
            lo, hi = cert.lower[i], cert.upper[i]
            assert (lo <= cert.median + 1e-6).all() and (cert.median <= hi + 1e-6).all()
            # the worst directions (± each output's weight) and random ones, at 0.98 R
            dirs = [s * w[p, d] for p in range(2) for d in range(2) for s in (1.0, -1.0)]
            dirs += [torch.randn(64, generator=g) for _ in range(4)]
            for k, v in enumerate(dirs):
                delta = (0.98 * r * v / v.norm()).view(1, 8, 8)
                inner = MedianSmoothedLandmarks(model, (32, 32), NoiseSampler(SIGMA, batch_size=2000, seed=100 + k))
                moved = inner.certify(x + delta, [0.0], n=4000, alpha=0.001).median
                assert (moved >= lo - 1e-6).all() and (moved <= hi + 1e-6).all(), (r, k, moved, lo, hi)
        # wider radius, wider box; the radial-error bound is the farthest corner
        width = (cert.upper - cert.lower).sum(dim=(1, 2))
        assert width[0] < width[1] < width[2]
        truth = cert.median
        bound = radial_error_bound(cert.lower, cert.upper, truth)
        assert (bound[2] >= (cert.upper[2] - truth).norm(dim=-1) - 1e-6).all()


def test_landmarks_three_d_input_and_border_fallback() -> None:
    def predict(z: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 5
        m = z.flatten(1).mean(1)
        return torch.stack([torch.stack([5 + 40 * m, 6 + 0 * m], -1)], 1)  # [b, 1, 2]

    smooth = MedianSmoothedLandmarks(predict, (4, 16, 16), NoiseSampler(SIGMA, batch_size=200))
    cert = smooth.certify(torch.zeros(1, 4, 16, 16), [0.0, 5.0], n=50, alpha=0.001)
    # R = 5σ·… needs far more draws than 50: the bounds fall back to the image border
    assert cert.lower[1].tolist() == [[0.0, 0.0]] and cert.upper[1].tolist() == [[15.0, 15.0]]


# ------------------------------------------------------------------------------ training
def test_gaussian_augment_noise_has_sigma_and_keeps_clean_samples() -> None:
    x = torch.zeros(400, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    noisy, pick = GaussianAugment(sigma=0.3).noisy(x, g)
    assert pick.all() and float(noisy.std()) == pytest.approx(0.3, rel=0.02)
    noisy, pick = GaussianAugment(sigma=0.3, clean_fraction=0.5).noisy(x, g)
    assert 0.35 < float(pick.float().mean()) < 0.65
    assert (noisy[~pick] == 0).all() and float(noisy[pick].std()) == pytest.approx(0.3, rel=0.03)
    with pytest.raises(ValueError, match="GaussianAugment.sigma"):
        GaussianAugment(sigma=0.0)
