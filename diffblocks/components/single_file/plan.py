"""A conversion plan (our parameter name -> where its tensor is in the file) and loading a model from one.

Plans are *pulled* from the model: for every parameter of the model built from its config, the converter
names the source tensor (and, where the layouts differ, the rows to take or a reshape). Loading builds the
model on the meta device and reads each tensor straight into its final storage, so a conversion holds one
copy of the weights, never two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..modeling import CheckpointError, _format_keys
from .reader import SingleFile

logger = logging.getLogger(__name__)

__all__ = ["Plan", "Source", "load_into", "model_shapes", "unused_keys"]


@dataclass(frozen=True)
class Source:
    """Tensor `key` of the file; `rows=(start, stop)` takes part of its first dimension; `op` reshapes it:
    "squeeze" (1x1 conv -> linear), "transpose" (2-D), "swap_halves" (shift, scale -> scale, shift)."""

    key: str
    rows: tuple[int, int] | None = None
    op: str | None = None

    def shape(self, file_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = list(file_shape)
        if self.rows is not None and shape:
            shape[0] = self.rows[1] - self.rows[0]
        if self.op == "squeeze":
            shape = shape[:2]
        elif self.op == "transpose":
            shape = shape[::-1]
        return tuple(shape)

    def read(self, f: SingleFile, dtype: torch.dtype | None) -> torch.Tensor:
        tensor = f.read(self.key, rows=self.rows, dtype=dtype)
        if self.op == "squeeze" and tensor.ndim > 2:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        elif self.op == "transpose":
            tensor = tensor.T.contiguous()
        elif self.op == "swap_halves":
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift], dim=0)
        return tensor


Plan = dict[str, Source]
PlanBuilder = Callable[[dict[str, tuple[int, ...]]], Plan]


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def load_into(model: nn.Module, f: SingleFile, plan: Plan, dtype: torch.dtype | None, what: str,
              hint: str = "") -> set[str]:
    """Fill the (meta) `model` from `f` through `plan`; returns the file keys used.

    Missing tensors or shapes that do not fit the model built from the config raise CheckpointError naming
    `what` (the component), the keys and `hint` (usually: which config to pass).
    """
    shapes = model_shapes(model)
    unplanned = sorted(set(shapes) - set(plan))
    missing = sorted(f"{k} <- {s.key}" for k, s in plan.items() if s.key not in f)
    mismatched = sorted(
        f"{k} <- {s.key}: file {s.shape(f.shape(s.key))} vs model {shapes[k]}"
        for k, s in plan.items() if s.key in f and k in shapes and s.shape(f.shape(s.key)) != shapes[k]
    )
    if unplanned or missing or mismatched:
        problems = []
        if unplanned:
            problems.append(f"parameters with no source in this layout ({len(unplanned)}): {_format_keys(unplanned)}")
        if missing:
            problems.append(f"tensors not in the file ({len(missing)}): {_format_keys(missing)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {_format_keys(mismatched)}")
        raise CheckpointError(
            f"{f.path}: the {what} in this file does not fit {type(model).__name__} built from its config: "
            + "; ".join(problems) + (f". {hint}" if hint else "")
        )
    from tqdm.auto import tqdm

    state: dict[str, torch.Tensor] = {}
    bar = tqdm(plan.items(), desc=f"converting {what}", unit="tensor", leave=False,
               disable=len(plan) < 200 or not logger.isEnabledFor(logging.INFO))
    for name, source in bar:
        state[name] = source.read(f, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return {s.key for s in plan.values()}


def unused_keys(f: SingleFile, used: Iterable[str], ignored_prefixes: tuple[str, ...] = ()) -> list[str]:
    used = set(used)
    return [k for k in f.keys if k not in used and not k.startswith(ignored_prefixes)]
