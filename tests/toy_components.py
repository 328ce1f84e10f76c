"""Small real components for framework tests: a torch module with the standard save/load layout, and a
config-only component. Kept importable (`toy_components`) so specs can name them by library."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffblocks.components.config import ConfigMixin, register_to_config


class ToyModel(torch.nn.Module, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, width: int = 4, scale: float = 1.0):
        super().__init__()
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x):
        return self.proj(x) * self.config.scale

    def save_pretrained(self, directory, variant=None, **_):
        directory = Path(directory)
        self.save_config(directory)
        name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / name))

    @classmethod
    def from_pretrained(cls, path, subfolder=None, variant=None, revision=None, torch_dtype=None):
        folder = Path(path) / (subfolder or "")
        model = cls.from_config(cls.load_config(path, subfolder=subfolder))
        name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
        model.load_state_dict(load_file(str(folder / name)))
        return model.to(torch_dtype) if torch_dtype is not None else model


class ToyScaler(ConfigMixin):
    config_name = "scaler_config.json"

    @register_to_config
    def __init__(self, factor: float = 2.0):
        self.factor = factor


def save_toy_model(root: Path, subfolder: str, width: int = 4, seed: int = 0, variant: str | None = None) -> ToyModel:
    torch.manual_seed(seed)
    model = ToyModel(width=width)
    model.save_pretrained(root / subfolder, variant=variant)
    return model
