"""A trained run's policy as standard folders that leave the suite.

    python -m drift.export RUN_DIR [--step N] [--weights ema|model] [--out DIR]

Writes (default DIR = RUN_DIR/export, or RUN_DIR/exports/step_<N> with --step):

* ``lora/pytorch_lora_weights.safetensors``: the LoRA in diffusers' format (keys ``transformer.<module>.lora_A.weight``
  / ``lora_B.weight``, with r, alpha and the target modules as adapter metadata). For the sd3 world it loads with
  ``StableDiffusion3Pipeline.from_pretrained(<base>).load_lora_weights(DIR / "lora")``; for the shapes world with
  ``transformer.load_lora_adapter(DIR / "lora", prefix="transformer")``.
* ``model/`` (shapes world only): the base model folder with the LoRA merged into the transformer's weights; it
  loads with ``drift.worlds.shapes.model.load_pretrained`` and can be another run's ``model.path``.
* ``drift_export.json``: the run directory, checkpoint step, which weights, and the run's config (what
  ``python -m drift.generate`` and ``python -m drift.evaluate`` read).

The weights are the EMA (what the run's evaluations used) unless ``--weights model``. A run writes its export
at the end (RUN_DIR/export); any kept checkpoint can be exported later with --step. LoRA runs only (a full
finetune's weights are in its checkpoints as model/<parameter>).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file

from .checkpoint import load_folder, load_latest
from .config import ConfigError, config_from_dict
from .rundir import RunDir
from .state import KEYS

LORA_FILE = "pytorch_lora_weights.safetensors"
EXPORT_JSON = "drift_export.json"


def load_checkpoint(run_dir: str, step: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """(step, tensors) of the checkpoint at ``step`` (None = the newest valid one); ConfigError if there is none."""
    if step is None:
        ck = load_latest(run_dir)
        if ck is None:
            raise ConfigError(f"run directory {run_dir!r}: no checkpoint (checkpoints/step_*)")
        return ck[0], ck[1]
    rd = RunDir(run_dir)
    folder = rd.checkpoint(step)
    if not os.path.isdir(folder):
        raise ConfigError(f"--step={step}: no checkpoint {folder}; kept (committed) steps: {rd.committed_steps()}")
    return step, load_folder(folder)[1]


def run_config(run_dir: str):
    return config_from_dict(RunDir(run_dir).read_config())


def policy_tensors(tensors: dict[str, torch.Tensor], weights: str = "ema") -> dict[str, torch.Tensor]:
    """{trainable parameter name: tensor} from a checkpoint: the EMA (``ema/``) or the trained weights (``model/``)."""
    prefix = {"ema": KEYS.ema, "model": KEYS.model}[weights].format("")
    out = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not out:
        raise ConfigError(f"--weights={weights!r}: the checkpoint holds no {prefix}* tensors (train.ema=false?)")
    return out


def to_peft_state_dict(params: dict[str, torch.Tensor], adapter: str = "default") -> dict[str, torch.Tensor]:
    """peft parameter names ('<module>.lora_A.<adapter>.weight') -> peft's saved keys ('<module>.lora_A.weight', as
    get_peft_model_state_dict), tensors contiguous fp32; diffusers' save_lora_weights prefixes 'transformer.'."""
    out = {}
    for k, v in params.items():
        tag = f".{adapter}.weight"
        if ".lora_" not in k or not k.endswith(tag):
            raise ConfigError(f"parameter {k!r} is not a LoRA weight of adapter {adapter!r} (model.finetune=full?)")
        out[k[: -len(tag)] + ".weight"] = v.float().contiguous()
    return out


def from_diffusers_lora(sd: dict[str, torch.Tensor], adapter: str = "default") -> dict[str, torch.Tensor]:
    """A diffusers LoRA file's keys ('transformer.<module>.lora_A.weight') -> peft parameter names of ``adapter``."""
    return {k[len("transformer."):-len(".weight")] + f".{adapter}.weight": v for k, v in sd.items()}


def merged_weight(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W' = W + scale * B A (LoRA merged into a linear layer's (out, in) weight; scale = alpha / r)."""
    return w + scale * (b.double() @ a.double()).to(w.dtype)


def export_run(run_dir: str, step: int | None = None, weights: str = "ema", out: str | None = None) -> str:
    """Write the export folders (see the module docstring) for the checkpoint at ``step``; returns the folder."""
    cfg = run_config(run_dir)
    if cfg.model.finetune != "lora":
        raise ConfigError(f"model.finetune={cfg.model.finetune!r}: export writes LoRA adapters; a full finetune's "
                          "weights are its checkpoints' model/* tensors")
    step, tensors = load_checkpoint(run_dir, step)
    params = policy_tensors(tensors, weights)
    out = out or RunDir(run_dir).export
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "lora"))
    from diffusers import StableDiffusion3Pipeline

    meta = {"r": cfg.model.lora_rank, "lora_alpha": cfg.model.lora_alpha, "target_modules": list(cfg.model.lora_targets),
            "init_lora_weights": "gaussian"}
    StableDiffusion3Pipeline.save_lora_weights(os.path.join(tmp, "lora"), transformer_lora_layers=to_peft_state_dict(params),
                                               transformer_lora_adapter_metadata=meta)
    if cfg.model.world == "shapes":
        _write_merged_shapes(cfg.model.path, params, cfg.model.lora_alpha / cfg.model.lora_rank, os.path.join(tmp, "model"))
    info = {"run_dir": os.path.abspath(run_dir), "step": step, "weights": weights, "world": cfg.model.world,
            "base": cfg.model.path, "lora": "lora", "model": "model" if cfg.model.world == "shapes" else None,
            "config": cfg.to_dict()}
    with open(os.path.join(tmp, EXPORT_JSON), "w") as f:
        json.dump(info, f, indent=1, default=str)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _write_merged_shapes(base: str, params: dict[str, torch.Tensor], scale: float, out: str) -> None:
    """The shapes base folder with W + scale B A in every adapted linear layer of the transformer."""
    from .worlds.shapes.model import load_pretrained

    shutil.copytree(base, out, ignore=shutil.ignore_patterns("transformer"))
    _, _, transformer = load_pretrained(base)
    mods = dict(transformer.named_modules())
    with torch.no_grad():
        for k, a in params.items():
            if ".lora_A." not in k:
                continue
            name = k.split(".lora_A.")[0]
            b = params[k.replace(".lora_A.", ".lora_B.")]
            lin = mods[name]
            lin.weight.copy_(merged_weight(lin.weight, a, b, scale))
    transformer.save_pretrained(os.path.join(out, "transformer"), safe_serialization=True)


def with_overrides(cfg, overrides: list[str]):
    """``cfg`` with 'section.field=value' overrides applied (e.g. sd3.device=cuda for generation elsewhere)."""
    from .config import parse_overrides

    d = cfg.to_dict()
    for key, v in parse_overrides(overrides).items():
        head, _, rest = key.partition(".")
        if not rest:
            d[key] = v
        elif head == cfg.method:
            d.setdefault("options", {})[rest] = v
        else:
            d.setdefault(head, {})[rest] = v
    return config_from_dict(d)


def load_policy(src: str, step: int | None = None, weights: str = "ema", overrides: list[str] | None = None):
    """(cfg, world, info) for a run directory (its checkpoint's EMA weights) or an export folder (its LoRA file):
    the world is built from the run's config (+ ``overrides``) and the policy weights are copied in."""
    from .worlds import make_world

    if os.path.exists(os.path.join(src, EXPORT_JSON)):
        with open(os.path.join(src, EXPORT_JSON)) as f:
            info = json.load(f)
        cfg = config_from_dict(info["config"])
        params = from_diffusers_lora(load_file(os.path.join(src, info["lora"], LORA_FILE)))
        where = f"{src} ({info['weights']} weights of step {info['step']})"
    elif os.path.exists(RunDir(src).config):
        cfg = run_config(src)
        step, tensors = load_checkpoint(src, step)
        params = policy_tensors(tensors, weights)
        info = {"run_dir": os.path.abspath(src), "step": step, "weights": weights}
        where = f"{src} ({weights} weights of step {step})"
    else:
        raise ConfigError(f"{src!r}: neither a run directory (config.json) nor an export folder ({EXPORT_JSON})")
    if overrides:
        cfg = with_overrides(cfg, overrides)
    torch.manual_seed(cfg.seed)
    world = make_world(cfg)
    mine = world.trainable_parameters()
    missing = sorted(set(mine) - set(params))
    if missing:
        raise ConfigError(f"{where}: no weights for {missing[:3]}... (a different model.lora_targets?)")
    with torch.no_grad():
        for k, p in mine.items():
            p.copy_(params[k])
    info["source"] = where
    return cfg, world, info


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m drift.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    ap.add_argument("--weights", choices=("ema", "model"), default="ema")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    try:
        out = export_run(a.run_dir, a.step, a.weights,
                         a.out or (os.path.join(a.run_dir, "exports", f"step_{a.step:06d}") if a.step is not None else None))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
