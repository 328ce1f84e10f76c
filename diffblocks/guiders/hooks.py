"""Perturbation hooks: skip attention, identity attention scores, skip feed-forward, blur queries.

Models carry no guider code. A guider installs these on named submodules of the denoiser for one
model pass and removes them right after (`PerturbationHandle.remove`, or the guider's
`perturbation(model, group)` context manager).

Submodules are found by structure, not by class:
* a stack of transformer blocks is an ``nn.ModuleList`` at a dotted path (``fqn``), e.g.
  ``mid_block.attentions.0.transformer_blocks`` in a UNet, ``transformer_blocks`` /
  ``single_transformer_blocks`` in a Flux transformer;
* an attention module has ``to_q``, ``to_k``, ``to_v``; it is self-attention unless it says
  ``is_cross_attention = True`` or is named ``attn2``;
* a feed-forward module is a child named ``ff`` / ``ff_context`` (or a class named ``*FeedForward``).

Identity attention scores (PAG) make ``scaled_dot_product_attention(q, k, v)`` return ``v`` when the
query and value sequences have the same length, so the attention output is the value projection
path (then ``to_out``), exactly as the reference's ``AttentionScoreSkipFunctionMode``.
"""

from __future__ import annotations

import contextvars
import copy
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "LayerSkipConfig",
    "PerturbationHandle",
    "SmoothedEnergyGuidanceConfig",
    "apply_layer_skip",
    "apply_smoothed_energy",
    "default_layer_stack",
    "gaussian_blur_queries",
]

# stacks of transformer blocks a DiT may have, in the order "auto" tries them
_DIT_STACKS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers",
               "visual_transformer_blocks", "temporal_transformer_blocks")
_UNET_MID_STACK = "mid_block.attentions.0.transformer_blocks"


@dataclass
class LayerSkipConfig:
    """Which blocks to perturb and how.

    indices: block indices within the stack at ``fqn`` ("auto": the UNet mid block's transformer
    blocks, or the first DiT stack found). skip_attention: self-attention returns its input.
    skip_attention_scores: identity attention scores. skip_ff: feed-forward returns its input.
    skip_attention and skip_ff together skip the whole block. dropout < 1 applies dropout to the
    skipped outputs instead of dropping them (not allowed with skip_attention_scores).
    """

    indices: list[int]
    fqn: str = "auto"
    skip_attention: bool = True
    skip_attention_scores: bool = False
    skip_ff: bool = True
    dropout: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.indices, int):
            self.indices = [self.indices]
        self.indices = [int(i) for i in self.indices]
        if not (0 <= self.dropout <= 1):
            raise ValueError(f"LayerSkipConfig: dropout must be in [0, 1], got {self.dropout}.")
        if self.skip_attention_scores and not math.isclose(self.dropout, 1.0):
            raise ValueError("LayerSkipConfig: skip_attention_scores=True needs dropout=1.0, "
                             f"got dropout={self.dropout}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> LayerSkipConfig:
        return LayerSkipConfig(**data)


@dataclass
class SmoothedEnergyGuidanceConfig:
    """Blocks whose self-attention queries SEG blurs (``_query_proj_identifiers`` default ``["to_q"]``)."""

    indices: list[int]
    fqn: str = "auto"
    _query_proj_identifiers: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.indices, int):
            self.indices = [self.indices]
        self.indices = [int(i) for i in self.indices]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SmoothedEnergyGuidanceConfig:
        return SmoothedEnergyGuidanceConfig(**data)


# -- finding layers ---------------------------------------------------------------------------------
def _module_list(model: torch.nn.Module, fqn: str) -> torch.nn.ModuleList | None:
    try:
        stack = model.get_submodule(fqn)
    except AttributeError:
        return None
    return stack if isinstance(stack, torch.nn.ModuleList) else None


def default_layer_stack(model: torch.nn.Module) -> tuple[str, int]:
    """The stack that "auto" means for this model: ``(fqn, number of blocks)``.

    A UNet (has ``mid_block`` with attentions) uses its mid block's transformer blocks; a DiT uses
    its first stack among ``transformer_blocks``, ``single_transformer_blocks``, ``blocks``, ``layers``.
    """
    stack = _module_list(model, _UNET_MID_STACK)
    if stack is not None and len(stack):
        return _UNET_MID_STACK, len(stack)
    for name in _DIT_STACKS:
        stack = _module_list(model, name)
        if stack is not None and len(stack):
            return name, len(stack)
    raise ValueError(
        f"cannot find transformer blocks in {type(model).__name__}: no {_UNET_MID_STACK!r} and none of "
        f"{list(_DIT_STACKS)}; pass a LayerSkipConfig with an explicit fqn (the dotted path of an nn.ModuleList)."
    )


def _resolve(model: torch.nn.Module, config: Any) -> tuple[Any, torch.nn.ModuleList]:
    config = copy.copy(config)
    if config.fqn == "auto":
        config.fqn = default_layer_stack(model)[0]
    stack = _module_list(model, config.fqn)
    if stack is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList at {config.fqn!r}; fqn must be the dotted path of a stack "
            "of transformer blocks (e.g. 'mid_block.attentions.0.transformer_blocks' or 'transformer_blocks')."
        )
    if not config.indices:
        raise ValueError(f"layer indices for {config.fqn!r} are empty; give at least one block index.")
    bad = [i for i in config.indices if not -len(stack) <= i < len(stack)]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for {config.fqn!r}, which has {len(stack)} blocks.")
    return config, stack


def _is_attention(module: torch.nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("to_q", "to_k", "to_v"))


def _is_self_attention(name: str, module: torch.nn.Module) -> bool:
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return not flag
    return name.rsplit(".", 1)[-1] != "attn2"


def _is_feed_forward(name: str, module: torch.nn.Module) -> bool:
    return name.rsplit(".", 1)[-1] in ("ff", "ff_context") or type(module).__name__.endswith("FeedForward")


def _self_attentions(block: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in block.named_modules():
        if name and _is_attention(module) and _is_self_attention(name, module):
            yield name, module


# -- installing and removing ------------------------------------------------------------------------
# Perturbations are installed on the shared model for one pass of one call, but another thread may run the same
# model at the same time (one pipeline called from several threads). So the swapped forwards are gates: each runs
# a handle's perturbed forward only in the context (thread) where that handle is active, the original elsewhere.
_ACTIVE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("diffblocks_perturbations",
                                                                        default=frozenset())
_SWAP_LOCK = threading.RLock()
_HANDLE_IDS = itertools.count(1)


class _Gate:
    """`module.forward` while perturbations are installed on it (see above)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.had_own = "forward" in module.__dict__
        self.previous = module.__dict__.get("forward")
        self.base = module.forward
        self.variants: dict[int, Callable[..., Any]] = {}
        module.forward = self

    def add(self, handle_id: int, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        # composes with the latest perturbation active in this context (the same handle's earlier swap, or one
        # merged into it), as plain nested swaps would; never with another thread's
        active, inner = _ACTIVE.get(), self.base
        for other in reversed(list(self.variants)):
            if other in active:
                inner = self.variants[other]
                break
        self.variants[handle_id] = make(inner)

    def discard(self, handle_id: int) -> None:
        with _SWAP_LOCK:
            self.variants.pop(handle_id, None)
            if not self.variants and self.module.__dict__.get("forward") is self:
                if self.had_own:
                    self.module.forward = self.previous
                else:
                    del self.module.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        variants = self.variants
        if variants:
            active = _ACTIVE.get()
            if active:
                for handle_id in reversed(list(variants)):
                    if handle_id in active:
                        return variants[handle_id](*args, **kwargs)
        return self.base(*args, **kwargs)


class PerturbationHandle:
    """What one install changed; `remove()` undoes it in reverse order (idempotent).

    The perturbation acts only in the context (thread) that created the handle, until it is removed: other threads
    running the same model meanwhile get the unperturbed forward."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.targets: list[str] = []
        self._id = next(_HANDLE_IDS)
        self._ids = {self._id}  # this handle's and those merged into it
        _ACTIVE.set(_ACTIVE.get() | self._ids)

    def _swap_forward(self, module: torch.nn.Module, name: str,
                      make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        with _SWAP_LOCK:
            gate = module.__dict__.get("forward")
            if not isinstance(gate, _Gate):
                gate = _Gate(module)
            gate.add(self._id, make)
        handle_id = self._id
        self._undo.append(lambda: gate.discard(handle_id))
        self.targets.append(name)

    def _add_forward_hook(self, module: torch.nn.Module, hook: Callable[..., Any], name: str) -> None:
        """`module.register_forward_hook(hook)`, acting only where this handle is active."""
        handle_id = self._id

        def gated(mod: torch.nn.Module, inputs: Any, output: Any) -> Any:
            return hook(mod, inputs, output) if handle_id in _ACTIVE.get() else None

        self._add(module.register_forward_hook(gated), name)

    def _add(self, handle: Any, name: str) -> None:
        self._undo.append(handle.remove)
        self.targets.append(name)

    def merge(self, other: PerturbationHandle) -> None:
        """Take over `other`'s changes: removing this handle undoes both (both made in this context)."""
        self._undo.extend(other._undo)
        self.targets.extend(other.targets)
        self._ids |= other._ids
        other._undo, other._ids = [], set()

    def _deactivate(self) -> None:
        _ACTIVE.set(_ACTIVE.get() - self._ids)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._deactivate()

    def __enter__(self) -> PerturbationHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self._undo)


def _first_arg(args: tuple, kwargs: dict, *names: str) -> Any:
    for n in names:
        if kwargs.get(n) is not None:
            return kwargs[n]
    return args[0] if args else None


class _IdentityScores(torch.overrides.TorchFunctionMode):
    """Inside it, self-attention SDPA calls return the values (identity attention matrix)."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = kwargs.get("query", args[0] if args else None)
            value = kwargs.get("value", args[2] if len(args) > 2 else None)
            if query is not None and value is not None and query.shape[-2] == value.shape[-2]:
                self.hits += 1
                return value
        return func(*args, **kwargs)


def _skip_attention_forward(module: torch.nn.Module, original: Callable, dropout: float, name: str):
    joint = hasattr(module, "add_q_proj")

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not math.isclose(dropout, 1.0):
            return F.dropout(original(*args, **kwargs), p=dropout)
        hidden = _first_arg(args, kwargs, "hidden_states")
        if joint:
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            if context is not None:
                return hidden, context
        return hidden

    return forward


def _identity_scores_forward(original: Callable, name: str):
    def forward(*args: Any, **kwargs: Any) -> Any:
        mode = _IdentityScores()
        with mode:
            out = original(*args, **kwargs)
        if mode.hits == 0:
            raise RuntimeError(
                f"identity attention scores: attention module {name!r} did not call "
                "torch.nn.functional.scaled_dot_product_attention with equal query/value lengths, so its scores "
                "cannot be replaced; use skip_attention instead of skip_attention_scores for this layer."
            )
        return out

    return forward


def _skip_ff_forward(original: Callable, dropout: float):
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not math.isclose(dropout, 1.0):
            return F.dropout(original(*args, **kwargs), p=dropout)
        return _first_arg(args, kwargs, "hidden_states", "x")

    return forward


def _returns_context_first(block: torch.nn.Module, fqn: str) -> bool:
    """Flux-style blocks return ``(encoder_hidden_states, hidden_states)``; others return hidden_states."""
    order = getattr(block, "_block_output_order", None)
    if order is not None:
        return tuple(order) == ("encoder_hidden_states", "hidden_states")
    return hasattr(block, "norm1_context") or fqn.rsplit(".", 1)[-1] == "single_transformer_blocks"


def _skip_block_forward(original: Callable, dropout: float, context_first: bool):
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not math.isclose(dropout, 1.0):
            return F.dropout(original(*args, **kwargs), p=dropout)
        hidden = _first_arg(args, kwargs, "hidden_states")
        if context_first:
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            return context, hidden
        return hidden

    return forward


def apply_layer_skip(model: torch.nn.Module, config: LayerSkipConfig) -> PerturbationHandle:
    """Install the perturbation `config` describes on `model`; returns the handle that removes it."""
    if config.skip_attention and config.skip_attention_scores:
        raise ValueError("LayerSkipConfig: skip_attention and skip_attention_scores cannot both be True; "
                         "choose one (PAG uses skip_attention_scores).")
    config, stack = _resolve(model, config)
    handle = PerturbationHandle()
    try:
        for index in sorted({i % len(stack) for i in config.indices}):
            block = stack[index]
            prefix = f"{config.fqn}.{index}"
            if config.skip_attention and config.skip_ff:
                context_first = _returns_context_first(block, config.fqn)
                handle._swap_forward(block, prefix,
                                     lambda orig, cf=context_first: _skip_block_forward(orig, config.dropout, cf))
                continue
            if config.skip_attention or config.skip_attention_scores:
                found = False
                for name, attn in _self_attentions(block):
                    found = True
                    full = f"{prefix}.{name}"
                    if config.skip_attention_scores:
                        handle._swap_forward(attn, full, lambda orig, n=full: _identity_scores_forward(orig, n))
                    else:
                        handle._swap_forward(
                            attn, full, lambda orig, m=attn, n=full: _skip_attention_forward(m, orig, config.dropout, n))
                if not found:
                    raise ValueError(f"block {prefix!r} has no self-attention module (one with to_q/to_k/to_v).")
            if config.skip_ff:
                for name, ff in block.named_modules():
                    if name and _is_feed_forward(name, ff):
                        handle._swap_forward(ff, f"{prefix}.{name}", lambda orig: _skip_ff_forward(orig, config.dropout))
    except BaseException:
        handle.remove()
        raise
    logger.debug("installed layer-skip perturbation on %s", handle.targets)
    return handle


# -- smoothed energy guidance -----------------------------------------------------------------------
def gaussian_blur_queries(query: torch.Tensor, sigma: float, sigma_threshold_inf: float) -> torch.Tensor:
    """Blur ``(B, L, D)`` queries over the leading square of tokens seen as a 2-D grid.

    ``sigma > sigma_threshold_inf`` is infinite blur: every token gets the mean query (the SEG paper).
    Otherwise a Gaussian of size ``ceil(6 sigma)`` (odd, at most the grid side) with reflect padding.
    """
    if query.ndim != 3:
        raise ValueError(f"SEG query blur expects (batch, tokens, dim), got shape {tuple(query.shape)}.")
    batch, tokens, dim = query.shape
    side = int(math.isqrt(tokens))
    square = side * side
    grid = query[:, :square].permute(0, 2, 1).reshape(batch, dim, side, side)
    if sigma > sigma_threshold_inf:
        grid = grid.mean(dim=(-2, -1), keepdim=True).expand_as(grid)
    else:
        kernel_size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        kernel_size = min(kernel_size, side - (side % 2 - 1))
        half = (kernel_size - 1) / 2
        x = torch.linspace(-half, half, steps=kernel_size)
        pdf = torch.exp(-0.5 * (x / sigma).pow(2))
        k1 = (pdf / pdf.sum()).to(query)
        kernel = (k1[:, None] @ k1[None, :]).expand(dim, 1, kernel_size, kernel_size)
        pad = kernel_size // 2
        grid = F.conv2d(F.pad(grid, [pad] * 4, mode="reflect"), kernel, groups=dim)
    blurred = grid.reshape(batch, dim, square).permute(0, 2, 1)
    if square == tokens:
        return blurred.contiguous()
    return torch.cat([blurred, query[:, square:]], dim=1)


def apply_smoothed_energy(model: torch.nn.Module, config: SmoothedEnergyGuidanceConfig, blur_sigma: float,
                          blur_threshold_inf: float) -> PerturbationHandle:
    """Blur the query projections of the self-attentions in the configured blocks."""
    config, stack = _resolve(model, config)
    identifiers = config._query_proj_identifiers or ["to_q"]
    handle = PerturbationHandle()

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return gaussian_blur_queries(output, blur_sigma, blur_threshold_inf)

    for index in sorted({i % len(stack) for i in config.indices}):
        for name, attn in _self_attentions(stack[index]):
            for ident in identifiers:
                proj = getattr(attn, ident, None)
                if isinstance(proj, torch.nn.Linear):
                    handle._add_forward_hook(proj, hook, f"{config.fqn}.{index}.{name}.{ident}")
    if not len(handle):
        raise ValueError(f"no query projections {identifiers} found in {config.fqn} blocks {config.indices}.")
    return handle
