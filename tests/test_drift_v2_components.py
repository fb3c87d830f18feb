"""Analytic tests of the DRIFT v2 component functions (outlier masking, CADS, success-gated bonuses)."""

import math

import pytest
import torch

from drift.components import bonus, cads, outliers


# ---- sampling: outlier mask with full-group statistics -----------------------------------------
def test_outlier_mask_drops_only_beyond_kappa_sigma():
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0]])
    mean, std = r.mean(), r.std(unbiased=False)  # 1.25, 3.307
    keep = outliers.outlier_mask(r, kappa=2.0)
    assert keep.tolist() == [[True] * 7 + [(10.0 - mean).abs() <= 2 * std]]
    assert not keep[0, 7]  # |10 - 1.25| = 8.75 > 6.61


def test_outlier_mask_nonfinite_dropped_and_equal_group_kept():
    r = torch.tensor([[1.0, 1.0, float("nan"), 1.0], [2.0, 2.0, 2.0, float("inf")]])
    keep = outliers.outlier_mask(r, kappa=1.5)
    assert keep.tolist() == [[True, True, False, True], [True, True, True, False]]
    with pytest.raises(ValueError, match="kappa"):
        outliers.outlier_mask(r, kappa=0)


def test_protect_keeps_the_rare_success_that_the_mask_drops():
    # one success in eight: its reward is the group's outlier, and the plain mask drops exactly it
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0], [1.0, 2.0, 3.0, 4.0, float("nan"), 5.0, 6.0, 50.0]])
    success = torch.tensor([[False] * 7 + [True], [False, False, False, False, True, False, False, False]])
    keep = outliers.outlier_mask(r, kappa=2.0)
    assert not keep[0, 7] and not keep[1, 7]
    assert outliers.dropped_share(keep, success) == 1.0  # both: the outlier success and the non-finite one
    kept = outliers.protect(keep, success, r)
    assert kept[0].all()  # the success is back, nothing else changed
    assert not kept[1, 4] and not kept[1, 7]  # a non-finite success stays dropped; an unprotected outlier too
    assert torch.equal(kept & ~success, keep & ~success)
    assert outliers.dropped_share(kept, success & torch.isfinite(r)) == 0.0
    assert outliers.dropped_share(keep, torch.zeros_like(success)) == 0.0
    # its advantage is the full-group z-score: (10 - 1.25) / 3.307 = 2.646
    adv = outliers.masked_advantages(r[:1], kept[:1], eps=0.0)
    assert adv[0, 7].item() == pytest.approx(8.75 / math.sqrt(0.875 * 0.125 * 100), rel=1e-6)


def test_masked_advantages_use_all_candidates_statistics():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    keep = torch.tensor([[True, True, True, True, False]])
    adv = outliers.masked_advantages(r, keep, eps=0.0)
    mu, sd = r.mean(), r.std(unbiased=False)
    expect = ((r - mu) / sd) * keep
    assert torch.allclose(adv, expect, atol=1e-6)
    assert adv[0, 4] == 0
    # with nothing masked it is exactly the Flow-GRPO group advantage
    from drift.advantages import group_advantages
    full = outliers.masked_advantages(r, torch.ones_like(keep), eps=1e-4)
    assert torch.allclose(full, group_advantages(r, 1e-4)[0], atol=1e-6)


def test_kept_std_ratio_is_one_for_a_mask_that_drops_nothing_and_small_for_a_window():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(64, 16, generator=g)
    assert outliers.kept_std_ratio(r, torch.ones_like(r, dtype=torch.bool)) == pytest.approx(1.0)
    from drift.components.subset import select_densest
    idx = select_densest(r, 8)
    window = torch.zeros_like(r, dtype=torch.bool).scatter_(1, idx, True)
    assert outliers.kept_std_ratio(r, window) < 0.5  # the mechanism the first DRIFT suffered from
    assert outliers.kept_std_ratio(r, outliers.outlier_mask(r, 2.0)) > 0.85


def test_robust_advantages_median_mad_and_fallback():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # median 3, MAD 1 -> (r - 3) / 1.4826, clipped at 2
    adv = outliers.robust_advantages(r, clip=2.0, eps=0.0)
    assert torch.allclose(adv, ((r - 3) / 1.4826).clamp(-2, 2), atol=1e-6)
    # most samples tie: MAD = 0 -> falls back to the std, no division by ~0
    tie = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    a = outliers.robust_advantages(tie, clip=5.0, eps=1e-4)
    sd = tie.std(unbiased=False)
    assert a[0, 4] == pytest.approx(float(1.0 / (sd + 1e-4)), rel=1e-5)
    assert torch.all(a[0, :4] == 0)
    # an outlier does not shrink everyone else's advantage
    base = outliers.robust_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 3.0]]))
    spiked = outliers.robust_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 1e6]]))
    assert torch.allclose(base[0, :5], spiked[0, :5], atol=0.35)


# ---- prompting: CADS ---------------------------------------------------------------------------
def test_cads_gamma_piecewise_linear():
    assert cads.cads_gamma(0.0) == 1.0 and cads.cads_gamma(0.6) == 1.0
    assert cads.cads_gamma(0.9) == 0.0 and cads.cads_gamma(1.0) == 0.0
    assert cads.cads_gamma(0.75) == pytest.approx(0.5)
    assert cads.step_time(0, 10) == 1.0 and cads.step_time(5, 10) == 0.5
    with pytest.raises(ValueError, match="tau1"):
        cads.cads_gamma(0.5, tau1=0.9, tau2=0.6)


def test_cads_condition_limits_and_formula():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 5, 8, generator=g)
    n = torch.randn(3, 5, 8, generator=g)
    assert cads.cads_condition(y, n, 1.0) is y  # clean late steps: bitwise the condition
    rms = y.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    out = cads.cads_condition(y, n, 0.25, scale=0.5, psi=0.0)
    assert torch.allclose(out, 0.5 * y + 0.5 * math.sqrt(0.75) * rms * n, atol=1e-6)
    # full rescale: per-sample mean and std of the output equal the clean condition's
    res = cads.cads_condition(y, n, 0.0, scale=0.25, psi=1.0)
    assert torch.allclose(res.mean(dim=(1, 2)), y.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(res.std(dim=(1, 2), unbiased=False), y.std(dim=(1, 2), unbiased=False), atol=1e-5)
    # gamma = 0 without rescale: pure (scaled) noise, no trace of y
    pure = cads.cads_condition(y, n, 0.0, scale=0.25, psi=0.0)
    assert torch.allclose(pure, 0.25 * rms * n, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        cads.cads_condition(y, n[:, :4], 0.5)


# ---- optimisation: success-gated bonus, decoupled, GARDO ----------------------------------------
def test_success_mask_binary_head_and_quantile():
    r = torch.tensor([[0.1, 0.5, 0.9, float("nan")]])
    head = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    assert bonus.success_mask(r, head).tolist() == [[True, False, True, False]]
    assert bonus.success_mask(r, None, quantile=0.5).tolist() == [[False, True, True, False]]


def test_drive_bonus_pays_successes_only_least_diverse_gets_zero():
    d = torch.tensor([[0.10, 0.20, 0.30, 0.90]])
    s = torch.tensor([[True, True, True, False]])
    b = bonus.drive_bonus(d, s, delta=0.05)
    assert torch.allclose(b, torch.tensor([[0.0, 0.5, 1.0, 0.0]]))
    # tiny spreads are not amplified: range 0.01 < delta -> divided by delta
    tiny = bonus.drive_bonus(torch.tensor([[0.10, 0.11]]), torch.tensor([[True, True]]), delta=0.05)
    assert torch.allclose(tiny, torch.tensor([[0.0, 0.2]]), atol=1e-6)
    # one success in the group gets 0; no success, nothing paid
    assert bonus.drive_bonus(d, torch.tensor([[False, True, False, False]])).sum() == 0
    assert bonus.drive_bonus(d, torch.zeros_like(s)).sum() == 0


def test_decoupled_advantages_standardise_diversity_among_successes():
    a_task = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    d = torch.tensor([[0.2, 0.9, 0.4, 0.1]])
    s = torch.tensor([[True, False, True, False]])
    a = bonus.decoupled_advantages(a_task, d, s, alpha=0.5, eps=0.0)
    # among successes d = (0.2, 0.4): z = (-1, +1)
    assert torch.allclose(a, torch.tensor([[0.5, -1.0, 1.5, -1.0]]), atol=1e-6)
    # alpha is scale-free: multiplying d by 10 changes nothing
    assert torch.allclose(bonus.decoupled_advantages(a_task, 10 * d, s, 0.5, 0.0), a, atol=1e-6)


def test_gardo_scales_positive_advantages_never_flips_sign():
    r = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    d = torch.tensor([[0.4, 0.4, 0.2, 0.6]])
    a = bonus.gardo_advantages(r, d)
    mu, dm = 1.5, 0.4
    assert torch.allclose(a, torch.tensor([[-1.5, -0.5, 0.5 * 0.2 / dm, 1.5 * 0.6 / dm]]), atol=1e-6)
    assert torch.all(torch.sign(a) == torch.sign(r - mu))
    eq = bonus.gardo_advantages(torch.ones(1, 4), d)
    assert torch.all(eq == 0)  # no advantage where r = mu


def test_conditional_correlation_detects_ordering_inside_groups():
    d = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    a_good = d - d.mean(1, keepdim=True)
    a_level = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])  # pays group levels only
    m = torch.ones_like(d, dtype=torch.bool)
    assert bonus.conditional_correlation(a_good, d, m) == pytest.approx(1.0)
    assert bonus.conditional_correlation(-a_good, d, m) == pytest.approx(-1.0)
    assert math.isnan(bonus.conditional_correlation(a_level, d, m))  # no ordering inside any group
