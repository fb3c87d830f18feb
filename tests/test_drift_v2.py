"""DRIFT v2 wired into method drift: CADS conditioning carried with the rows (replay ratio exactly 1), the
engine-level CADS evaluation, the sampling rules' statistics, the success-gated bonus and KL on top."""

import json
import math
import os

import pytest
import torch

from drift import drift_method as dm
from drift.components import cads, outliers
from drift.config import make_config
from drift.contract import AdvInput, RegInput, ShapeInput, method_spec
from drift.worlds.types import Cond

TINY = {
    "train.iterations": "2", "sample.groups_per_iter": "2", "sample.group_size": "4", "sample.num_steps": "4",
    "eval.num_prompts": "2", "eval.seeds": "2", "eval.num_steps": "3", "eval.every": "10", "eval.grid_prompts": "1",
    "tracking_uri": "none", "checkpoint_every": "10", "threads": "1",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from drift.worlds import make_world

    torch.manual_seed(0)
    return make_world(make_config({**TINY, "out": str(tmp_path_factory.mktemp("w"))}))


# ---- P1: CADS, identical in rollout and replay --------------------------------------------------
def test_anneal_cond_formula_and_limits():
    g = torch.Generator().manual_seed(0)
    y = Cond(torch.randn(3, 5, 4, generator=g), torch.randn(3, 6, generator=g))
    n = cads.draw_noise_like(y, g)
    # step 0 of 10: t = 1 >= tau2 -> gamma = 0: the condition is replaced by s * rms(y) * n (no rescale)
    c0 = cads.anneal_cond(y, n, 0, 10, scale=0.25, psi=0.0)
    rms = y.hidden.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    assert torch.allclose(c0.hidden, 0.25 * rms * n.hidden, atol=1e-6)
    # step 2 of 10: t = 0.8, gamma = (0.9 - 0.8) / 0.3 = 1/3
    c2 = cads.anneal_cond(y, n, 2, 10, scale=0.25, psi=0.0)
    rms_p = y.pooled.pow(2).mean(dim=1, keepdim=True).sqrt()
    want = math.sqrt(1 / 3) * y.pooled + 0.25 * math.sqrt(2 / 3) * rms_p * n.pooled
    assert torch.allclose(c2.pooled, want, atol=1e-6)
    # with the rescale (psi = 1) each row keeps the clean row's mean and std
    c2r = cads.anneal_cond(y, n, 2, 10, scale=0.25, psi=1.0)
    assert torch.allclose(c2r.hidden.mean(dim=(1, 2)), y.hidden.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(c2r.hidden.std(dim=(1, 2)), y.hidden.std(dim=(1, 2)), atol=1e-5)
    # t <= tau1 (step 4 of 10: t = 0.6): the clean condition, bitwise
    c4 = cads.anneal_cond(y, n, 4, 10)
    assert torch.equal(c4.hidden, y.hidden) and torch.equal(c4.pooled, y.pooled)


def test_noised_cond_rows_keep_their_noise_and_statistics_are_row_wise():
    g = torch.Generator().manual_seed(1)
    y = Cond(torch.randn(6, 5, 4, generator=g), torch.randn(6, 3, generator=g))
    nc = cads.NoisedCond(y.hidden, y.pooled, cads.draw_noise_like(y, g), cads.draw_noise_like(y, g))
    idx = torch.tensor([4, 1, 1])
    sub = nc.index(idx)
    assert isinstance(sub, cads.NoisedCond)
    assert torch.equal(sub.noise.hidden, nc.noise.hidden[idx]) and torch.equal(sub.noise_uncond.pooled, nc.noise_uncond.pooled[idx])
    # the annealed condition of a row does not depend on the batch it is computed in (bitwise)
    full = cads.anneal_cond(nc, nc.noise, 1, 4)
    part = cads.anneal_cond(sub, sub.noise, 1, 4)
    assert torch.equal(full.hidden[idx], part.hidden) and torch.equal(full.pooled[idx], part.pooled)


def test_cads_sampling_and_replay_agree_bit_for_bit(world):
    from drift.contract import VaryInput
    from drift.ppo import policy_step
    from drift.sampling import sample_trajectories

    cfg = make_config({**TINY, "method": "drift", "drift.cads_uncond": "true"})
    hooks, S, T = method_spec("drift").build(cfg.options), cfg.sample, cfg.sample.num_steps
    texts = [world.prompt_text(p) for p in world.train_prompts()[:4]]
    c0 = world.encode(texts)
    cond, _ = hooks.vary_prompts(VaryInput(c0, texts, [None] * 4, None, world.encode, 0, 2, torch.Generator().manual_seed(3)))
    uncond = world.encode([""] * 4)
    sigmas = world.sigma_schedule(T, S.shift)
    noise = torch.randn(4, *world.latent_shape, generator=torch.Generator().manual_seed(1))
    traj = sample_trajectories(world, cond, uncond, noise, sigmas, S.noise_level, S.cfg, torch.Generator().manual_seed(2),
                               S.sde_type, step_cond=hooks.step_cond, step_uncond=hooks.step_uncond)
    # the rows travel through indexing (as the engine's kept-sample selection does); the replay batch is the
    # sampled one (the transformer itself is not bitwise batch-size invariant), its conditions recomputed
    kept, c_k, u_k = traj.index(torch.arange(4)), cond.index(torch.arange(4)), uncond.index(torch.arange(4))
    with torch.no_grad():
        for j in range(T - 1):
            same = policy_step(world, kept.xs[:, j], kept.xs[:, j + 1], j, sigmas, hooks.step_cond(c_k, j, T),
                               hooks.step_uncond(u_k, c_k, j, T), S)
            assert torch.equal(same.log_prob, kept.log_probs[:, j])
            idx = torch.tensor([3, 0, 2])  # a subset's conditions are the full batch's rows, bit for bit
            sub, full = hooks.step_cond(cond.index(idx), j, T), hooks.step_cond(cond, j, T)
            assert torch.equal(sub.hidden, full.hidden[idx]) and torch.equal(sub.pooled, full.pooled[idx])
            sub_u, full_u = hooks.step_uncond(uncond.index(idx), cond.index(idx), j, T), hooks.step_uncond(uncond, cond, j, T)
            assert torch.equal(sub_u.hidden, full_u.hidden[idx])
        plain = policy_step(world, kept.xs[:, 0], kept.xs[:, 1], 0, sigmas, Cond(c_k.hidden, c_k.pooled), u_k, S)
        assert not torch.equal(plain.log_prob, kept.log_probs[:, 0])  # the first step's condition is noise


def test_cads_training_ratio_is_exactly_one_before_the_update(tmp_path):
    from drift.train import train

    # one optimiser step per iteration after every trained step's replay: each ratio is on-policy
    cfg = make_config({**TINY, "method": "drift", "drift.cads_uncond": "true", "out": str(tmp_path),
                       "train.steps_per_update": "3"})
    train(cfg, progress=False)
    with open(os.path.join(cfg.run_dir(), "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][1:]
    assert len(rows) == 2
    for r in rows:
        assert r["loss/ratio_mean"] == 1.0 and r["loss/approx_kl"] == 0.0 and r["loss/ratio_first_step_dev"] == 0.0, r
        assert r["drift/bonus_to_incorrect"] == 0.0


# ---- eval.conditioning: the same CADS sampler for every method ---------------------------------
def test_cads_evaluation_is_fixed_and_independent_of_batching(world):
    from drift.evaluate import eval_noise, evaluate

    prompts = world.eval_prompts(2)
    noise = eval_noise(world, 2, 3)
    clean, img_clean = evaluate(world, prompts, noise, 4, 3.0, 0.0)
    m1, img1 = evaluate(world, prompts, noise, 4, 3.0, 0.0, conditioning="cads")
    m2, img2 = evaluate(world, prompts, noise, 4, 3.0, 0.0, batch=2, conditioning="cads")
    assert torch.equal(img1, img2) and m1 == m2
    assert not torch.equal(img1, img_clean)
    with pytest.raises(ValueError, match="conditioning='noisy'"):
        evaluate(world, prompts, noise, 4, 3.0, 0.0, conditioning="noisy")


# ---- S1-S3: sampling statistics --------------------------------------------------------------
def adv_input(r, heads, feats=None, all_r=None, kept=None):
    p, g = r.shape
    feats = feats if feats is not None else torch.nn.functional.normalize(torch.randn(p, g, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    return AdvInput(r, r, r if all_r is None else all_r, torch.arange(g).repeat(p, 1) if kept is None else kept, feats,
                    heads, 1e-4, False, 5.0, 0, 10)


def test_all_stats_advantages_use_every_candidate():
    all_r = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 10.0]])
    kept = torch.tensor([[1, 2, 3]])
    r = all_r.gather(1, kept)
    adv = outliers.all_stats_advantages(r, all_r, eps=0.0)
    mu, sd = all_r.mean(), all_r.std(unbiased=False)
    assert torch.allclose(adv, (r - mu) / sd, atol=1e-6)
    per_step = outliers.all_stats_advantages(r.unsqueeze(-1).expand(1, 3, 2), all_r, eps=0.0)
    assert torch.allclose(per_step[..., 1], adv)
    o = dm.Options(subset="densest", subset_stats="all")
    a, st = dm.task_advantages(o, adv_input(r, {}, all_r=all_r, kept=kept))
    assert torch.allclose(a, ((r - mu) / (sd + 1e-4)).float(), atol=1e-6)
    assert st["drift/std_kept_over_all"] == pytest.approx(float(r.std(unbiased=False) / sd))


def test_judge_levels_counts_distinct_levels_kept():
    judge = torch.tensor([[0.0, 1 / 3, 1 / 3, 1.0], [1.0, 1.0, 1.0, 1.0]])
    keep = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert outliers.judge_levels(judge, keep) == pytest.approx((2 + 1) / 2)


def test_outlier_rule_keeps_the_scale_and_logs_it():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(32, 16, generator=g)
    judge = (r > 0).float()
    a, st = dm.task_advantages(dm.Options(), adv_input(r, {"judge": judge}))
    keep = outliers.outlier_mask(r, 2.0)
    assert torch.equal(a == 0, ~keep | (a == 0))
    assert torch.allclose(a[keep], outliers.masked_advantages(r, keep, 1e-4, 5.0)[keep])
    assert 0.85 < st["drift/std_kept_over_all"] <= 1.0
    assert st["drift/judge_levels_all"] == pytest.approx(2.0)


def test_outlier_protect_success_through_the_method():
    r = torch.tensor([[0.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.0, 3.0]])
    ok = torch.tensor([[0.0] * 7 + [1.0]])  # the one success is the reward outlier
    heads = {"judge_all": ok, "judge": ok}
    a0, st0 = dm.task_advantages(dm.Options(), adv_input(r, heads))
    a1, st1 = dm.task_advantages(dm.Options(outlier_protect="success"), adv_input(r, heads))
    assert a0[0, 7] == 0 and st0["drift/success_dropped_frac"] == 1.0
    assert a1[0, 7] > 2 and st1["drift/success_dropped_frac"] == 0.0
    assert torch.equal(a0[0, :7], a1[0, :7])  # the others keep their full-group advantages
    assert st1["drift/std_kept_over_all"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="drift.outlier_protect"):
        dm.Options(outlier_protect="always")
    with pytest.raises(ValueError, match="applies to drift.subset='outlier' only"):
        dm.Options(outlier_protect="success", subset="robust")
    # a new field at its default stays out of config.json and the run hash (recorded runs keep their directories)
    cfg = make_config(["method=drift"])
    assert "outlier_protect" not in cfg.to_dict()["options"]
    assert make_config(["method=drift", "drift.outlier_protect=success"]).to_dict()["options"]["outlier_protect"] == "success"
    assert "outlier_protect" not in make_config(["method=flow_grpo"]).to_dict()["options"]


# ---- O1-O3: the diversity term acts among the successes --------------------------------------
def shape_input(r, heads, feats):
    return ShapeInput(r, feats, None, 4, 0, 10, heads)


def test_drive_bonus_pays_no_incorrect_sample_unlike_v1_terminal():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([[1.5, 1.4, 1.2, 0.9, 0.5, 1.45]])
    ok = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]])  # judge_all: every named attribute right
    feats = torch.nn.functional.normalize(torch.randn(1, 6, 8, generator=g), dim=-1)
    out, st = dm.make_shape(dm.Options(lam=0.05))(shape_input(r, {"judge_all": ok}, feats))
    paid = out - r
    assert torch.all(paid[ok == 0] == 0) and st["drift/bonus_to_incorrect"] == 0.0
    assert paid.max() == pytest.approx(0.05, abs=1e-6) and paid[ok == 1].min() == 0  # min-max: 0 ... alpha
    _, st1 = dm.make_shape(dm.Options(shaping="terminal", lam=1.0))(shape_input(r, {"judge_all": ok}, feats))
    assert st1["drift/bonus_to_incorrect"] > 0  # v1's gate (r >= mean) pays the big-but-wrong sample 1.45


def test_decoupled_and_gardo_through_the_advantages_hook():
    g = torch.Generator().manual_seed(1)
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.3, 0.2]])
    ok = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    feats = torch.nn.functional.normalize(torch.randn(1, 6, 8, generator=g), dim=-1)
    inp = adv_input(r, {"judge_all": ok}, feats)
    a, st = dm.make_advantages(dm.Options(shaping="decoupled", lam=0.5, subset="none"))(inp)
    from drift.diversity import per_sample_diversity
    d = per_sample_diversity(feats)
    # the successes tie on the task: their advantages differ by alpha * z_S(d) only, ordered like d
    succ = ok[0] == 1
    assert torch.equal(torch.argsort(a[0, succ]), torch.argsort(d[0, succ]))
    assert st["drift/corr_adv_div_given_gate"] == pytest.approx(1.0, abs=1e-6)
    ga, _ = dm.make_advantages(dm.Options(shaping="gardo", subset="none"))(inp)
    assert torch.all(torch.sign(ga) == torch.sign(r - r.mean()))  # GARDO never flips a sign


def test_kl_beta_composes_flow_grpo_kl_regulariser():
    reg = dm.build(dm.Options(kl_beta=0.2)).regulariser
    kl = method_spec("flow_grpo_kl")
    ref = kl.build(kl.options_cls(beta=0.2)).regulariser
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    inp = RegInput(a, b, torch.full((3,), 0.3), torch.full((3,), -0.1), 0, 4, 0, 10)
    assert reg.needs_reference and torch.equal(reg.fn(inp)[0], ref.fn(inp)[0])
    assert dm.build(dm.Options()).regulariser is None
