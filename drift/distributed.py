"""Multi-process data parallelism for one training run: the few collective operations the loop needs.

One process per GPU (or per CPU process in the tests, gloo backend). The process group is set up
from the standard environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
that ``torchrun`` (and ``accelerate launch``, untested) export, or from Slurm/submitit for multi-task jobs
(``export_slurm_env``). Without them (WORLD_SIZE unset or 1) every function here is the identity
or a no-op, so a single-process run does exactly what it did before this module existed.

Semantics (docs/distributed.md): whole groups live on one rank (contiguous slices of the
iteration's groups); everything random is drawn for the *global* batch from the shared generators
on every rank and sliced, so an N-process run reproduces the 1-process run of the same config up to
float reduction order; per-sample results (rewards, features) are all-gathered before the method
hooks and the advantages; LoRA gradients are summed across ranks explicitly (the per-sample loss
is normalised by the global batch). Collectives exchange tensors only (JSON strings travel as byte
tensors): nothing is pickled.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as tdist

from .errors import ConfigError

TIMEOUT_ENV = "DRIFT_DIST_TIMEOUT_MIN"  # collective timeout (minutes); default 60
BACKEND_ENV = "DRIFT_DIST_BACKEND"  # 'nccl' or 'gloo'; default: nccl when CUDA is available, else gloo


# ------------------------------------------------------------------------------------------------
# The process group
# ------------------------------------------------------------------------------------------------
def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def export_slurm_env() -> bool:
    """Inside a multi-task submitit Slurm job (one task per rank: the profile's tasks_per_node > 1) and
    not under torchrun/accelerate: export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (the job's first
    node) and MASTER_PORT (derived from the job id) via submitit's ``TorchDistributedEnvironment``.
    Returns whether it exported anything. CUDA_VISIBLE_DEVICES is left alone: ``init`` picks the GPU.
    """
    if ("WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm"
            or int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1):
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def init() -> int:
    """Join the process group named by the environment (idempotent); returns the world size.

    Backend: $DRIFT_DIST_BACKEND if set, else NCCL when CUDA is available, else gloo. With CUDA the
    process's GPU becomes LOCAL_RANK modulo the visible GPUs (one GPU per task also works). The
    collective timeout is $DRIFT_DIST_TIMEOUT_MIN minutes (default 60).
    """
    n = env_world_size()
    if n <= 1 or tdist.is_initialized():
        return world_size()
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"${BACKEND_ENV}={backend!r}: must be 'nccl' or 'gloo'")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    timeout = datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "60")))
    tdist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return world_size()


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


def _device() -> torch.device:
    """Where collectives' tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if tdist.is_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------
# Batch layout
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPlan:
    """Derived batch sizes of one iteration, global and per rank (see ``plan``)."""

    world: int
    groups: int  # P, prompts (groups) per iteration, global
    groups_per_rank: int
    candidates: int  # K = oversample * G sampled per group
    group_size: int  # G kept per group
    micro_batch: int  # trajectories per training forward, per rank
    trained_steps: int  # denoising steps trained per trajectory
    steps_per_update: int

    @property
    def images(self) -> int:
        return self.groups * self.candidates

    @property
    def images_per_rank(self) -> int:
        return self.groups_per_rank * self.candidates

    @property
    def trajectories(self) -> int:
        return self.groups * self.group_size

    @property
    def trajectories_per_rank(self) -> int:
        return self.groups_per_rank * self.group_size

    def group_rows(self, r: int | None = None) -> slice:
        """This rank's groups: a contiguous slice of the iteration's P groups."""
        r = rank() if r is None else r
        return slice(r * self.groups_per_rank, (r + 1) * self.groups_per_rank)

    def sample_rows(self, r: int | None = None) -> slice:
        """This rank's sampled images (K per group, group-major) in the global batch."""
        g = self.group_rows(r)
        return slice(g.start * self.candidates, g.stop * self.candidates)

    def describe(self) -> str:
        n_opt = -(-self.trained_steps // self.steps_per_update)
        return (f"[drift] batch: {self.world} process(es); per iteration {self.groups} prompts x {self.candidates} "
                f"candidates = {self.images} images sampled, {self.trajectories} trajectories trained "
                f"(per rank: {self.groups_per_rank} prompts, {self.images_per_rank} images, "
                f"{self.trajectories_per_rank} trajectories, micro-batch {self.micro_batch}); "
                f"{n_opt} optimiser step(s) per iteration, each over {self.trajectories} trajectories x "
                f"<= {self.steps_per_update} step(s) = {self.trajectories * self.steps_per_update} "
                f"trained samples (global)")


def plan(groups_per_iter: int, group_size: int, oversample: int, micro_batch: int, trained_steps: int,
         steps_per_update: int, world: int) -> BatchPlan:
    """Split an iteration over ``world`` ranks, whole groups per rank; ConfigError naming the field
    when ``sample.groups_per_iter`` is not divisible by the world size or ``train.micro_batch`` does
    not divide a rank's trajectories."""
    if groups_per_iter % world:
        raise ConfigError(f"sample.groups_per_iter={groups_per_iter!r}: must be divisible by the number of processes "
                          f"(world size {world}) so that every rank holds whole groups; use a multiple of {world}")
    per = groups_per_iter // world
    mb = micro_batch or per * group_size
    if (per * group_size) % mb:
        raise ConfigError(f"train.micro_batch={micro_batch!r}: must divide the trajectories per rank "
                          f"(group_size * groups_per_iter / world size = {per * group_size})")
    return BatchPlan(world, groups_per_iter, per, oversample * group_size, group_size, mb, trained_steps,
                     steps_per_update)


def sliced_randn(generator: torch.Generator, rows: slice, total: int) -> Callable[[tuple], torch.Tensor]:
    """A noise source for ``sample_trajectories``: draws standard normals for all ``total`` rows of
    the global batch from the shared ``generator`` and returns this rank's ``rows`` (on the
    requested device), so the noise a sample gets does not depend on the number of processes."""
    def draw(shape, device=None) -> torch.Tensor:
        eps = torch.randn((total, *shape[1:]), generator=generator, dtype=torch.float32, device=generator.device)
        return eps[rows].to(device) if device is not None else eps[rows]
    return draw


# ------------------------------------------------------------------------------------------------
# Collectives (identity / no-op with one process)
# ------------------------------------------------------------------------------------------------
def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` (equal shapes) along dim 0, in rank order, on every rank."""
    if world_size() == 1:
        return t
    x = t.detach().contiguous().to(_device())
    out = [torch.empty_like(x) for _ in range(world_size())]
    tdist.all_gather(out, x)
    return torch.cat(out).to(t.device)


def gather_dict_rows(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``gather_rows`` of every tensor of a dict (same keys on every rank)."""
    return {k: gather_rows(v) for k, v in d.items()}


def sum_grads(params) -> None:
    """Sum the gradients of ``params`` over ranks in place (one flat all-reduce); a missing grad
    counts as zeros. With the loss normalised by the global batch this equals the 1-process gradient."""
    if world_size() == 1:
        return
    ps = list(params)
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in ps]).to(_device())
    tdist.all_reduce(flat)
    i = 0
    for p in ps:
        n = p.numel()
        p.grad.copy_(flat[i : i + n].view_as(p.grad))
        i += n


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], device=_device())
    tdist.all_reduce(t)
    return float(t) == 0.0


def reduce_metrics(m: dict[str, float], how: Callable[[str], str | None]) -> dict[str, float]:
    """All-reduce the metrics whose ``how(key)`` is 'mean' or 'max' (keys and their order must be
    the same on every rank); other keys are returned unchanged."""
    if world_size() == 1:
        return m
    out = dict(m)
    for op in ("mean", "max"):
        keys = [k for k in m if how(k) == op]
        if not keys:
            continue
        t = torch.tensor([float(m[k]) for k in keys], dtype=torch.float64, device=_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM if op == "mean" else tdist.ReduceOp.MAX)
        if op == "mean":
            t /= world_size()
        out.update({k: float(v) for k, v in zip(keys, t.tolist())})
    return out


def _bytes(obj: Any) -> torch.Tensor:
    return torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)


def gather_json(obj: Any) -> list:
    """Every rank's JSON-serialisable ``obj``, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    b = _bytes(obj).to(_device())
    n = torch.tensor([b.numel()], device=_device())
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    tdist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=torch.uint8, device=_device())
    padded[: b.numel()] = b
    out = [torch.empty_like(padded) for _ in range(world_size())]
    tdist.all_gather(out, padded)
    return [json.loads(bytes(o[: int(s.item())].tolist()).decode()) for o, s in zip(out, sizes)]


def on_main(fn: Callable[[], Any], default: Any = None, share: bool = False) -> Any:
    """Run ``fn`` on rank 0 only (file writes, MLflow); every other rank gets ``default``, or with
    ``share`` rank 0's JSON-serialisable result. If ``fn`` raises, every rank raises (rank 0 the
    original exception, the others a ConfigError/RuntimeError naming it), so an error on rank 0
    never leaves the other ranks waiting at their next collective. One process: just ``fn()``."""
    if world_size() == 1:
        return fn()
    result, err = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 -- re-raised below, after telling the other ranks
            err = e
    msg = {"error": f"{type(err).__name__}: {err}" if err is not None else None,
           "result": result if (share and err is None) else None}
    msg = gather_json(msg if is_main() else None)[0]
    if err is not None:
        raise err
    if msg["error"] is not None:
        cls = ConfigError if msg["error"].startswith("ConfigError") else RuntimeError
        raise cls(f"rank 0 failed: {msg['error']}")
    if is_main():
        return result
    return msg["result"] if share else default


def broadcast_(tensors) -> None:
    """Overwrite every rank's ``tensors`` with rank 0's, in place (start-up: identical weights)."""
    if world_size() == 1:
        return
    for t in tensors:
        with torch.no_grad():
            buf = t.detach().to(_device()).contiguous()
            tdist.broadcast(buf, src=0)
            t.copy_(buf.to(t.device))


class NullTracker:
    """What ranks other than 0 log to: nothing (rank 0 owns metrics.jsonl and the MLflow run)."""

    run_id = None

    def log(self, step: int, metrics: dict) -> None:
        pass

    def last_step(self) -> int:
        return 1 << 62

    def log_artifact(self, path: str, subdir: str | None = None) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


__all__ = ["init", "export_slurm_env", "world_size", "rank", "is_main", "barrier", "BatchPlan", "plan",
           "sliced_randn", "gather_rows", "gather_dict_rows", "sum_grads", "all_true", "reduce_metrics",
           "gather_json", "on_main", "broadcast_", "NullTracker"]
