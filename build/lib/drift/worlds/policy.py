"""The trained policy and its reference, shared by the worlds that train a diffusers transformer."""

from __future__ import annotations

import contextlib

import torch


class TransformerPolicy:
    """Mixin: ``self.transformer`` (the trained module), ``self.finetune`` ('lora' or 'full') and
    ``self._ref_copy`` (a frozen copy of the base for 'full', else None) must be set by the world."""

    _in_reference = False

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
