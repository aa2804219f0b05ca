"""Exponential moving average of a model's parameters (the weights used for inference)."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` for every trainable parameter.

    ``warmup=True`` uses decay ``min(decay, (1 + n) / (10 + n))`` as the official tokenizer does
    (docs/official_code.md#tokenizer-optimisation); the generator uses a constant decay from the
    start (docs/official_code.md#generator-training-script). Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            shadow.lerp_(params[name].detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. before sampling or stage 2)."""
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            params[name].copy_(shadow)

    def state_dict_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full model state dict with the EMA values in place of the trained parameters."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        for name, shadow in self.shadow.items():
            state[name] = shadow.detach().cpu().clone()
        return state

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.warmup = state["warmup"]
        self.num_updates = state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
