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
   measured once between every two iterations (the run's fault hook calls it; its time is taken out of
   the iteration's wall time), so both see the same machine load: the generator forwards of
   sampling (T steps of the CFG-doubled batch, no grad), the decoder (VAE; identity-like for shapes),
   the forward + backward passes of training
   (``n_train`` trained steps, per micro-batch), the reference forwards when the method needs them, the
   reward forward on every sample and the feature forward on the kept ones (plus per-step features when
   the method needs them). Nothing else: no SDE math, no log-probs, no advantages, no logging.

overhead_ratio = median wall time of a training iteration (those without evaluation or checkpoint)
                 / median bare compute of one iteration.
generator_overhead_ratio uses the generator's passes alone as the denominator.
Evaluation and checkpointing are reported separately (seconds each; how often they happen is config).
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


class BareCompute:
    """The model passes one iteration needs, with nothing around them, on a world of its own.

    Built before the run; ``measure()`` times one repetition of every part and is called between the
    run's iterations (interleaved, so both see the same machine load).
    """

    def __init__(self, cfg):
        from .methods import Cond, method_spec
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
        self.both_t = both.index(torch.arange(min(mb, B) * mult) % len(both))
        self.x_t = torch.randn(min(mb, B) * mult, *world.latent_shape, generator=g).to(dev)
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

    def sampling(self):
        with torch.no_grad():
            for _ in range(self.T):
                self.world.velocity(self.x_s, self.sigma, self.both)

    def decoding(self):
        with torch.no_grad():
            self.world.decode(self.latents)

    def training(self):
        for _ in range(self.n_train * self.n_mb):
            self.world.velocity(self.x_t, self.sigma, self.both_t).float().square().mean().backward()
        for p in self.params:
            p.grad = None

    def reference(self):
        if self.hooks.needs_reference:
            with torch.no_grad(), self.world.reference():
                for _ in range(self.n_train * self.n_mb):
                    self.world.velocity(self.x_t, self.sigma, self.both_t)

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
        return time.perf_counter() - t0

    def summary(self) -> dict:
        out = {k: _median([r[k] for r in self.reps]) for k in self.parts}
        out["generator"] = out["sample"] + out["decode"] + out["train"] + out["reference"]
        out["total"] = out["generator"] + out["reward"] + out["features"]
        out["repetitions"] = len(self.reps)
        out["shapes"] = self.shapes
        return out


def run(overrides: list[str], warmup: int = 1, progress: bool = False) -> dict:
    """Train for the configured iterations in a temporary directory and measure; returns the result dict."""
    from .config import ConfigError, make_config
    from .train import train
    from .tracking import read_metrics

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

    def between_iterations(phase: str, it: int) -> None:  # train()'s fault hook, called at each phase start
        if phase == "log":
            hook_seconds[it + 1] = bare.measure()

    t0 = time.perf_counter()
    with _LogTimer() as lt:
        train(cfg, progress=progress, fault_hook=between_iterations)
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
    bare = bare.summary()
    S = cfg.sample
    from .methods import method_spec

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
              f"peak RSS: {r['peak_rss_mib']:.0f} MiB" + (f"   peak CUDA: {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else "")]
    return "\n".join(lines)


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
