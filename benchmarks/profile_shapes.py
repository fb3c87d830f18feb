"""Where the shapes transformer's time goes, and A/B of candidate speed-ups, in one process (issue 18 item 2).

    python benchmarks/profile_shapes.py                 # torch.profiler table of B-row forward + backward passes
    python benchmarks/profile_shapes.py --ab            # A/B, alternating: default vs math attention; joint vs split CFG
    python benchmarks/profile_shapes.py --ab --compile  # also torch.compile (inductor): compile seconds and speed

One thread (as each grid point runs), the committed base model with a fresh LoRA, B rows (default 64 = the default
config's 32 trajectories with CFG). Every A/B variant is timed once per round, rounds alternate, the medians are
printed with each variant's time over the default's, so machine load from elsewhere hits every variant alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="rows per transformer call (default 64)")
    ap.add_argument("--ab", action="store_true", help="A/B of the variants instead of the profile")
    ap.add_argument("--compile", action="store_true", help="with --ab: add torch.compile (inductor)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    if a.batch < 2 or a.batch % 2 or a.rounds < 1:
        print(f"error: --batch={a.batch} must be an even number >= 2 and --rounds={a.rounds} >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from drift.config import make_config
    from drift.sampling import guided_velocity
    from drift.worlds import make_world
    from drift.worlds.types import Cond

    w = make_world(make_config(["threads=1"]))
    B, n = a.batch, a.batch // 2
    c = w.encode(["a red circle on a blue background"] * n)
    u = w.encode([""] * n)
    both = Cond.cat([c, u])
    x = torch.randn(n, *w.latent_shape, generator=torch.Generator().manual_seed(0))
    s = torch.tensor(0.5)
    net = w.transformer
    t = (1000 * s).expand(B)
    xx = torch.cat([x, x])

    def joint(model=net):  # the whole CFG batch in one call, v_u detached afterwards (the engine before issue 18)
        v = model(xx, both.hidden, both.pooled, t, return_dict=False)[0]
        v_c, v_u = v[:n], v[n:].detach()
        (v_u + 3 * (v_c - v_u)).square().mean().backward()

    def split():  # the engine now (drift.sampling.guided_velocity with detach_uncond)
        guided_velocity(w, x, s, c, u, 3.0, detach_uncond=True).square().mean().backward()

    def math_attention():
        with sdpa_kernel(SDPBackend.MATH):
            joint()

    if not a.ab:
        from torch.profiler import ProfilerActivity, profile

        joint()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(3):
                joint()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return 0
    variants = {"default (joint CFG)": joint, "math attention": math_attention, "split CFG (engine now)": split}
    if a.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(net)
        joint(compiled)
        print(f"torch.compile: first forward + backward took {time.perf_counter() - t0:.1f} s", flush=True)
        variants["torch.compile"] = lambda: joint(compiled)
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(a.rounds):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["default (joint CFG)"])
    print(f"forward + backward of {B} rows ({n} trajectories with CFG), median of {a.rounds} alternating rounds:")
    for k, v in times.items():
        print(f"  {k:<24}{statistics.median(v):8.3f} s  {statistics.median(v) / base:6.3f} x default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
