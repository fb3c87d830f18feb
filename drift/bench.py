"""Where an RL iteration's time goes, and the engine's overhead over bare model compute.

    python -m drift.bench                                   # the shapes world, default config
    python -m drift.bench train.iterations=8 sample.groups_per_iter=2 --json out.json
    python -m drift.bench method=drift sample.cfg=1

One process, one run:
1. A real training run (``drift.train.train``, MLflow to a throw-away SQLite store) of ``iterations``
   iterations. Its per-phase ``sys/*_seconds`` metrics give the breakdown; ``Tracker.log`` is wrapped to
   time logging and to stamp the wall clock, so an iteration's wall time is the time between two log calls
   (everything included: sampling ... checkpoint, logging).
2. Bare compute, in the same process on a second copy of the world (same model, same shapes),
   measured once between every two iterations (the run's on_phase callback calls it; its time is taken out of
   the iteration's wall time), so both see the same machine load: the generator forwards of
   sampling (T steps of the CFG-doubled batch, no grad), the decoder (VAE; identity-like for shapes),
   the forward + backward passes of training (drift.sampling.guided_velocity, as the engine calls it)
   (``n_train`` trained steps, per micro-batch), the reference forwards when the method needs them, the
   reward forward on every sample and the feature forward on the kept ones (plus per-step features when
   the method needs them). Nothing else: no SDE math, no log-probs, no advantages, no logging.

overhead_ratio = median wall time of a training iteration (those without evaluation or checkpoint)
                 / median bare compute of one iteration.
generator_overhead_ratio uses the generator's passes alone as the denominator.
Evaluation and checkpointing are reported separately (seconds each; how often they happen is config).

The limit figure (how close the work is to what this machine can do, not only how cheap the plumbing is):
3. FLOPs, counted once with torch.utils.flop_counter.FlopCounterMode (matrix products, convolutions and
   attention; elementwise work counts 0) on every part of the bare compute, and for one evaluation
   (``eval_flops``: one counted transformer call per row, times rows x steps, plus reward and features).
4. The matmul peak of this machine on the same threads and device, measured in the same run between the
   same iterations as the bare compute (``MatmulPeak``: square products in the model's dtype, the best size's
   median rate; 'sgemm' on the CPU).
flop_ratio = (counted FLOPs of the bare passes / their median seconds) / matmul peak: the fraction of the
machine's matmul rate that the model's passes reach (1 = every cycle in a large matrix product);
flop_ratio_wall uses the iteration's wall time instead (everything included).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch

PHASES = ("prompt", "sample", "reward", "features", "advantage", "forward", "backward", "optimizer")


def machine() -> dict:
    """The machine, as the numbers depend on it."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu": cpu, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


class _LogTimer:
    """Wraps Tracker.log: wall-clock stamp at each call and the time the call takes."""

    def __init__(self):
        self.stamps: dict[int, float] = {}
        self.seconds: dict[int, float] = {}

    def __enter__(self):
        from . import tracking

        self._orig = orig = tracking.Tracker.log
        timer = self

        def log(tracker, step, row):
            t = time.perf_counter()
            orig(tracker, step, row)
            timer.stamps[step] = time.perf_counter()
            timer.seconds[step] = timer.stamps[step] - t

        tracking.Tracker.log = log
        return self

    def __exit__(self, *exc):
        from . import tracking

        tracking.Tracker.log = self._orig


def count_flops(fn) -> int:
    """The FLOPs ``fn()`` runs, as torch.utils.flop_counter counts them (matmuls, convolutions, attention;
    forward and backward; elementwise ops count 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


class MatmulPeak:
    """This machine's matrix-product rate on the current threads and ``device``: FLOP/s = 2 n^3 / seconds of
    an (n x n) @ (n x n) product in ``dtype`` (fp32 on the CPU: sgemm). ``measure()`` times ``reps`` products of
    every size once (called between iterations, like the bare compute); ``summary()`` takes each size's median
    and reports the best size as the peak."""

    def __init__(self, device, dtype=torch.float32, sizes: tuple[int, ...] | None = None, reps: int = 3):
        self.device, self.dtype, self.reps = device, dtype, reps
        cuda = str(device).startswith("cuda")
        self.sizes = sizes or ((2048, 4096, 8192) if cuda else (256, 512, 1024))
        g = torch.Generator().manual_seed(0)
        self.mats = {n: (torch.randn(n, n, generator=g).to(device, dtype), torch.randn(n, n, generator=g).to(device, dtype))
                     for n in self.sizes}
        self.rates: dict[int, list[float]] = {n: [] for n in self.sizes}
        self.measure(keep=False)  # warm-up (CUDA: cuBLAS handles and kernels)

    def measure(self, keep: bool = True) -> float:
        """Time every size once; returns the seconds spent here."""
        t0 = time.perf_counter()
        for n, (a, b) in self.mats.items():
            _sync(self.device)
            t = time.perf_counter()
            for _ in range(self.reps):
                torch.mm(a, b)
            _sync(self.device)
            if keep:
                self.rates[n].append(2 * n**3 * self.reps / (time.perf_counter() - t))
        return time.perf_counter() - t0

    def summary(self) -> dict:
        per = {n: _median(r) for n, r in self.rates.items()}
        best = max(per, key=lambda n: per[n] if per[n] == per[n] else -1)
        return {"flops_per_second": per[best], "best_size": best, "per_size": {str(n): v for n, v in per.items()},
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "threads": torch.get_num_threads(), "repetitions": len(self.rates[best])}


def world_dtype(world) -> torch.dtype:
    """The compute dtype of the world's transformer (fp32 for shapes; sd3.dtype for the SD3 world)."""
    net = getattr(world, "transformer", None)
    p = next(net.parameters(), None) if net is not None else None
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def eval_flops(world, cfg) -> dict:
    """Counted FLOPs of one evaluation (eval.num_prompts x eval.seeds images, eval.num_steps ODE steps, CFG
    doubling the rows unless sample.cfg = 1): one transformer call on a 2-row batch counted and scaled to the
    rows x steps (the transformer's cost is linear in the rows), plus the decode, reward and features of every
    image (counted on at most 8 images and scaled: each is linear in the images)."""
    from .worlds.types import Cond

    E, S = cfg.eval, cfg.sample
    n = E.num_prompts * E.seeds
    rows = n * (1 if S.cfg == 1 else 2)
    prompts = world.eval_prompts(E.num_prompts)
    cond = world.encode([world.prompt_text(prompts[0])] * 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *world.latent_shape, generator=g).to(getattr(world, "device", "cpu"))
    sigma = torch.tensor(0.5, device=x.device)
    with torch.no_grad():
        per_row = count_flops(lambda: world.velocity(x, sigma, cond)) / 2
        m = min(n, 8)
        lat = torch.randn(m, *world.latent_shape, generator=g).to(x.device)
        decode = count_flops(lambda: world.decode(lat)) * n // m
        imgs = world.decode(lat).clamp(0, 1)
        reps = [p for p in prompts for _ in range(E.seeds)][:m]
        reward = count_flops(lambda: world.reward(imgs, reps)) * n // m
        feats = count_flops(lambda: world.features.embed(imgs)) * n // m
    gen = int(per_row * rows * E.num_steps) + decode
    return {"generator": gen, "decode": decode, "reward": reward, "features": feats, "total": gen + reward + feats,
            "images": n, "transformer_rows_per_step": rows, "steps": E.num_steps, "flops_per_row_call": per_row}


class BareCompute:
    """The model passes one iteration needs, with nothing around them, on a world of its own.

    Built before the run; ``measure()`` times one repetition of every part and is called between the
    run's iterations (interleaved, so both see the same machine load).
    """

    def __init__(self, cfg):
        from .contract import method_spec
        from .worlds.types import Cond
        from .worlds import make_world

        self.hooks = hooks = method_spec(cfg.method).build(cfg.options)
        self.world = world = make_world(cfg)
        self.dev = dev = getattr(world, "device", "cpu")
        S, tc = cfg.sample, cfg.train
        T, P, G = S.num_steps, S.groups_per_iter, S.group_size
        K = hooks.oversample * G
        B = P * G
        self.T, self.B = T, B
        self.n_train = min(int(T * tc.timestep_fraction), T - 1)
        mult = 1 if S.cfg == 1 else 2
        g = torch.Generator().manual_seed(0)  # not the global RNG: the run's streams stay untouched
        self.prompts = [p for p in world.train_prompts()[:P] for _ in range(K)]
        texts = [world.prompt_text(p) for p in self.prompts]
        cond, uncond = world.encode(texts), world.encode([""] * len(texts))
        self.both = both = Cond.cat([cond, uncond]) if mult == 2 else cond
        self.x_s = torch.randn(P * K * mult, *world.latent_shape, generator=g).to(dev)
        mb = tc.micro_batch or B
        rows_t = torch.arange(min(mb, B)) % len(cond)
        self.cond_t, self.uncond_t = cond.index(rows_t), (uncond.index(rows_t) if mult == 2 else None)
        self.x_t = torch.randn(min(mb, B), *world.latent_shape, generator=g).to(dev)
        self.cfg_scale, self.detach_uncond = S.cfg, tc.cfg_grad == "cond_only"
        self.n_mb = -(-B // mb)
        self.sigma = torch.tensor(0.5, device=dev)
        self.params = list(world.trainable_parameters().values())
        self.images = world.decode(torch.randn(P * K, *world.latent_shape, generator=g).to(dev)).clamp(0, 1)
        self.latents = torch.randn(P * K, *world.latent_shape, generator=g).to(dev)
        self.parts = {"sample": self.sampling, "decode": self.decoding, "train": self.training,
                      "reference": self.reference, "reward": self.reward, "features": self.features}
        self.shapes = {"sample_batch": P * K * mult, "train_batch": min(mb, B) * mult, "denoise_steps": T,
                       "trained_steps": self.n_train, "micro_batches": self.n_mb,
                       "reference": hooks.needs_reference, "step_features": hooks.needs_step_features}
        self.reps: list[dict] = []
        self.measure(keep=False)  # warm-up
        self.flops = {k: count_flops(fn) for k, fn in self.parts.items()}  # once: the counts do not vary
        self.peak = MatmulPeak(dev, world_dtype(world))

    def sampling(self):
        with torch.no_grad():
            for _ in range(self.T):
                self.world.velocity(self.x_s, self.sigma, self.both)

    def decoding(self):
        with torch.no_grad():
            self.world.decode(self.latents)

    def train_velocity(self):
        """The guided velocity of one trained micro-batch, as the engine computes it (drift.sampling.guided_velocity:
        with train.cfg_grad=cond_only the unconditional half is a separate no-grad forward)."""
        from .sampling import guided_velocity

        return guided_velocity(self.world, self.x_t, self.sigma, self.cond_t, self.uncond_t, self.cfg_scale,
                               detach_uncond=self.detach_uncond)

    def training(self):
        for _ in range(self.n_train * self.n_mb):
            self.train_velocity().float().square().mean().backward()
        for p in self.params:
            p.grad = None

    def reference(self):
        if self.hooks.needs_reference:
            with torch.no_grad(), self.world.reference():
                for _ in range(self.hooks.reference_steps(self.n_train) * self.n_mb):
                    self.train_velocity()

    def reward(self):
        with torch.no_grad():
            self.world.reward(self.images, self.prompts)

    def features(self):
        with torch.no_grad():
            self.world.features.embed(self.images[: self.B])
            if self.hooks.needs_step_features:
                for _ in range(self.T):
                    self.world.features.embed(self.images[: self.B])

    def measure(self, keep: bool = True) -> float:
        """Time every part once; returns the seconds spent here."""
        t0 = time.perf_counter()
        rep = {}
        for k, fn in self.parts.items():
            _sync(self.dev)
            t = time.perf_counter()
            fn()
            _sync(self.dev)
            rep[k] = time.perf_counter() - t
        if keep:
            self.reps.append(rep)
            self.peak.measure()  # interleaved with the passes: the same load
        return time.perf_counter() - t0

    def summary(self) -> dict:
        out = {k: _median([r[k] for r in self.reps]) for k in self.parts}
        out["generator"] = out["sample"] + out["decode"] + out["train"] + out["reference"]
        out["total"] = out["generator"] + out["reward"] + out["features"]
        out["repetitions"] = len(self.reps)
        out["shapes"] = self.shapes
        return out

    def limit(self, seconds: dict, wall: float) -> dict:
        """The limit figure: counted FLOPs per part and per iteration, the rate each part reaches (FLOPs / its
        median seconds), the matmul peak, and their ratios."""
        f = dict(self.flops)
        f["generator"] = f["sample"] + f["decode"] + f["train"] + f["reference"]
        f["total"] = f["generator"] + f["reward"] + f["features"]
        peak = self.peak.summary()
        rate = {k: (f[k] / seconds[k] if seconds[k] > 0 else float("nan")) for k in self.parts if f[k] > 0}
        rate["total"] = f["total"] / seconds["total"]
        P = peak["flops_per_second"]
        return {"flops_per_iteration": f, "flops_per_second": rate, "matmul_peak": peak,
                "flop_ratio": rate["total"] / P, "flop_ratio_per_part": {k: v / P for k, v in rate.items()},
                "flop_ratio_wall": f["total"] / wall / P}


def run(overrides: list[str], warmup: int = 1, progress: bool = False) -> dict:
    """Train for the configured iterations in a temporary directory and measure; returns the result dict."""
    from .config import ConfigError, make_config
    from .train import train
    from .rundir import read_metrics

    tmp = tempfile.mkdtemp(prefix="drift-bench-")
    items = {"out": tmp, "experiment": "bench", "tracking_uri": "sqlite:///" + os.path.join(tmp, "mlflow.db"),
             "train.iterations": "6", "eval.every": "1000", "checkpoint_every": "1000"}
    for o in overrides:  # the user's overrides win over these bench defaults
        if "=" not in o:
            raise ConfigError(f"{o!r}: overrides are key=value")
        k, v = o.split("=", 1)
        items[k] = v
    cfg = make_config(items)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bare = BareCompute(cfg)
    hook_seconds: dict[int, float] = {}

    def between_iterations(phase: str, it: int) -> None:  # train()'s on_phase callback, called at each phase start
        if phase == "log":
            hook_seconds[it + 1] = bare.measure()

    t0 = time.perf_counter()
    with _LogTimer() as lt:
        train(cfg, progress=progress, on_phase=between_iterations)
    total = time.perf_counter() - t0 - sum(hook_seconds.values())
    rows = {r["step"]: r for r in read_metrics(cfg.run_dir())}
    n = cfg.train.iterations
    iters = []
    for s in range(1, n + 1):
        r = rows[s]
        wall = lt.stamps[s] - lt.stamps[s - 1] - hook_seconds[s]
        it = {"step": s, "wall": wall, "log": lt.seconds[s], "eval": r.get("sys/eval_seconds", 0.0),
              "checkpoint": r.get("sys/checkpoint_seconds", 0.0)}
        it.update({p: r.get(f"sys/{p}_seconds", 0.0) for p in PHASES})
        it["other"] = wall - sum(it[k] for k in PHASES + ("eval", "checkpoint", "log"))
        iters.append(it)
    plain = [i for i in iters[warmup:] if i["eval"] == 0 and i["checkpoint"] == 0] or iters[warmup:] or iters
    keys = PHASES + ("log", "other", "wall")
    breakdown = {k: _median([i[k] for i in plain]) for k in keys}
    passes = bare.summary()
    limit = bare.limit(passes, breakdown["wall"])
    limit["flops_per_evaluation"] = eval_flops(bare.world, cfg)
    bare = passes
    S = cfg.sample
    from .contract import method_spec

    K = method_spec(cfg.method).build(cfg.options).oversample * S.group_size
    res = {
        "config": {"method": cfg.method, "world": cfg.model.world, "overrides": list(overrides),
                   "iterations": n, "measured_iterations": len(plain), "groups_per_iter": S.groups_per_iter,
                   "samples_per_iter": S.groups_per_iter * K, "trained_per_iter": S.groups_per_iter * S.group_size,
                   "num_steps": S.num_steps, "cfg": S.cfg},
        "machine": machine(),
        "iteration_seconds": breakdown,
        "evaluation_seconds": _median([rows[0].get("sys/eval_seconds")] + [i["eval"] or None for i in iters]),
        "checkpoint_seconds": _median([i["checkpoint"] or None for i in iters]),
        "images_per_second_sampling": S.groups_per_iter * K / breakdown["sample"],
        "trajectories_per_second_training": S.groups_per_iter * S.group_size
        / (breakdown["forward"] + breakdown["backward"] + breakdown["optimizer"]),
        "bare_seconds": bare,
        "overhead_ratio": breakdown["wall"] / bare["total"],
        "generator_overhead_ratio": breakdown["wall"] / bare["generator"],
        "limit": limit,
        "run_total_seconds": total,
        "peak_rss_mib": peak_rss_mib(),
    }
    if torch.cuda.is_available():
        res["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def format_result(r: dict) -> str:
    b, bare = r["iteration_seconds"], r["bare_seconds"]
    c = r["config"]
    lines = [f"drift.bench: {c['method']} on {c['world']}, {c['samples_per_iter']} samples/iter "
             f"({c['trained_per_iter']} trained), {c['num_steps']} steps, cfg {c['cfg']}; "
             f"median of {c['measured_iterations']} iterations",
             f"machine: {r['machine'].get('cuda_device') or r['machine']['cpu']} "
             f"({r['machine']['affinity']} cores usable, torch {r['machine']['torch']}, {r['machine']['torch_threads']} threads)",
             "", f"{'phase':<12}{'seconds':>10}{'share':>8}"]
    for k in PHASES + ("log", "other"):
        lines.append(f"{k:<12}{b[k]:>10.4f}{b[k] / b['wall']:>8.1%}")
    lines += [f"{'iteration':<12}{b['wall']:>10.4f}{1:>8.0%}", "",
              f"evaluation (each): {r['evaluation_seconds']:.3f} s   checkpoint (each): {r['checkpoint_seconds']:.4f} s",
              f"sampling: {r['images_per_second_sampling']:.1f} images/s   training: "
              f"{r['trajectories_per_second_training']:.1f} trajectories/s",
              f"bare compute per iteration: {bare['total']:.4f} s (generator sample {bare['sample']:.4f} + decode "
              f"{bare['decode']:.4f} + train "
              f"{bare['train']:.4f} + reference {bare['reference']:.4f}; reward {bare['reward']:.4f}; "
              f"features {bare['features']:.4f})",
              f"overhead ratio: {r['overhead_ratio']:.3f} (wall / all model passes)   "
              f"generator-only: {r['generator_overhead_ratio']:.3f}",
              *format_limit(r["limit"]),
              f"peak RSS: {r['peak_rss_mib']:.0f} MiB" + (f"   peak CUDA: {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else "")]
    return "\n".join(lines)


def format_limit(lim: dict) -> list[str]:
    """The limit figure as text lines."""
    f, pk, ev = lim["flops_per_iteration"], lim["matmul_peak"], lim["flops_per_evaluation"]
    parts = "  ".join(f"{k} {v:.0%}" for k, v in lim["flop_ratio_per_part"].items() if k != "total")
    return [f"counted FLOPs: {f['total'] / 1e9:.2f} GFLOP per iteration (sample {f['sample'] / 1e9:.2f}, train "
            f"{f['train'] / 1e9:.2f}, reference {f['reference'] / 1e9:.2f}), {ev['total'] / 1e9:.2f} GFLOP per "
            f"evaluation ({ev['images']} images x {ev['steps']} steps)",
            f"matmul peak ({pk['dtype']} {pk['device']}, {pk['threads']} threads, n={pk['best_size']}): "
            f"{pk['flops_per_second'] / 1e9:.1f} GFLOP/s; model passes {lim['flops_per_second']['total'] / 1e9:.1f} "
            f"GFLOP/s",
            f"FLOP ratio: {lim['flop_ratio']:.1%} of the matmul peak in the model passes ({parts}); "
            f"{lim['flop_ratio_wall']:.1%} over the iteration's wall time"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("flags: --json PATH (write the result), --warmup N (iterations left out, default 1), --progress")
        return 0
    out_json, warm, prog, items = None, 1, False, []
    it = iter(argv)
    for a in it:
        if a == "--json":
            out_json = next(it)
        elif a == "--warmup":
            warm = int(next(it))
        elif a == "--progress":
            prog = True
        elif a.startswith("--"):
            print(f"error: unknown flag {a!r}", file=sys.stderr)
            return 2
        else:
            items.append(a)
    from .config import ConfigError

    try:
        r = run(items, warm, prog)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_result(r))
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json + ".tmp", "w") as f:
            json.dump(r, f, indent=1)
        os.replace(out_json + ".tmp", out_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
