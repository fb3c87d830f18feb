"""The world contract: ``World`` (what the engine and the methods use of a world, as a checked
Protocol) and the conditioning type it hands out (``Cond``)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch


@dataclass
class Cond:
    """Text conditioning: token states (B, L, D) and pooled embedding (B, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx) -> "Cond":
        return Cond(self.hidden[idx], self.pooled[idx])

    def repeat_interleave(self, k: int) -> "Cond":
        return Cond(self.hidden.repeat_interleave(k, 0), self.pooled.repeat_interleave(k, 0))

    @staticmethod
    def cat(items: list["Cond"]) -> "Cond":
        return Cond(torch.cat([c.hidden for c in items]), torch.cat([c.pooled for c in items]))


@runtime_checkable
class World(Protocol):
    """What the engine, the evaluation and the methods use of a world (checked for every world in
    tests/test_world_contract.py). B = batch, T = denoising steps. Latents, conditioning and velocities
    live on ``device``; decoded images, rewards and features are CPU tensors."""

    latent_shape: tuple[int, ...]
    """The shape of one latent (C, H, W)."""
    device: torch.device
    transformer: torch.nn.Module
    """The trained module."""
    features: Any
    """The diversity feature net: ``features.embed(images (B, 3, H, W)) -> (B, D)`` unit-norm rows."""
    heldout_features: Any
    """A second feature net with ``features``' interface, for evaluation only (``eval/diversity/heldout``): another
    seed and objective, never handed to a method. None where the world has none (the key is then absent)."""
    eval_inputs: dict
    """{name: path} of files the evaluation reads beyond cfg.input_paths() (e.g. the held-out feature net);
    their content is part of the shared base-evaluation key (drift.eval_cache)."""
    paraphrase: Callable[[Any, Any], str] | None
    """(prompt, random.Random) -> a paraphrase of the prompt's text; None where the world offers none
    (drift.worlds.offers(cfg, 'paraphrase') says so from the config, without building the world)."""

    def train_prompts(self) -> list: ...

    def eval_prompts(self, n: int, split: str = "test") -> list:
        """The first n prompts of the held-out eval split ('test') or of the validation split carved out of the
        training prompts ('validation'; never in ``train_prompts`` unless train.holdout_validation=false)."""

    def prompt_text(self, prompt: Any) -> str: ...

    def encode(self, texts: list[str]) -> Cond:
        """Text -> conditioning (B rows)."""

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The flow velocity v(x, sigma | cond), shaped like x (B, *latent_shape)."""

    def reference(self) -> AbstractContextManager:
        """Inside it, ``velocity`` is the reference policy's (the base model)."""

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]: ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, *latent_shape) -> images (B, 3, H, W) in [0, 1] on the CPU."""

    def sigma_schedule(self, num_steps: int, shift: float) -> torch.Tensor:
        """(T + 1,) noise levels from 1 (noise) down to 0."""

    def reward(self, images: torch.Tensor, prompts: list) -> dict[str, torch.Tensor]:
        """{'reward': (B,) task reward, other heads: (B,)}, computed against the original prompts."""

    def eval_extras(self, images: torch.Tensor, prompts: list) -> dict[str, float]:
        """World-level eval metrics from images (P, S, 3, H, W) of P prompts x S seeds."""

    def eval_extras_per_prompt(self, images: torch.Tensor, prompts: list) -> dict[str, list[float]]:
        """``eval_extras``' keys, one value per prompt (P floats; NaN where a metric does not apply to a prompt)."""
