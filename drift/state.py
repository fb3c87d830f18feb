"""Everything the next training step depends on, as one object, and its checkpoint form.

``TrainState`` holds the trainable parameters, their EMA, the AdamW optimiser, the run's random
streams (sampling noise, the method's draws, the prompt order, and every rank's global torch and
Python RNG), the counters and the metrics row not yet logged. ``to_checkpoint`` and
``from_checkpoint`` are the only places that name checkpoint keys (``KEYS``), so a new piece of
state is added once.

Checkpoint layout (safetensors tensors + JSON state; drift/checkpoint.py writes them atomically):
``model/<name>``, ``ema/<name>``, ``optim/<i>/<step|exp_avg|exp_avg_sq>``, ``rng/sample``,
``rng/method``, ``rng/torch`` (rank 0) and ``rng/torch_ranks`` (world, n); the JSON holds the
counters, the optimiser's param groups, the prompt RNG and every rank's Python RNG.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import distributed as dist


class KEYS:
    """Checkpoint tensor names (old checkpoints use the same names: keep them)."""

    model = "model/{}"
    ema = "ema/{}"
    optim = "optim/{}/{}"
    OPTIM_FIELDS = ("step", "exp_avg", "exp_avg_sq")
    rng_sample = "rng/sample"
    rng_method = "rng/method"
    rng_torch = "rng/torch"
    rng_torch_ranks = "rng/torch_ranks"


class EMA:
    """EMA of the trainable weights (Flow-GRPO: decay min((1 + s) / (10 + s), decay), every k steps), where the
    step count s is of ``unit`` (train.ema_unit): 'opt_step' (optimiser steps) or 'iteration'."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, every: int, unit: str = "opt_step"):
        self.params, self.decay, self.every, self.unit = params, decay, every, unit
        self.shadow = {k: p.detach().clone() for k, p in params.items()}
        self.updates = 0

    @torch.no_grad()
    def step(self, count: int, unit: str = "opt_step") -> None:
        """Called after every optimiser step (count = optimiser steps so far, unit 'opt_step') and after every
        iteration (count = iterations so far, unit 'iteration'); updates on this EMA's unit every k counts."""
        if unit != self.unit or count % self.every:
            return
        d = min(self.decay, (1 + count) / (10 + count))
        for k, p in self.params.items():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1

    @contextmanager
    def swapped_in(self):
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])


def _py_state_to_json(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_state_from_json(s) -> tuple:
    return (s[0], tuple(s[1]), s[2])


@dataclass
class TrainState:
    """The training state. ``iteration`` is the number of finished iterations (the next one to run)."""

    params: dict[str, torch.nn.Parameter]
    opt: torch.optim.Optimizer
    ema: EMA | None
    prompt_rng: random.Random  # which prompts each iteration trains on
    g_sample: torch.Generator  # initial noise and the SDE's per-step noise
    g_method: torch.Generator  # the method's own draws (prompt variation)
    iteration: int = 0
    opt_step: int = 0
    skips_in_row: int = 0  # consecutive optimiser steps skipped for a non-finite loss or gradient
    pending_row: dict | None = None  # the metrics row saved with the checkpoint (logged after a crash in between)

    @classmethod
    def fresh(cls, params: dict[str, torch.nn.Parameter], tc, seed: int) -> "TrainState":
        """A new run's state: AdamW and the EMA from ``tc`` (TrainConfig), streams seeded from ``seed``."""
        opt = torch.optim.AdamW(params.values(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
        ema = EMA(params, tc.ema_decay, tc.ema_every, tc.ema_unit) if tc.ema else None
        return cls(params, opt, ema, random.Random(seed), torch.Generator().manual_seed(seed * 1000 + 1),
                   torch.Generator().manual_seed(seed * 1000 + 2))

    @classmethod
    def from_checkpoint(cls, params: dict[str, torch.nn.Parameter], tc, seed: int, iteration: int,
                        tensors: dict[str, torch.Tensor], st: dict) -> "TrainState":
        """The state saved by ``to_checkpoint`` (parameters are copied into ``params`` in place); this
        rank's global torch and Python RNGs are restored too (rank 0's when resuming on more processes)."""
        s = cls.fresh(params, tc, seed)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[KEYS.model.format(k)])
                if s.ema:
                    s.ema.shadow[k].copy_(tensors[KEYS.ema.format(k)])
        opt_state = {"state": {}, "param_groups": st["optim_param_groups"]}
        for i in range(len(params)):
            if KEYS.optim.format(i, "exp_avg") in tensors:
                opt_state["state"][i] = {n: tensors[KEYS.optim.format(i, n)] for n in KEYS.OPTIM_FIELDS}
        s.opt.load_state_dict(opt_state)
        s.prompt_rng.setstate(_py_state_from_json(st["prompt_rng"]))
        s.g_sample.set_state(tensors[KEYS.rng_sample])
        s.g_method.set_state(tensors[KEYS.rng_method])
        torch_states = tensors.get(KEYS.rng_torch_ranks, tensors[KEYS.rng_torch].unsqueeze(0))
        py_states = st.get("py_rng_ranks", [st["py_rng"]])
        r = dist.rank() if dist.rank() < len(py_states) else 0  # a resume on more processes than saved
        torch.set_rng_state(torch_states[r].clone())  # a row view (storage offset > 0) crashes set_rng_state
        random.setstate(_py_state_from_json(py_states[r]))
        s.iteration, s.opt_step, s.skips_in_row = iteration, st["opt_step"], st["skips_in_row"]
        s.pending_row = st.get("row")
        if s.ema:
            s.ema.updates = st["ema_updates"]
        return s

    def to_checkpoint(self, row: dict, extra: dict) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON state) of the state after ``self.iteration`` iterations, with ``row`` (the
        iteration's metrics) and ``extra`` (run bookkeeping: MLflow run id, config hash, code) in the
        JSON. Collective: gathers every rank's global RNG states. RuntimeError on a non-finite parameter."""
        step = self.iteration
        for k, p in self.params.items():
            if not torch.isfinite(p).all():
                raise RuntimeError(f"refusing to checkpoint iteration {step}: parameter {k} is non-finite")
        tensors = {KEYS.model.format(k): p for k, p in self.params.items()}
        if self.ema:
            tensors.update({KEYS.ema.format(k): v for k, v in self.ema.shadow.items()})
        sd = self.opt.state_dict()
        for i, s in sd["state"].items():
            for n, v in s.items():
                tensors[KEYS.optim.format(i, n)] = v if torch.is_tensor(v) else torch.tensor(v)
        torch_states = dist.gather_rows(torch.get_rng_state().unsqueeze(0))  # (world, n): per-rank global RNGs
        py_states = dist.gather_json(_py_state_to_json(random.getstate()))
        tensors.update({KEYS.rng_sample: self.g_sample.get_state().clone(), KEYS.rng_method: self.g_method.get_state().clone(),
                        KEYS.rng_torch: torch_states[0].clone(), KEYS.rng_torch_ranks: torch_states})
        state = {"iteration": step, "opt_step": self.opt_step, "skips_in_row": self.skips_in_row,
                 "optim_param_groups": sd["param_groups"], "prompt_rng": _py_state_to_json(self.prompt_rng.getstate()),
                 "py_rng": py_states[0], "py_rng_ranks": py_states, "world_size": dist.world_size(),
                 "ema_updates": self.ema.updates if self.ema else 0}
        state.update({"mlflow_run_id": extra.get("mlflow_run_id"), "row": row, **{k: v for k, v in extra.items()
                                                                                   if k != "mlflow_run_id"}})
        return tensors, state
