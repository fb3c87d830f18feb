"""DRIFT's components and DiverseGRPO's bonus as pure functions: hand-checked cases and identities."""

import itertools

import pytest
import torch

from baselines.diverse_grpo import creativity_bonus, spectral_clusters
from drift.components import prompting, subset
from drift.components.schedules import schedule_factor
from drift.components.shaping import discounted_return_to_go, diversity_potential, gate_mask, potential_shaping
from drift.worlds.types import Cond


# -- sampling -----------------------------------------------------------------------------------
def test_densest_window_drops_outliers_on_both_sides():
    r = torch.tensor([[0.0, 5.0, 5.1, 5.2, 5.15, 9.0]])
    idx = subset.select("densest", r, 4)
    assert sorted(idx[0].tolist()) == [1, 2, 3, 4]
    st = subset.outlier_stats(r, idx, band=1.0)
    assert st["drift/dropped_high"] == 1 and st["drift/dropped_low"] == 1


def test_trim_and_zband():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert sorted(subset.select("trim", r, 4)[0].tolist()) == [1, 2, 3, 4]
    assert sorted(subset.select("trim", r, 3)[0].tolist()) == [2, 3, 4]  # one high, two low dropped
    r = torch.tensor([[0.0, 1.0, 1.1, 0.9, 3.0]])
    assert sorted(subset.select("zband", r, 3)[0].tolist()) == [1, 2, 3]


def test_nonfinite_candidates_are_dropped_first():
    r = torch.tensor([[1.0, float("nan"), 1.1, 1.2, float("inf"), 1.05]])
    for rule in subset.RULES:
        idx = subset.select(rule, r, 4)
        assert torch.isfinite(r.gather(1, idx)).all(), rule
    st = subset.outlier_stats(r, subset.select("densest", r, 4), 1.0)
    assert st["drift/dropped_nonfinite"] == 2


def test_subset_errors():
    with pytest.raises(ValueError, match="subset of G=5 from only 4"):
        subset.select("densest", torch.zeros(1, 4), 5)
    with pytest.raises(ValueError, match="subset rule 'median'"):
        subset.select("median", torch.zeros(1, 4), 2)


# -- prompting ----------------------------------------------------------------------------------
def test_embed_noise_scale_and_zero():
    g = torch.Generator().manual_seed(0)
    c = Cond(torch.ones(2000, 3, 4), torch.ones(2000, 4) * 2)
    assert prompting.embed_noise(c, 0.0, g) is c
    n = prompting.embed_noise(c, 0.5, g)
    assert (n.hidden - 1).std().item() == pytest.approx(0.5, rel=0.05)
    assert (n.pooled - 2).std().item() == pytest.approx(1.0, rel=0.05)  # relative to the RMS


def test_schedules():
    assert schedule_factor("constant", 5, 10) == 1.0
    assert schedule_factor("linear", 5, 10) == 0.5 and schedule_factor("linear", 10, 10) == 0.0
    assert schedule_factor("cosine", 0, 10) == 1.0 and schedule_factor("cosine", 5, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule='step'"):
        schedule_factor("step", 1, 2)


# -- shaping identities -------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_potential_shaping_telescopes(gamma):
    torch.manual_seed(0)
    phi = torch.rand(5, 11)
    phi[:, 0] = 0.0  # Phi(s_0) = 0
    f = potential_shaping(phi, gamma)
    disc = (gamma ** torch.arange(10).float() * f).sum(-1)
    assert torch.allclose(disc, gamma**10 * phi[:, -1], atol=1e-6)
    rtg = discounted_return_to_go(f, gamma)
    assert torch.allclose(rtg[:, 0], disc, atol=1e-6)
    if gamma == 1.0:  # return-to-go from step t: Phi_T - Phi_t
        assert torch.allclose(rtg, phi[:, -1:] - phi[:, :-1], atol=1e-6)


def _tree_returns(gamma, leaf_reward, phi, shaped):
    def ret(path):
        total = gamma**3 * leaf_reward[path]
        if shaped:
            total += sum(gamma**t * (gamma * phi[path[: t + 1]] - phi[path[:t]]) for t in range(3))
        return total
    return {p: ret(p) for p in leaf_reward}


def test_shaping_leaves_the_optimal_choice_unchanged():
    """A 3-step deterministic decision tree (2 actions per step, reward at the leaf). With Ng et al.'s
    condition Phi(terminal) = 0, adding F = gamma Phi(s') - Phi(s) for arbitrary intermediate potentials
    never changes the best path (every return shifts by -Phi(s_0) = 0)."""
    torch.manual_seed(1)
    gamma = 0.95
    for trial in range(50):
        leaf_reward = {p: float(torch.rand(1)) for p in itertools.product((0, 1), repeat=3)}
        phi = {(): 0.0}
        for n in (1, 2):
            for p in itertools.product((0, 1), repeat=n):
                phi[p] = float(torch.randn(1)) * 5  # arbitrary, large potentials
        phi.update({p: 0.0 for p in leaf_reward})  # terminal potential 0
        plain, shaped = _tree_returns(gamma, leaf_reward, phi, False), _tree_returns(gamma, leaf_reward, phi, True)
        assert max(plain, key=plain.get) == max(shaped, key=shaped.get), trial
        for p in plain:
            assert shaped[p] == pytest.approx(plain[p])


def test_a_terminal_potential_is_a_real_bonus():
    """With Phi(terminal) != 0 the telescoped sum is gamma^T Phi(s_T): the objective changes (this is
    how the terminal form incentivises diversity; see docs/methods.md on what invariance does and does
    not cover)."""
    gamma = 1.0
    leaf_reward = {p: 0.0 for p in itertools.product((0, 1), repeat=3)}
    leaf_reward[(0, 0, 0)] = 1.0
    phi = {p: 0.0 for n in range(3) for p in itertools.product((0, 1), repeat=n)}
    phi.update({p: 0.0 for p in leaf_reward})
    phi[(1, 1, 1)] = 2.0
    shaped = _tree_returns(gamma, leaf_reward, phi, True)
    assert max(shaped, key=shaped.get) == (1, 1, 1)
    assert shaped[(1, 1, 1)] == pytest.approx(gamma**3 * 2.0)


def test_gate_and_potential():
    r = torch.tensor([[1.0, 2.0, 3.0, float("nan")]])
    assert gate_mask(r, "above_mean").tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert gate_mask(r, "none").tolist() == [[1.0, 1.0, 1.0, 0.0]]
    f = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.01]]]), dim=-1)
    phi = diversity_potential(f, torch.ones(1, 4), "none", 0.0)
    assert phi[0, 1] > phi[0, 0]  # the odd one out is the most diverse
    mm = diversity_potential(f, torch.ones(1, 4), "minmax", 0.0)
    assert mm.max() == pytest.approx(1.0) and mm.min() == pytest.approx(0.0)
    assert diversity_potential(f, torch.ones(1, 4), "none", 0.1).max() <= 0.1


# -- DiverseGRPO --------------------------------------------------------------------------------
def test_spectral_clusters_find_two_modes_and_bonus():
    a = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0]), dim=0)
    b = torch.nn.functional.normalize(torch.tensor([0.0, 1.0, 0.0]), dim=0)
    feats = torch.stack([a, a, a, a, a, a, b, b]) + 0.01 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    feats = torch.nn.functional.normalize(feats, dim=-1)
    labels = spectral_clusters(1 - feats @ feats.T, k=0, sigma=0.3)
    assert len(set(labels[:6].tolist())) == 1 and len(set(labels[6:].tolist())) == 1 and labels[0] != labels[7]
    bonus, k = creativity_bonus(feats.unsqueeze(0), 0, 0.3)
    assert k == 2
    assert bonus[0, 0].item() == pytest.approx((8 / 6) ** 0.5) and bonus[0, 7].item() == pytest.approx(2.0)
