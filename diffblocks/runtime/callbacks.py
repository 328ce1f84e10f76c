"""Step-end callbacks as the reference pipelines define them, shared by every denoise loop.

`callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict` runs after each denoise step;
`callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs` (default `["latents"]`),
laid out as the reference pipeline of the same family holds them at that point (e.g. SD/SDXL prompt embeddings
concatenated `[negative, positive]` while classifier-free guidance runs). Tensors in the returned dict replace
the loop's values for the following steps. A callback object with a `tensor_inputs` attribute (the reference's
`PipelineCallback` / `MultiPipelineCallbacks`) brings its own list. Setting `pipe._interrupt = True` inside a
callback skips the remaining steps and keeps the result so far, as in the reference.

A loop declares which names it offers with a dict of `TensorView`s (how to read a name from its block state and
how to write a returned value back); `StepEndCallback.resolve` validates the user's inputs once per loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..blocks.errors import BlockInputError
from ..blocks.params import InputParam

__all__ = ["StepEndCallback", "TensorView", "attr_view", "concat_view", "step_callback_inputs"]


def step_callback_inputs() -> list[InputParam]:
    """The two inputs every denoise loop declares for step-end callbacks."""
    return [
        InputParam("callback_on_step_end",
                   description="callable(pipe, step_index, timestep, callback_kwargs) -> dict, after each step "
                               "(as in the reference pipelines)"),
        InputParam("callback_on_step_end_tensor_inputs", type_hint=list,
                   description="names of the tensors put in callback_kwargs (default ['latents'])"),
    ]


@dataclass(frozen=True)
class TensorView:
    """How a loop exposes one reference callback tensor: `get(block_state)`; `set(block_state, value)` applies a
    returned value (None: accepted but without effect, as the reference does for some names); `refresh=True`
    means step-invariant caches built from it must be rebuilt after a change."""

    get: Callable[[Any], Any]
    set: Callable[[Any, Any], None] | None = None
    refresh: bool = False


def attr_view(name: str, refresh: bool = True) -> TensorView:
    """A block-state field exposed unchanged."""

    def setter(bs: Any, value: Any) -> None:
        setattr(bs, name, value)

    return TensorView(lambda bs: getattr(bs, name), setter, refresh)


def _guided(bs: Any, uncond: str) -> bool:
    """Whether this step batches an unconditional pass, as the reference's `do_classifier_free_guidance`."""
    guider = bs.__dict__.get("guider")
    return bs.__dict__.get(uncond) is not None and guider is not None and guider.num_conditions > 1


def concat_view(cond: str, uncond: str) -> TensorView:
    """`cat([uncond, cond])` while guidance batches an unconditional pass (the reference's layout), else `cond`;
    a returned tensor is split back the same way."""
    import torch

    def getter(bs: Any) -> Any:
        if _guided(bs, uncond):
            return torch.cat([getattr(bs, uncond), getattr(bs, cond)])
        return getattr(bs, cond)

    def setter(bs: Any, value: Any) -> None:
        if _guided(bs, uncond):
            n = getattr(bs, cond).shape[0]
            if value.shape[0] != 2 * n:
                raise BlockInputError(
                    f"callback_on_step_end returned {cond!r} with batch {value.shape[0]}; while classifier-free "
                    f"guidance runs it must keep the [negative, positive] batch of {2 * n}.", input_name=cond)
            setattr(bs, uncond, value[:n])
            setattr(bs, cond, value[n:])
        else:
            setattr(bs, cond, value)

    return TensorView(getter, setter, refresh=True)


class StepEndCallback:
    """One loop's resolved callback; call it at the end of each step. Returns True when the callback asked the
    loop to stop (`pipe._interrupt = True`)."""

    __slots__ = ("callback", "names", "views", "block")

    def __init__(self, callback: Callable[..., Any], names: list[str], views: Mapping[str, TensorView],
                 block: str) -> None:
        self.callback, self.names, self.views, self.block = callback, names, views, block

    @classmethod
    def resolve(cls, block: str, callback: Any, tensor_inputs: Any,
                views: Mapping[str, TensorView]) -> StepEndCallback | None:
        if callback is None:
            return None
        if not callable(callback):
            raise BlockInputError(
                f"Block {block!r}: callback_on_step_end must be callable as (pipe, step_index, timestep, "
                f"callback_kwargs) -> dict, got {type(callback).__name__}.", block=block,
                input_name="callback_on_step_end")
        own = getattr(callback, "tensor_inputs", None)
        names = list(own) if own is not None else list(tensor_inputs if tensor_inputs is not None else ["latents"])
        unknown = [n for n in names if n not in views]
        if unknown:
            raise BlockInputError(
                f"Block {block!r}: `callback_on_step_end_tensor_inputs` has to be in {list(views)}, but found "
                f"{unknown}.", block=block, input_name="callback_on_step_end_tensor_inputs")
        return cls(callback, names, views, block)

    def __call__(self, components: Any, bs: Any, i: int, t: Any) -> tuple[bool, bool]:
        """Run the callback; returns (refresh: step-invariant inputs changed, stop: skip the remaining steps)."""
        views = self.views
        kwargs = {name: views[name].get(bs) for name in self.names}
        out = self.callback(components, i, t, kwargs)
        refresh = False
        if out:
            if not isinstance(out, Mapping):
                raise BlockInputError(
                    f"Block {self.block!r}: callback_on_step_end must return a dict of tensors (or None), got "
                    f"{type(out).__name__}.", block=self.block, input_name="callback_on_step_end")
            for name, value in out.items():
                view = views.get(name)
                if view is None or view.set is None:
                    continue  # names the reference's loop does not read back are ignored there too
                if name in kwargs and value is kwargs[name]:
                    continue  # handed back unchanged
                view.set(bs, value)
                refresh = refresh or view.refresh
        return refresh, bool(getattr(components, "__dict__", {}).get("_interrupt", False))
