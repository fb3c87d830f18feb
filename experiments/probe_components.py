"""Probe of DRIFT's components on the base model: does each mechanism do what it is meant to do?

    python experiments/probe_components.py                       # 6 training prompts x 16 SDE samples, ~1-2 min on CPU
    python experiments/probe_components.py --prompts 6 --samples 16 --seed 0 --json probe.json

No training. Samples groups of the base model with the training sampler (SDE, the config's noise level, CFG
and steps), once with clean conditioning and once with DRIFT's CADS conditioning (method drift's own hooks,
same initial noise), then measures each component's own metric with method drift's functions:

* sampling: std(kept) / std(all) per group, the judge levels kept and the share of successes dropped, for the
  outlier mask (without and with drift.outlier_protect=success) at kappa 1.5 / 2 /
  2.5 and, for comparison, the first DRIFT's densest half-window (renormalised on the kept half);
* optimisation: the bonus paid to judge-incorrect samples and corr(A, d | gate) within groups, for DRIVE's
  success-gated bonus (O1), decoupled normalisation (O2), GARDO's weight (O3) and the first DRIFT's gated
  terminal bonus;
* prompting: cos(CADS condition, clean condition) per denoising step, the PPO replay's max |ratio - 1| on
  the CADS trajectories (exactly 0 expected), and the judge / spread metrics of the CADS samples vs clean.

Every number printed is measured here; nothing is tuned on it. Config overrides: ``--set key=value``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from drift import drift_method as dm  # noqa: E402
from drift.components import outliers  # noqa: E402
from drift.components.bonus import conditional_correlation  # noqa: E402
from drift.components.subset import select_densest  # noqa: E402
from drift.config import make_config  # noqa: E402
from drift.contract import AdvInput, ShapeInput, VaryInput  # noqa: E402
from drift.diversity import per_sample_diversity  # noqa: E402
from drift.ppo import policy_step  # noqa: E402
from drift.sampling import sample_trajectories  # noqa: E402
from drift.worlds import make_world  # noqa: E402
from drift.worlds.types import Cond  # noqa: E402


def sample(world, cfg, prompts, k, hooks, seed):
    """(Trajectories, cond, uncond, heads, features) of len(prompts) groups of k, CADS on iff hooks say so."""
    S, T = cfg.sample, cfg.sample.num_steps
    rows = [p for p in prompts for _ in range(k)]
    texts = [world.prompt_text(p) for p in rows]
    cond, _ = hooks.vary_prompts(VaryInput(world.encode(texts), texts, rows, world.paraphrase, world.encode, 0, 1,
                                           torch.Generator().manual_seed(seed + 1)))
    uncond = world.encode([""] * len(rows))
    sigmas = world.sigma_schedule(T, S.shift).to(world.device)
    noise = torch.randn(len(rows), *world.latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        traj = sample_trajectories(world, cond, uncond, noise, sigmas, S.noise_level, S.cfg,
                                   torch.Generator().manual_seed(seed + 2), S.sde_type, step_cond=hooks.step_cond,
                                   step_uncond=hooks.step_uncond)
    heads = {h: v.float().view(len(prompts), k) for h, v in world.reward(traj.images, rows).items()}
    feats = world.features.embed(traj.images).view(len(prompts), k, -1)
    return traj, cond, uncond, sigmas, heads, feats


def adv_input(r, heads, feats, cfg):
    p, k = r.shape
    tc = cfg.train
    return AdvInput(r, r, r, torch.arange(k).repeat(p, 1), feats, heads, tc.std_eps, False, tc.adv_clip, 0, 1)


def fmt(xs):
    return " ".join(f"{x:.3f}" for x in xs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=6, help="training prompts (groups)")
    ap.add_argument("--samples", type=int, default=16, help="SDE samples per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--set", action="append", default=[], help="a config override, e.g. sample.cfg=4")
    a = ap.parse_args(argv)
    cfg = make_config(["method=drift", "tracking_uri=none", "threads=1", *a.set])
    torch.manual_seed(a.seed)
    world = make_world(cfg)
    o = cfg.options
    prompts = world.train_prompts()[:: max(1, len(world.train_prompts()) // a.prompts)][: a.prompts]
    T, out = cfg.sample.num_steps, {}

    # ---- clean conditioning: sampling and optimisation metrics ----------------------------------------
    plain = dm.build(dm.Options(**{**vars(o), "prompt": "none"}))
    traj0, _, _, _, heads, feats = sample(world, cfg, prompts, a.samples, plain, a.seed)
    r = heads.pop("reward")
    print(f"{len(prompts)} prompts x {a.samples} SDE samples (base model, a={cfg.sample.noise_level}, CFG {cfg.sample.cfg}, "
          f"{T} steps); task-reward std per group: {fmt(r.std(1, unbiased=False).tolist())}")
    print("\n== sampling: std(kept) / std(all), judge levels kept / all (mean over groups)")
    all_levels = outliers.judge_levels(heads["judge"], torch.ones_like(r, dtype=torch.bool))
    for protect in ("none", "success"):
        for kappa in (1.5, 2.0, 2.5):
            succ = dm.success_set(o, r, heads)
            keep = dm.outlier_keep(dm.Options(**{**vars(o), "kappa": kappa, "outlier_protect": protect}), r, succ)
            ratio, lv = outliers.kept_std_ratio(r, keep), outliers.judge_levels(heads["judge"], keep)
            row = {"std_kept_over_all": ratio, "judge_levels_kept": lv, "judge_levels_all": all_levels,
                   "dropped_frac": float((~keep).float().mean()), "success_dropped_frac": outliers.dropped_share(keep, succ)}
            out[f"S1_kappa{kappa}" + ("" if protect == "none" else f"_protect_{protect}")] = row
            print(f"S1 outlier kappa={kappa} protect={protect}: {ratio:.3f}; levels {lv:.2f} / {all_levels:.2f}; "
                  f"dropped {row['dropped_frac']:.3f}; successes dropped {row['success_dropped_frac']:.3f}")
    window = torch.zeros_like(r, dtype=torch.bool).scatter_(1, select_densest(r, a.samples // 2), True)
    ratio, lv = outliers.kept_std_ratio(r, window), outliers.judge_levels(heads["judge"], window)
    out["v1_densest_half"] = {"std_kept_over_all": ratio, "judge_levels_kept": lv, "judge_levels_all": all_levels}
    print(f"v1 densest half-window: {ratio:.3f}; levels {lv:.2f} / {all_levels:.2f}")

    print("\n== optimisation: bonus paid to judge-incorrect samples, corr(A, d | gate) within groups")
    d = per_sample_diversity(feats)
    wrong = heads["judge_all"] < 0.5
    print(f"success (judge_all) share: {1 - wrong.float().mean():.3f}; d level {d.mean():.3f}, within-group std "
          f"{d.std(1, unbiased=False).mean():.3f}")
    S = ~wrong
    out["task_vs_div"] = {"corr_r_d_given_success": conditional_correlation(r, d, S),
                          "corr_size_d_given_success": conditional_correlation(heads["size"], d, S)}
    print(f"among successes: corr(r, d) {out['task_vs_div']['corr_r_d_given_success']:.3f}, corr(size, d) "
          f"{out['task_vs_div']['corr_size_d_given_success']:.3f} (the task reward's own ordering that a bonus must beat)")
    forms = {f"O1 drive (a={o.lam})": dict(shaping="drive"),
             **{f"O1 drive a={a_}": dict(shaping="drive", lam=a_) for a_ in (0.05, 0.2, 0.5, 2.0) if a_ != o.lam},
             **{f"O2 decoupled a={a_}": dict(shaping="decoupled", lam=a_) for a_ in (0.5, 1.0)},
             "O3 gardo": dict(shaping="gardo"), "v1 terminal": dict(shaping="terminal", lam=1.0, subset="none")}
    for name, kw in forms.items():
        oo = dm.Options(**{**vars(o), "prompt": "none", **kw})
        shaped, sm = dm.make_shape(oo)(ShapeInput(r, feats, None, T, 0, 1, heads))
        adv, am = dm.make_advantages(oo)(adv_input(shaped, heads, feats, cfg))
        paid = shaped - r
        row = {"bonus_to_incorrect": float(paid[wrong].mean()) if wrong.any() else 0.0,
               "corr_adv_div_given_gate": am["drift/corr_adv_div_given_gate"], "corr_adv_div": am["drift/corr_adv_div"]}
        out[name] = row
        print(f"{name:19s}: bonus to incorrect {row['bonus_to_incorrect']:.4f}; corr(A, d | gate) "
              f"{row['corr_adv_div_given_gate']:.3f}; corr(A, d) all {row['corr_adv_div']:.3f}")

    # ---- CADS conditioning: per-step cosine, replay ratio, judge and spreads -------------------------
    print(f"\n== prompting: CADS (s={o.cads_scale}, tau1={o.cads_tau1}, tau2={o.cads_tau2}, rescale={o.cads_rescale})")
    hooks = dm.build(dm.Options(**{**vars(o), "prompt": "cads"}))
    traj, cond, uncond, sigmas, heads_c, _ = sample(world, cfg, prompts, a.samples, hooks, a.seed)
    cos = []
    for j in range(T):
        c = hooks.step_cond(cond, j, T)
        cos.append(float(torch.nn.functional.cosine_similarity(c.hidden.flatten(1), cond.hidden.flatten(1)).mean()))
    print("cos(CADS, clean) per step: " + fmt(cos))
    dev = 0.0
    with torch.no_grad():
        for j in range(min(int(T * cfg.train.timestep_fraction), T - 1)):
            st = policy_step(world, traj.xs[:, j], traj.xs[:, j + 1], j, sigmas, hooks.step_cond(cond, j, T),
                             hooks.step_uncond(uncond, cond, j, T), cfg.sample)
            dev = max(dev, float((torch.exp(st.log_prob - traj.log_probs[:, j]) - 1).abs().max()))
    print(f"replay max |ratio - 1| over the trained steps: {dev:.3g}")
    out["P1_cads"] = {"cos_per_step": cos, "replay_max_ratio_dev": dev}
    print("same initial noise, clean vs CADS conditioning (world metrics of the samples):")
    for name, hs, tr in (("clean", heads, traj0), ("cads", heads_c, traj)):
        ex = world.eval_extras(tr.images.view(len(prompts), a.samples, *tr.images.shape[1:]), prompts)
        row = {**{k: float(hs[k].mean()) for k in ("judge", "judge_all", "size")}, **ex}
        out[f"P1_{name}"] = row
        print(f"  {name:5s}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
