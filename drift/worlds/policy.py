"""The trained policy and its reference, shared by the worlds that train a diffusers transformer."""

from __future__ import annotations

import contextlib
import copy

import torch


class TransformerPolicy:
    """Mixin: ``self.transformer`` (the trained module), ``self.finetune`` ('lora' or 'full') and
    ``self._ref_copy`` (a frozen copy of the base for 'full', else None), set by ``setup_finetune``."""

    _in_reference = False

    def setup_finetune(self, transformer: torch.nn.Module, m, full_dtype: torch.dtype | None = None) -> None:
        """Make the frozen ``transformer`` the trained policy per ``m`` (ModelConfig): 'lora' adds a peft
        adapter (rank m.lora_rank, alpha m.lora_alpha, Gaussian init from the global torch RNG) on
        m.lora_targets, and the reference is the base with the adapter disabled; 'full' keeps a frozen
        copy of the base as the reference and trains every weight (cast to ``full_dtype`` if given)."""
        self.finetune = m.finetune
        self._ref_copy = None
        if m.finetune == "lora":
            from peft import LoraConfig

            check_lora_targets(m.lora_targets, adaptable_names(transformer))  # a typo names the valid modules
            transformer.add_adapter(LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, init_lora_weights="gaussian",
                                               target_modules=list(m.lora_targets)))
        else:
            self._ref_copy = copy.deepcopy(transformer).eval()
            if full_dtype is not None:
                transformer.to(full_dtype)
            transformer.requires_grad_(True)
        self.transformer = transformer

    def policy_net(self) -> torch.nn.Module:
        """The module ``velocity`` runs: the frozen copy inside ``reference()`` under full finetuning."""
        return self._ref_copy if (self._ref_copy is not None and self._in_reference) else self.transformer

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: the base model (LoRA adapter disabled, or the frozen copy)."""
        self._in_reference = True
        if self.finetune == "lora":
            self.transformer.disable_adapters()
        try:
            yield
        finally:
            if self.finetune == "lora":
                self.transformer.enable_adapters()
            self._in_reference = False

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.transformer.named_parameters() if p.requires_grad}


def lora_matches(name: str, target: str) -> bool:
    """peft's rule for a string target: the module's full name equals ``target`` or ends with '.' + target."""
    return name == target or name.endswith("." + target)


def adaptable_names(model: torch.nn.Module) -> list[str]:
    """Names of the modules LoRA can adapt (nn.Linear, nn.Conv2d), in model order."""
    return [n for n, mod in model.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]


def check_lora_targets(targets, names: list[str], field: str = "model.lora_targets") -> list[str]:
    """The module names adapted by ``targets`` (peft's matching rule); ConfigError naming the field, the targets
    that match no module and the valid names (the adaptable modules' names without their block index) if any
    target matches nothing."""
    from ..config import ConfigError

    unmatched = [t for t in targets if not any(lora_matches(n, t) for n in names)]
    if unmatched:
        valid = sorted({n.split(".", 2)[2] if n.split(".")[0].endswith("blocks") and n.count(".") >= 2 else n for n in names})
        raise ConfigError(f"{field}={tuple(targets)!r}: {unmatched} match no module of this model; peft matches a "
                          f"module whose name ends with '.' + target; valid names: {valid}")
    return [n for n in names if any(lora_matches(n, t) for t in targets)]


def transformer_module_names(config: dict) -> list[str]:
    """Adaptable module names of an SD3Transformer2DModel built from ``config`` on the meta device (no memory,
    no weights): what ``check_lora_targets`` checks before anything is loaded."""
    from diffusers import SD3Transformer2DModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(cfg)
    return adaptable_names(model)
