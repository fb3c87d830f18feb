"""The method contract's seams, each through train() on the shapes world: an advantages hook, per-step
conditioning (the same in sampling and in the PPO replay, so the ratio is exactly 1 before an update),
the world's reward heads in the shaping input, a regulariser's declared steps and metrics."""

import json
import os

import pytest
import torch

from drift.config import make_config
from drift.contract import (METHODS, AdvInput, Hooks, MethodSpec, NoOptions, RegInput, Regulariser, ShapeInput,
                            group_relative, method_spec)
from drift.train import train
from drift.worlds.types import Cond

TINY = {
    "train.iterations": "2", "sample.groups_per_iter": "2", "sample.group_size": "4", "sample.num_steps": "4",
    "eval.num_prompts": "2", "eval.seeds": "2", "eval.num_steps": "3", "eval.every": "10", "eval.grid_prompts": "1",
    "tracking_uri": "none", "checkpoint_every": "10", "threads": "1",
}
SEEN: dict[str, list] = {}


def scaled_per_step(cond: Cond, j: int, num_steps: int) -> Cond:
    """A row-wise per-step conditioning that changes every step's velocity."""
    return Cond(cond.hidden * (1.0 + 0.5 * j / num_steps), cond.pooled)


def shape_record(inp: ShapeInput):
    SEEN.setdefault("heads", []).append({k: tuple(v.shape) for k, v in inp.heads.items()})
    return inp.rewards, {}


def zero_advantages(inp: AdvInput):
    SEEN.setdefault("adv", []).append((tuple(inp.rewards.shape), tuple(inp.all_rewards.shape), tuple(inp.kept.shape)))
    adv, stats = group_relative(inp)
    return torch.zeros_like(adv), stats


def l2_reg(inp: RegInput):
    SEEN.setdefault("reg_steps", []).append(inp.step_index)
    sq = ((inp.mean_theta.float() - inp.mean_ref.float()) ** 2).mean(dim=tuple(range(1, inp.mean_theta.ndim)))
    return sq, {"loss/l2": float(sq.detach().mean()), **({"loss/undeclared": 0.0} if SEEN.get("leak") else {})}


def build(o):
    return Hooks(shape_rewards=shape_record, advantages=zero_advantages, step_cond=scaled_per_step,
                 regulariser=Regulariser(l2_reg, needs_reference=True, steps=2, metrics=("loss/l2",)))


SPEC = MethodSpec(name="seams", options_cls=NoOptions, build=build, summary="test: every seam of the contract")


@pytest.fixture
def seams(monkeypatch):
    monkeypatch.setitem(METHODS, "seams", __name__)
    SEEN.clear()
    return SEEN


def rows(cfg):
    with open(os.path.join(cfg.run_dir(), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][1:]


def test_every_seam_through_train(tmp_path, seams, monkeypatch):
    from drift.worlds.shapes.backend import ShapesWorld

    refs = {"n": 0}
    real_ref = ShapesWorld.reference

    def counting_reference(self):
        refs["n"] += 1
        return real_ref(self)

    monkeypatch.setattr(ShapesWorld, "reference", counting_reference)
    # one optimiser step per iteration, after every trained step's replay: each ratio is taken before an update
    cfg = make_config({**TINY, "method": "seams", "out": str(tmp_path), "train.steps_per_update": "3"})
    train(cfg, progress=False)
    rs = rows(cfg)
    for r in rs:
        assert r["loss/ratio_mean"] == 1.0 and r["loss/approx_kl"] == 0.0 and r["loss/clipfrac"] == 0.0, r
        assert r["loss/policy"] == 0.0  # the method's (zero) advantages were used, not the default ones
        assert "loss/l2" in r
    assert seams["adv"] == [((2, 4), (2, 4), (2, 4))] * 2
    assert set(seams["heads"][0]) == {"judge", "judge_all", "size", "center", "object", "pos_x", "pos_y"}
    assert all(s == (2, 4) for s in seams["heads"][0].values())
    # the regulariser (and its reference forward) ran on its 2 declared steps of the 3 trained ones only
    assert seams["reg_steps"] == [0, 1, 0, 1] and refs["n"] == 4


def test_per_step_conditioning_is_replayed_exactly(tmp_path):
    """The replay with the same per-step conditioning reproduces the sampling log-probs bit for bit; the
    replay without it does not (so the engine-level ratio check above can fail)."""
    from drift.ppo import policy_step
    from drift.sampling import sample_trajectories
    from drift.worlds import make_world

    cfg = make_config({**TINY, "out": str(tmp_path)})
    torch.manual_seed(0)
    world = make_world(cfg)
    S, T = cfg.sample, cfg.sample.num_steps
    texts = [world.prompt_text(p) for p in world.train_prompts()[:4]]
    cond, uncond = world.encode(texts), world.encode([""] * 4)
    sigmas = world.sigma_schedule(T, S.shift)
    noise = torch.randn(4, *world.latent_shape, generator=torch.Generator().manual_seed(1))
    traj = sample_trajectories(world, cond, uncond, noise, sigmas, S.noise_level, S.cfg, torch.Generator().manual_seed(2),
                               S.sde_type, step_cond=scaled_per_step)
    with torch.no_grad():
        for j in range(T - 1):
            same = policy_step(world, traj.xs[:, j], traj.xs[:, j + 1], j, sigmas, scaled_per_step(cond, j, T), uncond, S)
            assert torch.equal(same.log_prob, traj.log_probs[:, j])
            if j > 0:
                plain = policy_step(world, traj.xs[:, j], traj.xs[:, j + 1], j, sigmas, cond, uncond, S)
                assert not torch.equal(plain.log_prob, traj.log_probs[:, j])


def test_an_undeclared_regulariser_metric_is_refused(tmp_path, seams):
    seams["leak"] = True
    cfg = make_config({**TINY, "method": "seams", "out": str(tmp_path), "train.iterations": "1"})
    with pytest.raises(ValueError, match=r"metric 'loss/undeclared'.*does not declare"):
        train(cfg, progress=False)


def test_reductions_are_declared_not_inferred():
    kl = method_spec("flow_grpo_kl").build(method_spec("flow_grpo_kl").options_cls())
    plain = method_spec("flow_grpo").build(NoOptions())
    assert kl.reduction("loss/kl") == "mean" and plain.reduction("loss/kl") is None
    assert plain.reduction("loss/policy") == "mean" and plain.reduction("sys/sample_seconds") == "max"
    assert plain.reduction("loss/made_up") is None and plain.reduction("reward/mean") is None
    dg = method_spec("diverse_grpo")
    hooks = dg.build(dg.options_cls(sa_steps=3))
    assert hooks.reference_steps(9) == 3 and hooks.reference_steps(2) == 2 and plain.reference_steps(9) == 0
