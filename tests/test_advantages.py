import math

import pytest
import torch

from drift.advantages import group_advantages, ppo_clip_loss


def test_group_advantage_formula():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    adv, _ = group_advantages(r, eps=1e-4)
    m, s = 2.5, math.sqrt(1.25)
    assert adv[0].tolist() == pytest.approx([(x - m) / (s + 1e-4) for x in (1, 2, 3, 4)], rel=1e-6)
    assert adv[1].tolist() == pytest.approx([-0.5 / 0.5001, -0.5 / 0.5001, 0.5 / 0.5001, 0.5 / 0.5001], rel=1e-6)


@pytest.mark.parametrize("global_std", [False, True])
def test_zero_variance_group_gives_exact_zero(global_std):
    r = torch.tensor([[0.7, 0.7, 0.7], [1.0, 2.0, 3.0]])
    adv, stats = group_advantages(r, global_std=global_std)
    assert torch.equal(adv[0], torch.zeros(3))
    assert stats["reward/zero_std_frac"] == 0.5


def test_nonfinite_rewards_are_excluded_and_zeroed():
    r = torch.tensor([[1.0, float("nan"), 3.0, float("inf")], [float("nan")] * 4])
    adv, stats = group_advantages(r)
    assert torch.isfinite(adv).all()
    assert adv[0, 1] == 0 and adv[0, 3] == 0 and torch.equal(adv[1], torch.zeros(4))
    assert adv[0, 0] == pytest.approx(-1 / (1 + 1e-4), rel=1e-6)  # stats over {1, 3} only
    assert stats["reward/nonfinite_frac"] == pytest.approx(6 / 8)


def test_global_std_and_clip():
    r = torch.tensor([[0.0, 10.0], [5.0, 5.0]])
    adv, _ = group_advantages(r, global_std=True, clip=0.5)
    assert adv.abs().max() == 0.5
    adv, _ = group_advantages(torch.tensor([[0.0, 2.0], [0.0, 4.0]]), global_std=True)
    std = torch.tensor([0.0, 2.0, 0.0, 4.0]).std(unbiased=False)
    assert adv[0, 1].item() == pytest.approx(1 / (std.item() + 1e-4), rel=1e-5)


def test_per_step_rewards_normalise_per_step():
    r = torch.stack([torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]])], -1)  # (1, 2, 2)
    adv, _ = group_advantages(r)
    assert adv.shape == (1, 2, 2)
    assert torch.equal(adv[0, :, 1], torch.zeros(2))


def test_ppo_clip_ratio_one_and_hand_value():
    lp = torch.tensor([-1.0, -2.0])
    loss, diag = ppo_clip_loss(torch.tensor([-1.0, 2.0]), lp, lp.clone(), 1e-4)
    assert torch.equal(diag["ratio"], torch.ones(2))
    assert loss.tolist() == [1.0, -2.0]  # DDPO's hand case: advantage -1, ratio 1 -> loss 1
    # a ratio beyond the clip with positive advantage is capped: loss = -A (1 + eps)
    loss, diag = ppo_clip_loss(torch.tensor([1.0]), torch.tensor([0.1]), torch.tensor([0.0]), 0.01)
    assert loss.item() == pytest.approx(-1.01)
    assert diag["clipped"].item() == 1.0
