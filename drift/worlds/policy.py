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
