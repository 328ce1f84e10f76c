"""Exponential moving average of trained weights (the EMA the diffusers scripts keep with `--use_ema`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["EMAWeights"]


class EMAWeights:
    """Shadow copies of parameters, updated after each optimizer step with the warm-up decay
    min(decay, (1 + n) / (10 + n)) where n counts steps after `update_after_step` (as the reference EMAModel)."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999, min_decay: float = 0.0,
                 update_after_step: int = 0) -> None:
        self.shadow = [p.detach().clone() for p in parameters]
        self.decay, self.min_decay, self.update_after_step = decay, min_decay, update_after_step
        self.optimization_step = 0

    def get_decay(self, optimization_step: int) -> float:
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        return max(min((1 + step) / (10 + step), self.decay), self.min_decay)

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.optimization_step += 1
        one_minus_decay = 1 - self.get_decay(self.optimization_step)
        for s, p in zip(self.shadow, parameters):
            if p.requires_grad:
                s.sub_(one_minus_decay * (s - p.to(s.dtype)))
            else:
                s.copy_(p)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, parameters):
            p.copy_(s.to(p.device, p.dtype))

    def to(self, device: torch.device | str | None = None) -> EMAWeights:
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: `shadow.<i>` plus the step counter."""
        out = {f"shadow.{i}": s.contiguous() for i, s in enumerate(self.shadow)}
        out["optimization_step"] = torch.tensor(self.optimization_step)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len([k for k in state if k.startswith("shadow.")]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state) - 1} tensors, the model has {len(self.shadow)} parameters; "
                             "the checkpoint belongs to another model.")
        self.shadow = [state[f"shadow.{i}"].to(s.device, s.dtype) for i, s in enumerate(self.shadow)]
        self.optimization_step = int(state["optimization_step"])
