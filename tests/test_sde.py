"""Analytic tests of the flow-SDE step and its log-prob (Flow-GRPO Sec. 2.2-2.4 of methods.md)."""

import math

import pytest
import torch

from drift.sde import gaussian_log_prob, kl_gaussian_same_std, ode_step, sde_step_with_logprob, sigma_schedule


def test_sigma_schedule_shift_matches_sd3():
    s = sigma_schedule(10, shift=3.0)
    ref = [1.0, .9643, .9231, .8750, .8182, .7500, .6667, .5625, .4286, .2500, 0.0]
    assert torch.allclose(s, torch.tensor(ref), atol=1e-4)
    assert sigma_schedule(4, 1.0).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_gaussian_log_prob_known_value():
    x = torch.zeros(1, 2, 2)
    mean = torch.ones(1, 2, 2)
    std = torch.tensor(2.0)
    expected = -1 / 8 - math.log(2.0) - 0.5 * math.log(2 * math.pi)  # per element, averaged
    assert gaussian_log_prob(x, mean, std).item() == pytest.approx(expected, rel=1e-6)


def test_noise_zero_is_euler_ode_step():
    torch.manual_seed(0)
    x, v = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    for kind in ("sde", "cps"):
        out = sde_step_with_logprob(v, x, 0.7, 0.5, 0.0, 0.9, sde_type=kind)
        assert torch.allclose(out.prev_sample, ode_step(v, x, 0.7, 0.5), atol=1e-6), kind


def test_sde_mean_matches_paper_form():
    # mu = x + [v + std_t^2/(2t) (x + (1 - t) v)] dt  (paper form, signed dt)
    torch.manual_seed(1)
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t, t_next, a = 0.6, 0.45, 0.7
    dt = t_next - t
    std_t = a * math.sqrt(t / (1 - t))
    mu = x + (v + std_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
    out = sde_step_with_logprob(v, x, t, t_next, a, 0.9)
    assert torch.allclose(out.mean, mu, atol=1e-6)
    assert out.std.item() == pytest.approx(std_t * math.sqrt(-dt), rel=1e-6)


def test_guard_at_sigma_one_uses_second_sigma():
    s = sigma_schedule(10, shift=3.0)
    x, v = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    out = sde_step_with_logprob(v, x, s[0], s[1], 0.7, s[1])
    std_t = out.std.item() / math.sqrt(float(s[0] - s[1]))
    assert std_t == pytest.approx(0.7 * math.sqrt(1 / (1 - float(s[1]))), rel=1e-5)
    assert math.isfinite(out.log_prob.item())


def test_log_prob_of_own_sample_is_consistent():
    torch.manual_seed(2)
    x, v = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = sde_step_with_logprob(v, x, 0.8, 0.6, 0.7, 0.9, generator=g)
    again = sde_step_with_logprob(v, x, 0.8, 0.6, 0.7, 0.9, prev_sample=out.prev_sample)
    assert torch.equal(out.log_prob, again.log_prob)
    eps = (out.prev_sample - out.mean) / out.std
    expected = (-(eps**2) / 2 - torch.log(out.std) - 0.5 * math.log(2 * math.pi)).mean((1, 2, 3))
    assert torch.allclose(out.log_prob, expected, atol=1e-5)
    # A sample's own log-prob exceeds that of a sample drawn far from the mean.
    far = sde_step_with_logprob(v, x, 0.8, 0.6, 0.7, 0.9, prev_sample=out.mean + 5 * out.std)
    assert (out.log_prob > far.log_prob).all()


def test_kl_forms():
    m1, m2 = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    std = torch.tensor([0.5, 0.5])
    dt = torch.tensor([-0.25, -0.25])
    exact = kl_gaussian_same_std(m1, m2, std, exact=True)
    code = kl_gaussian_same_std(m1, m2, std, exact=False, dt=dt)
    assert exact.tolist() == pytest.approx([2.0, 2.0])  # 1 / (2 * 0.25)
    assert code.tolist() == pytest.approx([0.5, 0.5])  # |dt| times the exact value
    assert kl_gaussian_same_std(m1, m1, std, exact=True).abs().max() == 0


def test_bad_sde_type():
    with pytest.raises(ValueError, match="sde_type"):
        sde_step_with_logprob(torch.zeros(1, 1), torch.zeros(1, 1), 0.5, 0.4, 0.7, 0.9, sde_type="ddim")


@pytest.mark.parametrize("n,shift", [(10, 3.0), (40, 3.0), (4, 1.0)])
def test_diffusers_schedule_matches_the_scheduler(n, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(shift=shift)
    sch.set_timesteps(n)
    assert sigma_schedule(n, shift, "diffusers").tolist() == pytest.approx(sch.sigmas.tolist(), abs=1e-6)
    if shift == 3.0 and n == 10:  # the short last step SD3 pipelines take
        assert sigma_schedule(n, shift, "diffusers")[-2] == pytest.approx(0.0089, abs=1e-4)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="kind='cosine'"):
        sigma_schedule(4, 1.0, "cosine")
